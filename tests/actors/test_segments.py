"""Segment cutting (lengths, alignment, fraction) and streaming (batches; drops, never blocks)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from actors.segments import SegmentCutter, SegmentStreamer
from query_service.types import AddSegmentsResult, SegmentRecord


def _arrays(T: int, with_rgb: bool = True, with_q: bool = False):
    """o_t = t (shape [2]), a_t = t % 3, infos[t] carries frame t, reward of step t is 10 + t."""
    obs = [np.array([t, -t], dtype=np.float32) for t in range(T + 1)]
    actions = [t % 3 for t in range(T)]
    infos = [{"fps": 12.0}] + [{"true_reward": 10.0 + t} for t in range(T)]
    for t in range(T + 1):
        if with_rgb:
            infos[t]["rgb"] = np.full((4, 5, 3), t % 256, dtype=np.uint8)
        if with_q:
            infos[t]["qpos"] = np.full(3, t, dtype=np.float64)
            infos[t]["qvel"] = np.full(2, -t, dtype=np.float64)
    return obs, actions, infos


def test_cut_lengths_alignment_and_contents():
    obs, actions, infos = _arrays(103)
    cutter = SegmentCutter(25, "exp", "Toy-v0", fraction=1.0, rng=0)
    segs = cutter.cut(obs, actions, infos, env_step=1000)
    assert len(segs) == 4  # 103 // 25; the partial window at the end is dropped
    assert cutter.segments_cut == 4
    for k, s in enumerate(segs):
        assert isinstance(s, SegmentRecord)
        t0 = 25 * k
        assert s.observations.shape == (25, 2) and s.actions.shape == (25,)
        assert s.actions.dtype == np.int64 and s.true_rewards.dtype == np.float32
        np.testing.assert_array_equal(s.observations[:, 0], np.arange(t0, t0 + 25))
        np.testing.assert_array_equal(s.actions, np.arange(t0, t0 + 25) % 3)
        np.testing.assert_array_equal(s.true_rewards, 10.0 + np.arange(t0, t0 + 25))  # r_t from infos[t+1]
        assert s.frames.shape == (25, 4, 5, 3) and s.frames.dtype == np.uint8
        np.testing.assert_array_equal(s.frames[:, 0, 0, 0], np.arange(t0, t0 + 25))  # frame of o_t
        assert s.qpos is None and s.qvel is None
        assert s.env_step == 1000 + t0 and s.fps == 12.0
        assert s.experiment == "exp" and s.env_id == "Toy-v0" and not s.random_policy
    assert len({s.id for s in segs}) == 4
    # The bulky entries were popped from the infos (they must not travel to the learner).
    assert all("rgb" not in i for i in infos)
    assert all("true_reward" in i for i in infos[1:])


def test_cut_mujoco_state_and_short_inputs():
    obs, actions, infos = _arrays(30, with_rgb=False, with_q=True)
    seg, = SegmentCutter(15, "e", "Hopper-v5", rng=0).cut(obs, actions, infos)[:1]
    assert seg.frames is None
    np.testing.assert_array_equal(seg.qpos[:, 0], np.arange(15))
    np.testing.assert_array_equal(seg.qvel[:, 0], -np.arange(15))
    assert SegmentCutter(25, "e", "x", rng=0).cut(obs[:11], actions[:10], infos[:11]) == []
    with pytest.raises(ValueError):
        SegmentCutter(0, "e", "x")
    with pytest.raises(ValueError):
        SegmentCutter(5, "e", "x", fraction=1.5)


def test_continuous_actions_are_clipped_and_true_rewards_override():
    T = 10
    obs = np.zeros((T + 1, 3), np.float32)
    actions = np.linspace(-3, 3, T * 2).reshape(T, 2).astype(np.float32)
    cutter = SegmentCutter(5, "e", "x", rng=0, action_low=-1.0, action_high=1.0)
    segs = cutter.cut(obs, actions, None, true_rewards=np.arange(T))
    assert len(segs) == 2
    assert segs[0].actions.dtype == np.float32 and np.abs(segs[0].actions).max() <= 1.0
    np.testing.assert_array_equal(segs[1].true_rewards, np.arange(5, 10))


def test_fraction_keeps_about_that_share_of_windows():
    obs, actions, infos = _arrays(25 * 400, with_rgb=False)
    assert SegmentCutter(25, "e", "x", fraction=0.0, rng=0).cut(obs, actions, infos) == []
    kept = SegmentCutter(25, "e", "x", fraction=0.25, rng=1).cut(obs, actions, infos)
    assert 60 <= len(kept) <= 140  # Binomial(400, 0.25): mean 100, sd 8.7
    starts = [int(s.observations[0, 0]) for s in kept]
    assert all(t % 25 == 0 for t in starts)  # non-overlapping windows aligned to the start
    assert len(set(starts)) == len(starts)


def test_step_by_step_equals_batch_cut():
    obs, actions, infos = _arrays(260, with_rgb=False)
    batch = SegmentCutter(20, "e", "x", fraction=0.5, rng=7).cut(obs, actions, [dict(i) for i in infos])
    cutter = SegmentCutter(20, "e", "x", fraction=0.5, rng=7)
    track = cutter.start(obs[0], dict(infos[0]))
    stream = [r for t in range(260) if (r := track.step(actions[t], obs[t + 1], dict(infos[t + 1]))) is not None]
    assert [s.observations[0, 0] for s in stream] == [s.observations[0, 0] for s in batch]
    assert track.true_return == pytest.approx(sum(10.0 + t for t in range(260)))


def test_cut_rllib_episode():
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    obs, actions, infos = _arrays(60)
    ep = SingleAgentEpisode(observations=obs, actions=actions, rewards=[0.0] * 60, infos=infos,
                            len_lookback_buffer=0)
    segs = SegmentCutter(25, "e", "x", rng=0).cut_episode(ep, env_step=5)
    assert [s.env_step for s in segs] == [5, 30]
    np.testing.assert_array_equal(segs[1].true_rewards, 10.0 + np.arange(25, 50))


# --------------------------------------------------------------------------------------------
# Streamer


def _records(n: int) -> list[SegmentRecord]:
    obs, actions, infos = _arrays(5 * n, with_rgb=False)
    return SegmentCutter(5, "e", "x", rng=0).cut(obs, actions, infos)


class FakeQueryService:
    def __init__(self, delay: float = 0.0):
        self.batches: list[list[SegmentRecord]] = []
        self.delay = delay
        self.lock = threading.Lock()

    def add_segments(self, records):
        time.sleep(self.delay)
        with self.lock:
            self.batches.append(list(records))
        return AddSegmentsResult(accepted=len(records), duplicates=0, dropped=0, stored=len(records))


def test_streamer_sends_batches_to_a_fake_service():
    service = FakeQueryService()
    streamer = SegmentStreamer(client_factory=lambda: service, batch_size=4, max_queue=100)
    records = _records(10)
    assert streamer.put(records) == 10
    assert streamer.flush(10.0)
    streamer.close()
    assert streamer.sent == 10 and streamer.dropped == 0 and streamer.accepted == 10
    assert all(1 <= len(b) <= 4 for b in service.batches)
    assert [r.id for b in service.batches for r in b] == [r.id for r in records]


def test_streamer_drops_instead_of_blocking_when_full():
    release = threading.Event()

    class Stuck(FakeQueryService):
        def add_segments(self, records):
            release.wait(10.0)
            return super().add_segments(records)

    service = Stuck()
    streamer = SegmentStreamer(client_factory=lambda: service, batch_size=2, max_queue=3)
    records = _records(50)
    t0 = time.perf_counter()
    for r in records:
        streamer.put(r)
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.5  # never blocks the sampling thread
    assert streamer.dropped >= 50 - 3 - 2  # queue (3) + one batch in flight (≤ 2) at most
    release.set()
    assert streamer.flush(10.0)
    streamer.close()
    assert streamer.sent + streamer.dropped == 50


def test_streamer_drops_and_counts_when_the_service_is_down():
    def down():
        raise ConnectionError("query service unreachable")

    streamer = SegmentStreamer(client_factory=down, batch_size=4, max_queue=8, max_backoff=0.05)
    t0 = time.perf_counter()
    for r in _records(30):
        streamer.put(r)
    assert time.perf_counter() - t0 < 0.5
    assert streamer.flush(10.0)
    streamer.close()
    assert streamer.sent == 0 and streamer.dropped == 30
    assert streamer.errors >= 1 and "unreachable" in streamer.last_error


def test_streamer_with_an_address_where_nothing_listens():
    # Uses query_service.client.QueryClient when it exists; either way nothing is listening on
    # port 9, so every segment is dropped and counted, and put() returns at once.
    streamer = SegmentStreamer("127.0.0.1:9", "token", batch_size=2, max_queue=4, max_backoff=0.05)
    records = _records(6)
    t0 = time.perf_counter()
    streamer.put(records)
    assert time.perf_counter() - t0 < 0.5
    deadline = time.monotonic() + 30
    while streamer.dropped + streamer.sent < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    streamer.close(timeout=1.0)
    assert streamer.sent == 0 and streamer.dropped == 6


def test_streamer_against_the_real_query_service(tmp_path):
    core_mod = pytest.importorskip("query_service.core")
    server_mod = pytest.importorskip("query_service.server")
    core = core_mod.QueryService(tmp_path / "run", seed=0)
    server = server_mod.serve(core)
    try:
        token = core.create_token("actors", role="producer")
        streamer = SegmentStreamer(server.address, token, batch_size=4)
        records = _records(9)
        streamer.put(records)
        assert streamer.flush(30.0)
        streamer.close()
        assert streamer.sent == 9 and streamer.accepted == 9 and streamer.dropped == 0
        exp, = [e for e in core.stats().experiments if e.experiment == "e"]
        assert exp.segments == 9 and exp.env_id == "x"
        # A wrong token is refused by the service: the segments are dropped, sampling goes on.
        bad = SegmentStreamer(server.address, "not-a-token", batch_size=4, max_backoff=0.05)
        bad.put(_records(3))
        assert bad.flush(30.0)
        bad.close()
        assert bad.sent == 0 and bad.dropped == 3 and bad.errors >= 1
    finally:
        server.stop(None)
        core.close()


# --------------------------------------------------------------------------------------------
# The callbacks on a real env runner (in-process; no Ray cluster needed)


def test_callbacks_on_an_env_runner_cut_segments_and_strip_frames():
    import torch

    torch.set_num_threads(1)
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    from learner.algo import build_algo_config

    got: list[SegmentRecord] = []

    class Sink:
        sent = dropped = 0

        def put(self, records):
            got.extend(records)
            Sink.sent += len(records)

    config = build_algo_config("ALE/Pong-v5", lambda: None, seed=0, segment_fraction=1.0,
                              streamer_factory=Sink, experiment="pong-test", env_opts={"noop_max": 0})
    runner = SingleAgentEnvRunner(config=config)
    try:
        episodes = runner.sample(num_timesteps=60, random_actions=True)
        assert sum(len(e) for e in episodes) >= 60
        # Frames were popped before the episode chunks leave the env runner.
        for ep in episodes:
            assert all("rgb" not in i for i in ep.get_infos())
            assert all(r == 0.0 for r in ep.get_rewards())
        assert len(got) == 2
        seg = got[0]
        assert seg.experiment == "pong-test" and seg.env_id == "ALE/Pong-v5"
        assert seg.observations.shape == (25, 4, 84, 84) and seg.observations.dtype == np.uint8
        assert seg.frames.shape == (25, 210, 160, 3) and seg.fps == 15.0
        assert seg.actions.shape == (25,) and seg.actions.dtype == np.int64
        ep = episodes[0]
        np.testing.assert_array_equal(seg.observations, np.stack(ep.get_observations()[:25]))
        np.testing.assert_array_equal(seg.actions, np.asarray(ep.get_actions()[:25]))
        np.testing.assert_array_equal(seg.true_rewards,
                                      [i.get("true_reward", 0.0) for i in ep.get_infos()[1:26]])
    finally:
        runner.stop()


@pytest.mark.parametrize("env_id,media", [("ALE/Pong-v5", "frames"), ("Hopper-v5", "qpos")])
def test_a_vectorised_env_runner_cuts_each_sub_env_into_its_own_segments(env_id, media):
    """num_envs_per_env_runner=4: every segment is L consecutive steps of one sub-env's episode
    (observations, actions, true rewards and clip media of the same steps), none mixes two envs."""
    import torch

    torch.set_num_threads(1)
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    from actors.envs import default_segment_length
    from learner.algo import build_algo_config

    n = default_segment_length(env_id)  # 25 Atari, 60 MuJoCo

    got: list[SegmentRecord] = []

    class Sink:
        sent = dropped = 0

        def put(self, records):
            got.extend(records)

    opts = {"noop_max": 0} if media == "frames" else {}
    config = build_algo_config(env_id, lambda: None, seed=0, segment_fraction=1.0, streamer_factory=Sink,
                              experiment="vec", env_opts=opts, num_envs_per_env_runner=4)
    runner = SingleAgentEnvRunner(config=config)
    try:
        episodes = runner.sample(num_timesteps=4 * (2 * n + 10), random_actions=True)
        assert len({e.id_ for e in episodes}) >= 4  # one episode (chunk) per sub-env at least
        for ep in episodes:
            assert all(media not in i and "rgb" not in i for i in ep.get_infos())  # media left in the runner
            assert all(r == 0.0 for r in ep.get_rewards())
        # 2n + 10 steps of each of 4 envs: 2 whole windows per env
        assert len(got) == sum(len(e) // n for e in episodes) == 8
        for seg in got:
            assert seg.observations.shape[0] == seg.actions.shape[0] == seg.true_rewards.shape[0] == n
            assert getattr(seg, media).shape[0] == n
            owners = []
            for ep in episodes:
                obs = np.stack(ep.get_observations()[:len(ep)])
                for start in range(0, len(ep) - n + 1):
                    if np.array_equal(obs[start:start + n], seg.observations):
                        owners.append((ep, start))
            assert len(owners) == 1, "a segment is a window of exactly one sub-env's episode"
            ep, start = owners[0]
            np.testing.assert_array_equal(seg.actions, np.asarray(ep.get_actions()[start:start + n]))
            np.testing.assert_array_equal(
                seg.true_rewards,
                np.float32([i.get("true_reward", 0.0) for i in ep.get_infos()[start + 1:start + n + 1]]))
    finally:
        runner.stop()
