"""gRPC server of the reward service: decode with `rlhp.wire`, call the core, encode.

Nothing here knows how the ensemble works. Every method is wrapped with `rpc.handle_errors`, so
the core's `InvalidRequest` / `NotFound` / `FailedPrecondition` become INVALID_ARGUMENT /
NOT_FOUND / FAILED_PRECONDITION with the core's message, anything unexpected becomes INTERNAL, and
a bad request never takes the service down.

    server = serve(RewardModel(space))        # 127.0.0.1, a free port
    client = RewardClient(server.address)
    ...
    server.stop()
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable, Sequence

import grpc
import numpy as np

from rlhp import rpc, wire
from rlhp.v1 import common_pb2, reward_pb2, reward_pb2_grpc
from reward_service.codec import decode_comparison, decode_segment, decode_tensor, stats_to_proto
from reward_service.types import RewardBackend, SegmentData

log = logging.getLogger("rlhp.reward_service")

# The size of one request is bounded by gRPC's message limit (rlhp.wire.MAX_MESSAGE_BYTES) and the
# number of transitions by the core (RewardConfig.max_score_batch); `max_batch` adds a per-request
# limit of the server's own (None: none). RewardClient streams large batches in chunks.


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    """`rlhp.v1.RewardService` over any `RewardBackend` (normally `reward_service.core.RewardModel`)."""

    def __init__(self, model: RewardBackend, max_batch: int | None = None) -> None:
        self.model = model
        self.max_batch = max_batch

    # -- scoring ---------------------------------------------------------------------------

    def _score(self, request: reward_pb2.ScoreRequest, what: str = "batch") -> reward_pb2.ScoreResponse:
        obs = decode_tensor(request, "observations", f"{what}: observations")
        act = decode_tensor(request, "actions", f"{what}: actions")
        n = obs.shape[0] if obs.ndim else 0
        if self.max_batch is not None and n > self.max_batch:
            raise wire.InvalidRequest(
                f"{what} has {n} transitions, more than the {self.max_batch} one request may carry; "
                "split it and send the chunks over ScoreStream (RewardClient.score does this)")
        try:
            rewards, version = self.model.score(obs, act)
        except wire.InvalidRequest as e:
            if what != "batch":
                raise wire.InvalidRequest(f"{what}: {e}") from None
            raise
        response = reward_pb2.ScoreResponse(model_version=int(version))
        wire.to_tensor(np.asarray(rewards, dtype=np.float32), response.rewards)
        return response

    @rpc.handle_errors
    def Score(self, request, context):
        return self._score(request)

    @rpc.handle_errors
    def ScoreStream(self, request_iterator, context):
        for i, request in enumerate(request_iterator):
            yield self._score(request, what=f"chunk {i}")

    # -- comparisons -----------------------------------------------------------------------

    @staticmethod
    def _segments(items: Sequence[common_pb2.Segment]) -> list[SegmentData]:
        return [decode_segment(s, i) for i, s in enumerate(items)]

    @rpc.handle_errors
    def Disagreement(self, request, context):
        segments = self._segments(request.segments)
        pairs = [(p.left_id, p.right_id) for p in request.pairs]
        disagreement, probability, version = self.model.disagreement(segments, pairs)
        return reward_pb2.DisagreementResponse(
            disagreement=np.asarray(disagreement, dtype=np.float32).tolist(),
            probability=np.asarray(probability, dtype=np.float32).tolist(),
            model_version=int(version),
        )

    @rpc.handle_errors
    def AddComparisons(self, request, context):
        segments = self._segments(request.segments)
        comparisons = [decode_comparison(c) for c in request.comparisons]
        r = self.model.add_comparisons(segments, comparisons)
        return reward_pb2.AddComparisonsResponse(added=r.added, duplicates=r.duplicates,
                                                 ignored=r.ignored, total=r.total)

    # -- state -----------------------------------------------------------------------------

    @rpc.handle_errors
    def Stats(self, request, context):
        return stats_to_proto(self.model.stats())

    @rpc.handle_errors
    def Checkpoint(self, request, context):
        name = request.path
        if name and (os.path.basename(name) != name or name in (".", "..") or "\x00" in name or len(name) > 200):
            raise wire.InvalidRequest(f"Checkpoint: {name[:200]!r} is not a file name; over the service a "
                                      "checkpoint goes into the service's checkpoint directory, under the "
                                      "file name given (or reward_model.pt)")
        path, version = self.model.checkpoint(name or None)
        return reward_pb2.CheckpointResponse(path=str(path), model_version=int(version))


    @rpc.handle_errors
    def RemoveComparisons(self, request, context):
        ids = list(request.ids)
        if any(len(i) > 1000 for i in ids):
            raise wire.InvalidRequest("RemoveComparisons: an id is longer than 1,000 characters")
        removed = self.model.remove_comparisons(ids)
        return reward_pb2.RemoveComparisonsResponse(removed=int(removed), total=int(self.model.stats().comparisons))

    @rpc.handle_errors
    def Snapshot(self, request, context):
        version, data = self.model.snapshot(int(request.have_version))
        return reward_pb2.SnapshotResponse(model_version=int(version), data=data or b"")

class RewardServer:
    """A started gRPC server around one model; `address` is what clients connect to."""

    def __init__(self, server: grpc.Server, servicer: RewardServicer, host: str, port: int) -> None:
        self.server = server
        self.servicer = servicer
        self.host = host
        self.port = port

    @property
    def model(self) -> RewardBackend:
        return self.servicer.model

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop accepting calls; calls in flight get `grace` seconds to finish."""
        self.server.stop(grace).wait()

    def wait(self, timeout: float | None = None) -> bool:
        return self.server.wait_for_termination(timeout)

    def __enter__(self) -> "RewardServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RewardServer({self.address})"


def inherit_torch_threads() -> Callable[[], None] | None:
    """An initializer giving new threads this thread's torch CPU thread count (None without torch).

    torch.set_num_threads() only reaches the thread that calls it as far as OpenMP / MKL are
    concerned: BLAS calls in a fresh thread use every core. In gRPC worker threads on a busy machine
    that made a small MLP forward ~10x slower than in the main thread (see docs/benchmarks.md).
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    n = torch.get_num_threads()
    return lambda: torch.set_num_threads(n)


def serve(model: RewardBackend, host: str = "127.0.0.1", port: int = 0, max_workers: int = 8,
          max_batch: int | None = None, tls: tuple[bytes, bytes] | None = None,
          token: str | None = None) -> RewardServer:
    """Start serving `model` in this process (background threads) and return at once.

    Binds loopback by default; `port=0` picks a free port (see `.port` / `.address`). Worker
    threads use the torch thread count of the calling thread (`inherit_torch_threads`). `tls` is
    (certificate, key) PEM; with `token` every call must carry it (UNAUTHENTICATED otherwise).
    """
    rpc.tune_malloc_for_large_messages()
    server = rpc.make_server(max_workers=max_workers, initializer=inherit_torch_threads(), token=token,
                             service="the reward service")
    servicer = RewardServicer(model, max_batch=max_batch)
    rpc.add_servicer(server, servicer, reward_pb2_grpc.add_RewardServiceServicer_to_server)
    bound = rpc.bind(server, host, port, tls=tls)
    server.start()
    log.info("reward service listening on %s:%d", host, bound)
    return RewardServer(server, servicer, host, bound)

