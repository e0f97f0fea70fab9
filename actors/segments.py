"""Cutting trajectories into segments and streaming them to the query service.

A **segment** is `length` consecutive transitions (o_t, a_t) of one episode; the windows are
non-overlapping and aligned to the start of the episode (or of the arrays given), and each window
is kept with probability `fraction` (decided when the window starts, so skipped windows cost
nothing). Segments never span two episodes; a partial window at the end is dropped.

Alignment (the same as RLlib's `SingleAgentEpisode`): observations and infos have T+1 entries
(index 0 from `reset`), actions have T. Transition t is (observations[t], actions[t]); its true
reward is ``infos[t+1]["true_reward"]`` (the reward of the step that returned infos[t+1]); its clip
frame / physics state is ``infos[t]["rgb"]`` / ``infos[t]["qpos"]``, ``infos[t]["qvel"]`` (the
state the agent saw when it chose a_t).

`SegmentCutter.start()` gives a `SegmentTrack` that is fed one env step at a time (used by the
RLlib callbacks on the env runners); `SegmentCutter.cut()` / `cut_episode()` do the same over whole
arrays or an episode. Bulky info entries (``rgb``, ``qpos``, ``qvel``) are popped from the info
dicts as they are read (`strip=True`), so they never travel to the learner with the episode.

`SegmentStreamer` sends segments from a background thread through a bounded queue; it never
blocks sampling: when the queue is full or the query service is down, segments are dropped and
counted. It opens its connection lazily, inside the thread of the process that uses it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from query_service.types import SegmentRecord
from rlhp.types import model_actions

logger = logging.getLogger(__name__)

STATE_KEYS = ("rgb", "qpos", "qvel")
"""Info entries that describe the observation (clip frame, physics state)."""


def _state_of(info: dict | None, strip: bool) -> tuple[Any, Any, Any]:
    if not info:
        return None, None, None
    if strip:
        return info.pop("rgb", None), info.pop("qpos", None), info.pop("qvel", None)
    return info.get("rgb"), info.get("qpos"), info.get("qvel")


class SegmentTrack:
    """One episode being cut, fed step by step (see `SegmentCutter.start`)."""

    __slots__ = ("cutter", "fps", "pos", "keep", "env_step", "window_step", "_prev_obs", "_prev_state",
                 "_obs", "_act", "_rew", "_rgb", "_qpos", "_qvel", "true_return", "steps")

    def __init__(self, cutter: "SegmentCutter", obs0: Any, info0: dict | None, env_step: int = 0):
        self.cutter = cutter
        self.fps = float((info0 or {}).get("fps") or cutter.fps)
        self.pos = 0  # step within the current window
        self.keep = False
        self.env_step = int(env_step)  # env step of the next transition (counted by the caller)
        self.window_step = self.env_step
        self._prev_obs = obs0
        self._prev_state = _state_of(info0, cutter.strip)
        self._clear()
        self.true_return = 0.0
        self.steps = 0

    def _clear(self) -> None:
        self._obs: list = []
        self._act: list = []
        self._rew: list = []
        self._rgb: list = []
        self._qpos: list = []
        self._qvel: list = []

    def step(self, action: Any, obs: Any, info: dict | None, env_step: int | None = None
             ) -> SegmentRecord | None:
        """Add transition (previous obs, `action`) whose step returned (`obs`, `info`); returns a
        finished segment, if this step completed a kept window."""
        c = self.cutter
        if env_step is not None:
            self.env_step = int(env_step)
        reward = float((info or {}).get("true_reward", 0.0))
        self.true_return += reward
        self.steps += 1
        if self.pos == 0:
            self.keep = c.fraction >= 1.0 or (c.fraction > 0.0 and c.rng.random() < c.fraction)
            self.window_step = self.env_step
        if self.keep:
            rgb, qpos, qvel = self._prev_state
            self._obs.append(self._prev_obs)
            self._act.append(action)
            self._rew.append(reward)
            self._rgb.append(rgb)
            self._qpos.append(qpos)
            self._qvel.append(qvel)
        self._prev_obs = obs
        self._prev_state = _state_of(info, c.strip)
        self.pos += 1
        self.env_step += 1
        if self.pos < c.length:
            return None
        self.pos = 0
        if not self.keep:
            return None
        rec = c._record(self._obs, self._act, self._rew, self._rgb, self._qpos, self._qvel,
                        env_step=self.window_step, fps=self.fps)
        self._clear()
        return rec


class SegmentCutter:
    """Cuts non-overlapping segments of `length` steps and keeps a `fraction` of them.

    Args:
        length: steps per segment (paper: 25 on Atari, ~1.5 s on MuJoCo; see
            `actors.envs.default_segment_length`).
        experiment: experiment name written into each `SegmentRecord`.
        env_id: env id written into each record.
        fraction: probability with which each window becomes a segment (0..1).
        rng: `numpy.random.Generator` (or an int seed) deciding which windows are kept.
        fps: clip playback rate when the reset info carries none.
        action_low, action_high: clip continuous actions to these bounds (the action the env
            executed) before they go into a segment; None keeps them as given.
        strip: pop ``rgb``/``qpos``/``qvel`` from the info dicts as they are read.
        random_policy: value of `SegmentRecord.random_policy` (may be changed at any time).
    """

    def __init__(self, length: int, experiment: str, env_id: str, fraction: float = 1.0,
                 rng: np.random.Generator | int | None = None, *, fps: float = 30.0,
                 action_low: Any = None, action_high: Any = None, strip: bool = True,
                 random_policy: bool = False):
        if int(length) < 1:
            raise ValueError(f"segment length must be ≥ 1, got {length}")
        if not 0.0 <= float(fraction) <= 1.0:
            raise ValueError(f"fraction must be within [0, 1], got {fraction}")
        self.length = int(length)
        self.experiment = str(experiment)
        self.env_id = str(env_id)
        self.fraction = float(fraction)
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.fps = float(fps)
        self.action_low = None if action_low is None else np.asarray(action_low)
        self.action_high = None if action_high is None else np.asarray(action_high)
        self.strip = bool(strip)
        self.random_policy = bool(random_policy)
        self.segments_cut = 0

    # -- step by step ------------------------------------------------------------------------

    def start(self, obs0: Any, info0: dict | None = None, env_step: int = 0) -> SegmentTrack:
        """Begin an episode at its reset observation (and reset info)."""
        return SegmentTrack(self, obs0, info0, env_step)

    # -- whole arrays ------------------------------------------------------------------------

    def cut(self, observations: Sequence[Any], actions: Sequence[Any], infos: Sequence[dict] | None = None,
            *, true_rewards: Sequence[float] | None = None, env_step: int = 0) -> list[SegmentRecord]:
        """Cut one episode (or chunk) given as arrays: observations and infos [T+1] (or [T]: the
        last transition's next observation is then unknown and not needed), actions [T].
        `true_rewards` [T] overrides ``infos[t+1]["true_reward"]``."""
        n = len(actions)
        if len(observations) < n:
            raise ValueError(f"{len(observations)} observations for {n} actions; need at least {n}")
        infos = list(infos) if infos is not None else [{} for _ in range(n + 1)]
        if len(infos) < n:
            raise ValueError(f"{len(infos)} infos for {n} actions; need T or T+1 (aligned with observations)")
        while len(infos) < n + 1:
            infos.append({})
        if true_rewards is not None:
            if len(true_rewards) != n:
                raise ValueError(f"{len(true_rewards)} true rewards for {n} actions")
            infos = [dict(i or {}) for i in infos]
            for t in range(n):
                infos[t + 1]["true_reward"] = float(true_rewards[t])
        track = self.start(observations[0], infos[0], env_step)
        out = []
        for t in range(n):
            nxt = observations[t + 1] if t + 1 < len(observations) else None
            rec = track.step(actions[t], nxt, infos[t + 1])
            if rec is not None:
                out.append(rec)
        return out

    def cut_episode(self, episode: Any, env_step: int = 0) -> list[SegmentRecord]:
        """Cut an RLlib `SingleAgentEpisode` (a whole episode or a chunk of one)."""
        return self.cut(episode.get_observations(), episode.get_actions(), episode.get_infos(),
                        env_step=env_step)

    # -- records -----------------------------------------------------------------------------

    def _actions(self, actions: list) -> np.ndarray:
        return model_actions(actions, self.action_low, self.action_high)

    def _record(self, obs: list, act: list, rew: list, rgb: list, qpos: list, qvel: list, *,
                env_step: int, fps: float) -> SegmentRecord:
        self.segments_cut += 1
        return SegmentRecord(
            id=uuid.uuid4().hex,
            experiment=self.experiment,
            env_id=self.env_id,
            observations=np.stack([np.asarray(o) for o in obs]),
            actions=self._actions(act),
            true_rewards=np.asarray(rew, dtype=np.float32),
            frames=np.stack(rgb).astype(np.uint8) if all(f is not None for f in rgb) else None,
            qpos=np.stack(qpos).astype(np.float64) if all(q is not None for q in qpos) else None,
            qvel=np.stack(qvel).astype(np.float64) if all(q is not None for q in qvel) else None,
            env_step=int(env_step),
            fps=float(fps),
            random_policy=self.random_policy,
        )


class SegmentStreamer:
    """Sends segments to the query service from a background thread; never blocks the caller.

    `put()` enqueues without waiting; a full queue drops the segment. The thread sends batches of
    up to `batch_size` with `add_segments`; a failed call (service down, bad answer) drops that
    batch and backs off (doubling, up to `max_backoff` s), while new segments keep being dropped
    only if the queue fills. Counters: `sent`, `dropped`, `accepted`, `duplicates`, `errors`,
    `last_error`.

    Args:
        query_address: ``host:port`` of the query service (used with
            `query_service.client.QueryClient(address, token)`), or None with `client_factory`.
        token: the actors' token for the query service.
        client_factory: zero-argument callable returning an object with ``add_segments(records)``;
            replaces `QueryClient` (tests, in-process services). Called in the sender thread.
    """

    def __init__(self, query_address: str | None = None, token: str = "", *, max_queue: int = 256,
                 batch_size: int = 16, max_backoff: float = 5.0,
                 client_factory: Callable[[], Any] | None = None):
        if query_address is None and client_factory is None:
            raise ValueError("SegmentStreamer needs a query_address or a client_factory")
        self.query_address = query_address
        self.token = token
        self.batch_size = max(1, int(batch_size))
        self.max_backoff = float(max_backoff)
        self._factory = client_factory
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(max_queue)))
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._client: Any = None
        self._outstanding = 0  # queued or being sent
        self.sent = 0
        self.dropped = 0
        self.accepted = 0
        self.duplicates = 0
        self.errors = 0
        self.last_error = ""

    # -- producer side (sampling thread) -----------------------------------------------------

    def put(self, records: SegmentRecord | Iterable[SegmentRecord]) -> int:
        """Enqueue; returns how many were queued (the rest are dropped and counted)."""
        if isinstance(records, SegmentRecord):
            records = [records]
        self._ensure_thread()
        queued = 0
        for r in records:
            try:
                with self._lock:
                    self._queue.put_nowait(r)
                    self._outstanding += 1
                queued += 1
            except queue.Full:
                with self._lock:
                    self.dropped += 1
        return queued

    @property
    def pending(self) -> int:
        return self._outstanding

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued was sent or dropped (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.pending

    def close(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        client, self._client = self._client, None
        if client is not None and hasattr(client, "close"):
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing must not raise
                pass

    def stats(self) -> dict:
        with self._lock:
            return {"sent": self.sent, "dropped": self.dropped, "accepted": self.accepted,
                    "duplicates": self.duplicates, "errors": self.errors, "queued": self._queue.qsize()}

    # -- sender thread -----------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._stop.clear()
                    self._thread = threading.Thread(target=self._run, name="rlhp-segment-streamer",
                                                    daemon=True)
                    self._thread.start()

    def _connect(self) -> Any:
        if self._client is None:
            if self._factory is not None:
                self._client = self._factory()
            else:
                from query_service.client import QueryClient

                self._client = QueryClient(self.query_address, self.token)
        return self._client

    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < self.batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                result = self._connect().add_segments(batch)
            except Exception as e:  # noqa: BLE001 - the service may be down; never crash sampling
                with self._lock:
                    self.dropped += len(batch)
                    self.errors += 1
                    self.last_error = f"{type(e).__name__}: {e}"
                    self._outstanding -= len(batch)
                if self.errors == 1 or self.errors % 100 == 0:
                    logger.warning("segment streamer: add_segments failed (%d errors so far, %d "
                                   "segments dropped): %s", self.errors, self.dropped, self.last_error)
                backoff = min(self.max_backoff, max(0.1, backoff * 2))
                self._stop.wait(backoff)
                continue
            backoff = 0.0
            with self._lock:
                self.sent += len(batch)
                self.accepted += int(getattr(result, "accepted", len(batch)) or 0)
                self.duplicates += int(getattr(result, "duplicates", 0) or 0)
                self._outstanding -= len(batch)
