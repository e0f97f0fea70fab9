"""`QueryClient`: the query service over gRPC, with the core's methods minus the token argument.

    client = QueryClient("127.0.0.1:50052", token)
    lease = client.lease()
    if lease.available:
        client.submit(lease.query.id, Preference.LEFT, seconds=3.0)

Status codes come back as the exceptions of `rlhp.wire` (InvalidRequest, NotFound,
FailedPrecondition, Unauthenticated); other failures (UNAVAILABLE after retries, INTERNAL, deadline)
stay `grpc.RpcError`. The channel is opened on first use and dropped when pickled, so a client can be
handed to another process before it is used there.
"""

from __future__ import annotations

from typing import Any, Sequence

import grpc
import numpy as np

from rlhp import rpc, wire
from rlhp.v1 import query_pb2, query_pb2_grpc
from rlhp.wire import Preference

from .server import record_to_proto
from .types import (AddSegmentsResult, ExperimentStats, LabelerStats, Lease, Progress, QueryData,
                    QueryStats, SegmentRecord, SubmitResult)

_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT: wire.InvalidRequest,
    grpc.StatusCode.NOT_FOUND: wire.NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: wire.FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: wire.Unauthenticated,
}
SERVICE = "rlhp.v1.QueryService"
# AddSegments batches are split so that one request stays well under the message limit.
_CHUNK_BYTES = wire.MAX_MESSAGE_BYTES // 4


def _call(fn: Any, request: Any, timeout: float, metadata: Any) -> Any:
    try:
        return fn(request, timeout=timeout, metadata=metadata)
    except grpc.RpcError as e:
        kind = _ERRORS.get(e.code()) if hasattr(e, "code") else None
        if kind is not None:
            raise kind(e.details()) from None
        raise


class QueryClient:
    def __init__(self, address: str, token: str, timeout: float = 10.0, root_cert: bytes | None = None) -> None:
        self.address = address
        self.token = token
        self.timeout = timeout
        self.root_cert = root_cert
        self._channel: grpc.Channel | None = None
        self._stub: query_pb2_grpc.QueryServiceStub | None = None

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def stub(self) -> query_pb2_grpc.QueryServiceStub:
        if self._stub is None:
            self._channel = rpc.make_channel(self.address, SERVICE, self.root_cert)
            self._stub = query_pb2_grpc.QueryServiceStub(self._channel)
        return self._stub

    def _rpc(self, name: str, request: Any, timeout: float | None = None) -> Any:
        return _call(getattr(self.stub, name), request, timeout or self.timeout, rpc.bearer(self.token))

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = self._stub = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_channel"] = state["_stub"] = None
        return state

    def __enter__(self) -> "QueryClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- producers -----------------------------------------------------------------------------
    def add_segments(self, records: Sequence[SegmentRecord]) -> AddSegmentsResult:
        """Send segments; batches over ~16 MiB go in several requests (each one all-or-nothing)."""
        chunks: list[list[query_pb2.SegmentRecord]] = [[]]
        size = 0
        for r in records:
            m = record_to_proto(r)
            n = m.ByteSize()
            if chunks[-1] and size + n > _CHUNK_BYTES:
                chunks.append([])
                size = 0
            chunks[-1].append(m)
            size += n
        acc = dup = drop = stored = 0
        for chunk in chunks:
            res = self._rpc("AddSegments", query_pb2.AddSegmentsRequest(segments=chunk), max(self.timeout, 60.0))
            acc, dup, drop, stored = acc + res.accepted, dup + res.duplicates, drop + res.dropped, res.stored
        return AddSegmentsResult(acc, dup, drop, stored)

    def report_progress(self, experiment: str, env_steps: int, reward_address: str = "", env_id: str = "",
                        label_budget: int = 0) -> Progress:
        r = self._rpc("ReportProgress", query_pb2.ReportProgressRequest(
            experiment=experiment, env_steps=int(env_steps), reward_address=reward_address or "",
            env_id=env_id or "", label_budget=int(label_budget or 0)))
        return Progress(r.labels, r.labels_wanted, r.queries_pending, r.label_budget)

    # -- labelers ------------------------------------------------------------------------------
    def lease(self, experiments: Sequence[str] = (), lease_seconds: float = 0) -> Lease:
        if isinstance(experiments, str):
            experiments = [experiments] if experiments else []
        r = self._rpc("LeaseQuery", query_pb2.LeaseQueryRequest(experiments=list(experiments),
                                                                lease_seconds=float(lease_seconds)))
        q = None
        if r.available:
            m = r.query
            teach = wire.has_tensor(m.teacher.left_rewards)
            q = QueryData(id=m.id, experiment=m.experiment, env_id=m.env_id, left_id=m.left_id, right_id=m.right_id,
                          lease_expires=m.lease_expires, model_version=m.model_version, fps=m.fps, length=m.length,
                          left_rewards=wire.from_tensor(m.teacher.left_rewards) if teach else None,
                          right_rewards=wire.from_tensor(m.teacher.right_rewards) if teach else None)
        return Lease(r.available, q, r.waiting_for, r.pending, r.answered)

    def get_clip(self, query_id: str, side: Preference | int | str, fmt: str = "mp4") -> tuple[str, bytes]:
        r = self._rpc("GetClip", query_pb2.GetClipRequest(query_id=query_id, side=_pref(side), format=fmt),
                      max(self.timeout, 60.0))
        return r.mime_type, r.data

    def submit(self, query_id: str, answer: Preference | int | str, seconds: float = 0.0) -> SubmitResult:
        r = self._rpc("SubmitLabel", query_pb2.SubmitLabelRequest(query_id=query_id, answer=_pref(answer),
                                                                  seconds=float(seconds)))
        return SubmitResult(query_pb2.SubmitStatus.Name(r.status), r.message, r.answered)

    def release(self, query_id: str) -> None:
        self._rpc("ReleaseQuery", query_pb2.ReleaseQueryRequest(query_id=query_id))

    def stats(self) -> QueryStats:
        r = self._rpc("Stats", query_pb2.QueryStatsRequest())
        return QueryStats(
            tuple(ExperimentStats(e.experiment, e.env_id, e.segments, e.queries_pending, e.queries_leased, e.labels,
                                  e.labels_wanted, e.label_budget, e.env_steps, e.labels_forwarded)
                  for e in r.experiments),
            tuple(LabelerStats(x.name, x.answered, float(np.float32(x.mean_seconds))) for x in r.labelers))


def _pref(value: Preference | int | str) -> int:
    """Wire value of an answer; 0 (unset) is passed through so the server can refuse it."""
    if isinstance(value, str):
        return int(Preference.parse(value)) if value and value != "PREFERENCE_UNSPECIFIED" else 0
    return int(value)
