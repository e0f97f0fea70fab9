"""The learner connector puts r̂(o_t, a_t) — and nothing else — into the rewards PPO learns from,
with one batched `score` call per train batch, and logs the reward-model version."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from ray.rllib.connectors.learner import AddOneTsToEpisodesAndTruncate
from ray.rllib.core import ALL_MODULES, DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.metrics.metrics_logger import MetricsLogger

from learner.reward_connector import (LearnedRewardBuilder, LearnedRewardConnector, StandardizedRewardConnector,
                                      resolve_backend, reward_version)

VERSION = 7


def predicted(obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """The known 'reward model': reward the pole angle being large (the opposite of the true
    reward's intent), plus a small action term so the actions demonstrably enter."""
    obs = np.asarray(obs, dtype=np.float32).reshape(len(obs), -1)
    return (3.0 * obs[:, 2] - 0.5 * obs[:, 0] + 0.25 * np.asarray(actions, dtype=np.float32)).astype(np.float32)


class FunctionBackend:
    """A tiny in-process `RewardBackend` computing a known function; counts its calls."""

    def __init__(self, version: int = VERSION):
        self.version = version
        self.calls: list[int] = []

    def score(self, observations, actions):
        assert observations.shape[0] == actions.shape[0]
        self.calls.append(int(observations.shape[0]))
        return predicted(observations, actions), self.version


BACKEND = FunctionBackend()


def backend_factory() -> FunctionBackend:
    """Called lazily inside the learner (here the driver process: num_learners=0)."""
    return BACKEND


def _episode(T: int, seed: int, terminated: bool = False) -> SingleAgentEpisode:
    rng = np.random.default_rng(seed)
    return SingleAgentEpisode(
        observations=list(rng.normal(size=(T + 1, 4)).astype(np.float32)),
        actions=list(rng.integers(0, 2, size=T)), rewards=[123.0] * T, terminated=terminated,
        len_lookback_buffer=0).to_numpy()


def test_connector_rewrites_rewards_with_one_batched_call():
    backend = FunctionBackend(version=3)
    episodes = [_episode(30, 0), _episode(5, 1, terminated=True), _episode(12, 2)]
    originals = [(ep.get_observations()[:-1].copy(), ep.get_actions().copy()) for ep in episodes]
    shared: dict = {}
    AddOneTsToEpisodesAndTruncate()(rl_module=None, batch={}, episodes=episodes, shared_data=shared)
    metrics = MetricsLogger()
    conn = LearnedRewardConnector(backend=backend)
    conn(rl_module=None, batch={}, episodes=episodes, shared_data=shared, metrics=metrics)
    assert backend.calls == [30 + 5 + 12]  # one call, real transitions only
    for ep, (obs, act) in zip(episodes, originals):
        rewards = np.asarray(ep.get_rewards())
        assert len(rewards) == len(obs) + 1  # + the artificial bootstrap step
        np.testing.assert_allclose(rewards[:-1], predicted(obs, act), rtol=1e-6)
        assert rewards[-1] == 0.0
    assert conn.last_version == 3 and conn.score_calls == 1
    assert metrics.peek((ALL_MODULES, "learned_reward_model_version")) == 3
    assert metrics.peek((ALL_MODULES, "learned_reward_score_calls")) == 1
    assert metrics.peek((ALL_MODULES, "learned_reward_transitions")) == 47
    assert float(metrics.peek((ALL_MODULES, "learned_reward_mean"))) == pytest.approx(
        float(conn.last_rewards.mean()))


def test_connector_without_bootstrap_step_scores_every_transition():
    backend = FunctionBackend()
    ep = _episode(9, 4)
    obs, act = ep.get_observations()[:-1].copy(), ep.get_actions().copy()
    LearnedRewardConnector(backend=backend)(rl_module=None, batch={}, episodes=[ep], shared_data={})
    np.testing.assert_allclose(ep.get_rewards(), predicted(obs, act), rtol=1e-6)


def test_standardised_env_reward_has_zero_mean_and_unit_std_over_the_recent_window():
    """The baseline arm `true-std`: the env reward at the learned reward's scale, over the most recent
    `window` transitions; the artificial bootstrap step keeps 0.0."""
    rng = np.random.default_rng(0)
    episodes = [_episode(30, 0), _episode(20, 1, terminated=True)]
    raw = [rng.normal(5.0, 3.0, size=len(ep)).astype(np.float32) for ep in episodes]
    for ep, r in zip(episodes, raw):
        ep.set_rewards(new_data=r)
    shared: dict = {}
    AddOneTsToEpisodesAndTruncate()(rl_module=None, batch={}, episodes=episodes, shared_data=shared)
    conn = StandardizedRewardConnector(window=1000)
    metrics = MetricsLogger()
    originals = list(episodes)
    conn(rl_module=None, batch={}, episodes=episodes, shared_data=shared, metrics=metrics)
    both = np.concatenate(raw)
    new = [np.asarray(ep.get_rewards()) for ep in episodes]
    # copies went on down the pipeline: the env runner's own chunks (from which RLlib sums an episode's
    # return when it ends, in-process) keep the env's rewards
    assert all(a is not b for a, b in zip(originals, episodes))
    for ep, r in zip(originals, raw):
        np.testing.assert_allclose(np.asarray(ep.get_rewards())[:-1], r)
    assert all(n[-1] == 0.0 and len(n) == len(r) + 1 for n, r in zip(new, raw))
    np.testing.assert_allclose(np.concatenate([n[:-1] for n in new]), (both - both.mean()) / both.std(), rtol=1e-4)
    assert float(metrics.peek((ALL_MODULES, "env_reward_norm_std"))) == pytest.approx(both.std(), rel=1e-5)
    # the window keeps only the most recent transitions: a later batch of rewards ~100 moves the mean to it
    later = _episode(10, 2)
    later.set_rewards(new_data=np.full(10, 100.0, np.float32))
    conn(rl_module=None, batch={}, episodes=[later], shared_data={})
    assert conn.recent.shape == (60,) and conn.recent[-1] == 100.0
    small = StandardizedRewardConnector(window=10)
    small(rl_module=None, batch={}, episodes=[_episode(30, 3)], shared_data={})
    assert small.recent.shape == (10,)
    with pytest.raises(ValueError):
        StandardizedRewardConnector(window=1)


def test_bad_backend_answers_are_errors():
    class Short:
        def score(self, o, a):
            return np.zeros(len(o) - 1, np.float32), 1

    class NaN:
        def score(self, o, a):
            return np.full(len(o), np.nan, np.float32), 1

    for bad in (Short(), NaN()):
        with pytest.raises(RuntimeError):
            LearnedRewardConnector(backend=bad)(rl_module=None, batch={}, episodes=[_episode(4, 0)],
                                                shared_data={})


def test_resolve_backend_forms():
    b = FunctionBackend()
    assert resolve_backend(b) is b
    assert resolve_backend(lambda: b) is b
    with pytest.raises(TypeError):
        resolve_backend(lambda: object())
    with pytest.raises(TypeError):
        resolve_backend(42)
    pieces = LearnedRewardBuilder("127.0.0.1:1")(None, None)
    assert isinstance(pieces[0], LearnedRewardConnector)
    assert pieces[0]._backend is None  # nothing is opened before the first train batch


class BatchSpy:
    """Appended after GAE: records the final train batch the loss will see."""

    batches: list = []

    def __call__(self, *, rl_module, batch, episodes, **kwargs):
        b = batch[DEFAULT_MODULE_ID]
        BatchSpy.batches.append({k: np.asarray(b[k].detach().cpu() if hasattr(b[k], "detach") else b[k])
                                 for k in (Columns.OBS, Columns.ACTIONS, Columns.REWARDS, Columns.LOSS_MASK)})
        return batch


# `ray_local` (one loopback Ray cluster for the session) comes from tests/learner/conftest.py.


def _tiny_config(reward, **kw):
    from learner.algo import build_algo_config

    opts = dict(seed=0, train_batch_size_per_learner=400, minibatch_size=100, num_epochs=2,
                segment_fraction=0.5)
    opts.update(kw)
    return build_algo_config("rlhp/FixedCartPole-v0", reward, **opts)


def test_reward_version_is_read_where_the_connector_logs_it():
    assert reward_version({"learners": {ALL_MODULES: {"learned_reward_model_version": 12}}}) == 12
    assert reward_version({"learners": {"default_policy": {"reward_model_version": 12}}}) == 0
    assert reward_version({}) == 0  # before any batch was scored


@pytest.mark.parametrize("envs", [1, 4])
def test_ppo_learns_from_exactly_the_predicted_rewards(ray_local, envs):
    """Also with 4 vectorised envs per env runner: one scoring call per batch of many episode
    chunks, segments cut per sub-env, and the true return of finished episodes still reported."""
    from ray.rllib.connectors.connector_v2 import ConnectorV2

    got = []

    class Sink:
        sent = dropped = 0

        def put(self, records):
            got.extend(records)

    class Spy(ConnectorV2):
        def __call__(self, **kwargs):
            return BatchSpy()(**kwargs)

    BACKEND.calls.clear()
    BatchSpy.batches.clear()
    algo = _tiny_config(backend_factory, streamer_factory=Sink, num_envs_per_env_runner=envs).build_algo()
    iterations = 2  # 4 envs × 100 steps an iteration: their 200-step episodes end in the 2nd
    returns = []
    try:
        algo.learner_group._learner._learner_connector.append(Spy())
        for it in range(iterations):
            result = algo.train()
            learner = result["learners"][ALL_MODULES]
            assert learner["learned_reward_model_version"] == VERSION
            # what `rlhp train --reward-address` writes to metrics.csv as reward_version
            assert reward_version(result) == VERSION
            assert learner["learned_reward_score_calls"] == it + 1  # lifetime: one call per iteration
            assert len(BACKEND.calls) == it + 1  # one batched call per train batch
            assert BACKEND.calls[-1] >= 400  # the whole batch in that call
            returns.append(result["env_runners"].get("true_episode_return", math.nan))
        assert len(BatchSpy.batches) == iterations
        for b in BatchSpy.batches:
            mask = b[Columns.LOSS_MASK].astype(bool)
            expected = predicted(b[Columns.OBS][mask], b[Columns.ACTIONS][mask])
            np.testing.assert_allclose(b[Columns.REWARDS][mask], expected, rtol=1e-5, atol=1e-6)
            assert (b[Columns.REWARDS][~mask] == 0.0).all()
            # Not the env's reward: that is 0/1 (and RLlib even sees 0.0 from the env).
            assert not np.isin(b[Columns.REWARDS][mask], [0.0, 1.0]).all()
        env_runners = result["env_runners"]
        assert env_runners["segments_cut"] >= 1 and env_runners["segments_cut"] == len(got)
        # the true return of the episodes that ended (NaN in an iteration where none did)
        assert math.isfinite(returns[-1]) and 0.0 <= returns[-1] <= 200.0
        assert got[0].observations.shape == (25, 4) and got[0].env_id == "rlhp/FixedCartPole-v0"
    finally:
        algo.stop()


def test_appo_trains_on_exactly_the_predicted_rewards(ray_local):
    """APPO (IMPALA's learner connector, a learner thread, v-trace) gets the learned reward too."""
    from ray.rllib.connectors.connector_v2 import ConnectorV2

    class Spy(ConnectorV2):
        def __call__(self, **kwargs):
            return BatchSpy()(**kwargs)

    BACKEND.calls.clear()
    BatchSpy.batches.clear()
    algo = _tiny_config(backend_factory, algo="appo", streamer_factory=lambda: CountingSink(),
                        train_batch_size_per_learner=200, min_time_s_per_iteration=0).build_algo()
    try:
        algo.learner_group._learner._learner_connector.append(Spy())
        for _ in range(50):  # APPO reports learner results only every 20th update: look at the batches
            algo.train()
            if len(BatchSpy.batches) >= 3:
                break
        assert len(BatchSpy.batches) >= 3 and len(BACKEND.calls) == len(BatchSpy.batches)  # one call per batch
        for b in BatchSpy.batches:
            mask = b[Columns.LOSS_MASK].astype(bool) if Columns.LOSS_MASK in b else np.ones(len(b[Columns.OBS]), bool)
            expected = predicted(b[Columns.OBS][mask], b[Columns.ACTIONS][mask])
            np.testing.assert_allclose(b[Columns.REWARDS][mask], expected, rtol=1e-5, atol=1e-6)
            assert not np.isin(b[Columns.REWARDS][mask], [0.0, 1.0]).all()
    finally:
        algo.stop()


@pytest.mark.slow
@pytest.mark.parametrize("envs", [1, 2])
def test_remote_env_runner_streams_segments(ray_local, envs):
    """num_env_runners=1 (with 1 or 2 vectorised envs): callbacks and the (lazily created) streamer
    live in the actor."""
    import sys

    from ray import cloudpickle

    # The test module is not importable in Ray workers: ship CountingSink by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    algo = _tiny_config(backend_factory, num_env_runners=1, num_envs_per_env_runner=envs, segment_fraction=1.0,
                        streamer_factory=CountingSink).build_algo()
    try:
        result = algo.train()
        assert result["env_runners"]["segments_sent"] >= 400 // 25 - 2
        assert result["learners"][ALL_MODULES]["learned_reward_model_version"] == VERSION
    finally:
        algo.stop()


