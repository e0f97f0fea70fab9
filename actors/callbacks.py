"""RLlib callbacks that run on the env runners: cut segments, stream them, log true returns.

Hooks (RLlib 2.60, new API stack; `SingleAgentEnvRunner._sample` calls them right after
`episode.add_env_reset()` / `add_env_step()`, before the episode is numpy'ized or cut):

- `on_episode_start`: open a `SegmentTrack` for this sub-env at the reset observation (and pop
  the bulky state entries from the reset info).
- `on_episode_step`: feed the newest transition (``get_observations(-1)``, ``get_actions(-1)``,
  ``get_infos(-1)``); a completed kept window becomes a `SegmentRecord` that is handed to the
  streamer. Stepping through the episode as it grows (instead of cutting the chunks in
  `on_sample_end`) means segments may span `sample()` calls, so any `rollout_fragment_length`
  works, and the RGB frames are popped out of the infos before the episode chunk travels to the
  learner (an Atari frame is 100 kB, 3.6× the stacked observation).
- `on_episode_end`: log the episode's true return (sum of ``info["true_reward"]``) and drop the
  partial window (segments never span episodes).
- `on_sample_end`: log the streamer's counters (segments cut/sent/dropped) once per `sample()`,
  after waiting for the streamer to deliver when `SegmentOptions.flush_s` > 0.

Options live in the env config (a plain dict, so they survive config serialisation and reach
every env runner): ``config.env_config["rlhp_segments"]``, see `SegmentOptions`. The streamer is
created lazily on the first segment inside the env-runner process, so no gRPC channel exists before
Ray forks or pickles anything. Evaluation env runners only log the true return.

Metrics (under ``result["env_runners"]``, and ``result["evaluation"]["env_runners"]``):
``true_episode_return`` (mean over the last 100 episodes), ``true_episode_return_max``,
``segments_cut``, ``segments_sent``, ``segments_dropped`` (lifetime sums over all env runners).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from ray.rllib.callbacks.callbacks import RLlibCallback

from actors.segments import SegmentCutter, SegmentStreamer, SegmentTrack

ENV_CONFIG_KEY = "rlhp_segments"


@dataclass(frozen=True)
class SegmentOptions:
    """What the env runners do with their trajectories (stored in ``env_config["rlhp_segments"]``)."""

    experiment: str = "default"
    """Experiment name written into every segment."""
    env_id: str = ""
    """Env id written into every segment."""
    length: int = 25
    """Steps per segment (paper: 25 Atari; ~1.5 s MuJoCo, see `actors.envs.default_segment_length`)."""
    fraction: float = 0.1
    """Share of the non-overlapping windows sent as candidate segments."""
    query_address: str | None = None
    """``host:port`` of the query service; None (and no `streamer_factory`) cuts no segments."""
    token: str = ""
    """The actors' token for the query service."""
    max_queue: int = 256
    """Segments waiting to be sent per env runner; more are dropped (never blocks sampling)."""
    batch_size: int = 16
    """Segments per `add_segments` call."""
    seed: int | None = None
    """Seed for choosing windows (combined with the env runner's index)."""
    flush_s: float = 0.0
    """At the end of each `sample()`, wait up to this many seconds until the segments cut so far
    reached the query service (0: never wait). `run.lockstep` sets it, so that the queries selected
    after an iteration see all of that iteration's segments."""
    streamer_factory: Callable[[], Any] | None = None
    """Zero-argument callable returning an object with ``put(records)`` and ``sent``/``dropped``
    counters, replacing `SegmentStreamer` (tests, in-process services). Must be picklable."""

    def to_env_config(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_env_config(cls, env_config: Any) -> "SegmentOptions":
        raw = dict((env_config or {}).get(ENV_CONFIG_KEY) or {})
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


class SegmentCallbacks(RLlibCallback):
    """Cuts segments on the env runners and streams them to the query service (see module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self._opts: SegmentOptions | None = None
        self._cutter: SegmentCutter | None = None
        self._streamer: Any = None
        self._tracks: dict[int, SegmentTrack] = {}
        self._evaluation = False
        self._cut_enabled = False
        self._steps = 0  # env steps seen by this env runner
        self._runners = 1
        self._logged = {"cut": 0, "sent": 0, "dropped": 0}

    # -- setup (inside the env-runner process) -----------------------------------------------

    def _setup(self, env_runner: Any) -> None:
        if self._opts is not None:
            return
        config = env_runner.config
        self._opts = opts = SegmentOptions.from_env_config(getattr(config, "env_config", {}))
        self._evaluation = bool(getattr(config, "in_evaluation", False))
        self._runners = max(1, int(getattr(config, "num_env_runners", 0) or 0))
        self._cut_enabled = (not self._evaluation and opts.fraction > 0.0
                             and (opts.query_address is not None or opts.streamer_factory is not None))
        low = high = None
        space = getattr(getattr(env_runner, "env", None), "single_action_space", None)
        if space is not None and hasattr(space, "low") and hasattr(space, "high"):
            low, high = space.low, space.high
        index = int(getattr(env_runner, "worker_index", 0) or 0)
        seed = None if opts.seed is None else [int(opts.seed), index]
        # Without a destination (or on evaluation runners) the tracks still strip the bulky info
        # entries and sum the true return, but keep no window.
        fraction = opts.fraction if self._cut_enabled else 0.0
        self._cutter = SegmentCutter(opts.length, opts.experiment, opts.env_id, fraction,
                                     np.random.default_rng(seed), action_low=low, action_high=high,
                                     strip=True)

    def _global_step(self) -> int:
        return self._steps * self._runners

    def _emit(self, record: Any) -> None:
        if self._streamer is None:
            opts = self._opts
            assert opts is not None
            if opts.streamer_factory is not None:
                self._streamer = opts.streamer_factory()
            else:
                self._streamer = SegmentStreamer(opts.query_address, opts.token, max_queue=opts.max_queue,
                                                 batch_size=opts.batch_size)
        self._streamer.put([record])

    # -- RLlib hooks ---------------------------------------------------------------------------

    def on_episode_start(self, *, episode, env_runner=None, metrics_logger=None, env=None, env_index=0,
                         rl_module=None, **kwargs) -> None:
        self._setup(env_runner)
        assert self._cutter is not None
        info = episode.get_infos(-1)
        self._tracks[env_index] = self._cutter.start(episode.get_observations(-1), info,
                                                     env_step=self._global_step())

    def on_episode_step(self, *, episode, env_runner=None, metrics_logger=None, env=None, env_index=0,
                        rl_module=None, **kwargs) -> None:
        self._setup(env_runner)
        assert self._cutter is not None
        self._steps += 1
        track = self._tracks.get(env_index)
        if track is None:  # should not happen: every episode starts with on_episode_start
            track = self._tracks[env_index] = self._cutter.start(episode.get_observations(-2),
                                                                 episode.get_infos(-2),
                                                                 env_step=self._global_step())
        rec = track.step(episode.get_actions(-1), episode.get_observations(-1), episode.get_infos(-1),
                         env_step=self._global_step() - self._runners)
        if rec is not None:
            self._emit(rec)

    def on_episode_end(self, *, episode, env_runner=None, metrics_logger=None, env=None, env_index=0,
                       rl_module=None, **kwargs) -> None:
        track = self._tracks.pop(env_index, None)
        if track is None or metrics_logger is None:
            return
        metrics_logger.log_value("true_episode_return", track.true_return, reduce="mean", window=100)
        metrics_logger.log_value("true_episode_return_max", track.true_return, reduce="max", window=100)

    def on_sample_end(self, *, env_runner=None, metrics_logger=None, samples=None, **kwargs) -> None:
        if self._opts is not None and self._opts.flush_s > 0 and hasattr(self._streamer, "flush"):
            self._streamer.flush(self._opts.flush_s)
        if metrics_logger is None or self._cutter is None:
            return
        current = {"cut": self._cutter.segments_cut,
                   "sent": int(getattr(self._streamer, "sent", 0) or 0),
                   "dropped": int(getattr(self._streamer, "dropped", 0) or 0)}
        for key, value in current.items():
            metrics_logger.log_value(f"segments_{key}", value - self._logged[key], reduce="lifetime_sum")
        self._logged = current
