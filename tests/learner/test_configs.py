"""`--set FIELD=VALUE` parsing, and the goal in words (`env.goal_text`, `--goal`)."""

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


def test_mujoco_preset_mixes_random_action_scales_only_where_control_cost_matters():
    """Reacher and Ant learn far better with random segments of mixed action scales; Hopper worse
    (docs/label_efficiency.md), so the preset sets them per task and `--set` can clear them."""
    for env_id in ("Reacher-v5", "Ant-v5"):
        assert experiment.resolve(env_id).run.random_action_scales == (0.1, 0.3, 1.0, 2.0)
    for env_id in ("Hopper-v5", "HalfCheetah-v5", "rlhp/FixedCartPole-v0", "ALE/Pong-v5"):
        assert experiment.resolve(env_id).run.random_action_scales == ()
    assert experiment.resolve("Reacher-v5", sets=["run.random_action_scales="]).run.random_action_scales == ()
    assert experiment.resolve("Hopper-v5", sets=["run.random_action_scales=0.5,1"]).run.random_action_scales == (0.5, 1.0)


def test_the_goal_in_words_defaults_per_env_family_and_can_be_given(tmp_path):
    from learner.train_cli import build_parser, config_from_args

    assert experiment.resolve("ALE/Pong-v5", "smoke").goal_text.startswith("win points")
    assert experiment.resolve("Hopper-v5", "smoke").goal_text == "move forward (to the right) fast without falling"
    assert "upright" in experiment.resolve("rlhp/FixedCartPole-v0", "smoke").goal_text
    assert experiment.resolve("ALE/Tennis-v5", "smoke").goal_text == "score points in the game"
    # a teacher goal (not the env reward) brings its own description
    flip = experiment.resolve("Hopper-v5", "smoke", sets=["teacher.goal=actors.goals:hopper_backflip"])
    assert flip.goal_text.startswith("do backflips")
    # `rlhp train --goal` wins, and is saved with the run (it may hold a colon: no YAML parsing)
    args = build_parser().parse_args(["--env", "Hopper-v5", "--preset", "smoke", "--runs-dir", str(tmp_path),
                                      "--goal", "hop: high, not far"])
    cfg, _, _ = config_from_args(args)
    assert cfg.env.goal_text == "hop: high, not far" and cfg.goal_text == "hop: high, not far"
    configs.save(cfg, tmp_path / "config.yaml")
    assert experiment.load(str(tmp_path / "config.yaml")).goal_text == "hop: high, not far"


def test_device_puts_the_learner_and_the_reward_model_on_a_gpu_and_cpu_changes_nothing(tmp_path, monkeypatch):
    import torch

    from learner.train_cli import build_parser, config_from_args

    def cfg_for(*extra: str):
        args = build_parser().parse_args(["--env", "Hopper-v5", "--runs-dir", str(tmp_path), *extra])
        return config_from_args(args)[0]

    plain = experiment.resolve("Hopper-v5", None, runs_dir=str(tmp_path))
    assert cfg_for("--device", "cpu") == plain
    cuda = cfg_for("--device", "cuda:1")
    assert cuda.reward.device == "cuda:1" and cuda.rl.num_gpus_per_learner == 1.0
    assert (cuda.rl.overrides, cuda.rl.num_env_runners) == (plain.rl.overrides, plain.rl.num_env_runners)
    # auto: the GPU when torch sees one, else the CPU settings as they are
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cfg_for() == plain
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cfg_for().reward.device == "cuda"
    for bad in ("tpu", "cudax", "cuda:"):
        with pytest.raises(configs.ConfigError, match="--device must be"):
            cfg_for("--device", bad)
    # a device chosen in the config is kept by "auto"
    assert cfg_for("--set", "reward.device=cuda:1").reward.device == "cuda:1"
    # a resumed run keeps its saved device unless --device is given
    run = tmp_path / "gpu-run"
    run.mkdir()
    configs.save(cuda, run / "config.yaml")
    resume = lambda *extra: config_from_args(build_parser().parse_args(["--resume", str(run), *extra]))[0]  # noqa: E731
    assert resume().reward.device == "cuda:1"
    back = resume("--device", "cpu")
    assert back.reward.device == "cpu" and back.rl.num_gpus_per_learner == 0.0


def test_the_atari_policy_is_the_small_cnn_its_last_conv_valid():
    """RLlib 2.60 pads every conv "same" unless told: the last 11×11 layer then gave 30,976 features
    into 8M-weight heads and made Pong's learner ~10× slower (docs/benchmarks.md)."""
    import torch

    torch.set_num_threads(1)
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    from learner.algo import build_algo_config

    runner = SingleAgentEnvRunner(config=build_algo_config("ALE/Pong-v5", lambda: None, seed=0))
    try:
        heads = [m for m in runner.module.modules() if isinstance(m, torch.nn.Linear)]
        assert heads and heads[0].in_features == 256  # 1×1×256 out of the encoder
        assert sum(p.numel() for p in runner.module.parameters()) < 1_500_000
    finally:
        runner.stop()


def test_appo_waits_for_samples_instead_of_spinning_and_an_override_wins():
    """RLlib's APPO polls its env runners with a 0 s timeout: the driver spun a core and starved the
    env runner on 2 cores (Pong 140 → 370 env steps/s with a 50 ms wait, docs/benchmarks.md)."""
    from learner.algo import build_algo_config

    appo = build_algo_config("ALE/Pong-v5", lambda: None, algo="appo", seed=0, num_env_runners=1)
    assert appo.timeout_s_sampler_manager == 0.05
    mine = build_algo_config("ALE/Pong-v5", lambda: None, algo="appo", timeout_s_sampler_manager=0.0)
    assert mine.timeout_s_sampler_manager == 0.0
    assert not hasattr(build_algo_config("ALE/Pong-v5", lambda: None), "timeout_s_sampler_manager")