class CountingSink:
    def __init__(self):
        self.sent = 0
        self.dropped = 0

    def put(self, records):
        self.sent += len(records)


@pytest.mark.slow
def test_benchmark_env_steps_per_second_with_and_without_learned_reward(ray_local, capsys):
    """Env steps/s of PPO iterations on FixedCartPole, learned-reward connector on vs off."""
    rates = {}
    for name in ("learned", "baseline"):
        config = _tiny_config(backend_factory, train_batch_size_per_learner=2000, minibatch_size=200,
                              num_epochs=4, segment_fraction=0.0)
        if name == "baseline":
            config.learners(learner_connector=None)
        algo = config.build_algo()
        try:
            algo.train()  # warm-up
            t0, steps = time.perf_counter(), 0
            for _ in range(3):
                result = algo.train()
                steps += result["env_runners"]["num_env_steps_sampled"]
            rates[name] = steps / (time.perf_counter() - t0)
        finally:
            algo.stop()
    with capsys.disabled():
        print(f"\nPPO FixedCartPole env steps/s: learned reward {rates['learned']:.0f}, "
              f"env reward (no connector) {rates['baseline']:.0f}")
    # The machine is shared: only a loose bound (the connector's own cost is ~ms per batch).
    assert rates["learned"] > 0.25 * rates["baseline"]


