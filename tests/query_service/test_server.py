"""The query service over real gRPC on 127.0.0.1 (port 0) with real SQLite in tmp_path."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from query_service import admin
from query_service.__main__ import main as service_main
from query_service.client import QueryClient
from query_service.config import QueryConfig
from query_service.core import QueryService
from query_service.codec import record_to_proto
from query_service.server import serve
from query_service.store import Store
from query_service.types import SegmentRecord
from rlhp import rpc
from rlhp.v1 import query_pb2, query_pb2_grpc
from rlhp.wire import FailedPrecondition, InvalidRequest, NotFound, PermissionDenied, Preference, Unauthenticated

ROOT = Path(__file__).resolve().parents[2]


def records(n: int, start: int = 0, exp: str = "Hop", frames: bool = False) -> list[SegmentRecord]:
    rng = np.random.default_rng(start)
    return [SegmentRecord(
        id=f"s{i}", experiment=exp, env_id="Hopper-v5",
        observations=rng.normal(size=(10, 4)).astype(np.float32),
        actions=rng.normal(size=(10, 1)).astype(np.float32),
        true_rewards=rng.normal(size=10).astype(np.float32),
        frames=rng.integers(0, 255, (10, 16, 16, 3), dtype=np.uint8) if frames else None,
        env_step=i, fps=15.0) for i in range(start, start + n)]


@pytest.fixture
def service(tmp_path):
    core = QueryService(tmp_path / "run", QueryConfig.smoke(initial_labels=0, lease_seconds=30.0), seed=0)
    server = serve(core)
    tokens = {name: core.create_token(name, role) for name, role in
              (("actors", "producer"), ("alice", "labeler"), ("bob", "labeler"), ("teach", "teacher"))}
    clients = {name: QueryClient(server.address, tok) for name, tok in tokens.items()}
    yield core, server, clients, tokens
    for c in clients.values():
        c.close()
    server.stop()
    core.close()


def test_contract_over_grpc(service):
    core, server, c, _ = service
    r = c["actors"].add_segments(records(12, frames=True))
    assert (r.accepted, r.duplicates, r.stored) == (12, 0, 12)
    assert c["actors"].add_segments(records(2, frames=True)).duplicates == 2
    p = c["actors"].report_progress("Hop", 10**9)
    assert p.labels_wanted == 40 and p.label_budget == 40
    assert core.select_once() == 4
    lease = c["alice"].lease(lease_seconds=20)
    q = lease.query
    assert lease.available and q.left_rewards is None and q.length == 10 and q.fps == 15.0
    assert q.lease_expires == pytest.approx(time.time() + 20, abs=5)
    t = c["teach"].lease().query
    np.testing.assert_array_equal(t.left_rewards, core.store.load_segments("Hop", [t.left_id])[t.left_id].true_rewards)
    mime, data = c["alice"].get_clip(q.id, Preference.RIGHT, "mp4")
    assert mime == "video/mp4" and len(data) > 100
    with pytest.raises(FailedPrecondition):
        c["bob"].get_clip(q.id, Preference.LEFT)
    with pytest.raises(InvalidRequest):
        c["alice"].get_clip(q.id, 0)
    r = c["alice"].submit(q.id, Preference.LEFT, 2.5)
    assert (r.status, r.answered) == ("ACCEPTED", 1)
    assert c["alice"].submit(q.id, "LEFT", 2.5).status == "DUPLICATE"
    c["teach"].submit(t.id, Preference.RIGHT)
    assert c["teach"].submit(t.id, Preference.RIGHT).status == "DUPLICATE"
    with pytest.raises(NotFound):
        c["alice"].submit("nope", Preference.LEFT)
    with pytest.raises(InvalidRequest):
        c["alice"].submit(q.id, 0)
    with pytest.raises(FailedPrecondition):
        c["bob"].submit(c["alice"].lease().query.id, Preference.LEFT)
    with pytest.raises(NotFound):
        c["alice"].release("nope")
    st = c["alice"].stats()
    assert st.experiments[0].labels == 2 and st.experiments[0].segments == 12
    assert {x.name: x.answered for x in st.labelers} == {"alice": 1}  # a labeler sees only herself
    assert {x.name: x.answered for x in c["actors"].stats().labelers} == {"alice": 1, "teach": 1}
    assert core.store.conn().execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 2


def test_bad_missing_or_revoked_tokens_are_unauthenticated(service):
    core, server, c, tokens = service
    for token in ("", "wrong"):
        with QueryClient(server.address, token) as bad:
            for call in (lambda: bad.lease(), lambda: bad.submit("x", 1), lambda: bad.add_segments(records(1)),
                         lambda: bad.report_progress("Hop", 1), lambda: bad.get_clip("x", 1), lambda: bad.release("x"),
                         lambda: bad.stats()):
                with pytest.raises(Unauthenticated):
                    call()
    with pytest.raises(PermissionDenied):  # a labeler is not a producer
        c["alice"].add_segments(records(1))
    core.revoke_token("bob")
    with pytest.raises(Unauthenticated, match="revoked"):
        c["bob"].lease()
    # the raw status code
    stub = query_pb2_grpc.QueryServiceStub(grpc.insecure_channel(server.address))
    with pytest.raises(grpc.RpcError) as e:
        stub.LeaseQuery(query_pb2.LeaseQueryRequest(), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as e:
        stub.Stats(query_pb2.QueryStatsRequest(), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # a valid token that may not do this is PERMISSION_DENIED, not UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as e:
        stub.AddSegments(query_pb2.AddSegmentsRequest(), metadata=[("authorization", f"Bearer {tokens['alice']}")],
                         timeout=5)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    scoped = core.create_token("carol", "labeler", ["Pong"])
    with pytest.raises(grpc.RpcError) as e:
        stub.LeaseQuery(query_pb2.LeaseQueryRequest(experiments=["Hop"]),
                        metadata=[("authorization", f"Bearer {scoped}")], timeout=5)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "may not label experiment 'Hop'" in e.value.details()


def test_malformed_requests_are_invalid_argument_and_change_nothing(service):
    core, server, c, tokens = service
    stub = query_pb2_grpc.QueryServiceStub(grpc.insecure_channel(server.address))
    meta = rpc.bearer(tokens["actors"])

    def bad(mutate) -> grpc.StatusCode:
        good = record_to_proto(records(1, start=50)[0])
        m = query_pb2.SegmentRecord()
        m.CopyFrom(good)
        mutate(m)
        req = query_pb2.AddSegmentsRequest(segments=[record_to_proto(records(1)[0]), m])
        with pytest.raises(grpc.RpcError) as e:
            stub.AddSegments(req, metadata=meta, timeout=5)
        return e.value.code(), e.value.details()

    def nan(m):
        m.true_rewards.data = np.full(10, np.nan, np.float32).tobytes()

    cases = {
        "byte count": lambda m: setattr(m.segment.observations, "data", b"\x00" * 7),
        "dtype unset": lambda m: setattr(m.segment.actions, "dtype", 0),
        "nan": nan,
        "frames dtype": lambda m: m.frames.CopyFrom(
            __import__("rlhp.wire", fromlist=["to_tensor"]).to_tensor(np.zeros((10, 4, 4, 3), np.float32))),
        "no segment": lambda m: m.ClearField("segment"),
        "no id": lambda m: setattr(m.segment, "id", ""),
        "rewards missing": lambda m: m.ClearField("true_rewards"),
    }
    for name, mutate in cases.items():
        code, details = bad(mutate)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, details)
        assert "segment 1" in details, (name, details)
    assert core.stats().experiments == ()  # all or nothing: the good segment 0 was not stored either
    with pytest.raises(InvalidRequest):
        c["actors"].report_progress("", 5)
    with pytest.raises(InvalidRequest):
        c["actors"].report_progress("Hop", -5)
    with pytest.raises(InvalidRequest):
        c["alice"].lease(lease_seconds=-1)
    # the service still serves
    assert c["actors"].add_segments(records(3)).accepted == 3


def test_lease_expires_in_real_time(service):
    core, server, c, _ = service
    c["actors"].add_segments(records(10))
    c["actors"].report_progress("Hop", 10**9)
    core.select_once()
    first = c["alice"].lease(lease_seconds=1.0).query
    others = []
    while (lease := c["bob"].lease()).available:
        others.append(lease.query.id)
    assert first.id not in others
    time.sleep(1.2)
    again = c["bob"].lease()
    assert again.available and again.query.id == first.id


def test_concurrent_labelers_over_grpc(tmp_path):
    core = QueryService(tmp_path, QueryConfig.smoke(initial_labels=0, queue_target=40, label_budget=40), seed=0)
    server = serve(core)
    prod = QueryClient(server.address, core.create_token("actors", "producer"))
    prod.add_segments(records(30))
    prod.report_progress("Hop", 10**9)
    assert core.select_once() == 40
    clients = [QueryClient(server.address, core.create_token(f"l{i}", "labeler")) for i in range(8)]
    got: list[str] = []
    statuses: list[str] = []
    lock = threading.Lock()

    def work(client: QueryClient) -> None:
        while (lease := client.lease()).available:
            with lock:
                got.append(lease.query.id)
            # everyone also tries to answer the query a neighbour holds: at most one label per query
            r = client.submit(lease.query.id, Preference.RIGHT)
            with lock:
                statuses.append(r.status)

    threads = [threading.Thread(target=work, args=(cl,)) for cl in clients]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    elapsed = time.perf_counter() - t0
    print(f"\n8 labelers, 40 lease+submit round trips over gRPC: {elapsed:.2f} s")
    assert len(got) == len(set(got)) == 40 and statuses == ["ACCEPTED"] * 40
    assert core.store.conn().execute("SELECT COUNT(DISTINCT query_id), COUNT(*) FROM labels").fetchone()[:] == (40, 40)
    for cl in clients + [prod]:
        cl.close()
    server.stop()
    core.close()


def _start_service(run_dir: Path) -> tuple[subprocess.Popen, str]:
    addr_file = run_dir / "query_service.address"
    addr_file.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "query_service", "--run-dir", str(run_dir), "--port", "0",
                             "--preset", "smoke", "--initial-labels", "0", "--log-level", "WARNING"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        if addr_file.exists() and addr_file.read_text().strip():
            return proc, addr_file.read_text().strip()
        if proc.poll() is not None:
            raise RuntimeError(f"query service exited: {proc.stdout.read()}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("query service did not start in 30 s")


def test_label_survives_sigkill_right_after_it_was_acknowledged(tmp_path):
    run_dir = tmp_path / "run"
    proc, address = _start_service(run_dir)
    try:
        producer = QueryClient(address, (run_dir / "producer.token").read_text().strip())
        store = Store(run_dir)  # tokens are made next to a running service (rlhp token create)
        alice = QueryClient(address, store.create_token("alice", "labeler"))
        store.close()
        producer.add_segments(records(10))
        producer.report_progress("Hop", 10**9)
        deadline = time.time() + 10
        while not (lease := alice.lease()).available and time.time() < deadline:
            time.sleep(0.05)  # the service's own selection thread enqueues queries
        assert lease.available, lease.waiting_for
        r = alice.submit(lease.query.id, Preference.EQUAL, 1.5)
        os.kill(proc.pid, signal.SIGKILL)
        assert r.status == "ACCEPTED"
        proc.wait(10)
        alice.close()
        producer.close()
        # the label is on disk ...
        db = sqlite3.connect(run_dir / "labels.sqlite")
        row = db.execute("SELECT labeler, answer FROM labels WHERE query_id=?", (lease.query.id,)).fetchone()
        db.close()
        assert row == ("alice", int(Preference.EQUAL))
        # ... and served after a restart; the same answer again is a harmless duplicate
        proc, address = _start_service(run_dir)
        alice = QueryClient(address, alice.token)
        st = alice.stats()
        assert st.experiments[0].labels == 1 and st.labelers[0].name == "alice"
        assert alice.submit(lease.query.id, Preference.EQUAL).status == "DUPLICATE"
        alice.close()
        proc.send_signal(signal.SIGTERM)  # clean shutdown
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_forwarding_reaches_the_reward_service_and_resumes_after_it_restarts(tmp_path):
    from reward_service.client import RewardClient
    from reward_service.config import RewardConfig
    from reward_service.core import RewardModel
    from reward_service.server import serve as serve_reward
    from rlhp.wire import Space

    model = RewardModel(Space(obs_shape=(4,), action_kind="box", act_shape=(1,)), RewardConfig.smoke())
    rserver = serve_reward(model)
    port = rserver.port
    reward = RewardClient(rserver.address, timeout=3.0)
    core = QueryService(tmp_path, QueryConfig.smoke(initial_labels=0), reward=reward, seed=0)
    server = serve(core)
    prod = QueryClient(server.address, core.create_token("actors", "producer"))
    alice = QueryClient(server.address, core.create_token("alice", "labeler"))
    prod.add_segments(records(20))
    prod.report_progress("Hop", 10**9)
    assert core.select_once() == 4
    assert core.selection_fallbacks == 0  # selected with the served ensemble's disagreement

    def label(n: int, select: bool = True) -> None:
        for _ in range(n):
            alice.submit(alice.lease().query.id, Preference.LEFT)
            if select:
                core.select_once()

    label(3)
    assert core.forward_once() == 3
    assert model.stats().comparisons_seen == 3
    rserver.stop(0)  # the reward service goes away
    label(2, select=False)
    t0 = time.perf_counter()
    with pytest.raises(Exception):
        core.forward_once()
    print(f"\nforwarding to a stopped reward service failed after {time.perf_counter() - t0:.2f} s")
    assert core.unforwarded() == 2
    rserver = serve_reward(model, port=port)  # ... and comes back on the same address
    try:
        deadline = time.time() + 10
        while True:
            try:
                assert core.forward_once() == 2
                break
            except (grpc.RpcError, ConnectionError):  # the channel may still be in reconnect backoff
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        assert model.stats().comparisons_seen == 5 and core.unforwarded() == 0
        # at-least-once: sending everything again only produces duplicates on the reward side
        core.reforward()
        assert core.forward_once() == 5 and core.forward_duplicates == 5
        assert model.stats().comparisons_seen == 5
        assert alice.stats().experiments[0].labels_forwarded == 5
    finally:
        for cl in (prod, alice, reward):
            cl.close()
        server.stop()
        core.close()
        rserver.stop(0)


def test_admin_cli_and_service_help(tmp_path, capsys):
    run = tmp_path / "run"
    assert admin.main(["list", "--run-dir", str(run)]) == 1  # no database yet
    assert admin.main(["create", "--run-dir", str(run), "--name", "alice", "--experiments", "Hop",
                       "--server", "example.org:50052"]) == 0
    out = capsys.readouterr().out
    token = out.splitlines()[1].strip()
    assert "rlhp label --server example.org:50052 --token " + token in out
    assert admin.main(["create", "--run-dir", str(run), "--name", "t", "--role", "teacher"]) == 0
    assert "rlhp teacher" in capsys.readouterr().out
    assert admin.main(["list", "--run-dir", str(run)]) == 0
    listing = capsys.readouterr().out
    assert "alice" in listing and "Hop" in listing and token not in listing
    core = QueryService(run, QueryConfig.smoke())
    assert core.authenticate(token).experiments == frozenset({"Hop"})
    assert admin.main(["revoke", "--run-dir", str(run), "--name", "alice"]) == 0
    with pytest.raises(Unauthenticated):
        core.lease(token)
    assert admin.main(["revoke", "--run-dir", str(run), "--name", "nobody"]) == 1
    core.close()
    with pytest.raises(SystemExit) as e:
        service_main(["--help"])
    assert e.value.code == 0
    assert "--reward-address" in capsys.readouterr().out


def test_a_non_loopback_address_needs_tls_or_insecure(tmp_path, capsys):
    for host in ("0.0.0.0", "192.0.2.7", "::"):
        assert service_main(["--run-dir", str(tmp_path / "run"), "--host", host, "--port", "0"]) == 2
        err = capsys.readouterr().err
        assert "reachable from other machines" in err and "--tls-cert" in err and "--insecure" in err
    assert not (tmp_path / "run" / "labels.sqlite").exists()  # refused before anything was opened
    from rlhp.rpc import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.3.4.5", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.2", "example.com", ""))
