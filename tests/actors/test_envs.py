"""Envs of the actors: Atari preprocessing, MuJoCo physics state, fixed-horizon CartPole, and the
guarantee that the env reward never reaches RLlib (reward 0.0, true reward in the info)."""

from __future__ import annotations

import numpy as np
import pytest

from actors.envs import (FIXED_CARTPOLE_ID, SCORE_BANDS, RLlibEnv, TrueRewardToInfo, default_segment_length,
                         make_env, rllib_env_creator)


def _find_wrapper(env, cls):
    while env is not None:
        if isinstance(env, cls):
            return env
        env = getattr(env, "env", None)
    return None


def test_pong_observation_score_band_rgb_and_reward_moved_to_info():
    env = make_env("ALE/Pong-v5")
    try:
        assert isinstance(env, TrueRewardToInfo)
        assert env.observation_space.shape == (4, 84, 84)
        assert env.observation_space.dtype == np.uint8
        assert env.unwrapped.ale.getFloat("repeat_action_probability") == 0.0
        obs, info = env.reset(seed=0)
        env.action_space.seed(0)  # the same play every run (unseeded, one CI-like run saw no point scored in 150 steps)
        assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
        assert info["fps"] == 15.0  # 60 Hz / frame skip 4
        assert info["rgb"].shape == (210, 160, 3) and info["rgb"].dtype == np.uint8
        true_total = 0.0
        for _ in range(150):  # long enough for Pong to score (the score digits change)
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            assert reward == 0.0  # the env reward never reaches RLlib
            assert "true_reward" in info
            true_total += info["true_reward"]
            start, stop = SCORE_BANDS["Pong"][0]
            assert (obs[:, start:stop] == 0).all()  # score rows blanked in every stacked frame
            assert obs[:, stop:].max() > 0  # the playfield is not
            assert info["rgb"].shape == (210, 160, 3)
            assert not terminated
        assert true_total != 0.0  # someone scored: the true reward was recorded in the infos
        # The native RGB frame still shows the score; only the observation is blanked.
        assert info["rgb"][:20].max() > 0
    finally:
        env.close()


def test_atari_options():
    env = make_env("ALE/Breakout-v5", keep_rgb=False, blank_score=False, frame_stack=2, noop_max=0)
    try:
        obs, info = env.reset(seed=1)
        assert obs.shape == (2, 84, 84)
        assert "rgb" not in info
        assert obs[:, 2:6].max() > 0  # the score is visible when blanking is off
    finally:
        env.close()
    env = make_env("ALE/Breakout-v5", noop_max=0)
    try:
        obs, _ = env.reset(seed=1)
        assert (obs[:, 0:6] == 0).all()
    finally:
        env.close()