def test_standardised_rewards_leave_the_reported_episode_returns_the_envs(ray_local):
    """In-process (env runner and learner in one process, vectorised envs, as the `mujoco` preset
    runs) RLlib sums an episode's return from the chunks it handed to the learner: they must not
    carry the rewrite (they did: Swimmer's reported return went 20 → −20 while the env paid ~22).
    Fixed-horizon CartPole pays 0 or 1 a step, so every raw episode return is a whole number."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.tune.registry import register_env

    from actors.envs import FixedHorizonCartPole
    from learner.reward_connector import StandardizedRewardBuilder

    register_env("std-test-cartpole", lambda cfg: FixedHorizonCartPole(horizon=200))
    config = (PPOConfig().environment("std-test-cartpole")
              .env_runners(num_env_runners=0, num_envs_per_env_runner=2, rollout_fragment_length=75)
              .training(train_batch_size_per_learner=150, minibatch_size=150, num_epochs=1)
              .learners(learner_connector=StandardizedRewardBuilder()).debugging(seed=0))
    algo = config.build_algo()
    try:
        returns = []
        for _ in range(8):  # 2 envs × 75 steps an iteration: every 200-step episode spans 3 chunks
            r = algo.train()["env_runners"]
            returns += [float(r[k]) for k in ("episode_return_min", "episode_return_max")
                        if not math.isnan(float(r.get(k, math.nan)))]
    finally:
        algo.stop()
    assert len(returns) >= 4, returns
    assert all(x.is_integer() and 0 <= x <= 200 for x in returns), returns
