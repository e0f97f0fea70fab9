"""The reward model: an ensemble of reward predictors r̂(o, a) trained on labelled comparisons.

This is the service's core: plain Python + torch + numpy, no gRPC, no Ray. `server.py` decodes
requests, calls a `RewardModel` and maps `rlhp.wire` exceptions to status codes; the client offers
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
- Bootstrap: each comparison carries a Poisson(1) weight per member (the "online bootstrap"),
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

import hashlib
import logging
import math
import os
import contextlib
import tempfile
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from rlhp import wire
from rlhp.wire import FailedPrecondition, InvalidRequest, Preference, Space

from .config import RewardConfig
from .nets import architecture_for, build_member, l2_penalty
from .types import AddResult, ComparisonData, MemberStats, RewardStats, SegmentData

log = logging.getLogger("rlhp.reward_service")

CHECKPOINT_NAME = "reward_model.pt"
_FORMAT = "rlhp.reward_model"
_FORMAT_VERSION = 1
# Comparisons per forward pass when measuring losses after a round (bounds memory).
_EVAL_BATCH = 64


# ---------------------------------------------------------------------------------------------
# small helpers


def _unit_hash(text: str) -> float:
    """A stable (process- and platform-independent) uniform number in [0, 1) from a string."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def _poisson1(u: float) -> int:
    """Inverse-CDF draw from Poisson(1) for a uniform `u`."""
    k, p = 0, math.exp(-1.0)
    cdf = p
    while u > cdf and k < 20:
        k += 1
        p /= k
        cdf += p
    return k