def test_hopper_qpos_qvel_in_info(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo writes MUJOCO_LOG.TXT into the working directory on warnings
    env = make_env("Hopper-v5")
    try:
        obs, info = env.reset(seed=0)
        assert info["qpos"].shape == (6,) and info["qvel"].shape == (6,)
        assert info["fps"] == pytest.approx(125.0)
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert reward == 0.0 and isinstance(info["true_reward"], float)
        data = env.unwrapped.data
        np.testing.assert_allclose(info["qpos"], data.qpos)
        np.testing.assert_allclose(info["qvel"], data.qvel)
        # qpos/qvel are copies, not views of the live physics state.
        before = info["qpos"].copy()
        env.step(env.action_space.sample())
        np.testing.assert_array_equal(info["qpos"], before)
    finally:
        env.close()


def test_hopper_unhealthy_penalty_only_while_fallen(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plain, penalised = make_env("Hopper-v5"), make_env("Hopper-v5", unhealthy_penalty=2.0)
    try:
        plain.reset(seed=0)
        penalised.reset(seed=0)
        rng = np.random.default_rng(0)
        healthy_seen = fallen_seen = 0
        for _ in range(300):  # random torques: upright at first, fallen (and not terminated) later
            a = rng.uniform(-1, 1, size=3).astype(np.float32)
            _, _, term_a, _, info_a = plain.step(a)
            _, _, term_b, _, info_b = penalised.step(a)
            assert not term_a and not term_b  # still no early termination
            healthy = penalised.unwrapped.is_healthy
            expected = info_a["true_reward"] - (0.0 if healthy else 2.0)
            assert info_b["true_reward"] == pytest.approx(expected)
            healthy_seen += healthy
            fallen_seen += not healthy
        assert healthy_seen > 0 and fallen_seen > 0
    finally:
        plain.close()
        penalised.close()
    with pytest.raises(ValueError, match="is_healthy"):
        make_env("HalfCheetah-v5", unhealthy_penalty=1.0)


def test_fixed_cartpole_fixed_horizon_and_binary_reward():
    env = make_env(FIXED_CARTPOLE_ID)
    try:
        obs, info = env.reset(seed=0)
        assert obs.shape == (4,)
        rewards, steps = [], 0
        while True:
            obs, reward, terminated, truncated, info = env.step(0)  # always push left: the pole falls
            assert reward == 0.0 and not terminated
            rewards.append(info["true_reward"])
            steps += 1
            if truncated:
                break
        assert steps == 200
        assert set(rewards) == {0.0, 1.0}
        assert rewards[0] == 1.0 and rewards[-1] == 0.0
        assert np.isfinite(obs).all() and -np.pi <= obs[2] < np.pi
    finally:
        env.close()
    short = make_env(FIXED_CARTPOLE_ID, horizon=7)
    short.reset(seed=0)
    done = [short.step(1)[3] for _ in range(7)]
    assert done == [False] * 6 + [True]


def test_classic_control_and_rllib_env_class():
    env = rllib_env_creator({"env_id": "CartPole-v1", "rlhp_segments": {"fraction": 1.0}})
    env.reset(seed=0)
    _, reward, _, _, info = env.step(0)
    assert reward == 0.0 and info["true_reward"] == 1.0
    wrapped = RLlibEnv({"env_id": FIXED_CARTPOLE_ID, "env_opts": {"horizon": 5}})
    _, info = wrapped.reset(seed=0)
    assert info["fps"] == 50.0
    assert _find_wrapper(wrapped, TrueRewardToInfo) is not None


def test_default_segment_lengths(tmp_path, monkeypatch):
    from actors.envs import MUJOCO_DT, MUJOCO_ENVS

    monkeypatch.chdir(tmp_path)
    for name in ("Hopper", "HalfCheetah", "Reacher"):  # the table matches the installed envs
        env = make_env(f"{name}-v5")
        assert env.unwrapped.dt == pytest.approx(MUJOCO_DT[name])
        env.close()
    assert set(MUJOCO_DT) == set(MUJOCO_ENVS)
    assert default_segment_length("ALE/Pong-v5") == 25
    assert default_segment_length("HalfCheetah-v5") == 30  # 1.5 s at 20 steps/s
    assert default_segment_length("Hopper-v5") == 60  # 1.5 s would be 187 steps: clamped to 60
    assert default_segment_length("Reacher-v5") == 50  # 60 would never fit its 50-step episodes
    # a random policy's episodes last ~5 steps: 1.5 s (30 steps) would never fit one
    assert default_segment_length("InvertedDoublePendulum-v5") == 10
    assert default_segment_length("InvertedPendulum-v5") == 10
    assert default_segment_length(FIXED_CARTPOLE_ID) == 25


def test_random_actions_scale_the_box_per_episode_and_are_reproducible():
    """The random policy of the initial segments: episode i acts in the box scaled by scales[i % n]
    and clipped to it (mixed scales let the first labels show what large actions cost)."""
    import gymnasium as gym

    from actors.envs import random_actions

    space = gym.spaces.Box(low=np.array([-1.0, 0.0], np.float32), high=np.array([1.0, 4.0], np.float32))
    sample = random_actions(space, (0.1, 1.0, 2.0))
    space.seed(3)
    small = np.array([sample(0) for _ in range(500)])
    full = np.array([sample(1) for _ in range(500)])
    mid = np.array([0.0, 2.0])
    assert small.dtype == np.float32 and np.all(np.abs(small - mid) <= np.array([0.1, 0.2]) + 1e-6)
    assert np.all(np.abs(full - mid) <= np.array([1.0, 2.0]) + 1e-6)
    assert np.abs(full - mid).max(axis=0) == pytest.approx([1.0, 2.0], abs=0.05)  # the whole box
    wide = np.array([sample(2) for _ in range(2000)])
    assert np.all((wide >= space.low) & (wide <= space.high))  # clipped to the box
    at_edge = np.isclose(wide, space.low) | np.isclose(wide, space.high)
    assert at_edge.mean(axis=0) == pytest.approx([0.5, 0.5], abs=0.05)  # scale 2: half at the edge
    space.seed(3)
    assert np.array_equal(np.array([sample(0) for _ in range(500)]), small)
    # no scales: the space's own sampler, Discrete spaces included
    discrete = gym.spaces.Discrete(3)
    assert random_actions(discrete)(7) in range(3)
    with pytest.raises(ValueError, match="bounded continuous"):
        random_actions(discrete, (0.5,))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive numbers"):
            random_actions(space, (0.5, bad))
