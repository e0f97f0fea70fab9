"""The training side of the ensemble: its members, optimisers, dropout generators, adaptive L2,
the Bradley–Terry loss, and the steps of one training round.

Each member m is trained on minibatches drawn by its bootstrap weights (`buffer.Comparison.boot`)
to minimise the cross-entropy of P[left ≻ right] = (1-ε)·σ(Δ) + ε/2, Δ = Σ_t r̂_m(left) − Σ_t r̂_m(right),
plus `l2[m]`·‖θ‖²; after a round its L2 weight adapts to the ratio of held-out to training loss
(paper §2.2.3), and the normalisation of its raw output is measured on the newest labelled
transitions. `RewardModel` owns the round (locks, publishing); this module owns the arithmetic and
its random state. This is measured by the label-efficiency benchmarks: change it only with new
measurements.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from rlhp.types import Space

from .buffer import Comparison
from .config import RewardConfig
from .intake import Segment
from .nets import architecture_for, build_member, l2_penalty

# Comparisons per forward pass when measuring losses after a round (bounds memory).
EVAL_BATCH = 64

MemberFit = tuple[tuple[float, float], tuple[float, float]]  # ((train loss, acc), (val loss, acc))


def bt_loss(delta: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-comparison cross-entropy of P[left ≻ right] = (1-ε)·σ(Δ) + ε/2 against `target`."""
    if eps > 0.0:
        log_keep = math.log1p(-eps)
        log_rand = torch.full_like(delta, math.log(eps / 2.0))
        log_p = torch.logaddexp(F.logsigmoid(delta) + log_keep, log_rand)
        log_q = torch.logaddexp(F.logsigmoid(-delta) + log_keep, log_rand)
    else:
        log_p, log_q = F.logsigmoid(delta), F.logsigmoid(-delta)
    return -(target * log_p + (1.0 - target) * log_q)


