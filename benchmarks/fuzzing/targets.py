"""The services under fuzzing: each runs as `python -m <service>` in its own process (so a crash is a
dead process, and its memory is its own), with valid seed requests for every RPC.

`Target` is one running service: `methods` (RPC path, streaming or not, seed messages), `metadata()`
(the call's token: valid ones of every role mostly, none, garbage or huge ones sometimes),
`healthy()` (a valid request still succeeds), `rss_mb()` / `peak_mb()` (from /proc), `alive()`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


@dataclass
class Method:
    path: str                  # "/rlhp.v1.RewardService/Score"
    stream: bool               # request and response streams (ScoreStream)
    seeds: list[Any] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def _wait_for(path: Path, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{what} did not start:\n{proc.communicate()[0]}")
        time.sleep(0.05)
    return path.read_text().strip()


class Target:
    """A service process; see the module docstring."""

    service = ""

    def __init__(self, workdir: Path, seed: int) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rng = np.random.default_rng(seed)
        self.proc: subprocess.Popen | None = None
        self.address = ""
        self.methods: list[Method] = []

    def _spawn(self, *args: str) -> subprocess.Popen:
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", GRPC_VERBOSITY="ERROR")
        self.log = open(self.workdir / f"{self.service}.log", "w")
        return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env, stdout=self.log,
                                stderr=subprocess.STDOUT, text=True)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)

    def metadata(self) -> tuple:
        return ()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _status_kb(self, key: str) -> float:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return float(line.split()[1])
        except (OSError, AttributeError):
            pass
        return float("nan")

    def rss_mb(self) -> float:
        return self._status_kb("VmRSS") / 1024

    def peak_mb(self) -> float:
        return self._status_kb("VmHWM") / 1024

    def stop(self) -> str:
        """SIGTERM (then SIGKILL); returns the service's log."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None) is not None:
            self.log.close()
        return (self.workdir / f"{self.service}.log").read_text()


# ---------------------------------------------------------------------------------------------


def _tensor(arr: np.ndarray) -> Any:
    from rlhp import wire

    return wire.to_tensor(np.asarray(arr))


