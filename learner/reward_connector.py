"""Learner connector that replaces the rewards of a train batch with the learned reward r̂(o, a).

Where it sits (RLlib 2.60, new API stack). `AlgorithmConfig.build_learner_connector` puts the
custom pieces (``.training(learner_connector=...)``) first; `PPOLearner.build` (and
`IMPALAConfig.build_learner_connector` for APPO/IMPALA) then *prepends*
`AddOneTsToEpisodesAndTruncate` and *appends* `GeneralAdvantageEstimation` (PPO). So this piece sees
the episodes after the artificial bootstrap step was added (marked by
``shared_data["_added_loss_mask_for_valid_episode_ts"]``) and before the batch is built and before
GAE/v-trace run — the same place as RLlib's `CountBasedCuriosity` example. It rewrites the rewards
inside the episodes (`set_rewards`), so every later piece, advantages included, uses r̂ only. The env
reward never gets here: `actors.envs.TrueRewardToInfo` returns 0.0 to RLlib.

Alignment: a `SingleAgentEpisode` of length T holds T+1 observations and T actions/rewards; the
reward of transition t is r̂(o_t, a_t), so we score ``get_observations(slice(0, T))`` with
``get_actions(slice(0, T))``. The artificial bootstrap step (index T, loss-masked, no GAE
propagation) keeps reward 0.0.

Why on the learner and not on the actors:

- One batched `score` call per train batch (e.g. 4,000 transitions), where the reward service (with
  the GPU) scores at full batch efficiency. Actor-side scoring gives one call per `sample()` per
  env runner (tens to hundreds per update on a many-worker Atari run), each smaller, plus a
  channel per actor.
- Every transition of an update is scored by the same reward-model version (logged), and the
  newest one: the ensemble keeps training while the actors sample, and APPO/IMPALA train on
  episodes that may be several policy versions old — scoring at update time keeps rewards fresh.
- Actors stay light: no reward network, no RPC latency in the sampling loop, nothing to do on env
  runner restarts.
- Cost: the call is on the learner's critical path (measured in the tests' benchmark; for Atari
  the observations of a 4k batch are ~110 MB, streamed by the client). Actor-side scoring could
  overlap this with sampling, but only by giving up the two properties above.

The backend is given as an address (``"host:port"`` → `reward_service.client.RewardClient`, created
lazily in the learner process so no gRPC channel is opened before Ray pickles or forks), a
zero-argument factory (called lazily in the learner process), or a `RewardBackend` object (used
as is; only sensible in-process, e.g. ``num_learners=0``).

Metrics (learner results, under ``result["learners"]["__all_modules__"]``):
``learned_reward_model_version``, ``learned_reward_mean``, ``learned_reward_std``,
``learned_reward_score_s`` (seconds in `score`), ``learned_reward_transitions`` and
``learned_reward_score_calls`` (lifetime sums), ``learned_reward_fallback``.

When the reward service cannot be reached the connector scores with its own copy of the last
version it fetched (`RewardModel.snapshot` / `from_snapshot`, refreshed at most every 30 s when the
version changed) and tries the service again every 10 s: a reward service that dies or restarts
does not stop the learner, which says so (``learned_reward_fallback`` = 1, and the progress line).
"""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from typing import Any, Callable, List, Optional

import gymnasium as gym
import numpy as np
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core import ALL_MODULES, DEFAULT_MODULE_ID
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.typing import EpisodeType

from rlhp.types import model_actions

BackendSpec = Any  # str address | Callable[[], RewardBackend] | RewardBackend

_BOOTSTRAP_TS_FLAG = "_added_loss_mask_for_valid_episode_ts"
VERSION_METRIC = "learned_reward_model_version"
FALLBACK_METRIC = "learned_reward_fallback"
"""1 when the last train batch was scored by the learner's copy (the service was unreachable)."""

log = logging.getLogger("rlhp.learner")


