"""The pipeline benchmark's physical-limit measurement (no Ray): the env alone and the env plus the
policy's forward pass, with the module an RLlib config builds."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("env_id", ["rlhp/FixedCartPole-v0", "Hopper-v5"])
def test_physical_limits_step_the_env_with_and_without_the_policy(pipeline, env_id):
    from learner.algo import build_algo_config

    config = pipeline.true_reward_config(build_algo_config(env_id, lambda: None, seed=0))
    env_config = dict(config.env_config)
    env = pipeline.TrueRewardEnv(env_config)
    module = config.get_rl_module_spec(env=env).build()
    env.close()
    limits = pipeline.physical_limits(module, lambda: pipeline.TrueRewardEnv(env_config), num_envs=3, steps=300)
    assert limits["num_envs"] == 3 and limits["steps"] == 300
    assert limits["env_only_per_s"] > 0 and limits["env_policy_per_s"] > 0


class _Iterations:
    """Stands in for an RLlib algorithm in `true_curve`'s loop: `train()` results with 100 sampled
    steps each and an ended episode (return = the iteration's number) every other iteration."""

    def __init__(self) -> None:
        self.i = 0

    def train(self) -> dict:
        self.i += 1
        ended = {"episode_return_mean": float(self.i)} if self.i % 2 == 0 else {}
        return {"env_runners": {"num_env_steps_sampled": 100, **ended}}


def test_true_curve_stops_at_its_budget_and_keeps_the_iterations_without_episodes(pipeline):
    import math

    rows = pipeline.true_curve(_Iterations(), steps=450, quiet=True)
    assert [r["env_steps"] for r in rows] == [100, 200, 300, 400, 500]
    assert math.isnan(rows[0]["true_return"]) and rows[1]["true_return"] == 2.0 and rows[3]["true_return"] == 4.0
    assert all(r["time_s"] >= 0 for r in rows)
    assert pipeline.true_curve(_Iterations(), seconds=0.0) == []  # the wall-clock budget also stops it
