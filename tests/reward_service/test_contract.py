"""One contract, two backends: the in-process core and a RewardClient talking to a real server.

Every test takes the `backend` fixture, which is either a `RewardModel` itself ("core") or a
`RewardClient` connected over loopback gRPC to a server wrapping a `RewardModel` ("grpc"). The
same assertions (values, shapes, dtypes and exception types) must hold for both.
"""

from __future__ import annotations

import os

import math
from dataclasses import dataclass

import numpy as np
import pytest

from rlhp import wire
from rlhp.wire import Preference, Space
from reward_service.client import RewardClient
from reward_service.config import RewardConfig
from reward_service.core import RewardModel
from reward_service.server import serve
from reward_service.types import AddResult, ComparisonData, RewardBackend, RewardStats, SegmentData

SPACE = Space.parse("11/box:3")
T = 10  # transitions per segment


def assert_same_scores(actual, desired):
    """Scores over the wire equal the core's up to float rounding (a decoded array is not aligned
    like the caller's, and BLAS kernels may then sum in another order)."""
    np.testing.assert_allclose(actual, desired, rtol=1e-5, atol=1e-6)


@dataclass
class Backend:
    kind: str
    api: RewardBackend  # what the tests call
    model: RewardModel  # the core behind it (to train, or to compare with)


@pytest.fixture(params=["core", "grpc"])
def backend(request, tmp_path):
    model = RewardModel(SPACE, RewardConfig.smoke(seed=1), checkpoint_dir=str(tmp_path / "ckpt"))
    if request.param == "core":
        yield Backend("core", model, model)
        return
    server = serve(model, port=0)
    client = RewardClient(server.address, timeout=30)
    try:
        yield Backend("grpc", client, model)
    finally:
        client.close()
        server.stop(grace=0)


def transitions(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 11)).astype(np.float32), rng.uniform(-1, 1, size=(n, 3)).astype(np.float32)


def segment(sid: str, seed: int) -> SegmentData:
    obs, act = transitions(T, seed)
    return SegmentData(sid, obs, act)


def segments(n: int, prefix: str = "s") -> list[SegmentData]:
    return [segment(f"{prefix}{i}", 100 + i) for i in range(n)]


def labelled(backend: Backend, n: int = 12) -> list[SegmentData]:
    """Store n/2 comparisons over n segments (left better when its obs sum is larger)."""
    segs = segments(n)
    comps = []
    for i in range(0, n, 2):
        a, b = segs[i], segs[i + 1]
        answer = Preference.LEFT if a.observations.sum() > b.observations.sum() else Preference.RIGHT
        comps.append(ComparisonData(f"c{i}", a.id, b.id, answer))
    result = backend.api.add_comparisons(segs, comps)
    assert result.added == n // 2
    return segs


# ---- score ---------------------------------------------------------------------------------


def test_score_shape_dtype_version(backend):
    obs, act = transitions(37)
    rewards, version = backend.api.score(obs, act)
    assert isinstance(rewards, np.ndarray) and rewards.shape == (37,) and rewards.dtype == np.float32
    assert isinstance(version, int) and version == backend.model.version
    assert np.isfinite(rewards).all()
    expected, _ = backend.model.score(obs, act)
    assert_same_scores(rewards, expected)
    rewards[0] = 123.0  # the caller owns the result


def test_score_version_follows_training(backend):
    labelled(backend)
    obs, act = transitions(5)
    _, before = backend.api.score(obs, act)
    backend.model.train(5)
    after_rewards, after = backend.api.score(obs, act)
    assert after == before + 1
    assert_same_scores(after_rewards, backend.model.score(obs, act)[0])


def test_score_accepts_other_numeric_dtypes(backend):
    obs, act = transitions(8)
    r32, _ = backend.api.score(obs, act)
    r64, _ = backend.api.score(obs.astype(np.float64), act.astype(np.float64))
    np.testing.assert_allclose(r64, r32, rtol=1e-6, atol=1e-6)


def test_score_many_transitions(backend):
    obs, act = transitions(20_000, seed=3)
    rewards, version = backend.api.score(obs, act)
    assert rewards.shape == (20_000,) and version == backend.model.version
    assert_same_scores(rewards, backend.model.score(obs, act)[0])


# ---- disagreement --------------------------------------------------------------------------


