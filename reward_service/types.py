"""Plain data types of the reward service, shared by the core, the server and the client.

The core (`reward_service.core.RewardModel`) and the client (`reward_service.client.RewardClient`)
offer the same methods with these types, so the same contract tests run against both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from rlhp.types import Preference, Space


@dataclass(frozen=True)
class SegmentData:
    """T consecutive transitions as the reward model sees them."""

    id: str
    observations: np.ndarray  # [T, *obs_shape]
    actions: np.ndarray  # [T, *act_shape] ([T] int64 for discrete)


@dataclass(frozen=True)
class ComparisonData:
    """A labelled query: which of two segments is better. `id` is the idempotency key.

    `answer` is the label's value, as the query service calls it (the v1 proto field is `label`)."""

    id: str
    left_id: str
    right_id: str
    answer: Preference


@dataclass(frozen=True)
class AddResult:
    added: int
    duplicates: int
    ignored: int
    total: int


@dataclass(frozen=True)
class MemberStats:
    norm_mean: float
    norm_std: float
    train_loss: float
    val_loss: float
    l2: float


@dataclass(frozen=True)
class RewardStats:
    model_version: int
    comparisons: int
    comparisons_seen: int
    segments: int
    train_loss: float
    val_loss: float
    train_accuracy: float
    val_accuracy: float
    train_steps: int
    members: tuple[MemberStats, ...] = field(default_factory=tuple)
    space: Space | None = None
    architecture: str = ""
    target_std: float = 1.0


class RewardBackend(Protocol):
    """What the rest of the system needs from a reward model: the core or a client to a server."""

    def score(self, observations: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, int]:
        """Normalised ensemble-mean reward per transition ([N] float32) and the model version used."""

    def disagreement(self, segments: Sequence[SegmentData], pairs: Sequence[tuple[str, str]]
                     ) -> tuple[np.ndarray, np.ndarray, int]:
        """Per pair: (std over members of P[left ≻ right], mean P[left ≻ right], model version)."""

    def add_comparisons(self, segments: Sequence[SegmentData],
                        comparisons: Sequence[ComparisonData]) -> AddResult: ...

    def stats(self) -> RewardStats: ...

    def checkpoint(self, path: str | None = None) -> tuple[str, int]:
        """Atomically write everything; returns (path, model version)."""

    def remove_comparisons(self, ids: Sequence[str]) -> int:
        """Take comparisons out of the training set (a labeler was excluded); returns how many."""

    def snapshot(self, have_version: int = -1) -> tuple[int, bytes | None]:
        """(version, the published model as bytes), or (version, None) if `have_version` is current."""
