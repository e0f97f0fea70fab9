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

from rlhp import rpc
from rlhp.v1 import query_pb2, query_pb2_grpc

from . import codec
from .core import QueryService

log = logging.getLogger("rlhp.query.server")


class QueryServicer(query_pb2_grpc.QueryServiceServicer):
    def __init__(self, core: QueryService) -> None:
        self.core = core

    @rpc.handle_errors
    def AddSegments(self, request: Any, context: grpc.ServicerContext) -> Any:
        token = rpc.token_from(context)
        self.core.authenticate(token, ("producer", "admin"))  # fail fast before decoding a large batch
        records = [codec.record_from_proto(m, i) for i, m in enumerate(request.segments)]
        r = self.core.add_segments(token, records)
        return query_pb2.AddSegmentsResponse(accepted=r.accepted, duplicates=r.duplicates, dropped=r.dropped,
                                             stored=r.stored)

    @rpc.handle_errors
    def ReportProgress(self, request: Any, context: grpc.ServicerContext) -> Any:
        p = self.core.report_progress(rpc.token_from(context), request.experiment, request.env_steps,
                                      reward_address=request.reward_address, env_id=request.env_id,
                                      label_budget=request.label_budget, goal=request.goal)
        return codec.progress_to_proto(p)

    @rpc.handle_errors
    def LeaseQuery(self, request: Any, context: grpc.ServicerContext) -> Any:
        lease = self.core.lease(rpc.token_from(context), tuple(request.experiments), request.lease_seconds)
        return codec.lease_to_proto(lease)

    @rpc.handle_errors
    def GetClip(self, request: Any, context: grpc.ServicerContext) -> Any:
        side = codec.preference_from_wire(request.side, "side")
        mime, data = self.core.get_clip(rpc.token_from(context), request.query_id, side, request.format or "mp4")
        return query_pb2.GetClipResponse(mime_type=mime, data=data)

    @rpc.handle_errors
    def SubmitLabel(self, request: Any, context: grpc.ServicerContext) -> Any:
        answer = codec.preference_from_wire(request.answer, "answer")
        r = self.core.submit(rpc.token_from(context), request.query_id, answer, request.seconds)
        return codec.submit_result_to_proto(r)

    @rpc.handle_errors
    def ReleaseQuery(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.core.release(rpc.token_from(context), request.query_id)
        return query_pb2.ReleaseQueryResponse()

    @rpc.handle_errors
    def Stats(self, request: Any, context: grpc.ServicerContext) -> Any:
        return codec.stats_to_proto(self.core.stats(rpc.token_from(context)))


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
    rpc.add_servicer(server, QueryServicer(core), query_pb2_grpc.add_QueryServiceServicer_to_server)
    creds = None
    if tls is not None:
        creds = (Path(tls[0]).read_bytes(), Path(tls[1]).read_bytes())
    bound = rpc.bind(server, host, port, creds)
    server.start()
    log.info("query service listening on %s:%d%s", host, bound, " (TLS)" if creds else "")
    return QueryServer(server, bound, host)