def test_disagreement_shapes(backend):
    stored = labelled(backend)
    backend.model.train(5)
    inline = segments(4, prefix="new")
    pairs = [(stored[0].id, stored[1].id), ("new0", "new1"), (stored[2].id, "new3"), ("new2", "new2")]
    std, mean, version = backend.api.disagreement(inline, pairs)
    assert std.shape == (4,) and mean.shape == (4,)
    assert std.dtype == np.float32 and mean.dtype == np.float32
    assert version == backend.model.version == 1
    assert ((mean >= 0) & (mean <= 1)).all() and (std >= 0).all()
    assert mean[3] == pytest.approx(0.5) and std[3] == pytest.approx(0.0, abs=1e-6)
    ref_std, ref_mean, _ = backend.model.disagreement(inline, pairs)
    np.testing.assert_allclose(std, ref_std, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6, atol=1e-7)


def test_disagreement_unknown_segment(backend):
    labelled(backend)
    with pytest.raises(wire.InvalidRequest, match="unknown segment 'nope'"):
        backend.api.disagreement([], [("s0", "nope")])


def test_disagreement_does_not_store_inline_segments(backend):
    labelled(backend)
    backend.api.disagreement(segments(2, prefix="tmp"), [("tmp0", "tmp1")])
    with pytest.raises(wire.InvalidRequest, match="unknown segment"):
        backend.api.disagreement([], [("tmp0", "tmp1")])


# ---- comparisons ---------------------------------------------------------------------------


def test_add_comparisons_idempotent(backend):
    segs = segments(6)
    comps = [ComparisonData(f"q{i}", segs[2 * i].id, segs[2 * i + 1].id, Preference.LEFT) for i in range(3)]
    first = backend.api.add_comparisons(segs, comps)
    assert first == AddResult(added=3, duplicates=0, ignored=0, total=3)
    again = backend.api.add_comparisons(segs, comps)
    assert again == AddResult(added=0, duplicates=3, ignored=0, total=3)
    # Known segments may be omitted; a repeated id inside one request is a duplicate too.
    more = [ComparisonData("q9", "s0", "s3", Preference.EQUAL), ComparisonData("q9", "s0", "s3", Preference.EQUAL)]
    assert backend.api.add_comparisons([], more) == AddResult(added=1, duplicates=1, ignored=0, total=4)
    stats = backend.api.stats()
    assert stats.comparisons == 4 and stats.comparisons_seen == 4 and stats.segments == 6


def test_incomparable_is_ignored(backend):
    segs = segments(4)
    comps = [ComparisonData("a", "s0", "s1", Preference.INCOMPARABLE),
             ComparisonData("b", "s2", "s3", Preference.RIGHT)]
    assert backend.api.add_comparisons(segs, comps) == AddResult(added=1, duplicates=0, ignored=1, total=1)
    stats = backend.api.stats()
    assert stats.comparisons == 1 and stats.segments == 2  # the incomparable pair's segments are not kept


def test_add_comparisons_unknown_segment_changes_nothing(backend):
    segs = segments(2)
    comps = [ComparisonData("ok", "s0", "s1", Preference.LEFT), ComparisonData("bad", "s0", "ghost", Preference.LEFT)]
    with pytest.raises(wire.InvalidRequest, match="unknown segment 'ghost'"):
        backend.api.add_comparisons(segs, comps)
    assert backend.api.stats().comparisons == 0


def test_add_comparisons_split_into_several_requests(backend, tmp_path):
    """Many large segments: the client splits the request; the result is the same."""
    if backend.kind == "grpc":
        backend.api.request_bytes = 3 * 1024  # each segment is ~600 bytes
    segs = segments(40)
    comps = [ComparisonData(f"q{i}", segs[i].id, segs[(i + 7) % 40].id, Preference.LEFT) for i in range(40)]
    result = backend.api.add_comparisons(segs + segments(3, prefix="unused"), comps)
    assert result == AddResult(added=40, duplicates=0, ignored=0, total=40)
    std, mean, _ = backend.api.disagreement(segs, [(s.id, segs[0].id) for s in segs])
    assert std.shape == mean.shape == (40,)


# ---- stats / checkpoint --------------------------------------------------------------------


