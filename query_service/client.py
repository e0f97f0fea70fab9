"""`QueryClient`: the query service over gRPC, with the core's methods minus the token argument.

    client = QueryClient("127.0.0.1:50052", token)
    lease = client.lease()
    if lease.available:
        client.submit(lease.query.id, Preference.LEFT, seconds=3.0)

Errors come back as the core's exceptions (`rlhp.rpc.exception_for`): INVALID_ARGUMENT →
`wire.InvalidRequest`, NOT_FOUND → `wire.NotFound`, FAILED_PRECONDITION → `wire.FailedPrecondition`,
UNAUTHENTICATED → `wire.Unauthenticated`; UNAVAILABLE (after the channel's retries) →
`ConnectionError` naming the address; DEADLINE_EXCEEDED → `TimeoutError`; anything else →
`rlhp.rpc.ServiceError`. The channel is opened on first use and dropped when pickled, so a client
can be handed to another process before it is used there.

Messages are encoded in `query_service.codec`; this module loads neither the server nor the core.
"""

from __future__ import annotations

from typing import Any, Sequence

import grpc

from rlhp import rpc, wire
from rlhp.v1 import query_pb2, query_pb2_grpc
from rlhp.wire import Preference

from . import codec
from .codec import SERVICE
from .types import AddSegmentsResult, Lease, Progress, QueryStats, SegmentRecord, SubmitResult

# AddSegments batches are split so that one request stays well under the message limit.
_CHUNK_BYTES = wire.MAX_MESSAGE_BYTES // 4


CA_ENV = "RLHP_QUERY_CA"
"""Environment variable naming the CA certificate (PEM file) of a query service that serves TLS; read
by clients given no `root_cert` (so `rlhp train --query-address` and its env runners find it too)."""


def ca_from_env() -> bytes | None:
    """The PEM bytes of $RLHP_QUERY_CA, or None when it is not set."""
    import os

    path = os.environ.get(CA_ENV, "")
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConnectionError(f"cannot read ${CA_ENV} ({path}): {e.strerror}") from None


class QueryClient:
    """The query service's methods over gRPC. `root_cert`: the CA (PEM bytes) of a TLS service
    (None: $RLHP_QUERY_CA if set, else no TLS)."""

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
            root = self.root_cert if self.root_cert is not None else ca_from_env()
            self._channel = rpc.make_channel(self.address, SERVICE, root)
            self._stub = query_pb2_grpc.QueryServiceStub(self._channel)
        return self._stub

    def _rpc(self, name: str, request: Any, timeout: float | None = None) -> Any:
        return rpc.call(getattr(self.stub, name), request, timeout=timeout or self.timeout,
                        metadata=rpc.bearer(self.token), service=f"query service at {self.address}",
                        hint="Is it running (`rlhp query-service ...` or `rlhp train`) and is the address right?")

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
            m = codec.record_to_proto(r)
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
                        label_budget: int = 0, goal: str = "") -> Progress:
        r = self._rpc("ReportProgress", query_pb2.ReportProgressRequest(
            experiment=experiment, env_steps=int(env_steps), reward_address=reward_address or "",
            env_id=env_id or "", label_budget=int(label_budget or 0), goal=goal or ""))
        return codec.progress_from_proto(r)

    # -- labelers ------------------------------------------------------------------------------
    def lease(self, experiments: Sequence[str] = (), lease_seconds: float = 0) -> Lease:
        if isinstance(experiments, str):
            experiments = [experiments] if experiments else []
        r = self._rpc("LeaseQuery", query_pb2.LeaseQueryRequest(experiments=list(experiments),
                                                                lease_seconds=float(lease_seconds)))
        return codec.lease_from_proto(r)

    def get_clip(self, query_id: str, side: Preference | int | str, fmt: str = "mp4") -> tuple[str, bytes]:
        r = self._rpc("GetClip", query_pb2.GetClipRequest(query_id=query_id, side=codec.preference_to_wire(side), format=fmt),
                      max(self.timeout, 60.0))
        return r.mime_type, r.data

    def submit(self, query_id: str, answer: Preference | int | str, seconds: float = 0.0) -> SubmitResult:
        r = self._rpc("SubmitLabel", query_pb2.SubmitLabelRequest(query_id=query_id, answer=codec.preference_to_wire(answer),
                                                                  seconds=float(seconds)))
        return codec.submit_result_from_proto(r)

    def release(self, query_id: str) -> None:
        self._rpc("ReleaseQuery", query_pb2.ReleaseQueryRequest(query_id=query_id))

    def stats(self) -> QueryStats:
        return codec.stats_from_proto(self._rpc("Stats", query_pb2.QueryStatsRequest()))

