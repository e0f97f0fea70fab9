"""Client of the reward service, with the same interface as the core (`RewardBackend`).

    with RewardClient("127.0.0.1:50051") as reward:
        rewards, version = reward.score(observations, actions)

- Errors come back as the core's exceptions (`rlhp.rpc.exception_for`, shared with the query
  client): INVALID_ARGUMENT → `wire.InvalidRequest`, NOT_FOUND → `wire.NotFound`,
  FAILED_PRECONDITION → `wire.FailedPrecondition`; UNAVAILABLE (after the channel's retries) →
  `ConnectionError` naming the address; DEADLINE_EXCEEDED → `TimeoutError`; anything else →
  `RewardServiceError` (= `rlhp.rpc.ServiceError`).
- Messages are encoded in `reward_service.codec`; this module loads neither the server nor the core.
- A reward service with a shared token (`--token-file`) gets it with every call: `token=`, or the
  environment variable RLHP_REWARD_TOKEN; TLS with `root_cert=` (the CA's PEM).
- Every call has a deadline (`timeout` seconds; a streamed batch gets `timeout` per chunk).
- Large score batches are cut into chunks of at most `chunk_bytes` (or `chunk_transitions`) and sent
  over the ScoreStream RPC; the answers are concatenated in order. Small batches use unary Score.
- The channel is opened lazily, in the process that makes the first call, and re-opened after a
  fork; pickling drops it (so a client can be handed to a Ray actor or a subprocess).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable, Iterator, Sequence, TypeVar

import grpc
import numpy as np

from rlhp import rpc, wire
from rlhp.v1 import reward_pb2, reward_pb2_grpc
from reward_service.codec import SERVICE_NAME, encode_comparison, encode_segment, stats_from_proto
from reward_service.types import AddResult, ComparisonData, RewardStats, SegmentData

log = logging.getLogger("rlhp.reward_service.client")

DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024
# Requests carrying segments (AddComparisons, Disagreement) are split above this many bytes.
DEFAULT_REQUEST_BYTES = 16 * 1024 * 1024

T = TypeVar("T")


RewardServiceError = rpc.ServiceError  # the service failed in a way the caller cannot fix

TOKEN_ENV = "RLHP_REWARD_TOKEN"
"""Environment variable with the reward service's shared token, read by clients given no `token`
(so env runners, learners and the query service of one deployment all find it) and by
`python -m reward_service` given no `--token-file`."""


class RewardClient:
    """`RewardBackend` over gRPC. Thread-safe; cheap to pickle."""

    def __init__(self, address: str, timeout: float = 30.0, chunk_transitions: int | None = None,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, request_bytes: int = DEFAULT_REQUEST_BYTES,
                 root_cert: bytes | None = None, token: str | None = None) -> None:
        if chunk_transitions is not None and chunk_transitions < 1:
            raise ValueError("chunk_transitions must be at least 1")
        self.address = address
        self.timeout = float(timeout)
        self.chunk_transitions = chunk_transitions
        self.chunk_bytes = int(chunk_bytes)
        self.request_bytes = int(request_bytes)
        self.root_cert = root_cert
        self._token = token  # None: $RLHP_REWARD_TOKEN (read when the channel opens), "" for none
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: reward_pb2_grpc.RewardServiceStub | None = None
        self._pid = 0

    # -- channel lifecycle -------------------------------------------------------------------

    @property
    def stub(self) -> reward_pb2_grpc.RewardServiceStub:
        if self._stub is None or self._pid != os.getpid():
            with self._lock:
                if self._stub is None or self._pid != os.getpid():
                    # After a fork the parent's channel must not be used (nor closed) here.
                    rpc.tune_malloc_for_large_messages()
                    token = os.environ.get(TOKEN_ENV, "") if self._token is None else self._token
                    self._channel = rpc.make_channel(self.address, SERVICE_NAME, self.root_cert, token)
                    self._stub = reward_pb2_grpc.RewardServiceStub(self._channel)
                    self._pid = os.getpid()
        return self._stub

    def close(self) -> None:
        with self._lock:
            if self._channel is not None and self._pid == os.getpid():
                self._channel.close()
            self._channel = None
            self._stub = None

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_lock", "_channel", "_stub"):
            state.pop(key, None)
        state["_pid"] = 0
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._channel = None
        self._stub = None

    def __repr__(self) -> str:
        return f"RewardClient({self.address!r}, timeout={self.timeout:g})"

    # -- error mapping -----------------------------------------------------------------------

    def _error(self, e: grpc.RpcError) -> Exception:
        return rpc.exception_for(e, f"reward service at {self.address}",
                                 "Is it running (`rlhp reward-service ...`) and is the address right?")

    def _call(self, method: Callable[..., T], request, timeout: float | None = None) -> T:
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as e:
            raise self._error(e) from None

    # -- scoring -----------------------------------------------------------------------------

    def _chunk_rows(self, obs: np.ndarray, act: np.ndarray) -> int:
        if self.chunk_transitions is not None:
            return self.chunk_transitions
        n = max(1, obs.shape[0])
        per_row = (obs.nbytes + act.nbytes) / n
        return max(1, int(self.chunk_bytes // max(per_row, 1.0)))

    @staticmethod
    def _request(obs: np.ndarray, act: np.ndarray) -> reward_pb2.ScoreRequest:
        request = reward_pb2.ScoreRequest()
        wire.to_tensor(obs, request.observations)
        wire.to_tensor(act, request.actions)
        return request

    @staticmethod
    def _rewards(response: reward_pb2.ScoreResponse) -> np.ndarray:
        return wire.from_tensor(response.rewards, "rewards")

    def score(self, observations: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, int]:
        """Normalised ensemble-mean reward per transition ([N] float32) and the model version used."""
        obs = np.asarray(observations)
        act = np.asarray(actions)
        # Check both can travel before anything is sent (errors inside a stream's request iterator
        # would only cancel the call).
        wire.dtype_to_wire(obs.dtype)
        wire.dtype_to_wire(act.dtype)
        if obs.ndim == 0 or act.ndim == 0 or obs.shape[0] != act.shape[0]:
            if obs.nbytes + act.nbytes > self.chunk_bytes:
                raise wire.InvalidRequest(
                    f"batch: observations {list(obs.shape)} and actions {list(act.shape)} "
                    "do not have the same number of transitions")
            return self._score_unary(obs, act)
        rows = self._chunk_rows(obs, act)
        if obs.shape[0] <= rows:
            return self._score_unary(obs, act)
        return self._score_stream(obs, act, rows)

    def _score_unary(self, obs: np.ndarray, act: np.ndarray) -> tuple[np.ndarray, int]:
        response = self._call(self.stub.Score, self._request(obs, act))
        return self._rewards(response).copy(), int(response.model_version)

    def _score_stream(self, obs: np.ndarray, act: np.ndarray, rows: int) -> tuple[np.ndarray, int]:
        n = obs.shape[0]
        starts = list(range(0, n, rows))
        obs = np.ascontiguousarray(obs)
        act = np.ascontiguousarray(act)

        def requests() -> Iterator[reward_pb2.ScoreRequest]:
            for s in starts:
                yield self._request(obs[s:s + rows], act[s:s + rows])

        timeout = self.timeout * len(starts)
        try:
            responses = list(self.stub.ScoreStream(requests(), timeout=timeout))
        except grpc.RpcError as e:
            raise self._error(e) from None
        if len(responses) != len(starts):
            raise RewardServiceError(
                f"reward service at {self.address} answered {len(responses)} of {len(starts)} chunks")
        out = np.empty(n, dtype=np.float32)
        versions = []
        for s, response in zip(starts, responses):
            r = self._rewards(response)
            if r.shape != (min(rows, n - s),):
                raise RewardServiceError(f"chunk at {s}: expected {min(rows, n - s)} rewards, got {list(r.shape)}")
            out[s:s + rows] = r
            versions.append(int(response.model_version))
        # A new model version may be published while the chunks are scored. Rescore the stale
        # chunks so that one version produced the whole batch (a few rounds; versions change rarely).
        for _ in range(3):
            latest = max(versions)
            stale = [i for i, v in enumerate(versions) if v != latest]
            if not stale:
                break
            for i in stale:
                s = starts[i]
                r, versions[i] = self._score_unary(obs[s:s + rows], act[s:s + rows])
                out[s:s + rows] = r
        if len(set(versions)) > 1:
            log.warning("scores of one batch come from model versions %s", sorted(set(versions)))
        return out, max(versions)

    # -- comparisons -------------------------------------------------------------------------

    def _groups(self, segments: Sequence[SegmentData], items: Sequence[T],
                ids: Callable[[T], tuple[str, str]]) -> Iterator[tuple[list[SegmentData], list[T]]]:
        """Split (segments, items) into requests of about `request_bytes`; each group carries the
        segments its items reference, so every request stands alone."""
        by_id = {s.id: s for s in segments}
        size = {s.id: _nbytes(s) for s in segments}
        if sum(size.values()) <= self.request_bytes:
            yield list(segments), list(items)
            return
        group: list[T] = []
        group_ids: dict[str, None] = {}
        used: set[str] = set()
        nbytes = 0
        for item in items:
            refs = list(dict.fromkeys(k for k in ids(item) if k in by_id))
            new = [k for k in refs if k not in group_ids]
            if group and nbytes + sum(size[k] for k in new) > self.request_bytes:
                yield [by_id[k] for k in group_ids], group
                group, group_ids, nbytes = [], {}, 0
                new = refs
            group.append(item)
            for k in new:
                group_ids[k] = None
                used.add(k)
                nbytes += size[k]
        if group:
            yield [by_id[k] for k in group_ids], group
        # Segments no item references still reach the service (it may keep them for later).
        rest: list[SegmentData] = []
        nbytes = 0
        for s in segments:
            if s.id in used:
                continue
            if rest and nbytes + size[s.id] > self.request_bytes:
                yield rest, []
                rest, nbytes = [], 0
            rest.append(s)
            nbytes += size[s.id]
        if rest:
            yield rest, []

    def disagreement(self, segments: Sequence[SegmentData], pairs: Sequence[tuple[str, str]]
                     ) -> tuple[np.ndarray, np.ndarray, int]:
        """Per pair: (std over members of P[left ≻ right], mean P[left ≻ right], model version)."""
        pairs = [_pair(p, i) for i, p in enumerate(pairs)]
        std: list[np.ndarray] = []
        mean: list[np.ndarray] = []
        version = 0
        for segs, group in self._groups(segments, pairs, lambda p: p):
            if not group and std:
                continue  # unreferenced segments are not needed to answer
            request = reward_pb2.DisagreementRequest()
            for s in segs:
                encode_segment(s, request.segments.add())
            for left, right in group:
                request.pairs.add(left_id=left, right_id=right)
            response = self._call(self.stub.Disagreement, request)
            std.append(np.asarray(response.disagreement, dtype=np.float32))
            mean.append(np.asarray(response.probability, dtype=np.float32))
            version = max(version, int(response.model_version))
        return np.concatenate(std), np.concatenate(mean), version

    def add_comparisons(self, segments: Sequence[SegmentData],
                        comparisons: Sequence[ComparisonData]) -> AddResult:
        added = duplicates = ignored = total = 0
        for segs, group in self._groups(segments, comparisons, lambda c: (c.left_id, c.right_id)):
            request = reward_pb2.AddComparisonsRequest()
            for s in segs:
                encode_segment(s, request.segments.add())
            for c in group:
                encode_comparison(c, request.comparisons.add())
            r = self._call(self.stub.AddComparisons, request)
            added += r.added
            duplicates += r.duplicates
            ignored += r.ignored
            total = r.total
        return AddResult(added=int(added), duplicates=int(duplicates), ignored=int(ignored), total=int(total))

    # -- state -------------------------------------------------------------------------------

    def stats(self) -> RewardStats:
        return stats_from_proto(self._call(self.stub.Stats, reward_pb2.StatsRequest()))

    def remove_comparisons(self, ids: Sequence[str]) -> int:
        """Take these comparisons out of the service's training set; returns how many it held."""
        r = self._call(self.stub.RemoveComparisons, reward_pb2.RemoveComparisonsRequest(ids=list(ids)))
        return int(r.removed)

    def snapshot(self, have_version: int = -1) -> tuple[int, bytes | None]:
        """(version, the published model for `RewardModel.from_snapshot`), or (version, None) when
        `have_version` is the current one."""
        r = self._call(self.stub.Snapshot, reward_pb2.SnapshotRequest(have_version=int(have_version)))
        return int(r.model_version), (r.data or None)

    def checkpoint(self, path: str | None = None) -> tuple[str, int]:
        """Atomically write everything on the service's machine; returns (path, model version)."""
        r = self._call(self.stub.Checkpoint, reward_pb2.CheckpointRequest(path=path or ""),
                       timeout=max(self.timeout, 120.0))
        return r.path, int(r.model_version)


def _nbytes(s: SegmentData) -> int:
    return int(np.asarray(s.observations).nbytes + np.asarray(s.actions).nbytes) + 64



def _pair(pair, i: int) -> tuple[str, str]:
    try:
        left, right = pair
    except (TypeError, ValueError):
        raise wire.InvalidRequest(f"disagreement: pair {i} is not a (left_id, right_id) pair") from None
    if not isinstance(left, str) or not isinstance(right, str):
        raise wire.InvalidRequest(f"disagreement: pair {i} has an empty or non-string segment id")
    return left, right
