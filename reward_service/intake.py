"""Validation of the arrays a reward model is sent: transitions, inline segments, pairs.

Checked against the model's `Space` and the limits of its `RewardConfig`, and converted to what the
members take (uint8 or float32 observations; int64 actions for discrete spaces, float32 [N, A]
otherwise). Every refusal is `rlhp.types.InvalidRequest` naming the field and the bound.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rlhp.types import InvalidRequest, Space, check_finite, check_transitions

from .config import RewardConfig
from .types import SegmentData

Segment = tuple[np.ndarray, np.ndarray]  # (observations [T, *obs], actions [T] int64 | [T, A] f32)


class Intake:
    """The checks of one model's requests."""

    def __init__(self, space: Space, config: RewardConfig) -> None:
        self.space = space
        self.config = config
        self._obs_uint8 = np.dtype(space.obs_dtype) == np.uint8
        self._discrete = space.action_kind == "discrete"

    def batch(self, obs: np.ndarray, act: np.ndarray, what: str, copy: bool = False) -> Segment:
        """Validate transitions [N, ...] and convert them to what the members take."""
        n = obs.shape[0] if obs.ndim else 0
        if n > self.config.max_score_batch:
            raise InvalidRequest(
                f"{what}: {n} transitions is more than the limit of {self.config.max_score_batch}; "
                "split the batch (ScoreStream does this)")
        check_transitions(self.space, obs, act, what)
        if self._obs_uint8:
            if obs.dtype != np.uint8:
                raise InvalidRequest(
                    f"{what}: observations must be uint8 (pixel values) for this space, got {obs.dtype}")
            o = np.array(obs, copy=True) if copy else np.ascontiguousarray(obs)
        else:
            o = np.array(obs, dtype=np.float32, copy=True) if copy else np.ascontiguousarray(obs, dtype=np.float32)
            if obs.dtype != np.float32:
                check_finite(o, f"{what}: observations (as float32)")
        if self._discrete:
            a = np.array(act.reshape(n), dtype=np.int64, copy=True)
        else:
            a = np.array(act.reshape(n, -1), dtype=np.float32, copy=True)
            if act.dtype != np.float32:
                check_finite(a, f"{what}: actions (as float32)")
        return o, a

    def segments(self, segments: Sequence[SegmentData] | None, what: str, copy: bool) -> dict[str, Segment]:
        """Validate inline segments; `copy` when they will be stored (callers may reuse arrays)."""
        out: dict[str, Segment] = {}
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
            out[sid] = self.batch(obs, act, f"segment '{sid}'", copy=copy)
        return out

    def pairs(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """The (left_id, right_id) pairs of a disagreement request: some, within `max_pairs`."""
        pairs = list(pairs)
        if not pairs:
            raise InvalidRequest("disagreement: no pairs given")
        if len(pairs) > self.config.max_pairs:
            raise InvalidRequest(
                f"disagreement: {len(pairs)} pairs is more than the limit of {self.config.max_pairs}")
        return pairs

    @staticmethod
    def pair_ids(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
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
        return parsed
