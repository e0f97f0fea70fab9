"""Reward-model checkpoints: everything round-trips, writes are atomic, training resumes."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from reward_service.config import RewardConfig
from reward_service.core import CHECKPOINT_NAME, RewardModel
from reward_service.types import ComparisonData, RewardStats, SegmentData
from rlhp.wire import FailedPrecondition, Preference, Space

VEC = Space((6,), "float32", "discrete", 4, ())
IMG = Space((2, 32, 32), "uint8", "box", 0, (2,))


def make_data(rng: np.random.Generator, space: Space, n_segments: int, n_comparisons: int, T: int = 5,
              prefix: str = "") -> tuple[list[SegmentData], list[ComparisonData]]:
    segs = []
    for i in range(n_segments):
        if space.obs_dtype == "uint8":
            obs = rng.integers(0, 256, size=(T,) + space.obs_shape).astype(np.uint8)
        else:
            obs = rng.normal(size=(T,) + space.obs_shape).astype(np.float32)
        if space.action_kind == "discrete":
            act = rng.integers(0, space.action_n, size=T)
        else:
            act = rng.uniform(-1, 1, size=(T,) + space.act_shape).astype(np.float32)
        segs.append(SegmentData(f"{prefix}s{i}", obs, act))
    ret = {s.id: float(s.observations.astype(np.float64).mean(axis=tuple(range(1, s.observations.ndim))).sum())
           for s in segs}
    comps = []
    answers = [Preference.LEFT, Preference.RIGHT, Preference.EQUAL]
    for k in range(n_comparisons):
        a, b = rng.choice(n_segments, 2, replace=False)
        left, right = segs[a].id, segs[b].id
        answer = answers[2] if k % 7 == 0 else (answers[0] if ret[left] > ret[right] else answers[1])
        comps.append(ComparisonData(f"{prefix}c{k}", left, right, answer))
    return segs, comps


def same_stats(a: RewardStats, b: RewardStats) -> bool:
    def flat(s: RewardStats) -> list:
        values = [s.model_version, s.comparisons, s.comparisons_seen, s.segments, s.train_loss, s.val_loss,
                  s.train_accuracy, s.val_accuracy, s.train_steps, s.space, s.architecture, s.target_std]
        for m in s.members:
            values += [m.norm_mean, m.norm_std, m.train_loss, m.val_loss, m.l2]
        return ["nan" if isinstance(v, float) and math.isnan(v) else v for v in values]

    return flat(a) == flat(b)


@pytest.mark.parametrize("space", [VEC, IMG], ids=["mlp", "cnn"])
def test_round_trip_scores_stats_and_continued_training(tmp_path, rng: np.random.Generator, space: Space
                                                        ) -> None:
    cfg = RewardConfig.smoke(max_comparisons=40, norm_transitions=60, seed=7)
    model = RewardModel(space, cfg, checkpoint_dir=str(tmp_path))
    segs, comps = make_data(rng, space, 30, 50)
    model.add_comparisons(segs, comps)  # 10 evicted: the buffer and seen ids differ
    model.train(15)
    model.train(15)
    path, version = model.checkpoint()
    assert path == os.path.join(str(tmp_path), CHECKPOINT_NAME) and version == 2
    assert not [f for f in os.listdir(tmp_path) if f != CHECKPOINT_NAME]  # no temporary files left

    loaded = RewardModel.load(path)
    assert loaded.space == space and loaded.config == cfg
    assert same_stats(model.stats(), loaded.stats())
    obs = np.concatenate([s.observations for s in segs])
    act = np.concatenate([s.actions for s in segs])
    r1, v1 = model.score(obs, act)
    r2, v2 = loaded.score(obs, act)
    assert v1 == v2 == 2 and np.array_equal(r1, r2)  # bit-identical
    pairs = [(c.left_id, c.right_id) for c in comps[-10:]]
    d1, p1, _ = model.disagreement([], pairs)
    d2, p2, _ = loaded.disagreement([], pairs)
    assert np.array_equal(d1, d2) and np.array_equal(p1, p2)
    # Idempotency survives: the same comparisons are duplicates (also the evicted ones).
    result = loaded.add_comparisons(segs, comps)
    assert result.added == 0 and result.duplicates == len(comps)
    # Training continues where it stopped, exactly as the original would.
    out1, out2 = model.train(10), loaded.train(10)
    assert out1["version"] == out2["version"] == 3
    assert out1["train_loss"] == out2["train_loss"]
    assert np.array_equal(model.score(obs, act)[0], loaded.score(obs, act)[0])
    assert loaded.stats().train_steps == 40
    more_segs, more = make_data(rng, space, 6, 5, prefix="new-")
    assert loaded.add_comparisons(more_segs, more).added == 5


def test_checkpoint_write_is_atomic(tmp_path, rng: np.random.Generator, monkeypatch) -> None:
    model = RewardModel(VEC, RewardConfig.smoke(), checkpoint_dir=str(tmp_path / "ckpt"))
    segs, comps = make_data(rng, VEC, 10, 20)
    model.add_comparisons(segs, comps)
    model.train(5)
    path, version = model.checkpoint()
    assert version == 1
    good = open(path, "rb").read()
    model.train(5)

    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        real_save({"partial": True}, f)  # something reaches the disk, then the write fails
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        model.checkpoint()
    monkeypatch.setattr(torch, "save", real_save)
    assert open(path, "rb").read() == good  # the old checkpoint is untouched
    assert os.listdir(tmp_path / "ckpt") == [CHECKPOINT_NAME]  # the temporary file is gone
    assert RewardModel.load(path).stats().model_version == 1
    # The next write succeeds and replaces it.
    assert model.checkpoint() == (path, 2)
    assert RewardModel.load(path).stats().model_version == 2


def test_checkpoint_needs_a_place(tmp_path) -> None:
    model = RewardModel(VEC, RewardConfig.smoke())
    with pytest.raises(FailedPrecondition):
        model.checkpoint()
    path, version = model.checkpoint(str(tmp_path / "sub" / "explicit.pt"))
    assert version == 0 and os.path.exists(path)
    loaded = RewardModel.load(path)
    assert loaded.checkpoint_dir == str(tmp_path / "sub")
    obs = np.zeros((3, 6), np.float32)
    act = np.array([0, 1, 3])
    assert np.array_equal(model.score(obs, act)[0], loaded.score(obs, act)[0])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):
        RewardModel.load(str(tmp_path / "junk.pt"))


def test_checkpoint_while_training_in_the_background(tmp_path, rng: np.random.Generator) -> None:
    model = RewardModel(VEC, RewardConfig.smoke(steps_per_round=5), checkpoint_dir=str(tmp_path))
    segs, comps = make_data(rng, VEC, 20, 40)
    model.add_comparisons(segs, comps)
    model.start()
    try:
        while model.version < 2:
            model._stop.wait(0.02)
        path, version = model.checkpoint()
    finally:
        model.stop()
    loaded = RewardModel.load(path)
    assert version >= 2 and loaded.version == version
    # Weights, version and counters agree: every round publishes 5 steps, except the last one,
    # which the checkpoint may have cut short.
    assert 5 * (version - 1) < loaded.stats().train_steps <= 5 * version
    assert not loaded.training


def test_checkpoint_is_not_starved_by_a_long_background_round(tmp_path, rng: np.random.Generator) -> None:
    """The trainer re-takes its lock between rounds at once and a round can be long (the CNN on a
    CPU): a checkpoint asks the running round to end early instead of waiting for it."""
    import threading
    import time

    segs, comps = make_data(rng, VEC, 30, 60)
    # One round would take far longer than this test's patience (and `max_rounds_without_new_data`
    # off, so the loop never idles on its own).
    model = RewardModel(VEC, RewardConfig.smoke(steps_per_round=10_000_000, max_rounds_without_new_data=0),
                        checkpoint_dir=str(tmp_path))
    model.add_comparisons(segs, comps)
    model.start()
    try:
        time.sleep(1.0)  # the trainer is now inside its (endless) first round
        assert model.training
        done = threading.Event()
        result: list = []
        worker = threading.Thread(target=lambda: (result.append(model.checkpoint()), done.set()))
        worker.start()
        assert done.wait(60), "checkpoint() waited for a 10-million-step training round"
        path, version = result[0]
        assert os.path.exists(path) and version >= 1  # the interrupted round was published
        assert model.training  # and the trainer goes on afterwards
    finally:
        model.stop()