def _bt_loss(delta: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-comparison cross-entropy of P[left ≻ right] = (1-ε)·σ(Δ) + ε/2 against `target`."""
    if eps > 0.0:
        log_keep = math.log1p(-eps)
        log_rand = torch.full_like(delta, math.log(eps / 2.0))
        log_p = torch.logaddexp(F.logsigmoid(delta) + log_keep, log_rand)
        log_q = torch.logaddexp(F.logsigmoid(-delta) + log_keep, log_rand)
    else:
        log_p, log_q = F.logsigmoid(delta), F.logsigmoid(-delta)
    return -(target * log_p + (1.0 - target) * log_q)


def _clone_tree(obj: Any) -> Any:
    """Deep copy of nested dicts/lists whose leaves are tensors (moved to CPU) or plain values."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _clone_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone_tree(v) for v in obj)
    return obj


def _as_tensor(a: np.ndarray) -> torch.Tensor:
    """Share memory with `a`; read-only arrays (e.g. decoded from the wire) are copied."""
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@dataclass
class _Comparison:
    id: str
    left: str
    right: str
    label: int
    target: float
    val: bool
    boot: np.ndarray  # [members] Poisson(1) bootstrap weights


@dataclass(frozen=True)
class _Snapshot:
    """What scoring uses: immutable once published."""

    version: int
    members: tuple[nn.Module, ...]
    mean: np.ndarray  # [members] float64
    std: np.ndarray  # [members] float64


_Segment = tuple[np.ndarray, np.ndarray]  # (observations [T, *obs], actions [T] int64 | [T, A] f32)


# ---------------------------------------------------------------------------------------------


class RewardModel:
    """Ensemble of reward predictors; implements `reward_service.types.RewardBackend`."""

    def __init__(self, space: Space, config: RewardConfig | None = None,
                 checkpoint_dir: str | None = None) -> None:
        self.space = space
        self.config = config if config is not None else RewardConfig.for_space(space)
        self.checkpoint_dir = checkpoint_dir
        self.architecture = architecture_for(space)
        cfg = self.config
        self._device = torch.device(cfg.device)
        self._obs_uint8 = np.dtype(space.obs_dtype) == np.uint8
        self._discrete = space.action_kind == "discrete"
        self._chunk = cfg.cnn_chunk if self.architecture == "cnn" else cfg.mlp_chunk

        # Training side: members, optimisers, dropout generators, adaptive L2.
        self._members: list[nn.Module] = []
        self._optims: list[torch.optim.Optimizer] = []
        self._gens: list[torch.Generator] = []
        seeds = np.random.SeedSequence([cfg.seed, 0x5EED]).generate_state(2 * cfg.members)
        with torch.random.fork_rng(devices=[]):
            for m in range(cfg.members):
                torch.manual_seed(int(seeds[2 * m]))
                member = build_member(space, cfg).to(self._device).train()
                gen = torch.Generator(device=self._device)
                gen.manual_seed(int(seeds[2 * m + 1]))
                if hasattr(member, "set_generator"):
                    member.set_generator(gen)
                self._members.append(member)
                self._gens.append(gen)
                self._optims.append(torch.optim.Adam(member.parameters(), lr=cfg.lr))
        self._l2 = [float(cfg.l2_init)] * cfg.members
        self._rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xB00]))

        # Shared state (guarded by _lock; mutated only by add_comparisons and publishing).
        self._lock = threading.Lock()
        self._add_lock = threading.Lock()
        self._train_lock = threading.RLock()
        # Set while someone (a checkpoint) waits for `_train_lock`: the background round ends early
        # and the loop does not take the lock again until they are done (Python locks are unfair).
        self._yield = threading.Event()
        self._yield_waiters = 0
        self._segments: dict[str, _Segment] = {}
        self._refs: dict[str, int] = {}
        self._comparisons: list[_Comparison] = []
        self._n_train = 0
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._pool: deque[_Segment] = deque()
        self._pool_size = 0
        self._comparisons_seen = 0
        self._train_steps = 0
        self._rounds_since_new = 0
        self._last: dict[str, Any] = self._empty_round_stats()
        ones = np.ones(cfg.members)
        self._snapshot = _Snapshot(0, self._inference_copies(), np.zeros(cfg.members), ones)

        # Background training.
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.last_error: str | None = None

    # ---- scoring ------------------------------------------------------------------------------

    def score(self, observations: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, int]:
        """Normalised ensemble-mean reward per transition ([N] float32) and the version used.

        Output = mean over members of target_std · (r̂_m − mean_m) / std_m, with the normalisation
        of the published version.
        """
        obs, act = self._check_batch(np.asarray(observations), np.asarray(actions), "score")
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
        pairs = list(pairs)
        if not pairs:
            raise InvalidRequest("disagreement: no pairs given")
        if len(pairs) > self.config.max_pairs:
            raise InvalidRequest(
                f"disagreement: {len(pairs)} pairs is more than the limit of {self.config.max_pairs}")
        inline = self._check_segments(segments, "disagreement", copy=False)
        parsed: list[tuple[str, str]] = []
        for i, pair in enumerate(pairs):
            try:
                left, right = pair
            except (TypeError, ValueError):
                raise InvalidRequest(f"disagreement: pair {i} is not a (left_id, right_id) pair") from None
            for sid in (left, right):
                if not isinstance(sid, str) or not sid:
                    raise InvalidRequest(f"disagreement: pair {i} has an empty or non-string segment id")
            parsed.append((left, right))

        order: dict[str, int] = {}
        found: list[_Segment] = []
        with self._lock:
            for left, right in parsed:
                for sid in (left, right):
                    if sid in order:
                        continue
                    seg = inline.get(sid) or self._segments.get(sid)
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

    # ---- data -----------------------------------------------------------------------------------

    def add_comparisons(self, segments: Sequence[SegmentData],
                        comparisons: Sequence[ComparisonData]) -> AddResult:
        """Store labelled comparisons; idempotent by comparison id.

        A comparison id seen before (also one since evicted from the buffer, up to
        `seen_ids_capacity` ids) counts as a duplicate; INCOMPARABLE answers are counted as ignored
        and stored nowhere. Every segment and comparison is validated before anything changes.
        """
        cfg = self.config
        with self._add_lock:  # one writer at a time: what we validate against stays valid
            inline = self._check_segments(segments, "add_comparisons", copy=True)
            new: list[_Comparison] = []
            new_segments: dict[str, _Segment] = {}
            batch_ids: set[str] = set()
            duplicates = ignored = 0
            for i, c in enumerate(comparisons):
                cid, left, right = getattr(c, "id", None), getattr(c, "left_id", None), getattr(c, "right_id", None)
                for name, value in (("id", cid), ("left_id", left), ("right_id", right)):
                    if not isinstance(value, str) or not value:
                        raise InvalidRequest(f"comparison {i}: {name} is missing or not a string")
                raw_label = getattr(c, "label", None)
                label = raw_label if isinstance(raw_label, Preference) else Preference.parse(raw_label)
                if cid in self._seen or cid in batch_ids:
                    duplicates += 1
                    continue
                if label.target is None:  # INCOMPARABLE
                    ignored += 1
                    continue
                segs = []
                for sid in (left, right):
                    seg = inline.get(sid)
                    if seg is not None:
                        if sid not in self._segments:
                            new_segments[sid] = seg
                    else:
                        seg = self._segments.get(sid)
                    if seg is None:
                        raise InvalidRequest(
                            f"comparison '{cid}': unknown segment '{sid}' (send it in segments)")
                    segs.append(seg)
                if len(segs[0][0]) != len(segs[1][0]):
                    raise InvalidRequest(
                        f"comparison '{cid}': segments '{left}' and '{right}' have different lengths "
                        f"({len(segs[0][0])} vs {len(segs[1][0])})")
                batch_ids.add(cid)
                boot = np.array([_poisson1(_unit_hash(f"boot/{cfg.seed}/{m}/{cid}"))
                                 for m in range(cfg.members)], dtype=np.float64)
                new.append(_Comparison(cid, left, right, int(label), float(label.target),
                                       cfg.validation == "split" and _unit_hash(f"val/{cid}") < cfg.val_fraction,
                                       boot))

            with self._lock:  # commit: nothing below can fail on request data
                for rec in new:
                    for sid in (rec.left, rec.right):
                        if sid not in self._segments:
                            self._segments[sid] = new_segments[sid]
                            self._refs[sid] = 0
                            self._pool_add(new_segments[sid])
                        self._refs[sid] += 1
                    self._comparisons.append(rec)
                    self._n_train += not rec.val
                    self._seen[rec.id] = None
                while len(self._seen) > cfg.seen_ids_capacity:
                    self._seen.popitem(last=False)
                excess = len(self._comparisons) - cfg.max_comparisons
                if excess > 0:
                    for rec in self._comparisons[:excess]:
                        self._n_train -= not rec.val
                        for sid in (rec.left, rec.right):
                            self._refs[sid] -= 1
                            if self._refs[sid] == 0:
                                del self._refs[sid], self._segments[sid]
                    del self._comparisons[:excess]
                self._comparisons_seen += len(new)
                if new:
                    self._rounds_since_new = 0
                    self._wake.set()
                total = len(self._comparisons)
        return AddResult(added=len(new), duplicates=duplicates, ignored=ignored, total=total)

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
                idle = (self._n_train == 0 or (cfg.max_rounds_without_new_data > 0
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
        t0 = time.perf_counter()
        with self._lock:
            records = list(self._comparisons)
            segs = {sid: self._segments[sid] for r in records for sid in (r.left, r.right)}
            pool = list(self._pool)
        train = [r for r in records if not r.val]
        val = [r for r in records if r.val]
        if not train:
            return {"published": False, "version": self._snapshot.version, "steps": 0,
                    "reason": "no training comparisons yet", "comparisons": len(records)}

        boot = np.stack([r.boot for r in train])  # [n, M]
        cdfs = []
        for m in range(cfg.members):
            w = boot[:, m] if boot[:, m].sum() > 0 else np.ones(len(train))
            cdfs.append(np.cumsum(w) / w.sum())

        done = 0
        for _ in range(steps):
            if (stop is not None and stop.is_set()) or (interrupt is not None and interrupt.is_set()):
                break
            for m, member in enumerate(self._members):
                idx = np.minimum(np.searchsorted(cdfs[m], self._rng.random(cfg.batch_size), side="right"),
                                 len(train) - 1)
                batch = [train[i] for i in idx]
                delta = self._delta(member, batch, segs)
                target = torch.tensor([r.target for r in batch], dtype=torch.float32, device=self._device)
                loss = _bt_loss(delta, target, cfg.random_answer_prob).mean()
                if self._l2[m] > 0:
                    loss = loss + self._l2[m] * l2_penalty(member)
                opt = self._optims[m]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            done += 1
        if done == 0 and steps > 0:  # stopped before the first step: nothing new to publish
            return {"published": False, "version": self._snapshot.version, "steps": 0,
                    "reason": "stopped", "comparisons": len(train)}

        # Measure (eval mode), adapt L2, normalise, publish.
        members_stats = []
        oob = self.config.validation == "oob"
        for m, member in enumerate(self._members):
            mine = [r for r in train if r.boot[m] > 0] or train
            held_out = [r for r in train if r.boot[m] == 0] if oob else val
            tr = self._evaluate(member, self._subsample(mine), segs)
            va = self._evaluate(member, self._subsample(held_out), segs)
            if math.isfinite(va[0]) and math.isfinite(tr[0]) and tr[0] > 0:
                if va[0] > 1.5 * tr[0]:
                    self._l2[m] = min(self._l2[m] * cfg.l2_adapt, cfg.l2_max)
                elif va[0] < 1.1 * tr[0]:
                    self._l2[m] = max(self._l2[m] / cfg.l2_adapt, cfg.l2_min)
            members_stats.append((tr, va))
        mean, std = self._normalisation(pool)
        copies = self._inference_copies()
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
                "l2": list(self._l2),
            }
            last = dict(self._last)
        return {
            "published": True, "version": version, "steps": done, "seconds": elapsed,
            "comparisons": len(train),
            "val_comparisons": (int(np.mean([(boot[:, m] == 0).sum() for m in range(cfg.members)]))
                                if self.config.validation == "oob" else len(val)),
            "train_loss": _nanmean(last["train_loss"]), "val_loss": _nanmean(last["val_loss"]),
            "train_accuracy": _nanmean(last["train_accuracy"]),
            "val_accuracy": _nanmean(last["val_accuracy"]),
            "members": {k: list(v) for k, v in last.items()},
        }

    def _delta(self, member: nn.Module, batch: Sequence[_Comparison], segs: dict[str, _Segment]
               ) -> torch.Tensor:
        """Σ_t r̂(left) − Σ_t r̂(right) per comparison, for one member (gradients kept)."""
        parts = [segs[sid] for r in batch for sid in (r.left, r.right)]
        lengths = np.array([len(p[0]) for p in parts])
        obs = torch.from_numpy(np.concatenate([p[0] for p in parts])).to(self._device)
        act = torch.from_numpy(np.concatenate([p[1] for p in parts])).to(self._device)
        index = torch.from_numpy(np.repeat(np.arange(len(parts)), lengths)).to(self._device)
        out = member(obs, act)
        sums = torch.zeros(len(parts), dtype=out.dtype, device=self._device).index_add(0, index, out)
        return sums[0::2] - sums[1::2]

    def _subsample(self, records: list[_Comparison]) -> list[_Comparison]:
        n = self.config.eval_comparisons
        if len(records) <= n:
            return records
        return [records[i] for i in self._rng.choice(len(records), n, replace=False)]

    def _evaluate(self, member: nn.Module, records: list[_Comparison], segs: dict[str, _Segment]
                  ) -> tuple[float, float]:
        """(mean loss, accuracy on non-EQUAL labels) in eval mode; NaN when there is nothing."""
        if not records:
            return math.nan, math.nan
        member.eval()
        losses, correct, decided = [], 0, 0
        try:
            with torch.inference_mode():
                for i in range(0, len(records), _EVAL_BATCH):
                    batch = records[i:i + _EVAL_BATCH]
                    delta = self._delta(member, batch, segs)
                    target = torch.tensor([r.target for r in batch], dtype=torch.float32, device=self._device)
                    losses.append(_bt_loss(delta, target, self.config.random_answer_prob).cpu().numpy())
                    d = delta.cpu().numpy()
                    t = target.cpu().numpy()
                    sure = t != 0.5
                    decided += int(sure.sum())
                    correct += int(((d > 0) == (t > 0.5))[sure].sum())
        finally:
            member.train()
        accuracy = correct / decided if decided else math.nan
        return float(np.concatenate(losses).mean()), accuracy

    def _normalisation(self, pool: list[_Segment]) -> tuple[np.ndarray, np.ndarray]:
        """Per-member mean and std of the raw output on the most recent labelled transitions."""
        m = self.config.members
        if not pool:
            return np.zeros(m), np.ones(m)
        obs = np.concatenate([p[0] for p in pool])[-self.config.norm_transitions:]
        act = np.concatenate([p[1] for p in pool])[-self.config.norm_transitions:]
        raw = np.empty((m, len(obs)), dtype=np.float32)
        with torch.inference_mode():
            for k, member in enumerate(self._members):
                member.eval()
                try:
                    raw[k] = self._run_member(member, obs, act)
                finally:
                    member.train()
        raw64 = raw.astype(np.float64)
        mean = raw64.mean(axis=1)
        std = raw64.std(axis=1)
        std = np.where(std > 1e-8, std, 1.0)
        return mean, std

    def _pool_add(self, seg: _Segment) -> None:
        self._pool.append(seg)
        self._pool_size += len(seg[0])
        while self._pool and self._pool_size - len(self._pool[0][0]) >= self.config.norm_transitions:
            self._pool_size -= len(self._pool.popleft()[0])

    # ---- members --------------------------------------------------------------------------------

    def _fresh_member(self) -> nn.Module:
        """An uninitialised member on the device (built on 'meta': draws no random numbers)."""
        with torch.device("meta"):
            member = build_member(self.space, self.config)
        return member.to_empty(device=self._device)

    def _inference_copies(self, states: Iterable[dict] | None = None) -> tuple[nn.Module, ...]:
        if states is None:
            states = [member.state_dict() for member in self._members]
        copies = []
        for state in states:
            member = self._fresh_member()
            member.load_state_dict(state)
            member.eval().requires_grad_(False)
            copies.append(member)
        return tuple(copies)

    def _run_member(self, member: nn.Module, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        out = np.empty(len(obs), dtype=np.float32)
        for i in range(0, len(obs), self._chunk):
            o = _as_tensor(obs[i:i + self._chunk]).to(self._device)
            a = _as_tensor(act[i:i + self._chunk]).to(self._device)
            out[i:i + self._chunk] = member(o, a).float().cpu().numpy()
        return out

    def _member_outputs(self, snap: _Snapshot, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        """Raw outputs [M, N] of the snapshot's members."""
        out = np.empty((len(snap.members), len(obs)), dtype=np.float32)
        with torch.inference_mode():
            for k, member in enumerate(snap.members):
                out[k] = self._run_member(member, obs, act)
        return out

    # ---- validation -----------------------------------------------------------------------------

    def _check_batch(self, obs: np.ndarray, act: np.ndarray, what: str, copy: bool = False
                     ) -> _Segment:
        """Validate transitions [N, ...] and convert them to what the members take."""
        n = obs.shape[0] if obs.ndim else 0
        if n > self.config.max_score_batch:
            raise InvalidRequest(
                f"{what}: {n} transitions is more than the limit of {self.config.max_score_batch}; "
                "split the batch (ScoreStream does this)")
        wire.check_transitions(self.space, obs, act, what)
        if self._obs_uint8:
            if obs.dtype != np.uint8:
                raise InvalidRequest(
                    f"{what}: observations must be uint8 (pixel values) for this space, got {obs.dtype}")
            o = np.array(obs, copy=True) if copy else np.ascontiguousarray(obs)
        else:
            o = np.array(obs, dtype=np.float32, copy=True) if copy else np.ascontiguousarray(obs, dtype=np.float32)
            if obs.dtype != np.float32:
                wire.check_finite(o, f"{what}: observations (as float32)")
        if self._discrete:
            a = np.array(act.reshape(n), dtype=np.int64, copy=True)
        else:
            a = np.array(act.reshape(n, -1), dtype=np.float32, copy=True)
            if act.dtype != np.float32:
                wire.check_finite(a, f"{what}: actions (as float32)")
        return o, a

    def _check_segments(self, segments: Sequence[SegmentData] | None, what: str, copy: bool
                        ) -> dict[str, _Segment]:
        """Validate inline segments; `copy` when they will be stored (callers may reuse arrays)."""
        out: dict[str, _Segment] = {}
        for i, seg in enumerate(segments or ()):
            sid = getattr(seg, "id", None)
            if not isinstance(sid, str) or not sid:
                raise InvalidRequest(f"{what}: segment {i} has no id")
            if sid in out:
                raise InvalidRequest(f"{what}: segment '{sid}' is given twice")
            obs, act = getattr(seg, "observations", None), getattr(seg, "actions", None)
            if obs is None or act is None:
                raise InvalidRequest(f"{what}: segment '{sid}' lacks observations or actions")
            obs, act = np.asarray(obs), np.asarray(act)
            if obs.ndim and obs.shape[0] > self.config.max_segment_length:
                raise InvalidRequest(
                    f"{what}: segment '{sid}' has {obs.shape[0]} transitions, more than the limit of "
                    f"{self.config.max_segment_length}")
            out[sid] = self._check_batch(obs, act, f"segment '{sid}'", copy=copy)
        return out

    # ---- stats ----------------------------------------------------------------------------------

    @staticmethod
    def _empty_round_stats() -> dict[str, Any]:
        return {k: [] for k in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "l2")}

    def stats(self) -> RewardStats:
        with self._lock:
            snap = self._snapshot
            last = {k: list(v) for k, v in self._last.items()}
            n_comp, n_seen, n_seg, steps = (len(self._comparisons), self._comparisons_seen,
                                             len(self._segments), self._train_steps)
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
            train_loss=_nanmean(last["train_loss"]), val_loss=_nanmean(last["val_loss"]),
            train_accuracy=_nanmean(last["train_accuracy"]), val_accuracy=_nanmean(last["val_accuracy"]),
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

        Default path: `<checkpoint_dir>/reward_model.pt`. The file is written next to the target
        and renamed over it, so an existing checkpoint survives a failed write.
        """
        if not path:
            if not self.checkpoint_dir:
                raise FailedPrecondition(
                    "no checkpoint path given and this reward model has no checkpoint directory")
            path = os.path.join(self.checkpoint_dir, CHECKPOINT_NAME)
        path = os.path.abspath(path)
        with self._round_paused(), self._train_lock:  # between rounds; copies, so I/O runs unlocked
            state = self._state()
        _atomic_save(state, path)
        return path, int(state["version"])

    def _state(self) -> dict[str, Any]:
        tensors: dict[int, torch.Tensor] = {}

        def t(a: np.ndarray) -> torch.Tensor:  # one tensor per array: torch.save stores it once
            if id(a) not in tensors:
                tensors[id(a)] = torch.from_numpy(a)
            return tensors[id(a)]

        with self._lock:
            snap = self._snapshot
            comparisons = [{"id": r.id, "left": r.left, "right": r.right, "label": r.label,
                            "target": r.target, "val": r.val, "boot": r.boot.tolist()}
                           for r in self._comparisons]
            segments = {sid: [t(o), t(a)] for sid, (o, a) in self._segments.items()}
            pool = [[t(o), t(a)] for o, a in self._pool]
            seen = list(self._seen)
            counters = {"comparisons_seen": self._comparisons_seen, "train_steps": self._train_steps,
                        "rounds_since_new": self._rounds_since_new}
            last = {k: list(v) for k, v in self._last.items()}
        return {
            "format": _FORMAT, "format_version": _FORMAT_VERSION,
            "space": {"obs_shape": list(self.space.obs_shape), "obs_dtype": self.space.obs_dtype,
                      "action_kind": self.space.action_kind, "action_n": self.space.action_n,
                      "act_shape": list(self.space.act_shape)},
            "config": self.config.to_dict(),
            "version": snap.version,
            "members": [_clone_tree(m.state_dict()) for m in self._members],
            "optimizers": [_clone_tree(o.state_dict()) for o in self._optims],
            "generators": [g.get_state() for g in self._gens],
            "l2": list(self._l2),
            "rng": self._rng.bit_generator.state,
            "published": {"members": [_clone_tree(m.state_dict()) for m in snap.members],
                          "mean": snap.mean.tolist(), "std": snap.std.tolist()},
            "segments": segments, "comparisons": comparisons, "seen": seen, "pool": pool,
            "counters": counters, "last": last,
        }

    @classmethod
    def load(cls, path: str, checkpoint_dir: str | None = None, device: str | None = None
             ) -> "RewardModel":
        """Restore a model written by `checkpoint`: same scores, same version, training continues.

        `checkpoint_dir` defaults to the file's directory; `device` overrides the saved config's.
        """
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise wire.NotFound(f"no reward model checkpoint at {path}") from None
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise FailedPrecondition(f"{path} is not a reward model checkpoint")
        if state.get("format_version") != _FORMAT_VERSION:
            raise FailedPrecondition(
                f"{path} has reward model checkpoint format {state.get('format_version')}, "
                f"this code reads {_FORMAT_VERSION}")
        sp = state["space"]
        space = Space(tuple(sp["obs_shape"]), sp["obs_dtype"], sp["action_kind"], int(sp["action_n"]),
                      tuple(sp["act_shape"]))
        config = RewardConfig.from_dict(state["config"])
        if device is not None:
            config = config.replace(device=device)
        model = cls(space, config,
                    checkpoint_dir=checkpoint_dir or os.path.dirname(os.path.abspath(path)))
        model._restore(state)
        return model

    def _restore(self, state: dict[str, Any]) -> None:
        for member, opt, gen, ms, os_, gs in zip(self._members, self._optims, self._gens,
                                                  state["members"], state["optimizers"],
                                                  state["generators"]):
            member.load_state_dict(ms)
            opt.load_state_dict(os_)
            gen.set_state(gs)
        self._l2 = [float(x) for x in state["l2"]]
        self._rng.bit_generator.state = state["rng"]
        pub = state["published"]
        self._snapshot = _Snapshot(int(state["version"]), self._inference_copies(pub["members"]),
                                   np.asarray(pub["mean"], dtype=np.float64),
                                   np.asarray(pub["std"], dtype=np.float64))
        arrays: dict[int, np.ndarray] = {}

        def a(x: torch.Tensor) -> np.ndarray:  # a tensor saved once stays one array after loading
            if id(x) not in arrays:
                arrays[id(x)] = x.numpy()
            return arrays[id(x)]

        self._segments = {sid: (a(o), a(act)) for sid, (o, act) in state["segments"].items()}
        self._comparisons = [
            _Comparison(c["id"], c["left"], c["right"], int(c["label"]), float(c["target"]),
                        bool(c["val"]), np.asarray(c["boot"], dtype=np.float64))
            for c in state["comparisons"]]
        self._refs = {}
        for r in self._comparisons:
            for sid in (r.left, r.right):
                self._refs[sid] = self._refs.get(sid, 0) + 1
        self._n_train = sum(not r.val for r in self._comparisons)
        self._seen = OrderedDict((cid, None) for cid in state["seen"])
        self._pool = deque((a(o), a(act)) for o, act in state["pool"])
        self._pool_size = sum(len(p[0]) for p in self._pool)
        c = state["counters"]
        self._comparisons_seen = int(c["comparisons_seen"])
        self._train_steps = int(c["train_steps"])
        self._rounds_since_new = int(c["rounds_since_new"])
        self._last = {k: list(v) for k, v in state["last"].items()}


def _nanmean(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan


def _atomic_save(obj: Any, path: str) -> None:
    """torch.save to a temporary file in the target's directory, fsync, then rename over it."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


__all__ = ["RewardModel", "CHECKPOINT_NAME"]
