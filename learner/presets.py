"""The presets of `rlhp train`, in one place.

A preset has two parts, both looked up by the names here:

- the experiment settings (step and label budgets, reward-model and schedule settings, RL
  overrides): `learner.experiment.preset(name, env_id)`, the `ExperimentConfig` the run saves;
- the RLlib hyper-parameters and network of the env's family (`RL_SETTINGS`, `MODEL_CONFIGS`),
  which `learner.algo.build_algo_config` starts from; a preset's `rl.overrides` go on top.

`preset_for(env_id)` picks the family (and so the default preset) from the env id. No Ray here, so
the command line and the config code can read the table without importing RLlib.
"""

from __future__ import annotations

from typing import Any

from actors.envs import is_atari, is_mujoco

PRESETS = ("smoke", "classic", "mujoco", "atari")
"""Experiment presets (`rlhp train --preset`): `smoke` runs a few iterations of anything (tests, a
first look); the others are the env families."""


def preset_for(env_id: str) -> str:
    """The env family of `env_id`, which is also its default preset: atari, mujoco or classic."""
    if is_atari(env_id):
        return "atari"
    if is_mujoco(env_id):
        return "mujoco"
    return "classic"


RL_SETTINGS: dict[str, dict[str, Any]] = {
    # CartPole-sized tasks: faster than RLlib's defaults. Measured once each when they were chosen
    # (not re-run since): PPO on FixedCartPole reached 200/200 after ~13k env steps with a perfect
    # normalised reward and after ~17k with the env's own reward; with lr 3e-4 and batch 2000 it
    # needed > 24k and ~44k. The `classic` experiment preset is tested as it is
    # (docs/label_efficiency.md, tests/learner/test_train.py).
    "classic": dict(lr=1e-3, gamma=0.99, lambda_=0.95, train_batch_size_per_learner=1000,
                    minibatch_size=64, num_epochs=10, clip_param=0.2, vf_loss_coeff=0.5,
                    vf_clip_param=1e4, entropy_coeff=0.0, use_kl_loss=False),
    # MuJoCo locomotion: the usual PPO settings (learned rewards are normalised to std 1).
    "mujoco": dict(lr=3e-4, gamma=0.99, lambda_=0.95, train_batch_size_per_learner=2048,
                   minibatch_size=64, num_epochs=10, clip_param=0.2, vf_loss_coeff=0.5,
                   vf_clip_param=1e4, entropy_coeff=0.0, grad_clip=0.5, use_kl_loss=False),
    # Atari: PPO paper settings (learned rewards are normalised to std 0.05).
    "atari": dict(lr=2.5e-4, gamma=0.99, lambda_=0.95, minibatch_size=256, num_epochs=4,
                  clip_param=0.1, vf_loss_coeff=0.5, vf_clip_param=1e4, entropy_coeff=0.01,
                  grad_clip=0.5, use_kl_loss=False),
    # Many-worker Atari with APPO (IMPALA-style v-trace).
    "atari_appo": dict(lr=5e-4, gamma=0.99, train_batch_size_per_learner=500, vf_loss_coeff=0.5,
                       entropy_coeff=0.01, grad_clip=40.0, clip_param=0.4, use_kl_loss=False),
}
"""RLlib `training()` settings of each env family (`atari_appo`: Atari with ``rl.algo=appo``)."""

MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "classic": dict(fcnet_hiddens=[64, 64], fcnet_activation="tanh", vf_share_layers=False),
    "mujoco": dict(fcnet_hiddens=[64, 64], fcnet_activation="tanh", vf_share_layers=False),
    # RLlib's 84×84 CNN ([16,8,4], [32,4,2], [256,11,1]) with a shared encoder, its last layer "valid"
    # as intended (1×1×256 out). RLlib 2.60's default pads every layer "same", so the last one gave
    # 11×11×256 = 30,976 features into two 8M-weight heads: 3.4 s per forward+backward of 256 frames
    # on one core, ~70 s of learner per 1,024-step Pong iteration (docs/benchmarks.md).
    "atari": dict(conv_filters=[[16, 8, 4], [32, 4, 2], [256, 11, 1, "valid"]], conv_activation="relu",
                  head_fcnet_hiddens=[256], vf_share_layers=True),
}
"""RLlib `DefaultModelConfig` fields of each env family."""
