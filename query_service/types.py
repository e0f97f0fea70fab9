"""Plain data types of the query service, shared by the core, the server and the client.

`query_service.core.QueryService` (in-process) and `query_service.client.QueryClient` (over gRPC)
offer the same methods with these types; the core's take the caller's token first, the client holds
it. `QueryBackend` is that interface as a caller sees it, met by `QueryClient` and by
`query_service.local.LocalClient` (the core with a token bound), so the contract tests run one set of
cases against both (`tests/query_service/test_contract.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from rlhp.types import Preference


@dataclass(frozen=True)
class SegmentRecord:
    """A candidate segment with everything needed to label it and show it later."""

    id: str
    experiment: str
    env_id: str
    observations: np.ndarray  # [T, *obs_shape] what the reward model sees
    actions: np.ndarray  # [T, *act_shape]
    true_rewards: np.ndarray  # [T] float32: synthetic teacher and evaluation only
    frames: np.ndarray | None = None  # [T, H, W, 3] uint8 RGB (Atari)
    qpos: np.ndarray | None = None  # [T, nq] float64 (MuJoCo)
    qvel: np.ndarray | None = None  # [T, nv] float64
    env_step: int = 0
    fps: float = 30.0
    random_policy: bool = False


@dataclass(frozen=True)
class AddSegmentsResult:
    accepted: int
    duplicates: int
    dropped: int
    stored: int


@dataclass(frozen=True)
class Progress:
    labels: int
    labels_wanted: int
    queries_pending: int
    label_budget: int


@dataclass(frozen=True)
class QueryData:
    id: str
    experiment: str
    env_id: str
    left_id: str
    right_id: str
    lease_expires: float  # unix seconds
    model_version: int
    fps: float
    length: int
    left_rewards: np.ndarray | None = None  # true rewards: teacher tokens only
    right_rewards: np.ndarray | None = None
    goal: str = ""  # the experiment's task in words (what "closer to the goal" means)


@dataclass(frozen=True)
class Lease:
    available: bool
    query: QueryData | None
    waiting_for: str  # when nothing is available: what the service waits for, in words
    pending: int
    answered: int


@dataclass(frozen=True)
class SubmitResult:
    status: str  # "ACCEPTED", "DUPLICATE" or "ALREADY_ANSWERED"
    message: str
    answered: int


@dataclass(frozen=True)
class ExperimentStats:
    experiment: str
    env_id: str
    segments: int
    queries_pending: int
    queries_leased: int
    labels: int
    labels_wanted: int
    label_budget: int
    env_steps: int
    labels_forwarded: int
    goal: str = ""


@dataclass(frozen=True)
class LabelerStats:
    name: str
    answered: int  # labels given (quality checks are not counted)
    mean_seconds: float
    median_seconds: float = 0.0
    gold_answered: int = 0  # gold queries answered, of which `gold_correct` right
    gold_correct: int = 0
    agreement_checks: int = 0  # repeats of a pair between this labeler and another, `agreed` alike
    agreed: int = 0
    excluded: bool = False  # labels withheld from the reward model (`quality.py`)


@dataclass(frozen=True)
class QueryStats:
    experiments: tuple[ExperimentStats, ...] = field(default_factory=tuple)
    labelers: tuple[LabelerStats, ...] = field(default_factory=tuple)


class QueryBackend(Protocol):
    """The query service as one token holder (a producer, a labeler or a teacher) sees it."""

    def add_segments(self, records: Sequence[SegmentRecord]) -> AddSegmentsResult:
        """Store candidate segments (producers); all or nothing."""

    def report_progress(self, experiment: str, env_steps: int, reward_address: str = "", env_id: str = "",
                        label_budget: int = 0, goal: str = "") -> Progress:
        """Env steps of `experiment` (producers); returns where its label schedule stands."""

    def lease(self, experiments: Sequence[str] = (), lease_seconds: float = 0) -> Lease:
        """The next query to label, or what the service waits for (labelers)."""

    def get_clip(self, query_id: str, side: Preference | int | str, fmt: str = "mp4") -> tuple[str, bytes]:
        """(mime type, video bytes) of one side of a leased query."""

    def submit(self, query_id: str, answer: Preference | int | str, seconds: float = 0.0) -> SubmitResult:
        """A label, durable before this returns; idempotent per query."""

    def release(self, query_id: str) -> None:
        """Give a leased query back unanswered."""

    def stats(self) -> QueryStats: ...


__all__ = ["QueryBackend", "SegmentRecord", "AddSegmentsResult", "Progress", "QueryData", "Lease", "SubmitResult",
           "ExperimentStats", "LabelerStats", "QueryStats", "Preference", "Sequence"]