def reward_version(result: dict) -> int:
    """The reward-model version that scored the last train batch, from an `Algorithm.train()`
    result (where `LearnedRewardConnector` logs it); 0 before any batch was scored."""
    node = (result.get("learners") or {}).get(ALL_MODULES) or {}
    return int(node.get(VERSION_METRIC, 0) or 0)


def reward_fallback(result: dict) -> bool:
    """Whether the last train batch was scored by the learner's local copy of the reward model."""
    node = (result.get("learners") or {}).get(ALL_MODULES) or {}
    value = node.get(FALLBACK_METRIC, 0)
    return bool(value) and value == value  # NaN (never logged) is no


def resolve_backend(spec: BackendSpec) -> Any:
    """Address → `RewardClient`; object with ``score`` → itself; callable → ``spec()``."""
    if isinstance(spec, str):
        from reward_service.client import RewardClient

        return RewardClient(spec)
    if hasattr(spec, "score"):
        return spec
    if callable(spec):
        backend = spec()
        if not hasattr(backend, "score"):
            raise TypeError(f"reward backend factory {spec!r} returned {backend!r}, which has no score()")
        return backend
    raise TypeError(f"reward backend must be an address, a factory or an object with score(), got {spec!r}")


def _real_lengths(episodes: list, shared_data: Optional[dict]) -> list[int]:
    """Each episode's number of real transitions: without the artificial bootstrap step that
    `AddOneTsToEpisodesAndTruncate` appended (flagged in ``shared_data``)."""
    bootstrap_ts = bool(shared_data and shared_data.get(_BOOTSTRAP_TS_FLAG))
    return [max(0, len(ep) - (1 if bootstrap_ts else 0)) for ep in episodes]


def _write_rewards(episodes: list, lens: list[int], rewards: np.ndarray) -> None:
    """Put `rewards` (the real transitions of all episodes, in order) into the episodes; the
    bootstrap step (if any) keeps 0.0."""
    start = 0
    with warnings.catch_warnings():
        # The episode's reward buffer checks `Box(()).contains(np.float32)`, which warns.
        warnings.filterwarnings("ignore", message=".*Casting input x to numpy array.*")
        for ep, n in zip(episodes, lens):
            new = np.zeros(len(ep), dtype=np.float32)
            new[:n] = rewards[start:start + n]
            start += n
            ep.set_rewards(new_data=new)