def test_stats_fields(backend):
    stats = backend.api.stats()
    assert isinstance(stats, RewardStats)
    assert stats.model_version == 0 and stats.comparisons == 0 and stats.train_steps == 0
    assert stats.space == SPACE and stats.architecture == "mlp"
    assert stats.target_std == pytest.approx(1.0)
    assert len(stats.members) == backend.model.config.members == 2
    labelled(backend)
    backend.model.train(7)
    stats = backend.api.stats()
    assert stats.model_version == 1 and stats.train_steps == 7 and stats.comparisons == 6
    assert stats.segments == 12 and stats.comparisons_seen == 6
    for name in ("train_loss", "train_accuracy"):
        assert math.isfinite(getattr(stats, name)), name
    assert 0.0 <= stats.train_accuracy <= 1.0
    core = backend.model.stats()
    assert stats.train_loss == pytest.approx(core.train_loss, rel=1e-6)
    for m, c in zip(stats.members, core.members):
        assert m.norm_std == pytest.approx(c.norm_std, rel=1e-6) and m.norm_std > 0
        assert m.l2 == pytest.approx(c.l2, rel=1e-6)


def test_checkpoint_then_load_gives_identical_scores(backend, tmp_path):
    labelled(backend)
    backend.model.train(10)
    path, version = backend.api.checkpoint()
    assert version == backend.model.version == 1
    obs, act = transitions(64, seed=9)
    loaded = RewardModel.load(path)
    got, got_version = loaded.score(obs, act)
    want, want_version = backend.model.score(obs, act)
    assert got_version == want_version == version
    np.testing.assert_array_equal(got, want)  # bit for bit
    assert_same_scores(backend.api.score(obs, act)[0], want)
    assert loaded.stats().comparisons == 6
    # A file name of one's own works too (in the checkpoint directory).
    other, _ = backend.api.checkpoint("m.pt")
    assert other == os.path.join(backend.model.checkpoint_dir, "m.pt")
    np.testing.assert_array_equal(RewardModel.load(other).score(obs, act)[0], want)


