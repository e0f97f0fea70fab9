"""Goals other than the env reward: the goal becomes the true reward the teacher and evaluation
read, the policy still gets 0.0, and the backflip measure counts full backward rotations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from actors.envs import make_env
from actors.goals import GoalReward, backflips, hopper_backflip, load_goal


def test_load_goal_errors_are_messages():
    assert load_goal("actors.goals:hopper_backflip") is hopper_backflip
    for bad in ("nocolon", "actors.goals:nope", "no_such_module_xyz:f", ":f"):
        with pytest.raises(ValueError, match="goal"):
            load_goal(bad)


def test_hopper_goal_replaces_the_true_reward():
    env = make_env("Hopper-v5", goal="actors.goals:hopper_backflip")
    plain = make_env("Hopper-v5")
    try:
        assert isinstance(env.env, GoalReward)
        env.reset(seed=0)
        plain.reset(seed=0)
        a = np.full(3, 0.5, np.float32)
        _, r, _, _, info = env.step(a)
        _, _, _, _, plain_info = plain.step(a)
        assert r == 0.0  # the policy never sees it
        want = -info["qvel"][2] + 0.5 * max(0.0, info["qpos"][1] - 0.7)
        assert info["true_reward"] == pytest.approx(want)
        assert info["env_reward"] == pytest.approx(plain_info["true_reward"])
        assert info["true_reward"] != pytest.approx(plain_info["true_reward"])
    finally:
        env.close()
        plain.close()


def test_backflip_measure_counts_full_backward_rotations():
    qpos = np.zeros((100, 6))
    qpos[:, 2] = np.linspace(0.0, -2.2 * 2 * math.pi, 100)  # 2.2 turns backwards
    assert backflips(qpos)["backflips"] == 2.0
    qpos[:, 2] = np.linspace(0.0, 3 * 2 * math.pi, 100)  # forwards: no backflip
    assert backflips(qpos)["backflips"] == 0.0
    assert hopper_backflip.measure is backflips
