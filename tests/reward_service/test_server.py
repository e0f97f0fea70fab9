"""The reward service's gRPC server, through the raw generated stub and the client.

Bad requests get INVALID_ARGUMENT with a message a person understands, and the server keeps
serving; streaming returns chunks in order; Atari-sized batches stream. The command line
(`python -m reward_service`) is `test_command.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import numpy as np
import pytest

from rlhp import wire
from rlhp.v1 import common_pb2, reward_pb2, reward_pb2_grpc
from rlhp.wire import Space
from reward_service.client import RewardClient
from reward_service.config import RewardConfig
from reward_service.core import CHECKPOINT_NAME, RewardModel
from reward_service.server import serve

ROOT = Path(__file__).resolve().parents[2]
HOPPER = Space.parse("11/box:3")
PONG = Space.parse("4x84x84:uint8/discrete:6")
T = 10


@pytest.fixture
def model(tmp_path):
    return RewardModel(HOPPER, RewardConfig.smoke(max_score_batch=1000), checkpoint_dir=str(tmp_path / "ckpt"))


@pytest.fixture
def server(model):
    srv = serve(model, port=0, max_workers=4)
    yield srv
    srv.stop(grace=0)


@pytest.fixture
def stub(server):
    channel = grpc.insecure_channel(server.address)
    yield reward_pb2_grpc.RewardServiceStub(channel)
    channel.close()


def tensor(arr) -> common_pb2.Tensor:
    return wire.to_tensor(np.asarray(arr))


def transitions(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 11)).astype(np.float32), rng.uniform(-1, 1, size=(n, 3)).astype(np.float32)


def score_request(obs, act) -> reward_pb2.ScoreRequest:
    return reward_pb2.ScoreRequest(observations=tensor(obs), actions=tensor(act))


def segment(sid: str, seed: int) -> common_pb2.Segment:
    obs, act = transitions(T, seed)
    return common_pb2.Segment(id=sid, observations=tensor(obs), actions=tensor(act))


def still_serving(stub) -> None:
    response = stub.Score(score_request(*transitions(3)), timeout=10)
    assert list(response.rewards.shape) == [3]


def expect_invalid(call, request, *fragments: str) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    details = info.value.details()
    for fragment in fragments:
        assert fragment in details, f"{fragment!r} not in {details!r}"
    return details


# ---- Score: bad requests -------------------------------------------------------------------


def _byte_mismatch():
    req = score_request(*transitions(4))
    req.observations.data = req.observations.data[:-3]
    return req


def _unknown_dtype():
    req = score_request(*transitions(4))
    req.observations.dtype = 42
    return req


BAD_SCORE = {
    "nan_obs": (lambda: score_request(np.where(np.eye(4, 11) > 0, np.nan, 0).astype(np.float32),
                                      transitions(4)[1]), ["observations", "4 NaN"]),
    "wrong_shape": (lambda: score_request(np.zeros((4, 12), np.float32), transitions(4)[1]),
                    ["observations have shape [4, 12]", "[11]"]),
    "wrong_dtype": (_unknown_dtype, ["observations", "dtype is unset or unknown (code 42)"]),
    "bool_actions_for_box": (lambda: score_request(transitions(4)[0], np.zeros((4, 3), bool)),
                             ["actions must be numeric"]),
    "byte_count_mismatch": (_byte_mismatch, ["observations has shape [4, 11]", "needs 176 bytes",
                                             "173 bytes were sent"]),
    "empty_batch": (lambda: score_request(np.zeros((0, 11), np.float32), np.zeros((0, 3), np.float32)),
                    ["empty"]),
    "oversized_batch": (lambda: score_request(*transitions(1001)), ["1001 transitions", "limit of 1000"]),
    "missing_observations": (lambda: reward_pb2.ScoreRequest(actions=tensor(transitions(4)[1])),
                             ["observations is missing"]),
    "missing_actions": (lambda: reward_pb2.ScoreRequest(observations=tensor(transitions(4)[0])),
                        ["actions is missing"]),
    "empty_request": (lambda: reward_pb2.ScoreRequest(), ["observations is missing"]),
}


@pytest.mark.parametrize("case", sorted(BAD_SCORE))
def test_bad_score_is_invalid_argument_and_server_keeps_serving(stub, case):
    make, fragments = BAD_SCORE[case]
    expect_invalid(stub.Score, make(), *fragments)
    still_serving(stub)


def test_server_level_batch_limit(model):
    srv = serve(model, port=0, max_batch=10)
    try:
        with grpc.insecure_channel(srv.address) as channel:
            s = reward_pb2_grpc.RewardServiceStub(channel)
            expect_invalid(s.Score, score_request(*transitions(11)), "11 transitions", "ScoreStream")
            still_serving(s)
    finally:
        srv.stop(0)


def test_discrete_actions_must_be_integers(tmp_path):
    pong = RewardModel(PONG, RewardConfig.smoke())
    srv = serve(pong, port=0)
    try:
        with grpc.insecure_channel(srv.address) as channel:
            s = reward_pb2_grpc.RewardServiceStub(channel)
            frames = np.zeros((2, 4, 84, 84), np.uint8)
            expect_invalid(s.Score, score_request(frames, np.array([0.0, 1.0])), "must be integers")
            expect_invalid(s.Score, score_request(frames.astype(np.float32), np.array([0, 1])), "must be uint8")
            expect_invalid(s.Score, score_request(frames, np.array([0, 6])), "[0, 5]")
            ok = s.Score(score_request(frames, np.array([0, 5])), timeout=30)
            assert list(ok.rewards.shape) == [2]
    finally:
        srv.stop(0)


# ---- Disagreement / AddComparisons: bad requests --------------------------------------------


@pytest.fixture
def stored(stub):
    """Two known segments s0, s1 with one comparison."""
    r = stub.AddComparisons(reward_pb2.AddComparisonsRequest(
        segments=[segment("s0", 0), segment("s1", 1)],
        comparisons=[reward_pb2.Comparison(id="c0", left_id="s0", right_id="s1", label=common_pb2.LEFT)],
    ), timeout=10)
    assert r.added == 1
    return stub


def test_disagreement_unknown_segment(stored):
    req = reward_pb2.DisagreementRequest(pairs=[reward_pb2.SegmentPair(left_id="s0", right_id="ghost")])
    expect_invalid(stored.Disagreement, req, "unknown segment 'ghost'", "send its observations")
    still_serving(stored)
    ok = stored.Disagreement(reward_pb2.DisagreementRequest(
        pairs=[reward_pb2.SegmentPair(left_id="s0", right_id="s1")]), timeout=10)
    assert len(ok.disagreement) == len(ok.probability) == 1


def test_add_comparisons_unknown_segment(stored):
    req = reward_pb2.AddComparisonsRequest(
        comparisons=[reward_pb2.Comparison(id="c1", left_id="s0", right_id="ghost", label=common_pb2.RIGHT)])
    expect_invalid(stored.AddComparisons, req, "comparison 'c1'", "unknown segment 'ghost'")
    still_serving(stored)


def test_preference_unspecified(stored):
    req = reward_pb2.AddComparisonsRequest(
        comparisons=[reward_pb2.Comparison(id="c1", left_id="s0", right_id="s1")])
    expect_invalid(stored.AddComparisons, req, "comparison 'c1'", "PREFERENCE_UNSPECIFIED",
                   "LEFT, RIGHT, EQUAL, INCOMPARABLE")
    req.comparisons[0].label = 17
    expect_invalid(stored.AddComparisons, req, "label 17")
    still_serving(stored)


def test_segment_missing_tensor(stored):
    seg = common_pb2.Segment(id="s2", actions=tensor(transitions(T)[1]))
    req = reward_pb2.AddComparisonsRequest(
        segments=[seg], comparisons=[reward_pb2.Comparison(id="c1", left_id="s0", right_id="s2", label=1)])
    expect_invalid(stored.AddComparisons, req, "segment 's2': observations is missing")
    req = reward_pb2.DisagreementRequest(segments=[seg], pairs=[reward_pb2.SegmentPair(left_id="s0", right_id="s2")])
    expect_invalid(stored.Disagreement, req, "segment 's2': observations is missing")
    still_serving(stored)


def test_comparison_missing_id(stored):
    req = reward_pb2.AddComparisonsRequest(
        comparisons=[reward_pb2.Comparison(left_id="s0", right_id="s1", label=common_pb2.EQUAL)])
    expect_invalid(stored.AddComparisons, req, "comparison 0", "id is missing")
    still_serving(stored)


def test_add_comparisons_counts(stored):
    req = reward_pb2.AddComparisonsRequest(
        segments=[segment("s2", 2), segment("s3", 3)],
        comparisons=[reward_pb2.Comparison(id="c0", left_id="s0", right_id="s1", label=common_pb2.LEFT),
                     reward_pb2.Comparison(id="c1", left_id="s2", right_id="s3", label=common_pb2.INCOMPARABLE),
                     reward_pb2.Comparison(id="c2", left_id="s2", right_id="s3", label=common_pb2.EQUAL)])
    r = stored.AddComparisons(req, timeout=10)
    assert (r.added, r.duplicates, r.ignored, r.total) == (1, 1, 1, 2)
    stats = stored.Stats(reward_pb2.StatsRequest(), timeout=10)
    assert stats.comparisons == 2 and stats.architecture == "mlp"
    assert wire.space_from_proto(stats.space) == HOPPER and len(stats.members) == 2


# ---- streaming -----------------------------------------------------------------------------


def test_score_stream_returns_chunks_in_order(stub):
    obs, act = transitions(2000, seed=5)
    sizes = [1, 7, 100, 3, 500, 389, 1000]
    bounds = np.cumsum([0] + sizes)
    requests = [score_request(obs[a:b], act[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    responses = list(stub.ScoreStream(iter(requests), timeout=30))
    assert [list(r.rewards.shape) for r in responses] == [[n] for n in sizes]
    streamed = np.concatenate([wire.from_tensor(r.rewards) for r in responses])
    for (a, b), r in zip(zip(bounds[:-1], bounds[1:]), responses):
        unary = stub.Score(score_request(obs[a:b], act[a:b]), timeout=10)
        np.testing.assert_array_equal(wire.from_tensor(r.rewards), wire.from_tensor(unary.rewards))
        assert r.model_version == unary.model_version
    assert streamed.shape == (2000,)


def test_score_stream_bad_chunk_names_the_chunk(stub):
    obs, act = transitions(30)
    bad = obs.copy()
    bad[15, 0] = np.nan
    requests = [score_request(obs[:10], act[:10]), score_request(bad[10:20], act[10:20])]
    responses = stub.ScoreStream(iter(requests), timeout=10)
    first = next(responses)
    assert list(first.rewards.shape) == [10]
    with pytest.raises(grpc.RpcError) as info:
        next(responses)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "chunk 1" in info.value.details() and "NaN" in info.value.details()
    still_serving(stub)


def test_client_streams_in_chunks_equal_to_unary():
    model = RewardModel(HOPPER, RewardConfig.smoke())
    srv = serve(model, port=0)
    obs, act = transitions(3000, seed=2)
    try:
        with RewardClient(srv.address, chunk_transitions=256) as client:
            streamed, version = client.score(obs, act)
        with RewardClient(srv.address) as client:  # 3000 Hopper transitions fit one message
            unary, version2 = client.score(obs, act)
    finally:
        srv.stop(0)
    assert version == version2 == model.version
    np.testing.assert_allclose(streamed, unary, rtol=1e-5, atol=1e-6)


def test_large_atari_batch_streams(tmp_path):
    pong = RewardModel(PONG, RewardConfig.smoke(), checkpoint_dir=str(tmp_path))
    srv = serve(pong, port=0)
    rng = np.random.default_rng(0)
    n = 2048
    frames = rng.integers(0, 256, size=(n, 4, 84, 84), dtype=np.uint8)
    actions = rng.integers(0, 6, size=n)
    calls = []
    try:
        with RewardClient(srv.address, timeout=120) as client:
            original = client._score_stream
            client._score_stream = lambda *a: calls.append(a[2]) or original(*a)
            rewards, version = client.score(frames, actions)
        assert rewards.shape == (n,) and rewards.dtype == np.float32 and version == 0
        rows = calls[0]
        assert rows * (4 * 84 * 84 + 8) <= 4 * 1024 * 1024 and n / rows > 10  # > 10 chunks of <= 4 MiB
        expected, _ = pong.score(frames[:300], actions[:300])
        np.testing.assert_allclose(rewards[:300], expected, rtol=1e-4, atol=1e-6)
        expected, _ = pong.score(frames[-100:], actions[-100:])
        np.testing.assert_allclose(rewards[-100:], expected, rtol=1e-4, atol=1e-6)
    finally:
        srv.stop(0)


# ---- checkpoint ----------------------------------------------------------------------------


def test_checkpoint_rpc_writes_a_file(stored, model, tmp_path):
    r = stored.Checkpoint(reward_pb2.CheckpointRequest(), timeout=60)
    assert r.path == os.path.join(model.checkpoint_dir, CHECKPOINT_NAME) and os.path.getsize(r.path) > 0
    assert r.model_version == model.version
    r = stored.Checkpoint(reward_pb2.CheckpointRequest(path="m.pt"), timeout=60)  # a name in that directory
    assert r.path == os.path.join(model.checkpoint_dir, "m.pt") and os.path.getsize(r.path) > 0
    assert RewardModel.load(r.path).stats().comparisons == 1
    # a client may not have files written anywhere else on the service's machine
    for bad in (str(tmp_path / "explicit" / "m.pt"), "../m.pt", "..", "sub/m.pt", "a\x00b", "x" * 300):
        with pytest.raises(grpc.RpcError) as e:
            stored.Checkpoint(reward_pb2.CheckpointRequest(path=bad), timeout=60)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a file name" in e.value.details()
    assert not (tmp_path / "explicit").exists() and not (tmp_path / "m.pt").exists()


def test_checkpoint_without_directory_is_failed_precondition():
    srv = serve(RewardModel(HOPPER, RewardConfig.smoke()), port=0)
    try:
        with grpc.insecure_channel(srv.address) as channel:
            s = reward_pb2_grpc.RewardServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                s.Checkpoint(reward_pb2.CheckpointRequest(), timeout=10)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "checkpoint directory" in info.value.details()
    finally:
        srv.stop(0)


# ---- client behaviour ------------------------------------------------------------------------


def test_client_unavailable_is_connection_error():
    srv = serve(RewardModel(HOPPER, RewardConfig.smoke()), port=0)
    address = srv.address
    srv.stop(0)
    client = RewardClient(address, timeout=10)
    with pytest.raises(ConnectionError, match=address):
        client.stats()


def test_client_pickles_without_its_channel(server):
    import pickle

    client = RewardClient(server.address)
    client.stats()
    clone = pickle.loads(pickle.dumps(client))
    assert clone._channel is None and clone.address == server.address
    assert clone.stats().model_version == 0
    client.close()
    clone.close()


def test_internal_error_keeps_serving(server, model, stub, monkeypatch):
    def broken():
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(model, "stats", broken)
    with pytest.raises(grpc.RpcError) as info:
        stub.Stats(reward_pb2.StatsRequest(), timeout=10)
    assert info.value.code() == grpc.StatusCode.INTERNAL and "disk on fire" in info.value.details()
    still_serving(stub)


# ---- client: versions across chunks, fork ----------------------------------------------------


class _VersionBump:
    """A backend whose version moves from 1 to 2 after its first score call."""

    def __init__(self) -> None:
        self.calls = 0

    def score(self, observations, actions):
        self.calls += 1
        version = 1 if self.calls == 1 else 2
        return np.full(len(observations), float(version), np.float32), version


def test_streamed_batch_comes_from_one_version():
    backend = _VersionBump()
    srv = serve(backend, port=0)
    try:
        with RewardClient(srv.address, chunk_transitions=10) as client:
            rewards, version = client.score(*transitions(50))
        assert version == 2 and (rewards == 2.0).all()
        assert backend.calls == 6  # 5 chunks, then the stale first chunk again
    finally:
        srv.stop(0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_client_used_before_fork_works_in_the_child(server):
    client = RewardClient(server.address, timeout=20)
    assert client.stats().model_version == 0
    pid = os.fork()
    if pid == 0:  # child: must open its own channel
        code = 1
        try:
            rewards, _ = client.score(*transitions(4))
            code = 0 if rewards.shape == (4,) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client.stats().model_version == 0  # the parent's channel still works
    client.close()


def test_handle_errors_keeps_an_explicit_abort():
    """A servicer that aborts with its own status keeps it (rpc.handle_errors must not turn the
    exception grpc raises inside context.abort into INTERNAL)."""
    from rlhp import rpc

    class Aborting(reward_pb2_grpc.RewardServiceServicer):
        @rpc.handle_errors
        def Stats(self, request, context):
            context.abort(grpc.StatusCode.NOT_FOUND, "nothing here")

    server = rpc.make_server(max_workers=2)
    reward_pb2_grpc.add_RewardServiceServicer_to_server(Aborting(), server)
    port = rpc.bind(server, "127.0.0.1", 0)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError) as info:
                reward_pb2_grpc.RewardServiceStub(channel).Stats(reward_pb2.StatsRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and info.value.details() == "nothing here"
    finally:
        server.stop(0)


# ---- access: a shared token, TLS ----------------------------------------------------------


def test_a_shared_token_guards_every_rpc_and_is_never_repeated(model, monkeypatch):
    from reward_service.types import ComparisonData, SegmentData
    from rlhp.types import Preference, Unauthenticated

    secret = "s3cr3t-token-value"
    srv = serve(model, port=0, token=secret)
    obs, act = transitions(40)
    try:
        for token, says in (("", "needs its token"), (secret + "x", "wrong token")):
            with RewardClient(srv.address, token=token, chunk_transitions=16) as bad:
                calls = (bad.stats, lambda: bad.score(obs[:4], act[:4]),
                         lambda: bad.score(obs, act),  # streamed in chunks: ScoreStream
                         lambda: bad.add_comparisons([SegmentData("a", obs[:5], act[:5])], []),
                         lambda: bad.disagreement([], [("a", "b")]), bad.checkpoint)
                for call in calls:
                    with pytest.raises(Unauthenticated, match=says) as e:
                        call()
                    assert secret not in str(e.value)
        with RewardClient(srv.address, token=secret, chunk_transitions=16) as good:
            segs = [SegmentData("a", obs[:5], act[:5]), SegmentData("b", obs[5:10], act[5:10])]
            assert good.add_comparisons(segs, [ComparisonData("c", "a", "b", Preference.LEFT)]).added == 1
            streamed, _ = good.score(obs, act)
            assert streamed.shape == (40,)
            assert good.stats().comparisons == 1
            assert secret not in repr(good)
        monkeypatch.setenv("RLHP_REWARD_TOKEN", secret)  # clients given no token read the environment
        with RewardClient(srv.address) as from_env:
            assert from_env.stats().comparisons == 1
    finally:
        srv.stop(0)


def test_tls_and_token_together(model, tls_files):
    from rlhp.types import Unauthenticated

    srv = serve(model, host="127.0.0.1", port=0, tls=(tls_files["cert_pem"], tls_files["key_pem"]), token="t0k")
    try:
        with RewardClient(srv.address, root_cert=tls_files["cert_pem"], token="t0k") as client:
            assert client.score(*transitions(3))[0].shape == (3,)
        with RewardClient(srv.address, root_cert=tls_files["cert_pem"], token="") as client:
            with pytest.raises(Unauthenticated):
                client.stats()
        with RewardClient(srv.address, token="t0k", timeout=3) as plain:  # no TLS: the handshake fails
            with pytest.raises((ConnectionError, TimeoutError)):
                plain.stats()
    finally:
        srv.stop(0)
