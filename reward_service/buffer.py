"""The comparison buffer: labelled comparisons, the segments they show, and what was seen.

A comparison is a label as the reward service holds it (`docs/architecture.md`, vocabulary): the
query's two segments, the answer, its Bradley–Terry target, whether it is held out for validation,
and its bootstrap weights. The buffer keeps the newest `max_comparisons` of them, each segment once
(reference-counted, dropped with its last comparison), the ids of the newest `seen_ids_capacity`
comparisons (a comparison sent again counts as a duplicate, also after eviction) and the most recent
`norm_transitions` labelled transitions (the pool the normalisation is measured on).

Bootstrap: each comparison carries a Poisson(1) weight per member (the "online bootstrap"), drawn
from a stable hash of its id, so a member's bootstrap sample stays fixed as the buffer slides. With
`validation="split"` a stable 1/e of the ids is held out (the paper's shared split).

Not locked itself: `RewardModel` validates under its writer lock (`prepare`) and commits and reads
under its state lock.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from rlhp.types import InvalidRequest, Preference

from .config import RewardConfig
from .intake import Segment
from .types import ComparisonData


def unit_hash(text: str) -> float:
    """A stable (process- and platform-independent) uniform number in [0, 1) from a string."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def poisson1(u: float) -> int:
    """Inverse-CDF draw from Poisson(1) for a uniform `u`."""
    k, p = 0, math.exp(-1.0)
    cdf = p
    while u > cdf and k < 20:
        k += 1
        p /= k
        cdf += p
    return k


@dataclass
class Comparison:
    id: str
    left: str
    right: str
    answer: int  # a Preference value
    target: float
    val: bool
    boot: np.ndarray  # [members] Poisson(1) bootstrap weights


@dataclass
class Prepared:
    """A validated `add_comparisons` request, not yet committed."""

    new: list[Comparison]
    segments: dict[str, Segment]  # segments the new comparisons bring that the buffer lacks
    duplicates: int
    ignored: int