class RewardTarget(Target):
    """`python -m reward_service` for an 11/box:3 space (Hopper's), smoke ensemble, training."""

    service = "reward"
    PREFIX = "/rlhp.v1.RewardService/"

    def start(self) -> "RewardTarget":
        port_file = self.workdir / "port"
        self.proc = self._spawn("reward_service", "--port", "0", "--port-file", str(port_file), "--obs-space",
                                "11/box:3", "--smoke", "--threads", "1", "--checkpoint-dir",
                                str(self.workdir / "ckpt"), "--checkpoint-every", "0", "--log-level", "ERROR")
        self.address = f"127.0.0.1:{_wait_for(port_file, self.proc, 'the reward service')}"
        self.methods = self._methods()
        with self.channel() as ch:  # a few comparisons, so that scoring and disagreement have a model
            ch.unary_unary(self.PREFIX + "AddComparisons")(self._comparisons(8).SerializeToString(), timeout=30)
        return self

    def _transitions(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return (self.rng.normal(size=(n, 11)).astype(np.float32),
                self.rng.uniform(-1, 1, size=(n, 3)).astype(np.float32))

    def _segment(self, sid: str, t: int = 10) -> Any:
        from rlhp.v1 import common_pb2

        obs, act = self._transitions(t)
        return common_pb2.Segment(id=sid, observations=_tensor(obs), actions=_tensor(act))

    def _score(self, n: int) -> Any:
        from rlhp.v1 import reward_pb2

        obs, act = self._transitions(n)
        return reward_pb2.ScoreRequest(observations=_tensor(obs), actions=_tensor(act))

    def _comparisons(self, n: int) -> Any:
        from rlhp.v1 import reward_pb2

        req = reward_pb2.AddComparisonsRequest()
        for i in range(n):
            a, b = f"seed-{i}-a", f"seed-{i}-b"
            req.segments.extend([self._segment(a), self._segment(b)])
            req.comparisons.add(id=f"seed-c{i}", left_id=a, right_id=b, label=1 + i % 4)
        return req

    def _methods(self) -> list[Method]:
        from rlhp.v1 import reward_pb2

        p = self.PREFIX
        dis = reward_pb2.DisagreementRequest(segments=[self._segment("d0"), self._segment("d1")])
        dis.pairs.add(left_id="d0", right_id="d1")
        dis.pairs.add(left_id="seed-0-a", right_id="seed-0-b")
        return [
            Method(p + "Score", False, [self._score(1), self._score(64)]),
            Method(p + "ScoreStream", True, [self._score(16), self._score(200)]),
            Method(p + "Disagreement", False, [dis]),
            Method(p + "AddComparisons", False, [self._comparisons(2)]),
            Method(p + "Stats", False, [reward_pb2.StatsRequest()]),
            Method(p + "Checkpoint", False, [reward_pb2.CheckpointRequest(), reward_pb2.CheckpointRequest(path="f.pt")]),
            Method(p + "Snapshot", False, [reward_pb2.SnapshotRequest(), reward_pb2.SnapshotRequest(have_version=1)]),
            Method(p + "RemoveComparisons", False, [reward_pb2.RemoveComparisonsRequest(ids=["seed-c0", "nope"])]),
        ]

    def healthy(self, ch: grpc.Channel) -> bool:
        from rlhp.v1 import reward_pb2

        raw = ch.unary_unary(self.PREFIX + "Score")(self._score(8).SerializeToString(), timeout=30)
        return len(reward_pb2.ScoreResponse.FromString(raw).rewards.shape) == 1

    def oversized(self) -> list[tuple[str, bool, Any]]:
        """A request over the 64 MiB message limit, and a long stream of large chunks."""
        over = self.rng.bytes(70 * 1024 * 1024)
        chunks = [self._score(2000).SerializeToString() for _ in range(4)] * 50  # 200 chunks, ~18 MB
        return [(self.PREFIX + "Score", False, over), (self.PREFIX + "ScoreStream", True, chunks),
                (self.PREFIX + "AddComparisons", False, over)]


class QueryTarget(Target):
    """`python -m query_service` (smoke schedule, random selection) with tokens of every role,
    segments with and without clip frames, and queries that were leased."""

    service = "query"
    PREFIX = "/rlhp.v1.QueryService/"
    ROLES = ("producer", "labeler", "teacher", "admin")

    def start(self) -> "QueryTarget":
        from query_service.core import QueryService

        run_dir = self.workdir / "run"
        with QueryService(run_dir) as core:  # tokens first (the database is shared through its file)
            self.tokens = {role: core.create_token(f"fuzz-{role}", role) for role in self.ROLES}
        self.proc = self._spawn("query_service", "--run-dir", str(run_dir), "--port", "0", "--preset", "smoke",
                                "--selection", "random", "--log-level", "ERROR")
        self.address = _wait_for(run_dir / "query_service.address", self.proc, "the query service")
        self._prepare()
        self.methods = self._methods()
        return self

    def _records(self, n: int, frames: bool = False, prefix: str = "s") -> list:
        from query_service.testing import segment_records, synthetic_atari_frames

        recs = segment_records(n, exp="Hop", length=10, prefix=f"{prefix}{self.rng.integers(1 << 30)}-",
                               rng=self.rng, obs_dim=4)
        if frames:
            from dataclasses import replace

            recs = [replace(r, frames=synthetic_atari_frames(i, 10)) for i, r in enumerate(recs)]
        return recs

    def _add(self, records: list) -> Any:
        from query_service.codec import record_to_proto
        from rlhp.v1 import query_pb2

        return query_pb2.AddSegmentsRequest(segments=[record_to_proto(r) for r in records])

    def _prepare(self) -> None:
        from query_service.client import QueryClient

        with QueryClient(self.address, self.tokens["producer"], timeout=30) as prod:
            prod.add_segments(self._records(20) + self._records(6, frames=True, prefix="f"))
            prod.report_progress("Hop", 10**9, env_id="Hopper-v5", goal="hop forward")
        self.query_ids: list[str] = []
        deadline = time.monotonic() + 60
        with QueryClient(self.address, self.tokens["labeler"], timeout=30) as lab:
            while len(self.query_ids) < 4 and time.monotonic() < deadline:
                lease = lab.lease(lease_seconds=3600)
                if lease.available:
                    self.query_ids.append(lease.query.id)
                else:
                    time.sleep(0.2)
        if not self.query_ids:
            raise RuntimeError("the query service selected no queries to fuzz with")

    def _methods(self) -> list[Method]:
        from rlhp.v1 import query_pb2

        p, q = self.PREFIX, self.query_ids
        return [
            Method(p + "AddSegments", False, [self._add(self._records(2)), self._add(self._records(1, frames=True))]),
            Method(p + "ReportProgress", False, [query_pb2.ReportProgressRequest(
                experiment="Hop", env_steps=10**9, env_id="Hopper-v5", label_budget=40, goal="hop")]),
            Method(p + "LeaseQuery", False, [query_pb2.LeaseQueryRequest(),
                                             query_pb2.LeaseQueryRequest(experiments=["Hop"], lease_seconds=30)]),
            Method(p + "GetClip", False, [query_pb2.GetClipRequest(query_id=i, side=1 + k % 2, format="mp4")
                                          for k, i in enumerate(q)]),
            Method(p + "SubmitLabel", False, [query_pb2.SubmitLabelRequest(query_id=i, answer=1 + k % 4, seconds=2.0)
                                              for k, i in enumerate(q)]),
            Method(p + "ReleaseQuery", False, [query_pb2.ReleaseQueryRequest(query_id=i) for i in q]),
            Method(p + "Stats", False, [query_pb2.QueryStatsRequest()]),
        ]

    def metadata(self) -> tuple:
        r = self.rng.random()
        if r < 0.8:
            return (("authorization", f"Bearer {self.tokens[self.ROLES[int(self.rng.integers(0, 4))]]}"),)
        if r < 0.87:
            return ()
        if r < 0.94:
            return (("authorization", "Bearer " + self.rng.bytes(12).hex()),)
        if r < 0.97:
            return (("authorization", "Basic " + self.tokens["admin"]),)
        return (("authorization", "Bearer " + "x" * 4000),)

    def healthy(self, ch: grpc.Channel) -> bool:
        from rlhp.v1 import query_pb2

        raw = ch.unary_unary(self.PREFIX + "Stats")(
            b"", timeout=30, metadata=(("authorization", f"Bearer {self.tokens['admin']}"),))
        return len(query_pb2.QueryStatsResponse.FromString(raw).experiments) >= 1

    def oversized(self) -> list[tuple[str, bool, Any]]:
        over = self.rng.bytes(70 * 1024 * 1024)
        many = self._add(self._records(3000)).SerializeToString()  # one call, 3,000 segments (~1 MB)
        return [(self.PREFIX + "AddSegments", False, over), (self.PREFIX + "AddSegments", False, many)]


TARGETS = {"reward": RewardTarget, "query": QueryTarget}
