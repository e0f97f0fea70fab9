"""RLlib algorithm configs for training a policy on the learned reward (new API stack, RLlib 2.60).

`build_algo_config` wires the parts:

- env: `actors.envs.RLlibEnv` (every env wrapped in `TrueRewardToInfo`: RLlib sees reward
  0.0), env id and options in ``env_config``;
- actors: `actors.callbacks.SegmentCallbacks` on every env runner (segments → query service, true
  return metrics), options in ``env_config["rlhp_segments"]``;
- learner: `learner.reward_connector.LearnedRewardConnector` via ``.learners(learner_connector=...)``
  (RLlib 2.60 deprecates the ``.training(learner_connector=...)`` spelling):
  one batched `score` call per train batch, before GAE / v-trace;
- presets: RLlib hyper-parameters of the env family (`learner.presets`: classic control, MuJoCo,
  Atari with PPO, or APPO for many-worker Atari). Atari observations are (4, 84, 84) uint8 (channels first, as the reward model
  sees them); `ImagePPOTorchRLModule` / `ImageAPPOTorchRLModule` transpose them to channels last and
  scale them to [0, 1] for RLlib's default CNN.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import gymnasium as gym
import numpy as np
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.algorithms.appo import APPOConfig
from ray.rllib.algorithms.appo.torch.default_appo_torch_rl_module import DefaultAPPOTorchRLModule
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from actors.callbacks import ENV_CONFIG_KEY, SegmentCallbacks, SegmentOptions
from actors.envs import RLlibEnv, default_segment_length
from learner.presets import MODEL_CONFIGS, RL_SETTINGS, preset_for
from learner.reward_connector import BackendSpec, LearnedRewardBuilder

# --------------------------------------------------------------------------------------------
# Channels-first image observations for RLlib's (channels-last) default CNN


def _channels_first(shape: tuple[int, ...]) -> bool:
    return len(shape) == 3 and shape[0] < shape[1] and shape[0] < shape[2] and shape[0] <= 16


def _hwc_space(space: gym.Space | None) -> gym.Space | None:
    if isinstance(space, gym.spaces.Box) and _channels_first(tuple(space.shape)):
        return gym.spaces.Box(0.0, 1.0, tuple(space.shape[1:]) + (space.shape[0],), np.float32)
    return space


class _ImageObsMixin:
    """(B, C, H, W) uint8 observations → (B, H, W, C) float in [0, 1] before the encoder."""

    def __init__(self, *args, observation_space=None, **kwargs):
        shape = tuple(getattr(observation_space, "shape", ()) or ())
        self._chw = shape if _channels_first(shape) else None
        super().__init__(*args, observation_space=_hwc_space(observation_space), **kwargs)

    def _prep(self, batch: dict) -> dict:
        obs = batch.get(Columns.OBS)
        if obs is None or not hasattr(obs, "dim"):
            return batch
        if self._chw is not None and obs.dim() == 4 and tuple(obs.shape[1:]) == self._chw:
            obs = obs.permute(0, 2, 3, 1)
        if not obs.is_floating_point():
            obs = obs.float() / 255.0
        batch = dict(batch)
        batch[Columns.OBS] = obs
        return batch

    def _forward(self, batch, **kwargs):
        return super()._forward(self._prep(batch), **kwargs)

    def _forward_train(self, batch, **kwargs):
        return super()._forward_train(self._prep(batch), **kwargs)

    def compute_values(self, batch, embeddings=None):
        return super().compute_values(batch if embeddings is not None else self._prep(batch), embeddings)


class ImagePPOTorchRLModule(_ImageObsMixin, DefaultPPOTorchRLModule):
    """PPO's default module for (C, H, W) uint8 observations."""


class ImageAPPOTorchRLModule(_ImageObsMixin, DefaultAPPOTorchRLModule):
    """APPO's default module for (C, H, W) uint8 observations."""

    def forward_target(self, batch):
        return super().forward_target(self._prep(batch))


def _route(config: AlgorithmConfig, overrides: dict[str, Any]) -> None:
    """Send each override to the config method that takes it (training, env_runners, learners…)."""
    methods = ("training", "env_runners", "learners", "evaluation", "reporting", "debugging",
               "resources", "fault_tolerance")
    left = dict(overrides)
    for name in methods:
        method = getattr(config, name)
        params: set[str] = set()
        for cls in type(config).__mro__:  # subclasses forward **kwargs to the base class
            if name in vars(cls):
                params |= set(inspect.signature(vars(cls)[name]).parameters)
        params -= {"self", "kwargs", "args"}
        mine = {k: v for k, v in left.items() if k in params}
        if mine:
            method(**mine)
            for k in mine:
                left.pop(k)
    if left:
        raise TypeError(f"unknown algorithm settings: {', '.join(sorted(left))}")