class ComparisonBuffer:
    def __init__(self, config: RewardConfig) -> None:
        self.config = config
        self.segments: dict[str, Segment] = {}
        self._refs: dict[str, int] = {}
        self.comparisons: list[Comparison] = []
        self.n_train = 0  # comparisons not held out for validation
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.pool: deque[Segment] = deque()
        self._pool_size = 0
        self.comparisons_seen = 0

    def prepare(self, inline: dict[str, Segment], comparisons: Sequence[ComparisonData]) -> Prepared:
        """Validate `comparisons` (their segments inline or stored) against the buffer; changes nothing.

        A comparison id seen before (or earlier in the batch) is a duplicate; INCOMPARABLE answers
        are ignored."""
        cfg = self.config
        new: list[Comparison] = []
        new_segments: dict[str, Segment] = {}
        batch_ids: set[str] = set()
        duplicates = ignored = 0
        for i, c in enumerate(comparisons):
            cid, left, right = getattr(c, "id", None), getattr(c, "left_id", None), getattr(c, "right_id", None)
            for name, value in (("id", cid), ("left_id", left), ("right_id", right)):
                if not isinstance(value, str) or not value:
                    raise InvalidRequest(f"comparison {i}: {name} is missing or not a string")
            raw = getattr(c, "answer", None)
            answer = raw if isinstance(raw, Preference) else Preference.parse(raw)
            if cid in self.seen or cid in batch_ids:
                duplicates += 1
                continue
            if answer.target is None:  # INCOMPARABLE
                ignored += 1
                continue
            segs = []
            for sid in (left, right):
                seg = inline.get(sid)
                if seg is not None:
                    if sid not in self.segments:
                        new_segments[sid] = seg
                else:
                    seg = self.segments.get(sid)
                if seg is None:
                    raise InvalidRequest(
                        f"comparison '{cid}': unknown segment '{sid}' (send it in segments)")
                segs.append(seg)
            if len(segs[0][0]) != len(segs[1][0]):
                raise InvalidRequest(
                    f"comparison '{cid}': segments '{left}' and '{right}' have different lengths "
                    f"({len(segs[0][0])} vs {len(segs[1][0])})")
            batch_ids.add(cid)
            boot = np.array([poisson1(unit_hash(f"boot/{cfg.seed}/{m}/{cid}"))
                             for m in range(cfg.members)], dtype=np.float64)
            new.append(Comparison(cid, left, right, int(answer), float(answer.target),
                                  cfg.validation == "split" and unit_hash(f"val/{cid}") < cfg.val_fraction,
                                  boot))
        return Prepared(new, new_segments, duplicates, ignored)

    def commit(self, prepared: Prepared) -> None:
        """Add what `prepare` validated, then evict beyond the bounds. Cannot fail on request data."""
        cfg = self.config
        new_segments = prepared.segments
        for rec in prepared.new:
            for sid in (rec.left, rec.right):
                if sid not in self.segments:
                    self.segments[sid] = new_segments[sid]
                    self._refs[sid] = 0
                    self._pool_add(new_segments[sid])
                self._refs[sid] += 1
            self.comparisons.append(rec)
            self.n_train += not rec.val
            self.seen[rec.id] = None
        while len(self.seen) > cfg.seen_ids_capacity:
            self.seen.popitem(last=False)
        excess = len(self.comparisons) - cfg.max_comparisons
        if excess > 0:
            for rec in self.comparisons[:excess]:
                self.n_train -= not rec.val
                for sid in (rec.left, rec.right):
                    self._refs[sid] -= 1
                    if self._refs[sid] == 0:
                        del self._refs[sid], self.segments[sid]
            del self.comparisons[:excess]
        self.comparisons_seen += len(prepared.new)

    def remove(self, ids: Sequence[str]) -> int:
        """Take the comparisons with these ids out (and forget their ids, so they may come back);
        segments no comparison uses any more go too. Returns how many were removed."""
        drop = set(ids)
        keep, removed = [], 0
        for rec in self.comparisons:
            if rec.id not in drop:
                keep.append(rec)
                continue
            removed += 1
            self.n_train -= not rec.val
            for sid in (rec.left, rec.right):
                self._refs[sid] -= 1
                if self._refs[sid] == 0:
                    del self._refs[sid], self.segments[sid]
        self.comparisons = keep
        for cid in drop:
            self.seen.pop(cid, None)
        return removed

    def _pool_add(self, seg: Segment) -> None:
        self.pool.append(seg)
        self._pool_size += len(seg[0])
        while self.pool and self._pool_size - len(self.pool[0][0]) >= self.config.norm_transitions:
            self._pool_size -= len(self.pool.popleft()[0])

    def training_view(self) -> tuple[list[Comparison], dict[str, Segment], list[Segment]]:
        """(comparisons, their segments by id, normalisation pool): copies of the references, so
        a round trains on them while comparisons keep arriving."""
        records = list(self.comparisons)
        segs = {sid: self.segments[sid] for r in records for sid in (r.left, r.right)}
        return records, segs, list(self.pool)

    # ---- checkpoints (`checkpoint.py` holds the file format) ----------------------------------

    def state(self, t: Callable[[np.ndarray], torch.Tensor]) -> dict[str, Any]:
        """segments, comparisons, seen, pool of a checkpoint (arrays through `t`, one tensor each)."""
        # The answer's key stays "label" in the file (format version 1), so older checkpoints load.
        return {
            "segments": {sid: [t(o), t(a)] for sid, (o, a) in self.segments.items()},
            "comparisons": [{"id": r.id, "left": r.left, "right": r.right, "label": r.answer,
                             "target": r.target, "val": r.val, "boot": r.boot.tolist()}
                            for r in self.comparisons],
            "seen": list(self.seen),
            "pool": [[t(o), t(a)] for o, a in self.pool],
        }

    def restore(self, state: dict[str, Any], a: Callable[[torch.Tensor], np.ndarray]) -> None:
        self.segments = {sid: (a(o), a(act)) for sid, (o, act) in state["segments"].items()}
        self.comparisons = [
            Comparison(c["id"], c["left"], c["right"], int(c["label"]), float(c["target"]),
                       bool(c["val"]), np.asarray(c["boot"], dtype=np.float64))
            for c in state["comparisons"]]
        self._refs = {}
        for r in self.comparisons:
            for sid in (r.left, r.right):
                self._refs[sid] = self._refs.get(sid, 0) + 1
        self.n_train = sum(not r.val for r in self.comparisons)
        self.seen = OrderedDict((cid, None) for cid in state["seen"])
        self.pool = deque((a(o), a(act)) for o, act in state["pool"])
        self._pool_size = sum(len(p[0]) for p in self.pool)
        self.comparisons_seen = int(state["counters"]["comparisons_seen"])
