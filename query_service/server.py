"""gRPC face of the query service: decode, call the core, encode, map exceptions (nothing else).

    server = serve(QueryService(run_dir, config), host="127.0.0.1", port=0)
    print(server.address)   # "127.0.0.1:PORT"
    server.stop()
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from rlhp import rpc, wire
from rlhp.v1 import common_pb2, query_pb2, query_pb2_grpc
from rlhp.wire import InvalidRequest, Preference

from .core import QueryService
from .types import QueryData, SegmentRecord

log = logging.getLogger("rlhp.query.server")


def record_from_proto(m: query_pb2.SegmentRecord, i: int = 0) -> SegmentRecord:
    """Decode one SegmentRecord (shape/dtype/byte-count checks; the core checks the rest)."""
    where = f"segment {i}" + (f" ({m.segment.id!r})" if m.segment.id else "")
    if not m.HasField("segment"):
        raise InvalidRequest(f"{where}: the segment (id, observations, actions) is missing")

    def opt(t: common_pb2.Tensor, name: str) -> np.ndarray | None:
        return wire.from_tensor(t, f"{where}: {name}") if wire.has_tensor(t) else None

    return SegmentRecord(
        id=m.segment.id, experiment=m.experiment, env_id=m.env_id,
        observations=wire.from_tensor(m.segment.observations, f"{where}: observations"),
        actions=wire.from_tensor(m.segment.actions, f"{where}: actions"),
        true_rewards=wire.from_tensor(m.true_rewards, f"{where}: true_rewards"),
        frames=opt(m.frames, "frames"), qpos=opt(m.qpos, "qpos"), qvel=opt(m.qvel, "qvel"),
        env_step=int(m.env_step), fps=float(m.fps), random_policy=bool(m.random_policy))


def record_to_proto(r: SegmentRecord, out: query_pb2.SegmentRecord | None = None) -> query_pb2.SegmentRecord:
    m = out if out is not None else query_pb2.SegmentRecord()
    m.segment.id = r.id
    wire.to_tensor(r.observations, m.segment.observations)
    wire.to_tensor(r.actions, m.segment.actions)
    m.experiment = r.experiment
    m.env_id = r.env_id
    wire.to_tensor(np.asarray(r.true_rewards), m.true_rewards)
    for name in ("frames", "qpos", "qvel"):
        v = getattr(r, name)
        if v is not None and np.size(v) > 0:
            wire.to_tensor(v, getattr(m, name))
    m.env_step = int(r.env_step)
    m.fps = float(r.fps)
    m.random_policy = bool(r.random_policy)
    return m


def query_to_proto(q: QueryData) -> query_pb2.Query:
    m = query_pb2.Query(id=q.id, experiment=q.experiment, env_id=q.env_id, left_id=q.left_id,
                        right_id=q.right_id, lease_expires=q.lease_expires, model_version=q.model_version,
                        fps=q.fps, length=q.length)
    if q.left_rewards is not None:
        wire.to_tensor(np.asarray(q.left_rewards, np.float32), m.teacher.left_rewards)
        wire.to_tensor(np.asarray(q.right_rewards, np.float32), m.teacher.right_rewards)
    return m


def _preference(value: int, what: str) -> Preference:
    if value == 0:
        raise InvalidRequest(f"{what} is unset (PREFERENCE_UNSPECIFIED)")
    return Preference.parse(int(value))


class QueryServicer(query_pb2_grpc.QueryServiceServicer):
    def __init__(self, core: QueryService) -> None:
        self.core = core

    @rpc.handle_errors
    def AddSegments(self, request: Any, context: grpc.ServicerContext) -> Any:
        token = rpc.token_from(context)
        self.core.authenticate(token, ("producer", "admin"))  # fail fast before decoding a large batch
        records = [record_from_proto(m, i) for i, m in enumerate(request.segments)]
        r = self.core.add_segments(token, records)
        return query_pb2.AddSegmentsResponse(accepted=r.accepted, duplicates=r.duplicates, dropped=r.dropped,
                                             stored=r.stored)

    @rpc.handle_errors
    def ReportProgress(self, request: Any, context: grpc.ServicerContext) -> Any:
        p = self.core.report_progress(rpc.token_from(context), request.experiment, request.env_steps,
                                      reward_address=request.reward_address, env_id=request.env_id,
                                      label_budget=request.label_budget)
        return query_pb2.ReportProgressResponse(labels=p.labels, labels_wanted=p.labels_wanted,
                                                queries_pending=p.queries_pending, label_budget=p.label_budget)

    @rpc.handle_errors
    def LeaseQuery(self, request: Any, context: grpc.ServicerContext) -> Any:
        lease = self.core.lease(rpc.token_from(context), tuple(request.experiments), request.lease_seconds)
        m = query_pb2.LeaseQueryResponse(available=lease.available, waiting_for=lease.waiting_for,
                                         pending=lease.pending, answered=lease.answered)
        if lease.query is not None:
            m.query.CopyFrom(query_to_proto(lease.query))
        return m

    @rpc.handle_errors
    def GetClip(self, request: Any, context: grpc.ServicerContext) -> Any:
        side = _preference(request.side, "side")
        mime, data = self.core.get_clip(rpc.token_from(context), request.query_id, side, request.format or "mp4")
        return query_pb2.GetClipResponse(mime_type=mime, data=data)

    @rpc.handle_errors
    def SubmitLabel(self, request: Any, context: grpc.ServicerContext) -> Any:
        answer = _preference(request.answer, "answer")
        r = self.core.submit(rpc.token_from(context), request.query_id, answer, request.seconds)
        return query_pb2.SubmitLabelResponse(status=query_pb2.SubmitStatus.Value(r.status), message=r.message,
                                             answered=r.answered)

    @rpc.handle_errors
    def ReleaseQuery(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.core.release(rpc.token_from(context), request.query_id)
        return query_pb2.ReleaseQueryResponse()

    @rpc.handle_errors
    def Stats(self, request: Any, context: grpc.ServicerContext) -> Any:
        s = self.core.stats()
        m = query_pb2.QueryStatsResponse()
        for e in s.experiments:
            m.experiments.add(experiment=e.experiment, env_id=e.env_id, segments=e.segments,
                              queries_pending=e.queries_pending, queries_leased=e.queries_leased, labels=e.labels,
                              labels_wanted=e.labels_wanted, label_budget=e.label_budget, env_steps=e.env_steps,
                              labels_forwarded=e.labels_forwarded)
        for lab in s.labelers:
            m.labelers.add(name=lab.name, answered=lab.answered, mean_seconds=lab.mean_seconds)
        return m


@dataclass
class QueryServer:
    server: grpc.Server
    port: int
    host: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, grace: float | None = 1.0) -> None:
        self.server.stop(grace).wait()

    def wait(self) -> None:
        self.server.wait_for_termination()


def serve(core: QueryService, host: str = "127.0.0.1", port: int = 0,
          tls: tuple[str | Path, str | Path] | None = None, max_workers: int = 16) -> QueryServer:
    """Start a gRPC server for `core`; `tls` is (cert_path, key_path) PEM files."""
    server = rpc.make_server(max_workers=max_workers)
    query_pb2_grpc.add_QueryServiceServicer_to_server(QueryServicer(core), server)
    creds = None
    if tls is not None:
        creds = (Path(tls[0]).read_bytes(), Path(tls[1]).read_bytes())
    bound = rpc.bind(server, host, port, creds)
    server.start()
    log.info("query service listening on %s:%d%s", host, bound, " (TLS)" if creds else "")
    return QueryServer(server, bound, host)