class LearnedRewardConnector(ConnectorV2):
    """Replaces every episode's rewards with r̂(o_t, a_t) from one batched `score` call."""

    def __init__(self, input_observation_space: Optional[gym.Space] = None,
                 input_action_space: Optional[gym.Space] = None, *, backend: BackendSpec,
                 clip_actions: bool = True, copy_every_s: float = 30.0, retry_after_s: float = 3.0,
                 **kwargs):
        super().__init__(input_observation_space, input_action_space, **kwargs)
        self._backend_spec = backend
        self._backend: Any = None
        self.clip_actions = clip_actions
        self.score_calls = 0
        self.last_version: int | None = None
        self.last_rewards: np.ndarray | None = None
        # The local copy of the published model (`RewardModel.from_snapshot`): refreshed at most every
        # `copy_every_s` when the service has a new version; it scores while the service is
        # unreachable, and the service is tried again `retry_after_s` after a failure.
        self.copy: Any = None
        self.copy_version = -1
        self.copy_every_s = float(copy_every_s)
        self.retry_after_s = float(retry_after_s)
        self._copied_at = -math.inf
        self._down_until = -math.inf
        self.fallback_batches = 0

    @property
    def backend(self) -> Any:
        if self._backend is None:
            self._backend = resolve_backend(self._backend_spec)
        return self._backend

    def _module_action_space(self, rl_module: Any) -> Optional[gym.Space]:
        try:
            return rl_module[DEFAULT_MODULE_ID].action_space
        except Exception:  # noqa: BLE001 - a single module or a custom container
            return getattr(rl_module, "action_space", None) or self.input_action_space

    def __call__(self, *, rl_module: RLModule, batch: Any, episodes: List[EpisodeType],
                 explore: Optional[bool] = None, shared_data: Optional[dict] = None, metrics=None,
                 **kwargs) -> Any:
        sa_episodes = list(self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False))
        if not sa_episodes:
            return batch
        lens = _real_lengths(sa_episodes, shared_data)
        obs_parts, act_parts = [], []
        for ep, n in zip(sa_episodes, lens):
            if n:
                obs_parts.append(np.asarray(ep.get_observations(slice(0, n))))
                act_parts.append(np.asarray(ep.get_actions(slice(0, n))))
        total = int(sum(lens))
        if total == 0:
            return batch
        observations = np.concatenate(obs_parts)
        actions = np.concatenate(act_parts)
        space = self._module_action_space(rl_module)
        if isinstance(space, gym.spaces.Discrete):
            actions = actions.astype(np.int64).reshape(total)
        elif isinstance(space, gym.spaces.Box):
            actions = (model_actions(actions.astype(np.float32), space.low, space.high) if self.clip_actions
                       else actions.astype(np.float32))

        t0 = time.perf_counter()
        rewards, version, fallback = self._score(observations, actions)
        elapsed = time.perf_counter() - t0
        rewards = np.asarray(rewards, dtype=np.float32).reshape(-1)
        if rewards.shape[0] != total:
            raise RuntimeError(f"reward backend returned {rewards.shape[0]} rewards for {total} transitions")
        if not np.isfinite(rewards).all():
            raise RuntimeError("reward backend returned NaN or infinite rewards")
        self.score_calls += 1
        self.last_version = int(version)
        self.last_rewards = rewards

        _write_rewards(sa_episodes, lens, rewards)

        if metrics is not None:
            metrics.log_value((ALL_MODULES, VERSION_METRIC), int(version), reduce="max",
                              window=1)
            metrics.log_value((ALL_MODULES, "learned_reward_mean"), float(rewards.mean()), window=1)
            metrics.log_value((ALL_MODULES, "learned_reward_std"), float(rewards.std()), window=1)
            metrics.log_value((ALL_MODULES, "learned_reward_score_s"), elapsed, window=1)
            metrics.log_value((ALL_MODULES, "learned_reward_transitions"), total, reduce="lifetime_sum")
            metrics.log_value((ALL_MODULES, "learned_reward_score_calls"), 1, reduce="lifetime_sum")
            metrics.log_value((ALL_MODULES, FALLBACK_METRIC), int(fallback), reduce="max", window=1)
        return batch

    def _score(self, observations: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, int, bool]:
        """(rewards, version, whether the local copy scored them): the service when it answers,
        else the copy of the last version fetched from it (none yet: the error is raised)."""
        now = time.monotonic()
        if now >= self._down_until or self.copy is None:
            try:
                rewards, version = self.backend.score(observations, actions)
            except (ConnectionError, TimeoutError) as e:  # Unavailable is a ConnectionError
                if self.copy is None:
                    raise
                if self._down_until < now:
                    log.warning("reward service unreachable (%s); scoring with the local copy of version %d "
                                "until it answers again", e, self.copy_version)
                self._down_until = now + self.retry_after_s
            else:
                self._down_until = -math.inf
                self._refresh_copy(int(version), now)
                return rewards, version, False
        self.fallback_batches += 1
        rewards, version = self.copy.score(observations, actions)
        return rewards, version, True

    def _refresh_copy(self, version: int, now: float) -> None:
        if version == self.copy_version or now - self._copied_at < self.copy_every_s:
            return
        if not hasattr(self.backend, "snapshot"):
            return
        self._copied_at = now
        try:
            current, data = self.backend.snapshot(self.copy_version)
            if data:
                from reward_service.core import RewardModel

                self.copy, self.copy_version = RewardModel.from_snapshot(data), int(current)
        except Exception as e:  # noqa: BLE001 — keep the older copy; the service still scores
            log.warning("could not fetch a copy of the reward model (%s: %s)", type(e).__name__, e)


