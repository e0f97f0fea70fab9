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