def test_a_snapshot_scores_like_the_service_and_is_sent_only_when_new(backend):
    labelled(backend)
    backend.model.train(10)
    version, data = backend.api.snapshot()
    assert version == backend.model.version == 1 and data
    copy = RewardModel.from_snapshot(data)
    obs, act = transitions(64, seed=3)
    got, got_version = copy.score(obs, act)
    want, want_version = backend.model.score(obs, act)
    assert got_version == want_version == version
    np.testing.assert_array_equal(got, want)
    assert backend.api.snapshot(have_version=version) == (version, None)  # nothing new: no bytes
    assert copy.stats().comparisons == 0  # the weights only, not the labels
    with pytest.raises(wire.FailedPrecondition, match="not a reward model snapshot"):
        RewardModel.from_snapshot(data[: len(data) // 2])


def test_removed_comparisons_leave_the_training_set_and_may_come_back(backend):
    segs = labelled(backend)  # six comparisons c0, c2, ..., c10
    assert backend.api.stats().comparisons == 6
    assert backend.api.remove_comparisons(["c0", "c2", "nope"]) == 2
    assert backend.api.stats().comparisons == 4
    assert backend.api.remove_comparisons(["c0"]) == 0  # gone already
    backend.model.train(5)  # trains on what is left
    again = [ComparisonData(f"c{i}", segs[i].id, segs[i + 1].id, Preference.LEFT) for i in range(0, 12, 2)]
    r = backend.api.add_comparisons(segs, again)  # the removed two are new again, the rest duplicates
    assert (r.added, r.duplicates) == (2, 4) and backend.api.stats().comparisons == 6


def test_checkpoint_without_directory_fails_precondition(backend):
    backend.model.checkpoint_dir = None
    with pytest.raises(wire.FailedPrecondition, match="no checkpoint"):
        backend.api.checkpoint()


# ---- bad input: the same exception from both backends ---------------------------------------


def _nan_obs():
    obs, act = transitions(4)
    obs[2, 3] = np.nan
    return obs, act


BAD_SCORES = {
    "nan": (_nan_obs, "NaN"),
    "inf_action": (lambda: (transitions(4)[0], np.full((4, 3), np.inf, np.float32)), "NaN or infinite"),
    "wrong_obs_shape": (lambda: (np.zeros((4, 12), np.float32), np.zeros((4, 3), np.float32)), "shape"),
    "wrong_act_shape": (lambda: (np.zeros((4, 11), np.float32), np.zeros((4, 2), np.float32)), "shape"),
    "mismatched_n": (lambda: (np.zeros((4, 11), np.float32), np.zeros((5, 3), np.float32)), "shape"),
    "complex_dtype": (lambda: (np.zeros((4, 11), np.complex64), np.zeros((4, 3), np.float32)), "complex"),
    "string_dtype": (lambda: (np.zeros((4, 11), np.float32), np.full((4, 3), "a")), None),
    "empty": (lambda: (np.zeros((0, 11), np.float32), np.zeros((0, 3), np.float32)), "empty"),
    "scalar": (lambda: (np.float32(1.0), np.float32(1.0)), "shape"),
}


@pytest.mark.parametrize("case", sorted(BAD_SCORES))
def test_bad_score_input(backend, case):
    make, match = BAD_SCORES[case]
    obs, act = make()
    with pytest.raises(wire.InvalidRequest, match=match):
        backend.api.score(obs, act)
    assert backend.api.score(*transitions(3))[0].shape == (3,)  # still serving


def test_oversized_score_batch(backend):
    backend.model.config = backend.model.config.replace(max_score_batch=100)
    obs, act = transitions(101)
    with pytest.raises(wire.InvalidRequest, match="limit of 100"):
        backend.api.score(obs, act)


BAD_COMPARISONS = {
    "unknown_segment": (lambda s: ([], [ComparisonData("x", "s0", "nope", Preference.LEFT)]), "unknown segment"),
    "missing_id": (lambda s: (s, [ComparisonData("", "s0", "s1", Preference.LEFT)]), "id"),
    "missing_left": (lambda s: (s, [ComparisonData("x", "", "s1", Preference.LEFT)]), "left_id"),
    "unspecified_answer": (lambda s: (s, [ComparisonData("x", "s0", "s1", 0)]), "not one of"),
    "no_answer": (lambda s: (s, [ComparisonData("x", "s0", "s1", None)]), "not one of"),
    "bad_answer": (lambda s: (s, [ComparisonData("x", "s0", "s1", 7)]), "not one of"),
    "segment_without_observations": (
        lambda s: ([SegmentData("s9", None, s[0].actions)], [ComparisonData("x", "s0", "s9", Preference.LEFT)]),
        "observations"),
    "segment_without_id": (lambda s: ([SegmentData("", s[0].observations, s[0].actions)], []), "no id"),
    "nan_segment": (
        lambda s: ([SegmentData("s9", np.full((T, 11), np.nan, np.float32), s[0].actions)],
                   [ComparisonData("x", "s0", "s9", Preference.LEFT)]), "NaN"),
    "segment_wrong_shape": (
        lambda s: ([SegmentData("s9", np.zeros((T, 4), np.float32), s[0].actions)],
                   [ComparisonData("x", "s0", "s9", Preference.LEFT)]), "shape"),
    "different_lengths": (
        lambda s: ([SegmentData("s9", s[0].observations[:5], s[0].actions[:5])],
                   [ComparisonData("x", "s0", "s9", Preference.LEFT)]), "different lengths"),
}


@pytest.mark.parametrize("case", sorted(BAD_COMPARISONS))
def test_bad_comparisons(backend, case):
    base = segments(2)
    backend.api.add_comparisons(base, [ComparisonData("first", "s0", "s1", Preference.LEFT)])
    make, match = BAD_COMPARISONS[case]
    segs, comps = make(base)
    with pytest.raises(wire.InvalidRequest, match=match):
        backend.api.add_comparisons(segs, comps)
    assert backend.api.stats().comparisons == 1  # nothing changed


BAD_PAIRS = {
    "no_pairs": (lambda s: ([], []), "no pairs"),
    "unknown": (lambda s: ([], [("s0", "ghost")]), "unknown segment 'ghost'"),
    "empty_id": (lambda s: ([], [("s0", "")]), "empty"),
    "not_a_pair": (lambda s: ([], [("s0", "s1", "s2")]), "not a"),
    "nan_inline": (lambda s: ([SegmentData("n", np.full((T, 11), np.nan, np.float32), s[0].actions)],
                              [("s0", "n")]), "NaN"),
}


@pytest.mark.parametrize("case", sorted(BAD_PAIRS))
def test_bad_disagreement(backend, case):
    base = segments(2)
    backend.api.add_comparisons(base, [ComparisonData("first", "s0", "s1", Preference.LEFT)])
    make, match = BAD_PAIRS[case]
    segs, pairs = make(base)
    with pytest.raises(wire.InvalidRequest, match=match):
        backend.api.disagreement(segs, pairs)