def build_algo_config(
    env_id: str,
    reward_address_or_factory: BackendSpec,
    *,
    algo: str = "ppo",
    num_env_runners: int = 0,
    num_envs_per_env_runner: int = 1,
    num_learners: int = 0,
    env_opts: dict[str, Any] | None = None,
    experiment: str = "default",
    segment_length: int | None = None,
    segment_fraction: float = 0.1,
    query_address: str | None = None,
    query_token: str = "",
    streamer_factory: Callable[[], Any] | None = None,
    segment_flush_s: float = 0.0,
    seed: int | None = None,
    preset: str | None = None,
    model_config: dict[str, Any] | None = None,
    evaluation_interval: int | None = None,
    evaluation_episodes: int = 5,
    extra_learner_connectors: Callable[[], list] | None = None,
    **overrides: Any,
) -> AlgorithmConfig:
    """A `PPOConfig` (or `APPOConfig` with ``algo="appo"``) that trains on the learned reward.

    Args:
        env_id: gymnasium id (``ALE/Pong-v5``, ``Hopper-v5``, ``rlhp/FixedCartPole-v0``, …).
        reward_address_or_factory: reward service ``host:port``, a zero-argument factory of a
            `RewardBackend`, or a backend object (in-process learner only).
        algo: ``"ppo"`` or ``"appo"``.
        num_env_runners, num_envs_per_env_runner, num_learners: RLlib's scaling knobs.
        env_opts: options for `actors.envs.make_env`.
        experiment, segment_length, segment_fraction, query_address, query_token,
            streamer_factory, segment_flush_s (its `flush_s`): see `actors.callbacks.SegmentOptions`
            (segment_length defaults to `actors.envs.default_segment_length`).
        seed: RLlib's seed (env runners and learner).
        preset: ``classic``/``mujoco``/``atari`` hyper-parameters (default: from the env id).
        model_config: entries replacing the preset's `DefaultModelConfig` fields.
        evaluation_interval: evaluate every N iterations on `evaluation_episodes` episodes (true
            return under ``result["evaluation"]["env_runners"]["true_episode_return"]``).
        extra_learner_connectors: factory of further learner pieces placed after the reward
            connector (tests, diagnostics).
        overrides: any setting of `training()`, `env_runners()`, `learners()`, … (e.g. ``lr``,
            ``train_batch_size_per_learner``, ``rollout_fragment_length``).
    """
    algo = algo.lower()
    if algo not in ("ppo", "appo"):
        raise ValueError(f"algo must be 'ppo' or 'appo', not {algo!r}")
    preset = preset or preset_for(env_id)
    if preset not in MODEL_CONFIGS:
        raise ValueError(f"unknown preset {preset!r}; one of {sorted(MODEL_CONFIGS)}")
    image = preset == "atari"

    opts = SegmentOptions(
        experiment=experiment, env_id=env_id,
        length=int(segment_length or default_segment_length(env_id)), fraction=float(segment_fraction),
        query_address=query_address, token=query_token,
        seed=seed, streamer_factory=streamer_factory, flush_s=float(segment_flush_s))
    env_config = {"env_id": env_id, "env_opts": dict(env_opts or {}), ENV_CONFIG_KEY: opts.to_env_config()}

    config: AlgorithmConfig = APPOConfig() if algo == "appo" else PPOConfig()
    config.environment(env=RLlibEnv, env_config=env_config)
    config.env_runners(num_env_runners=num_env_runners, num_envs_per_env_runner=num_envs_per_env_runner)
    config.learners(num_learners=num_learners)
    config.callbacks(SegmentCallbacks)
    # An env runner that dies (a killed process, a lost node) is replaced and sampling goes on; the
    # new one gets the current weights. RLlib's default waits 60 s before recreating it.
    config.fault_tolerance(restart_failed_env_runners=True, delay_between_env_runner_restarts_s=5.0)
    config.learners(learner_connector=LearnedRewardBuilder(reward_address_or_factory,
                                                           extra=extra_learner_connectors))

    hyper = dict(RL_SETTINGS["atari_appo" if (image and algo == "appo") else preset])
    if algo == "appo":
        for k in ("lambda_", "num_epochs", "minibatch_size", "vf_clip_param"):
            hyper.pop(k, None)
        # RLlib polls its remote env runners for samples with a 0 s timeout, in a loop that runs
        # until the iteration's 10 s are up: the driver spins a whole core. On 2 cores that starved
        # the env runner (Pong: 140 env steps/s; waiting up to 50 ms for a sample instead: 370/s,
        # docs/benchmarks.md "Pong with APPO").
        hyper["timeout_s_sampler_manager"] = 0.05
    if image and algo == "ppo":
        fragment = 128
        hyper["train_batch_size_per_learner"] = max(
            1024, fragment * num_envs_per_env_runner * max(1, num_env_runners) // max(1, num_learners))
        hyper["rollout_fragment_length"] = fragment
    if image and algo == "appo":
        hyper["rollout_fragment_length"] = 50
    hyper.update(overrides)
    _route(config, hyper)

    model = dict(MODEL_CONFIGS[preset])
    model.update(model_config or {})
    if image:
        module_class = ImageAPPOTorchRLModule if algo == "appo" else ImagePPOTorchRLModule
        config.rl_module(rl_module_spec=RLModuleSpec(module_class=module_class, model_config=model))
    else:
        config.rl_module(model_config=model)

    if seed is not None:
        config.debugging(seed=int(seed))
    if evaluation_interval:
        config.evaluation(evaluation_interval=int(evaluation_interval), evaluation_num_env_runners=0,
                          evaluation_duration=int(evaluation_episodes),
                          evaluation_duration_unit="episodes")
    return config