class StandardizedRewardConnector(ConnectorV2):
    """The env reward, standardised the way the reward service standardises r̂: zero mean and
    `target_std` over the most recent `window` transitions (`RewardConfig.norm_transitions`).

    For baselines only: PPO on the *true* reward at the scale the learned reward has, so that a
    comparison of the two is not one of reward scales. Sits where `LearnedRewardConnector` sits
    (before GAE); the artificial bootstrap step keeps reward 0.0.

    It rewrites *copies* of the episodes (replacing them in the pipeline's list): with the env
    runner in the learner's process (``num_env_runners=0``) the chunks handed to the learner are the
    env runner's own objects, and RLlib sums the returns of an episode's earlier chunks from them when
    the episode ends, so rewriting them in place would report standardised returns as the env's.
    (`LearnedRewardConnector` may rewrite in place: there the env pays 0 and the true return is
    read from the infos.)"""

    def __init__(self, input_observation_space: Optional[gym.Space] = None,
                 input_action_space: Optional[gym.Space] = None, *, window: int = 5000,
                 target_std: float = 1.0, **kwargs):
        super().__init__(input_observation_space, input_action_space, **kwargs)
        if window < 2 or not target_std > 0:
            raise ValueError(f"window must be >= 2 and target_std > 0, not {window}, {target_std}")
        self.window, self.target_std = int(window), float(target_std)
        self.recent = np.zeros(0, dtype=np.float64)

    def __call__(self, *, rl_module: RLModule, batch: Any, episodes: List[EpisodeType],
                 explore: Optional[bool] = None, shared_data: Optional[dict] = None, metrics=None,
                 **kwargs) -> Any:
        if not all(isinstance(ep, SingleAgentEpisode) for ep in episodes):
            raise TypeError("StandardizedRewardConnector takes single-agent episodes only")
        episodes[:] = [copy.deepcopy(ep) for ep in episodes]
        lens = _real_lengths(episodes, shared_data)
        parts = [np.asarray(ep.get_rewards(slice(0, n)), dtype=np.float64) for ep, n in zip(episodes, lens) if n]
        if not parts:
            return batch
        raw = np.concatenate(parts)
        self.recent = np.concatenate([self.recent, raw])[-self.window:]
        mean, std = float(self.recent.mean()), float(self.recent.std())
        _write_rewards(episodes, lens, (raw - mean) * (self.target_std / max(std, 1e-8)))
        if metrics is not None:
            metrics.log_value((ALL_MODULES, "env_reward_norm_mean"), mean, window=1)
            metrics.log_value((ALL_MODULES, "env_reward_norm_std"), std, window=1)
        return batch


class StandardizedRewardBuilder:
    """Picklable ``learner_connector`` builder for `StandardizedRewardConnector`."""

    def __init__(self, window: int = 5000, target_std: float = 1.0):
        self.window, self.target_std = window, target_std

    def __call__(self, input_observation_space=None, input_action_space=None, *args, **kwargs):
        return [StandardizedRewardConnector(input_observation_space, input_action_space,
                                            window=self.window, target_std=self.target_std)]


class LearnedRewardBuilder:
    """Picklable ``learner_connector`` builder: ``config.training(learner_connector=
    LearnedRewardBuilder(address_or_factory))``; RLlib calls it inside each learner."""

    def __init__(self, backend: BackendSpec, *, clip_actions: bool = True,
                 extra: Optional[Callable[[], list]] = None):
        self.backend = backend
        self.clip_actions = clip_actions
        self.extra = extra

    def __call__(self, input_observation_space=None, input_action_space=None, *args, **kwargs):
        pieces: list = [LearnedRewardConnector(input_observation_space, input_action_space,
                                               backend=self.backend, clip_actions=self.clip_actions)]
        if self.extra is not None:
            pieces += list(self.extra())
        return pieces
