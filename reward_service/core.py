"""The reward model: an ensemble of reward predictors r̂(o, a) trained on labelled comparisons.

This is the service's core: plain Python + torch + numpy, no gRPC, no Ray. `RewardModel` holds the
rules of concurrency and publishing over one concept per module: `intake` (request validation),
`buffer` (comparisons, segments, seen ids, bootstrap weights), `training` (members, loss, the steps
of a round), `checkpoint` (the file format), `nets` (the members' networks). `server.py` decodes
requests, calls a `RewardModel` and maps `rlhp.types` exceptions to status codes; the client offers
the same `RewardBackend` interface, so the same contract tests run against both.

Concurrency model
-----------------
- Scoring uses only the latest *published* snapshot: inference copies of the members (eval mode)
  plus per-member normalisation and a version number, held in one immutable object. Publishing
  swaps the reference under a short lock, so `score` / `disagreement` never wait for training.
- Training owns its own member copies and optimisers; one round at a time (`_train_lock`).
  A round copies the buffer's references under the short lock, then trains without any lock.
- `add_comparisons` validates everything first and then commits in one short critical section:
  a bad request changes nothing.

Choices worth knowing (see also the docstrings of the methods)
--------------------------------------------------------------
- Bootstrap (`buffer.py`): each comparison carries a Poisson(1) weight per member (the "online bootstrap"),
  drawn from a stable hash of its id, so a member's bootstrap sample stays fixed as the buffer
  slides. Validation is out of bag by default: member m is validated on the comparisons whose
  weight for m is 0 (1/e of them in expectation), so every label trains the ensemble; the paper's
  shared split (`validation="split"`, 1/e by a stable hash of the id) is an option.
- Disagreement is computed on the members' *raw* outputs, i.e. the very Δ the Bradley–Terry loss
  is calibrated on. Normalising first would rescale each member's Δ by target_std/std_m (0.05 on
  Atari) and squash every probability towards 0.5 or saturate it, which says nothing about how
  uncertain the ensemble is. Scores (what the policy sees) are normalised.
- Normalisation statistics are computed at publish time on the most recent `norm_transitions`
  labelled transitions, so every score is a pure function of the version that produced it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from rlhp.types import FailedPrecondition, InvalidRequest, Space, Unavailable

from . import checkpoint as ckpt
from .buffer import ComparisonBuffer
from .checkpoint import CHECKPOINT_NAME
from .config import RewardConfig
from .intake import Intake, Segment
from .nets import architecture_for
from .training import Ensemble, nanmean
from .types import AddResult, ComparisonData, MemberStats, RewardStats, SegmentData

log = logging.getLogger("rlhp.reward_service")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@dataclass(frozen=True)
class _Snapshot:
    """What scoring uses: immutable once published."""

    version: int
    members: tuple[nn.Module, ...]
    mean: np.ndarray  # [members] float64
    std: np.ndarray  # [members] float64


class RewardModel:
    """Ensemble of reward predictors; implements `reward_service.types.RewardBackend`."""

    def __init__(self, space: Space, config: RewardConfig | None = None,
                 checkpoint_dir: str | None = None) -> None:
        self.space = space
        self._config = cfg = config if config is not None else RewardConfig.for_space(space)
        self.checkpoint_dir = checkpoint_dir
        self.architecture = architecture_for(space)
        self._intake = Intake(space, cfg)
        # Training side: members, optimisers, dropout generators, adaptive L2.
        self._ensemble = Ensemble(space, cfg)

        # Shared state (guarded by _lock; mutated only by add_comparisons and publishing).
        self._lock = threading.Lock()
        self._add_lock = threading.Lock()
        self._train_lock = threading.RLock()
        # Set while someone (a checkpoint) waits for `_train_lock`: the background round ends early
        # and the loop does not take the lock again until they are done (Python locks are unfair).
        self._yield = threading.Event()
        self._yield_waiters = 0
        self._buffer = ComparisonBuffer(cfg)
        self._train_steps = 0
        self._rounds_since_new = 0
        self._last: dict[str, Any] = self._empty_round_stats()
        ones = np.ones(cfg.members)
        self._snapshot = _Snapshot(0, self._ensemble.inference_copies(), np.zeros(cfg.members), ones)

        # Background training.
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.last_error: str | None = None

    @property
    def config(self) -> RewardConfig:
        return self._config

    @config.setter
    def config(self, config: RewardConfig) -> None:
        """A new config (e.g. other request limits) for what follows; the members, their device and
        chunk sizes stay as built."""
        self._config = self._intake.config = self._buffer.config = self._ensemble.config = config

    # ---- scoring ------------------------------------------------------------------------------

    def score(self, observations: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, int]:
        """Normalised ensemble-mean reward per transition ([N] float32) and the version used.

        Output = mean over members of target_std · (r̂_m − mean_m) / std_m, with the normalisation
        of the published version.
        """
        obs, act = self._intake.batch(np.asarray(observations), np.asarray(actions), "score")
        snap = self._snapshot
        raw = self._member_outputs(snap, obs, act)  # [M, N] float32
        norm = (raw.astype(np.float64) - snap.mean[:, None]) / snap.std[:, None]
        rewards = (self.config.target_std * norm.mean(axis=0)).astype(np.float32)
        return rewards, snap.version

    def disagreement(self, segments: Sequence[SegmentData], pairs: Sequence[tuple[str, str]]
                     ) -> tuple[np.ndarray, np.ndarray, int]:
        """Per pair: std over members of P_m[left ≻ right], their mean, and the version used.

        P_m = σ(Σ_t r̂_m(left) − Σ_t r̂_m(right)) on the members' raw outputs (the Δ the
        Bradley–Terry loss is trained on). Segments may be sent inline or be known from earlier
        comparisons; both segments of a pair must have the same length.
        """
        pairs = self._intake.pairs(pairs)
        inline = self._intake.segments(segments, "disagreement", copy=False)
        parsed = self._intake.pair_ids(pairs)

        order: dict[str, int] = {}
        found: list[Segment] = []
        with self._lock:
            for left, right in parsed:
                for sid in (left, right):
                    if sid in order:
                        continue
                    seg = inline.get(sid) or self._buffer.segments.get(sid)
                    if seg is None:
                        raise InvalidRequest(
                            f"unknown segment '{sid}' (send its observations and actions along)")
                    order[sid] = len(found)
                    found.append(seg)
        for left, right in parsed:
            tl, tr = len(found[order[left]][0]), len(found[order[right]][0])
            if tl != tr:
                raise InvalidRequest(
                    f"disagreement: segments '{left}' and '{right}' have different lengths ({tl} vs {tr})")
        lengths = np.array([len(s[0]) for s in found])
        if int(lengths.sum()) > self.config.max_score_batch:
            raise InvalidRequest(
                f"disagreement: {int(lengths.sum())} transitions is more than the limit of "
                f"{self.config.max_score_batch}")

        snap = self._snapshot
        obs = np.concatenate([s[0] for s in found])
        act = np.concatenate([s[1] for s in found])
        raw = self._member_outputs(snap, obs, act).astype(np.float64)  # [M, N]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        sums = np.add.reduceat(raw, starts, axis=1)  # [M, S]
        li = np.array([order[left] for left, _ in parsed])
        ri = np.array([order[right] for _, right in parsed])
        prob = _sigmoid(sums[:, li] - sums[:, ri])  # [M, P]
        return prob.std(axis=0).astype(np.float32), prob.mean(axis=0).astype(np.float32), snap.version

    def _member_outputs(self, snap: _Snapshot, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        """Raw outputs [M, N] of the snapshot's members."""
        out = np.empty((len(snap.members), len(obs)), dtype=np.float32)
        with torch.inference_mode():
            for k, member in enumerate(snap.members):
                out[k] = self._ensemble.run_member(member, obs, act)
        return out

    # ---- data -----------------------------------------------------------------------------------

    def add_comparisons(self, segments: Sequence[SegmentData],
                        comparisons: Sequence[ComparisonData]) -> AddResult:
        """Store labelled comparisons; idempotent by comparison id.

        A comparison id seen before (also one since evicted from the buffer, up to
        `seen_ids_capacity` ids) counts as a duplicate; INCOMPARABLE answers are counted as ignored
        and stored nowhere. Every segment and comparison is validated before anything changes.
        """
        with self._add_lock:  # one writer at a time: what we validate against stays valid
            inline = self._intake.segments(segments, "add_comparisons", copy=True)
            prepared = self._buffer.prepare(inline, comparisons)
            with self._lock:  # commit: nothing below can fail on request data
                self._buffer.commit(prepared)
                if prepared.new:
                    self._rounds_since_new = 0
                    self._wake.set()
                total = len(self._buffer.comparisons)
        return AddResult(added=len(prepared.new), duplicates=prepared.duplicates, ignored=prepared.ignored,
                         total=total)

    def remove_comparisons(self, ids: Sequence[str]) -> int:
        """Take these comparisons out of the training set (unknown ids are ignored); the members
        train on what is left from the next round on. Returns how many were removed."""
        ids = [i for i in ids if isinstance(i, str)]
        with self._add_lock, self._lock:
            removed = self._buffer.remove(ids)
            if removed:
                self._rounds_since_new = 0
                self._wake.set()
        return removed

    # ---- training -----------------------------------------------------------------------------

    def train(self, steps: int | None = None) -> dict[str, Any]:
        """Run `steps` training steps (default `steps_per_round`) on every member, then publish.

        Returns the round's numbers. With no training comparisons nothing happens
        (`published` is False) and the version stays.
        """
        steps = self.config.steps_per_round if steps is None else int(steps)
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        with self._train_lock:
            return self._train_round(steps, None)

    def start(self) -> None:
        """Train in a daemon thread, publishing after every round, until `stop()`."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        threads = torch.get_num_threads()  # torch's setting is per thread: carry the caller's over
        self._thread = threading.Thread(target=self._loop, args=(threads,), name="reward-model-trainer",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop background training (the current round ends early and is published)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._thread = None

    close = stop

    @property
    def training(self) -> bool:
        """True while the background training thread runs."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def version(self) -> int:
        return self._snapshot.version

    def _loop(self, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        cfg = self.config
        while not self._stop.is_set():
            with self._lock:
                idle = (self._buffer.n_train == 0 or (cfg.max_rounds_without_new_data > 0
                        and self._rounds_since_new >= cfg.max_rounds_without_new_data))
            if idle:
                self._wake.wait(cfg.idle_sleep_s)
                self._wake.clear()
                continue
            if self._yield.is_set():
                self._stop.wait(0.01)
                continue
            try:
                t0 = time.perf_counter()
                with self._train_lock:
                    self._train_round(cfg.steps_per_round, self._stop, interrupt=self._yield)
                self.last_error = None
                if cfg.train_duty_cycle < 1.0:  # leave the rest of the time to what shares the CPU
                    busy = time.perf_counter() - t0
                    self._stop.wait(busy * (1.0 - cfg.train_duty_cycle) / cfg.train_duty_cycle)
            except Exception as e:  # keep serving; say what went wrong in the log and stats
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("reward model training round failed")
                self._stop.wait(1.0)

    def _train_round(self, steps: int, stop: threading.Event | None,
                     interrupt: threading.Event | None = None) -> dict[str, Any]:
        cfg = self.config
        ens = self._ensemble
        t0 = time.perf_counter()
        with self._lock:
            records, segs, pool = self._buffer.training_view()
        train = [r for r in records if not r.val]
        val = [r for r in records if r.val]
        if not train:
            return {"published": False, "version": self._snapshot.version, "steps": 0,
                    "reason": "no training comparisons yet", "comparisons": len(records)}

        ens.fit_inputs(segs)
        done = ens.sgd(train, segs, steps, stop, interrupt)
        if done == 0 and steps > 0:  # stopped before the first step: nothing new to publish
            return {"published": False, "version": self._snapshot.version, "steps": 0,
                    "reason": "stopped", "comparisons": len(train)}

        # Measure (eval mode), adapt L2, normalise, publish.
        members_stats = ens.measure(train, val, segs)
        mean, std = ens.normalisation(pool)
        copies = ens.inference_copies()
        elapsed = time.perf_counter() - t0
        with self._lock:
            version = self._snapshot.version + 1
            self._snapshot = _Snapshot(version, copies, mean, std)
            self._train_steps += done
            self._rounds_since_new += 1
            self._last = {
                "train_loss": [s[0][0] for s in members_stats],
                "val_loss": [s[1][0] for s in members_stats],
                "train_accuracy": [s[0][1] for s in members_stats],
                "val_accuracy": [s[1][1] for s in members_stats],
                "l2": list(ens.l2),
            }
            last = dict(self._last)
        boot = np.stack([r.boot for r in train])  # [n, M]
        return {
            "published": True, "version": version, "steps": done, "seconds": elapsed,
            "comparisons": len(train),
            "val_comparisons": (int(np.mean([(boot[:, m] == 0).sum() for m in range(cfg.members)]))
                                if self.config.validation == "oob" else len(val)),
            "train_loss": nanmean(last["train_loss"]), "val_loss": nanmean(last["val_loss"]),
            "train_accuracy": nanmean(last["train_accuracy"]),
            "val_accuracy": nanmean(last["val_accuracy"]),
            "members": {k: list(v) for k, v in last.items()},
        }

    # ---- stats ----------------------------------------------------------------------------------

    @staticmethod
    def _empty_round_stats() -> dict[str, Any]:
        return {k: [] for k in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "l2")}

    def seen_comparison_ids(self) -> frozenset[str]:
        """Ids of the comparisons this model has received (the newest `seen_ids_capacity`: the window
        in which a comparison sent again counts as a duplicate). In-process only (tests, diagnostics)."""
        with self._add_lock:  # the writer's lock: no comparison is being added meanwhile
            return frozenset(self._buffer.seen)

    def stats(self) -> RewardStats:
        with self._lock:
            snap = self._snapshot
            last = {k: list(v) for k, v in self._last.items()}
            n_comp, n_seen, n_seg, steps = (len(self._buffer.comparisons), self._buffer.comparisons_seen,
                                             len(self._buffer.segments), self._train_steps)
        m = self.config.members
        nan = [math.nan] * m
        l2 = last["l2"] or [self.config.l2_init] * m
        members = tuple(
            MemberStats(norm_mean=float(snap.mean[k]), norm_std=float(snap.std[k]),
                        train_loss=float((last["train_loss"] or nan)[k]),
                        val_loss=float((last["val_loss"] or nan)[k]), l2=float(l2[k]))
            for k in range(m))
        return RewardStats(
            model_version=snap.version, comparisons=n_comp, comparisons_seen=n_seen, segments=n_seg,
            train_loss=nanmean(last["train_loss"]), val_loss=nanmean(last["val_loss"]),
            train_accuracy=nanmean(last["train_accuracy"]), val_accuracy=nanmean(last["val_accuracy"]),
            train_steps=steps, members=members, space=self.space, architecture=self.architecture,
            target_std=self.config.target_std)

    # ---- checkpoints ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _round_paused(self) -> Iterator[None]:
        """Ask the background trainer to end its round early and stay out until we are done."""
        with self._lock:
            self._yield_waiters += 1
            self._yield.set()
        try:
            yield
        finally:
            with self._lock:
                self._yield_waiters -= 1
                if self._yield_waiters == 0:
                    self._yield.clear()

    def checkpoint(self, path: str | None = None) -> tuple[str, int]:
        """Atomically write everything needed to resume; returns (path, published version).

        Default path: `<checkpoint_dir>/reward_model.pt`; a bare file name goes into the checkpoint
        directory too (the only kind of path the service accepts over gRPC). The file is written
        next to the target and renamed over it, so an existing checkpoint survives a failed write.
        """
        if path and self.checkpoint_dir and os.path.basename(path) == path:
            path = os.path.join(self.checkpoint_dir, path)
        if not path:
            if not self.checkpoint_dir:
                raise FailedPrecondition(
                    "no checkpoint path given and this reward model has no checkpoint directory")
            path = os.path.join(self.checkpoint_dir, CHECKPOINT_NAME)
        path = os.path.abspath(path)
        with self._round_paused(), self._train_lock:  # between rounds; copies, so I/O runs unlocked
            state = self._state()
        try:
            ckpt.atomic_save(state, path)
        except OSError as e:  # a full or read-only disk: the previous checkpoint is still whole
            raise Unavailable(f"cannot write the checkpoint {path}: {e.strerror or e} (the previous one, if "
                              "any, is kept)") from None
        return path, int(state["version"])

    def _state(self) -> dict[str, Any]:
        with self._lock:
            snap = self._snapshot
            buffer = self._buffer.state(ckpt.tensor_once())
            counters = {"comparisons_seen": self._buffer.comparisons_seen, "train_steps": self._train_steps,
                        "rounds_since_new": self._rounds_since_new}
            last = {k: list(v) for k, v in self._last.items()}
        return {
            "format": ckpt.FORMAT, "format_version": ckpt.FORMAT_VERSION,
            "space": ckpt.space_to_dict(self.space),
            "config": self.config.to_dict(),
            "version": snap.version,
            **self._ensemble.state(ckpt.clone_tree),
            "published": {"members": [ckpt.clone_tree(m.state_dict()) for m in snap.members],
                          "mean": snap.mean.tolist(), "std": snap.std.tolist()},
            "segments": buffer["segments"], "comparisons": buffer["comparisons"], "seen": buffer["seen"],
            "pool": buffer["pool"], "counters": counters, "last": last,
        }

    def snapshot(self, have_version: int = -1) -> tuple[int, bytes | None]:
        """(version, the published model as bytes for `from_snapshot`), or (version, None) when the
        caller already holds this version."""
        snap = self._snapshot
        if int(have_version) == snap.version:
            return snap.version, None
        return snap.version, ckpt.snapshot_bytes({
            "space": ckpt.space_to_dict(self.space), "config": self.config.to_dict(), "version": snap.version,
            "published": {"members": [ckpt.clone_tree(m.state_dict()) for m in snap.members],
                          "mean": snap.mean.tolist(), "std": snap.std.tolist()}})

    @classmethod
    def from_snapshot(cls, data: bytes) -> "RewardModel":
        """A model that scores exactly as the one whose `snapshot` made `data` (same version); it has
        no comparisons, and training it starts from its own fresh members."""
        state = ckpt.snapshot_from_bytes(data)
        model = cls(ckpt.space_from_dict(state["space"]), RewardConfig.from_dict(state["config"]).replace(device="cpu"))
        pub = state["published"]
        model._snapshot = _Snapshot(int(state["version"]), model._ensemble.inference_copies(pub["members"]),
                                    np.asarray(pub["mean"], dtype=np.float64), np.asarray(pub["std"], dtype=np.float64))
        return model

    @classmethod
    def load(cls, path: str, checkpoint_dir: str | None = None, device: str | None = None
             ) -> "RewardModel":
        """Restore a model written by `checkpoint`: same scores, same version, training continues.

        `checkpoint_dir` defaults to the file's directory; `device` overrides the saved config's.
        """
        state = ckpt.read(path)
        space = ckpt.space_from_dict(state["space"])
        config = RewardConfig.from_dict(state["config"])
        if device is not None:
            config = config.replace(device=device)
        model = cls(space, config,
                    checkpoint_dir=checkpoint_dir or os.path.dirname(os.path.abspath(path)))
        model._restore(state)
        return model

    def _restore(self, state: dict[str, Any]) -> None:
        self._ensemble.restore(state)
        pub = state["published"]
        self._snapshot = _Snapshot(int(state["version"]), self._ensemble.inference_copies(pub["members"]),
                                   np.asarray(pub["mean"], dtype=np.float64),
                                   np.asarray(pub["std"], dtype=np.float64))
        self._buffer.restore(state, ckpt.array_once())
        c = state["counters"]
        self._train_steps = int(c["train_steps"])
        self._rounds_since_new = int(c["rounds_since_new"])
        self._last = {k: list(v) for k, v in state["last"].items()}


__all__ = ["RewardModel", "CHECKPOINT_NAME"]
