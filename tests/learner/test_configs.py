"""`--set FIELD=VALUE` parsing."""

from __future__ import annotations

import math

import pytest

from learner import configs, experiment


def test_set_values_are_typed_and_exponents_are_numbers():
    out = configs.parse_set(["rl.overrides.vf_clip_param=1e10", "reward.lr=3e-4", "query.label_budget=700",
                             "reward.use_actions=false", "teacher.goal=actors.goals:hopper_backflip",
                             "teacher.beta=inf", "run.labelers="])
    assert out["rl"]["overrides"]["vf_clip_param"] == 1e10  # YAML 1.1 alone reads "1e10" as text
    assert out["reward"] == {"lr": 3e-4, "use_actions": False}
    assert out["query"]["label_budget"] == 700 and isinstance(out["query"]["label_budget"], int)
    assert out["teacher"]["goal"] == "actors.goals:hopper_backflip"
    assert math.isinf(out["teacher"]["beta"])
    assert out["run"]["labelers"] == ""


def test_set_reaches_the_config_and_rejects_bad_items():
    cfg = experiment.resolve("Hopper-v5", "mujoco", sets=["rl.overrides.vf_clip_param=1e10"])
    assert cfg.rl.overrides == {"vf_clip_param": 1e10}
    with pytest.raises(configs.ConfigError):
        configs.parse_set(["no-equals-sign"])
