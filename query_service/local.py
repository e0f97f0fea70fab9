"""`LocalClient`: the query service core in this process, seen as one token holder — the same
interface (`query_service.types.QueryBackend`) as `query_service.client.QueryClient` over gRPC."""

from __future__ import annotations

from typing import Sequence

from rlhp.types import Preference

from .core import QueryService
from .types import AddSegmentsResult, Lease, Progress, QueryStats, SegmentRecord, SubmitResult


class LocalClient:
    """`core`'s methods with `token` bound (no encoding, no network)."""

    def __init__(self, core: QueryService, token: str) -> None:
        self.core = core
        self.token = token

    def add_segments(self, records: Sequence[SegmentRecord]) -> AddSegmentsResult:
        return self.core.add_segments(self.token, records)

    def report_progress(self, experiment: str, env_steps: int, reward_address: str = "", env_id: str = "",
                        label_budget: int = 0, goal: str = "") -> Progress:
        return self.core.report_progress(self.token, experiment, env_steps, reward_address=reward_address,
                                         env_id=env_id, label_budget=label_budget, goal=goal)

    def lease(self, experiments: Sequence[str] = (), lease_seconds: float = 0) -> Lease:
        return self.core.lease(self.token, experiments, lease_seconds)

    def get_clip(self, query_id: str, side: Preference | int | str, fmt: str = "mp4") -> tuple[str, bytes]:
        return self.core.get_clip(self.token, query_id, side, fmt)

    def submit(self, query_id: str, answer: Preference | int | str, seconds: float = 0.0) -> SubmitResult:
        return self.core.submit(self.token, query_id, answer, seconds)

    def release(self, query_id: str) -> None:
        self.core.release(self.token, query_id)

    def stats(self) -> QueryStats:
        return self.core.stats(self.token)

    def close(self) -> None:
        """Nothing to close (the core belongs to its owner)."""

    def __enter__(self) -> "LocalClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
