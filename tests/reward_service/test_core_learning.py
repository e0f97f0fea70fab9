"""The reward-model core learns rewards from comparisons, validates inputs and trains in the background.

Synthetic tasks with a known reward; the synthetic teacher prefers the segment with the larger true
return. Learning is judged on held-out segments (Pearson correlation of predicted and true returns).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from reward_service.config import RewardConfig
from reward_service.core import RewardModel
from reward_service.nets import RewardCNN, RewardMLP, build_member
from reward_service.types import ComparisonData, RewardStats, SegmentData
from rlhp.wire import InvalidRequest, Preference, Space

VEC = Space((8,), "float32", "box", 0, (2,))
IMG = Space((1, 36, 36), "uint8", "discrete", 3, ())


# ---- synthetic tasks ----------------------------------------------------------------------------


class LinearTask:
    """r(o, a) = w·o + v·a on 8-dim observations and 2-dim box actions."""

    def __init__(self, rng: np.random.Generator, T: int = 10, zero_dims: int = 0) -> None:
        self.rng, self.T, self.zero_dims = rng, T, zero_dims
        self.w = rng.normal(size=8)
        self.v = 0.5 * rng.normal(size=2)
        if zero_dims:
            self.w[8 - zero_dims:] = 0.0

    def segments(self, n: int, prefix: str, scale: float = 1.0) -> tuple[list[SegmentData], dict[str, float]]:
        segs, ret = [], {}
        for i in range(n):
            obs = (scale * self.rng.normal(size=(self.T, 8))).astype(np.float32)
            if self.zero_dims:
                obs[:, 8 - self.zero_dims:] = 0.0
            act = self.rng.uniform(-1, 1, size=(self.T, 2)).astype(np.float32)
            segs.append(SegmentData(f"{prefix}{i}", obs, act))
            ret[f"{prefix}{i}"] = float((obs @ self.w).sum() + (act @ self.v).sum())
        return segs, ret


class BlobTask:
    """1×36×36 uint8 frames: a bright square at a random place on a noisy background.

    The true reward of a frame is the square's brightness / 255 (its position is a distractor).
    """

    def __init__(self, rng: np.random.Generator, T: int = 5, size: int = 8) -> None:
        self.rng, self.T, self.size = rng, T, size

    def segments(self, n: int, prefix: str) -> tuple[list[SegmentData], dict[str, float]]:
        segs, ret = [], {}
        for i in range(n):
            obs = self.rng.integers(0, 30, size=(self.T, 1, 36, 36)).astype(np.uint8)
            bright = self.rng.integers(40, 256, size=self.T)
            for t in range(self.T):
                y, x = self.rng.integers(0, 36 - self.size + 1, size=2)
                obs[t, 0, y:y + self.size, x:x + self.size] = bright[t]
            act = self.rng.integers(0, 3, size=self.T)
            segs.append(SegmentData(f"{prefix}{i}", obs, act))
            ret[f"{prefix}{i}"] = float(bright.sum() / 255.0)
        return segs, ret


def teacher(rng: np.random.Generator, ret: dict[str, float], n: int, prefix: str = "c"
            ) -> list[ComparisonData]:
    """A deterministic synthetic teacher on random pairs of the given segments."""
    ids = sorted(ret)
    out = []
    for k in range(n):
        a, b = rng.choice(len(ids), 2, replace=False)
        left, right = ids[a], ids[b]
        answer = Preference.LEFT if ret[left] > ret[right] else Preference.RIGHT
        out.append(ComparisonData(f"{prefix}{k}", left, right, answer))
    return out


def predicted_returns(model: RewardModel, segs: list[SegmentData]) -> np.ndarray:
    obs = np.concatenate([s.observations for s in segs])
    act = np.concatenate([s.actions for s in segs])
    rewards, _ = model.score(obs, act)
    return rewards.reshape(len(segs), -1).sum(axis=1)


def pearson(model: RewardModel, segs: list[SegmentData], ret: dict[str, float]) -> float:
    pred = predicted_returns(model, segs)
    true = np.array([ret[s.id] for s in segs])
    return float(np.corrcoef(pred, true)[0, 1])


# ---- nets -----------------------------------------------------------------------------------------


def test_architecture_follows_the_space() -> None:
    cfg = RewardConfig()
    assert isinstance(build_member(VEC, cfg), RewardMLP)
    cnn = build_member(Space((4, 84, 84), "uint8", "discrete", 6, ()), cfg)
    assert isinstance(cnn, RewardCNN)
    convs = [m for m in cnn.conv if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size[0], c.stride[0], c.out_channels, c.padding[0]) for c in convs] == [
        (7, 3, 16, 0), (5, 2, 16, 0), (3, 1, 16, 0), (3, 1, 16, 0)]
    cnn.eval()
    out = cnn(torch.zeros(3, 4, 84, 84, dtype=torch.uint8), torch.tensor([0, 5, 2]))
    assert out.shape == (3,)
    # Small and channels-last images work too (padding and flatten size adapt).
    for space in (IMG, Space((32, 32, 2), "uint8", "box", 0, (2,))):
        net = build_member(space, cfg).eval()
        obs = torch.zeros((2,) + space.obs_shape, dtype=torch.uint8)
        act = torch.zeros(2, dtype=torch.long) if space.action_kind == "discrete" else torch.zeros(2, 2)
        assert net(obs, act).shape == (2,)
    assert RewardModel(IMG, RewardConfig.smoke()).stats().architecture == "cnn"
    assert RewardConfig.for_space(IMG).target_std == 0.05
    assert RewardConfig.for_space(VEC).target_std == 1.0


# ---- learning -------------------------------------------------------------------------------------


def test_mlp_learns_a_linear_reward(rng: np.random.Generator) -> None:
    task = LinearTask(rng)
    train_segs, train_ret = task.segments(200, "s")
    test_segs, test_ret = task.segments(200, "h")
    model = RewardModel(VEC, RewardConfig(members=3, seed=1))
    result = model.add_comparisons(train_segs, teacher(rng, train_ret, 500))
    assert result.added == 500 and result.total == 500
    before = pearson(model, test_segs, test_ret)
    for _ in range(6):
        out = model.train(100)
    r = pearson(model, test_segs, test_ret)
    print(f"\nMLP held-out Pearson: {r:.3f} (untrained {before:.3f}); "
          f"train/val loss {out['train_loss']:.3f}/{out['val_loss']:.3f}, val acc {out['val_accuracy']:.3f}")
    assert r >= 0.9
    assert out["val_accuracy"] > 0.8
    stats = model.stats()
    assert stats.model_version == 6 and stats.train_steps == 600
    # Normalisation: scores on recent labelled transitions have mean ≈ 0 and std ≈ target_std
    # (the ensemble mean of members with std 1 each has std ≤ 1, ≈ 1 when they agree).
    obs = np.concatenate([s.observations for s in train_segs[-50:]])
    act = np.concatenate([s.actions for s in train_segs[-50:]])
    scores, version = model.score(obs, act)
    assert version == 6 and scores.dtype == np.float32
    assert abs(scores.mean()) < 0.25 and 0.7 < scores.std() < 1.1


def test_cnn_learns_blob_brightness(rng: np.random.Generator) -> None:
    task = BlobTask(rng)
    train_segs, train_ret = task.segments(300, "s")
    test_segs, test_ret = task.segments(100, "h")
    # The paper's CNN (16 filters, dropout 0.5, batch-norm); a larger step size keeps the test short.
    cfg = RewardConfig.for_space(IMG, members=2, batch_size=16, lr=1e-3, max_comparisons=1000,
                                 norm_transitions=1000, eval_comparisons=128, seed=2)
    model = RewardModel(IMG, cfg)
    assert model.stats().architecture == "cnn"
    model.add_comparisons(train_segs, teacher(rng, train_ret, 1000))
    t0 = time.perf_counter()
    for _ in range(4):
        out = model.train(50)
    r = pearson(model, test_segs, test_ret)
    print(f"\nCNN held-out Pearson: {r:.3f} after 200 steps in {time.perf_counter() - t0:.1f}s; "
          f"val acc {out['val_accuracy']:.3f}")
    assert r >= 0.9
    # Atari-style normalisation: per-transition scores have std ≈ 0.05.
    obs = np.concatenate([s.observations for s in train_segs[-100:]])
    act = np.concatenate([s.actions for s in train_segs[-100:]])
    assert 0.03 < model.score(obs, act)[0].std() < 0.06


def test_disagreement_is_high_where_the_ensemble_has_not_seen_data(rng: np.random.Generator) -> None:
    # Training data never varies observation dims 4..7 (they are always 0): the members learn
    # nothing about them and keep their own random responses there.
    task = LinearTask(rng, zero_dims=4)
    segs, ret = task.segments(150, "s")
    model = RewardModel(VEC, RewardConfig(members=3, seed=3))
    train_pairs = [(c.left_id, c.right_id) for c in teacher(rng, ret, 300)]
    # Untrained: members disagree (different initialisations) and the version is 0.
    d0, p0, v0 = model.disagreement(segs, train_pairs[:50])
    assert v0 == 0 and d0.shape == p0.shape == (50,) and d0.dtype == np.float32
    assert (d0 > 0).all() and ((p0 >= 0) & (p0 <= 1)).all()

    model.add_comparisons(segs, [ComparisonData(f"c{k}", a, b, Preference.LEFT if ret[a] > ret[b]
                                                else Preference.RIGHT)
                                 for k, (a, b) in enumerate(train_pairs)])
    for _ in range(4):
        model.train(100)
    # Known segments need not be sent again.
    d_train, p_train, version = model.disagreement([], train_pairs)
    assert version == 4
    labels = np.array([ret[a] > ret[b] for a, b in train_pairs])
    assert ((p_train > 0.5) == labels).mean() > 0.9
    # Novel pairs: identical in the dims the reward uses, different in the unseen dims 4..7.
    novel, pairs = [], []
    for i in range(100):
        base = segs[i].observations.copy()
        left, right = base.copy(), base.copy()
        left[:, 4:] = 3 * rng.normal(size=(task.T, 4))
        right[:, 4:] = 3 * rng.normal(size=(task.T, 4))
        novel += [SegmentData(f"nl{i}", left, segs[i].actions), SegmentData(f"nr{i}", right, segs[i].actions)]
        pairs.append((f"nl{i}", f"nr{i}"))
    d_novel, _, _ = model.disagreement(novel, pairs)
    print(f"\nmean disagreement: training pairs {d_train.mean():.3f}, novel pairs {d_novel.mean():.3f}, "
          f"untrained {d0.mean():.3f}")
    assert d_novel.mean() > 2 * d_train.mean()
    # Inline segments of a disagreement call are not stored.
    assert model.stats().segments == len({s for pair in train_pairs for s in pair})


# ---- validation -----------------------------------------------------------------------------------


def test_invalid_requests_are_rejected(rng: np.random.Generator) -> None:
    model = RewardModel(VEC, RewardConfig.smoke())
    obs = rng.normal(size=(5, 8)).astype(np.float32)
    act = rng.normal(size=(5, 2)).astype(np.float32)
    assert model.score(obs, act)[0].shape == (5,)
    assert model.score(obs.astype(np.float64), act)[0].shape == (5,)  # numeric dtypes are fine
    bad = obs.copy()
    bad[2, 3] = np.nan
    cases = {
        "NaN": (bad, act),
        "wrong observation shape": (obs[:, :7], act),
        "wrong action shape": (obs, act[:, :1]),
        "non-numeric observations": (obs.astype(str), act),
        "complex observations": (obs.astype(np.complex64), act),
        "empty batch": (obs[:0], act[:0]),
        "mismatched batch": (obs, act[:4]),
    }
    for name, (o, a) in cases.items():
        with pytest.raises(InvalidRequest):
            model.score(o, a)
    small = RewardModel(VEC, RewardConfig.smoke(max_score_batch=4))
    with pytest.raises(InvalidRequest, match="limit"):
        small.score(obs, act)

    disc = RewardModel(IMG, RewardConfig.smoke())
    frames = rng.integers(0, 255, size=(3, 1, 36, 36)).astype(np.uint8)
    assert disc.score(frames, np.array([0, 1, 2]))[0].shape == (3,)
    for a in (np.array([0, 1, 3]), np.array([0, -1, 2]), np.array([0.0, 1.0, 2.0])):
        with pytest.raises(InvalidRequest, match="actions"):
            disc.score(frames, a)
    with pytest.raises(InvalidRequest, match="uint8"):
        disc.score(frames.astype(np.float32), np.array([0, 1, 2]))

    seg = SegmentData("a", obs, act)
    with pytest.raises(InvalidRequest, match="unknown segment 'x'"):
        model.disagreement([seg], [("a", "x")])
    with pytest.raises(InvalidRequest, match="different lengths"):
        model.disagreement([seg, SegmentData("b", obs[:3], act[:3])], [("a", "b")])
    with pytest.raises(InvalidRequest):
        model.disagreement([seg], [])
    with pytest.raises(InvalidRequest, match="NaN"):
        model.disagreement([SegmentData("n", bad, act), seg], [("a", "n")])


def test_a_bad_comparison_changes_nothing(rng: np.random.Generator) -> None:
    task = LinearTask(rng)
    segs, ret = task.segments(6, "s")
    model = RewardModel(VEC, RewardConfig.smoke())
    assert model.add_comparisons(segs[:2], [ComparisonData("c0", "s0", "s1", Preference.LEFT)]).added == 1
    counts = lambda: (lambda s: (s.comparisons, s.comparisons_seen, s.segments))(model.stats())  # noqa: E731
    before = counts()
    good = [ComparisonData("c1", "s2", "s3", Preference.RIGHT), ComparisonData("c2", "s0", "s4", Preference.EQUAL)]
    bad_requests = [
        (segs[2:5], good + [ComparisonData("c3", "s2", "nope", Preference.LEFT)]),  # unknown segment
        (segs[2:5], good + [ComparisonData("", "s2", "s3", Preference.LEFT)]),  # no id
        (segs[2:5], good + [ComparisonData("c3", "s2", "s3", 7)]),  # not an answer
        (segs[2:5] + [SegmentData("s9", segs[5].observations[:, :4], segs[5].actions)], good),  # shape
        (segs[2:5] + [SegmentData("s9", segs[5].observations[:4], segs[5].actions[:4])],  # lengths
         good + [ComparisonData("c3", "s2", "s9", Preference.LEFT)]),
    ]
    for name, (segments, comparisons) in enumerate(bad_requests):
        with pytest.raises(InvalidRequest):
            model.add_comparisons(segments, comparisons)
        assert counts() == before, name
    # The same comparisons, valid, go in; s0 is known and need not be sent again.
    assert model.add_comparisons(segs[2:5], good).added == 2
    assert model.stats().comparisons == 3 and model.stats().segments == 5


def test_idempotency_incomparable_and_bounded_buffer(rng: np.random.Generator) -> None:
    task = LinearTask(rng, T=4)
    segs, ret = task.segments(40, "s")
    model = RewardModel(VEC, RewardConfig.smoke(max_comparisons=10, seen_ids_capacity=50))
    comps = [ComparisonData(f"c{k}", f"s{2 * k}", f"s{2 * k + 1}", Preference.LEFT) for k in range(20)]
    r = model.add_comparisons(segs[:8], comps[:4])
    assert (r.added, r.duplicates, r.ignored, r.total) == (4, 0, 0, 4)
    # Re-sending is harmless, also within one request and with a different answer.
    r = model.add_comparisons(segs[:10], comps[:5] + [comps[4], ComparisonData("c0", "s0", "s1", Preference.RIGHT)])
    assert (r.added, r.duplicates, r.ignored, r.total) == (1, 6, 0, 5)
    # INCOMPARABLE answers are counted and never stored (nor their segments).
    r = model.add_comparisons(segs[10:12], [ComparisonData("i0", "s10", "s11", Preference.INCOMPARABLE)])
    assert (r.added, r.ignored, r.total) == (0, 1, 5)
    assert model.stats().segments == 10
    # The buffer keeps the most recent 10; segments only evicted comparisons used are dropped.
    r = model.add_comparisons(segs, comps[5:20])
    assert (r.added, r.total) == (15, 10)
    stats = model.stats()
    assert stats.comparisons == 10 and stats.comparisons_seen == 20 and stats.segments == 20
    with pytest.raises(InvalidRequest, match="unknown segment 's0'"):
        model.disagreement([], [("s0", "s39")])
    assert model.disagreement([], [("s20", "s39")])[0].shape == (1,)
    # Evicted ids are still remembered as seen.
    assert model.add_comparisons(segs[:2], comps[:1]).duplicates == 1


# ---- background training ------------------------------------------------------------------------


def test_background_training_publishes_while_scoring(rng: np.random.Generator) -> None:
    task = LinearTask(rng)
    segs, ret = task.segments(60, "s")
    model = RewardModel(VEC, RewardConfig.smoke(steps_per_round=10, max_rounds_without_new_data=1000))
    obs = np.concatenate([s.observations for s in segs[:20]])
    act = np.concatenate([s.actions for s in segs[:20]])
    seen: list[int] = []
    latencies: list[float] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def scorer() -> None:
        try:
            while not done.is_set():
                t = time.perf_counter()
                rewards, version = model.score(obs, act)
                latencies.append(time.perf_counter() - t)
                assert rewards.shape == (len(obs),) and np.isfinite(rewards).all()
                seen.append(version)
        except BaseException as e:  # surfaced below
            errors.append(e)

    model.start()
    assert model.training
    thread = threading.Thread(target=scorer)
    thread.start()
    try:
        time.sleep(0.2)
        assert model.version == 0  # nothing to train on yet
        model.add_comparisons(segs, teacher(rng, ret, 150))
        deadline = time.monotonic() + 30
        # Wait until the scorer thread has itself been answered by version ≥ 5 (not only published).
        while (not seen or seen[-1] < 5) and time.monotonic() < deadline:
            time.sleep(0.05)
        # Comparisons can be added while training runs.
        assert model.add_comparisons([], teacher(rng, ret, 20, prefix="late")).added == 20
    finally:
        done.set()
        thread.join()
        model.stop()
    assert not errors, errors
    assert not model.training
    assert model.version >= 5
    assert seen and seen == sorted(seen) and seen[-1] >= 5 and len(set(seen)) >= 3
    stats: RewardStats = model.stats()
    assert stats.train_steps >= 50 and stats.comparisons == 170
    print(f"\nbackground: {len(seen)} score calls, median latency {1e3 * np.median(latencies):.2f} ms, "
          f"max {1e3 * max(latencies):.1f} ms, versions {seen[0]}..{seen[-1]}")
    assert max(latencies) < 2.0
    # After stop the version stays.
    version = model.version
    time.sleep(0.2)
    assert model.version == version


# ---- validation: out of bag (default) vs the paper's shared split ---------------------------------


@pytest.mark.parametrize("mode", ["oob", "split"])
def test_validation_modes_train_on_what_they_say(rng: np.random.Generator, mode: str) -> None:
    task = LinearTask(rng)
    segs, ret = task.segments(120, "s")
    model = RewardModel(VEC, RewardConfig(members=3, seed=2, validation=mode))
    model.add_comparisons(segs, teacher(rng, ret, 300))
    comps = model._buffer.comparisons  # the buffer's stored comparisons (val flag, bootstrap weights)
    held = sum(c.val for c in comps)
    out = model.train(20)
    if mode == "oob":
        # every label trains the ensemble; each member is validated on what its bootstrap left out
        assert held == 0 and out["comparisons"] == 300
        oob = [sum(c.boot[m] == 0 for c in comps) for m in range(3)]
        assert all(0.25 * 300 < k < 0.5 * 300 for k in oob), oob  # ≈ 300/e each
        assert out["val_comparisons"] == int(np.mean(oob))
    else:
        assert 0.25 * 300 < held < 0.5 * 300 and out["comparisons"] == 300 - held
        assert out["val_comparisons"] == held
    assert np.isfinite(out["val_loss"]) and np.isfinite(out["val_accuracy"])


def test_oob_validation_measures_unseen_comparisons(rng: np.random.Generator) -> None:
    """A member's out-of-bag loss is a held-out loss: with random labels (nothing to learn) a member
    that memorises its bootstrap does much worse out of bag than in bag."""
    task = LinearTask(rng)
    segs, _ = task.segments(200, "s")
    ids = [s.id for s in segs]
    comps = [ComparisonData(f"c{k}", ids[2 * k], ids[2 * k + 1],
                            Preference.LEFT if rng.random() < 0.5 else Preference.RIGHT) for k in range(100)]
    model = RewardModel(VEC, RewardConfig(members=2, seed=3, hidden=(128, 128), l2_init=1e-8, l2_max=1e-8,
                                          l2_min=1e-8, lr=3e-3))
    model.add_comparisons(segs, comps)
    out = model.train(400)
    assert out["train_loss"] < 0.5 < out["val_loss"], out


def test_state_only_predictor_ignores_actions(rng: np.random.Generator) -> None:
    task = LinearTask(rng)
    segs, ret = task.segments(50, "s")
    model = RewardModel(VEC, RewardConfig(members=2, seed=4, use_actions=False))
    model.add_comparisons(segs, teacher(rng, ret, 100))
    model.train(20)
    obs = np.concatenate([s.observations for s in segs])
    a = np.concatenate([s.actions for s in segs])
    r1, _ = model.score(obs, a)
    r2, _ = model.score(obs, -a)
    np.testing.assert_array_equal(r1, r2)
    with_actions = RewardModel(VEC, RewardConfig(members=2, seed=4))
    with_actions.add_comparisons(segs, teacher(rng, ret, 100))
    with_actions.train(20)
    assert not np.array_equal(with_actions.score(obs, a)[0], with_actions.score(obs, -a)[0])


def test_additive_action_term_learns_and_keeps_the_action_apart(rng: np.random.Generator) -> None:
    """``action_term="additive"``: r̂ = f(o) + g(a), so what an action adds is the same in every state."""
    task = LinearTask(rng)
    train_segs, train_ret = task.segments(200, "s")
    test_segs, test_ret = task.segments(200, "h")
    model = RewardModel(VEC, RewardConfig(members=3, seed=1, action_term="additive"))
    model.add_comparisons(train_segs, teacher(rng, train_ret, 500))
    model.train(600)
    assert pearson(model, test_segs, test_ret) >= 0.9
    obs = rng.normal(size=(2, 8)).astype(np.float32)
    a, b = np.float32([[0.5, -0.5]] * 2), np.float32([[-1.0, 1.0]] * 2)
    gain = model.score(obs, a)[0] - model.score(obs, b)[0]  # one action against another, in 2 states
    assert abs(gain[0]) > 1e-3 and gain[0] == pytest.approx(gain[1], abs=1e-4)
    joint = RewardModel(VEC, RewardConfig(members=3, seed=1))
    joint.add_comparisons(train_segs, teacher(rng, train_ret, 500))
    joint.train(600)
    gain = joint.score(obs, a)[0] - joint.score(obs, b)[0]
    assert gain[0] != pytest.approx(gain[1], abs=1e-4)
    with pytest.raises(ValueError, match="action_term"):
        RewardConfig(action_term="product")


def test_normalized_inputs_make_the_model_independent_of_observation_units(tmp_path, rng) -> None:
    # Standardised inputs: observations in other units (per-feature scale and offset) train the
    # same members to the same scores. Without standardisation they do not.
    task = LinearTask(rng)
    segs, ret = task.segments(60, "s")
    test_segs, _ = task.segments(20, "h")
    comps = teacher(rng, ret, 120)
    scale = np.array([1000.0, 0.01, 1, 50, 3, 0.2, 7, 100], dtype=np.float32)
    shift = np.array([5.0, -3, 0, 20, 1, 0, -8, 2], dtype=np.float32)

    def in_units(ss: list[SegmentData]) -> list[SegmentData]:
        return [SegmentData(s.id, s.observations * scale + shift, s.actions) for s in ss]

    def scores(normalize: bool, convert: bool) -> np.ndarray:
        cfg = RewardConfig(members=2, seed=5, normalize_inputs=normalize)
        model = RewardModel(VEC, cfg, checkpoint_dir=str(tmp_path / f"{normalize}{convert}"))
        model.add_comparisons(in_units(segs) if convert else segs, comps)
        model.train(60)
        probe = in_units(test_segs) if convert else test_segs
        pred = predicted_returns(model, probe)
        path, _ = model.checkpoint()  # the statistics travel with the members
        np.testing.assert_allclose(predicted_returns(RewardModel.load(path), probe), pred, rtol=1e-5,
                                   atol=1e-5)
        return pred

    same_units = scores(True, False)
    np.testing.assert_allclose(scores(True, True), same_units, rtol=1e-3, atol=1e-3)
    assert not np.allclose(scores(False, True), scores(False, False), rtol=1e-2, atol=1e-2)


def test_members_without_input_statistics_load_as_the_identity() -> None:
    cfg = RewardConfig(normalize_inputs=True)
    old = {k: v for k, v in build_member(VEC, cfg).state_dict().items() if not k.startswith("obs_")}
    member = build_member(VEC, cfg)
    member.set_input_norm(np.full(8, 3.0), np.full(8, 2.0))
    member.load_state_dict(old)
    assert torch.equal(member.obs_mean, torch.zeros(8)) and torch.equal(member.obs_std, torch.ones(8))