def as_tensor(a: np.ndarray) -> torch.Tensor:
    """Share memory with `a`; read-only arrays (e.g. decoded from the wire) are copied."""
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def nanmean(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan


class Ensemble:
    """The members being trained (not those scoring: `inference_copies` makes those)."""

    def __init__(self, space: Space, config: RewardConfig) -> None:
        self.space = space
        self.config = cfg = config
        self.device = torch.device(cfg.device)
        self._chunk = cfg.cnn_chunk if architecture_for(space) == "cnn" else cfg.mlp_chunk
        self.members: list[nn.Module] = []
        self._optims: list[torch.optim.Optimizer] = []
        self._gens: list[torch.Generator] = []
        seeds = np.random.SeedSequence([cfg.seed, 0x5EED]).generate_state(2 * cfg.members)
        with torch.random.fork_rng(devices=[]):
            for m in range(cfg.members):
                torch.manual_seed(int(seeds[2 * m]))
                member = build_member(space, cfg).to(self.device).train()
                gen = torch.Generator(device=self.device)
                gen.manual_seed(int(seeds[2 * m + 1]))
                if hasattr(member, "set_generator"):
                    member.set_generator(gen)
                self.members.append(member)
                self._gens.append(gen)
                self._optims.append(torch.optim.Adam(member.parameters(), lr=cfg.lr))
        self.l2 = [float(cfg.l2_init)] * cfg.members
        self._rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xB00]))

    # ---- members ------------------------------------------------------------------------------

    def _fresh_member(self) -> nn.Module:
        """An uninitialised member on the device (built on 'meta': draws no random numbers)."""
        with torch.device("meta"):
            member = build_member(self.space, self.config)
        return member.to_empty(device=self.device)

    def inference_copies(self, states: Iterable[dict] | None = None) -> tuple[nn.Module, ...]:
        """Eval-mode copies of the members (or of the given state dicts), for scoring."""
        if states is None:
            states = [member.state_dict() for member in self.members]
        copies = []
        for state in states:
            member = self._fresh_member()
            member.load_state_dict(state)
            member.eval().requires_grad_(False)
            copies.append(member)
        return tuple(copies)

    def run_member(self, member: nn.Module, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        """Raw outputs [N] float32 of one member, in chunks of `mlp_chunk`/`cnn_chunk` transitions."""
        out = np.empty(len(obs), dtype=np.float32)
        for i in range(0, len(obs), self._chunk):
            o = as_tensor(obs[i:i + self._chunk]).to(self.device)
            a = as_tensor(act[i:i + self._chunk]).to(self.device)
            out[i:i + self._chunk] = member(o, a).float().cpu().numpy()
        return out

    # ---- a round ------------------------------------------------------------------------------

    def sgd(self, train: list[Comparison], segs: dict[str, Segment], steps: int,
            stop: threading.Event | None, interrupt: threading.Event | None = None) -> int:
        """Up to `steps` optimiser steps on every member; returns how many ran before `stop` or
        `interrupt` was set."""
        cfg = self.config
        boot = np.stack([r.boot for r in train])  # [n, M]
        cdfs = []
        for m in range(cfg.members):
            w = boot[:, m] if boot[:, m].sum() > 0 else np.ones(len(train))
            cdfs.append(np.cumsum(w) / w.sum())

        done = 0
        for _ in range(steps):
            if (stop is not None and stop.is_set()) or (interrupt is not None and interrupt.is_set()):
                break
            for m, member in enumerate(self.members):
                idx = np.minimum(np.searchsorted(cdfs[m], self._rng.random(cfg.batch_size), side="right"),
                                 len(train) - 1)
                batch = [train[i] for i in idx]
                delta = self._delta(member, batch, segs)
                target = torch.tensor([r.target for r in batch], dtype=torch.float32, device=self.device)
                loss = bt_loss(delta, target, cfg.random_answer_prob).mean()
                if self.l2[m] > 0:
                    loss = loss + self.l2[m] * l2_penalty(member)
                opt = self._optims[m]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            done += 1
        return done

    def measure(self, train: list[Comparison], val: list[Comparison], segs: dict[str, Segment]
                ) -> list[MemberFit]:
        """Each member's (loss, accuracy) on its training and held-out comparisons (eval mode);
        adapts its L2 weight to their ratio."""
        cfg = self.config
        members_stats = []
        oob = cfg.validation == "oob"
        for m, member in enumerate(self.members):
            mine = [r for r in train if r.boot[m] > 0] or train
            held_out = [r for r in train if r.boot[m] == 0] if oob else val
            tr = self._evaluate(member, self._subsample(mine), segs)
            va = self._evaluate(member, self._subsample(held_out), segs)
            if math.isfinite(va[0]) and math.isfinite(tr[0]) and tr[0] > 0:
                if va[0] > 1.5 * tr[0]:
                    self.l2[m] = min(self.l2[m] * cfg.l2_adapt, cfg.l2_max)
                elif va[0] < 1.1 * tr[0]:
                    self.l2[m] = max(self.l2[m] / cfg.l2_adapt, cfg.l2_min)
            members_stats.append((tr, va))
        return members_stats

    def fit_inputs(self, segs: dict[str, Segment]) -> None:
        """Standardise the members' inputs by the labelled segments' observation statistics
        (`RewardConfig.normalize_inputs`; MLP members only)."""
        if not self.config.normalize_inputs or not segs or not hasattr(self.members[0], "set_input_norm"):
            return
        obs = np.concatenate([s[0].reshape(len(s[0]), -1) for s in segs.values()]).astype(np.float64)
        mean, std = obs.mean(axis=0), obs.std(axis=0)
        std = np.where(std > 1e-6, std, 1.0)
        for member in self.members:
            member.set_input_norm(mean, std)

    def normalisation(self, pool: list[Segment]) -> tuple[np.ndarray, np.ndarray]:
        """Per-member mean and std of the raw output on the most recent labelled transitions."""
        m = self.config.members
        if not pool:
            return np.zeros(m), np.ones(m)
        obs = np.concatenate([p[0] for p in pool])[-self.config.norm_transitions:]
        act = np.concatenate([p[1] for p in pool])[-self.config.norm_transitions:]
        raw = np.empty((m, len(obs)), dtype=np.float32)
        with torch.inference_mode():
            for k, member in enumerate(self.members):
                member.eval()
                try:
                    raw[k] = self.run_member(member, obs, act)
                finally:
                    member.train()
        raw64 = raw.astype(np.float64)
        mean = raw64.mean(axis=1)
        std = raw64.std(axis=1)
        std = np.where(std > 1e-8, std, 1.0)
        return mean, std

    def _delta(self, member: nn.Module, batch: Sequence[Comparison], segs: dict[str, Segment]
               ) -> torch.Tensor:
        """Σ_t r̂(left) − Σ_t r̂(right) per comparison, for one member (gradients kept)."""
        parts = [segs[sid] for r in batch for sid in (r.left, r.right)]
        lengths = np.array([len(p[0]) for p in parts])
        obs = torch.from_numpy(np.concatenate([p[0] for p in parts])).to(self.device)
        act = torch.from_numpy(np.concatenate([p[1] for p in parts])).to(self.device)
        index = torch.from_numpy(np.repeat(np.arange(len(parts)), lengths)).to(self.device)
        out = member(obs, act)
        sums = torch.zeros(len(parts), dtype=out.dtype, device=self.device).index_add(0, index, out)
        return sums[0::2] - sums[1::2]

    def _subsample(self, records: list[Comparison]) -> list[Comparison]:
        n = self.config.eval_comparisons
        if len(records) <= n:
            return records
        return [records[i] for i in self._rng.choice(len(records), n, replace=False)]

    def _evaluate(self, member: nn.Module, records: list[Comparison], segs: dict[str, Segment]
                  ) -> tuple[float, float]:
        """(mean loss, accuracy on non-EQUAL labels) in eval mode; NaN when there is nothing."""
        if not records:
            return math.nan, math.nan
        member.eval()
        losses, correct, decided = [], 0, 0
        try:
            with torch.inference_mode():
                for i in range(0, len(records), EVAL_BATCH):
                    batch = records[i:i + EVAL_BATCH]
                    delta = self._delta(member, batch, segs)
                    target = torch.tensor([r.target for r in batch], dtype=torch.float32, device=self.device)
                    losses.append(bt_loss(delta, target, self.config.random_answer_prob).cpu().numpy())
                    d = delta.cpu().numpy()
                    t = target.cpu().numpy()
                    sure = t != 0.5
                    decided += int(sure.sum())
                    correct += int(((d > 0) == (t > 0.5))[sure].sum())
        finally:
            member.train()
        accuracy = correct / decided if decided else math.nan
        return float(np.concatenate(losses).mean()), accuracy

    # ---- checkpoints (`checkpoint.py` holds the file format) ----------------------------------

    def state(self, clone: Any) -> dict[str, Any]:
        """members, optimizers, generators, l2, rng of a checkpoint (`clone`: `checkpoint.clone_tree`)."""
        return {
            "members": [clone(m.state_dict()) for m in self.members],
            "optimizers": [clone(o.state_dict()) for o in self._optims],
            "generators": [g.get_state() for g in self._gens],
            "l2": list(self.l2),
            "rng": self._rng.bit_generator.state,
        }

    def restore(self, state: dict[str, Any]) -> None:
        for member, opt, gen, ms, os_, gs in zip(self.members, self._optims, self._gens,
                                                  state["members"], state["optimizers"],
                                                  state["generators"]):
            member.load_state_dict(ms)
            opt.load_state_dict(os_)
            gen.set_state(gs)
        self.l2 = [float(x) for x in state["l2"]]
        self._rng.bit_generator.state = state["rng"]
