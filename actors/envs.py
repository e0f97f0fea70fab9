"""Environments for the actors: Atari, MuJoCo, classic control and a fixed-horizon CartPole.

Every env built by `make_env` is wrapped in `TrueRewardToInfo` (outermost), so the policy's
learning signal never contains the environment reward: RLlib sees reward 0.0 and the true reward
travels in `info["true_reward"]` (for the synthetic teacher and for evaluation only). The learned
reward is put in on the learner (`learner.reward_connector`).

Per-step info keys (read by `actors.segments`):

- ``true_reward`` (float): the environment reward of the transition that produced this info.
- ``rgb`` (uint8 [210, 160, 3], Atari): the native frame of the observation, for clips.
- ``qpos`` / ``qvel`` (float64, MuJoCo): physics state of the observation, so clips can be rendered
  later, only for the segments a human will watch.
- ``fps`` (float, reset info only): simulated frames per second of one env step (clip playback).

Nothing here opens a socket or starts a thread, so the creator is safe to call inside RLlib
env-runner processes (`rllib_env_creator`); registration happens inside the creator.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

FIXED_CARTPOLE_ID = "rlhp/FixedCartPole-v0"

MUJOCO_ENVS = ("Hopper", "HalfCheetah", "Walker2d", "Swimmer", "Ant", "Reacher", "InvertedPendulum",
               "InvertedDoublePendulum", "Humanoid", "HumanoidStandup", "Pusher")

# Rows of the 84×84 grey frame that show the score (and, for some games, the lives or other
# counters that move with the score); they are set to 0 so the reward model cannot read the score.
# Measured on ALE 0.12 frames (area-resampled 210×160 → 84×84). Half-open [start, stop) ranges.
SCORE_BANDS: dict[str, tuple[tuple[int, int], ...]] = {
    "Pong": ((0, 9),),  # both scores above the top wall (wall starts at row 9)
    "Breakout": ((0, 6),),  # score, lives, player number above the top wall
    "Enduro": ((63, 84),),  # odometer, day and cars-to-pass box at the bottom, plus the logo
    "SpaceInvaders": ((0, 10),),  # both scores; the invaders start at row 12
    "Seaquest": ((0, 12),),  # score and spare submarines above the surface
    "Qbert": ((0, 6),),  # score only; the pyramid and Q*bert on the top cube stay visible
    "BeamRider": ((0, 16),),  # score, sector and enemies-left counters above the beams
}
DEFAULT_SCORE_BANDS: tuple[tuple[int, int], ...] = ((0, 8),)
"""Games not listed above: blank a thin band at the top, where most Atari games keep the score."""

# Simulated seconds per env step (`env.unwrapped.dt`) of the gymnasium v5 MuJoCo envs, so segment
# lengths can be chosen without building an env on the driver.
MUJOCO_DT = {"Hopper": 0.008, "Walker2d": 0.008, "HalfCheetah": 0.05, "Swimmer": 0.04, "Ant": 0.05,
             "Reacher": 0.02, "InvertedPendulum": 0.04, "InvertedDoublePendulum": 0.05,
             "Humanoid": 0.015, "HumanoidStandup": 0.015, "Pusher": 0.05}

SHORT_SEGMENTS = {"InvertedPendulum": 10, "InvertedDoublePendulum": 10}
"""Segment steps of MuJoCo tasks that end when the pole falls: a random policy's episodes last a
median 5 (InvertedPendulum) or 6 (InvertedDoublePendulum) steps, so a 1.5 s segment (38, 30 steps)
would never fit one and the first random segments could not be collected. 10 steps fit the longer
random episodes, and rlhp learned IDP with them (docs/label_efficiency.md)."""

MIXED_ACTION_SCALES = {"Reacher": (0.1, 0.3, 1.0, 2.0), "Ant": (0.1, 0.3, 1.0, 2.0)}
"""Random-policy action scales (`run.random_action_scales`) of the `mujoco` preset per task: where
the control cost is a large part of the reward but differs little between segments of one action
scale. With 700 labels Reacher went from 43% to 94% of true-reward PPO's gain and Ant from 3% to
25%; on Hopper, whose control cost is tiny, the same scales cost 2 of 3 seeds (docs/label_efficiency.md)."""


def default_random_action_scales(env_id: str) -> tuple[float, ...]:
    return MIXED_ACTION_SCALES.get(env_id.split("-v", 1)[0], ())


ATARI_FPS = 60.0  # the Atari 2600 emits 60 frames per emulated second


def atari_game(env_id: str) -> str:
    """`ALE/Pong-v5` → `Pong`."""
    name = env_id.split("/", 1)[1] if "/" in env_id else env_id
    return name.split("-v", 1)[0].replace("NoFrameskip", "")


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/")


def is_mujoco(env_id: str) -> bool:
    return env_id.split("-v", 1)[0] in MUJOCO_ENVS


class TrueRewardToInfo(gym.Wrapper):
    """Moves the env reward into ``info["true_reward"]`` and returns 0.0 as the reward.

    The reward the policy learns from is put in by the learner connector; this wrapper guarantees
    that the environment reward cannot leak into it. ``fps`` (simulated steps per second) is added
    to the reset info and kept as an attribute for clip playback.
    """

    def __init__(self, env: gym.Env, fps: float | None = None):
        super().__init__(env)
        self.fps = float(fps) if fps else _guess_fps(env)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        info = dict(info)
        info["fps"] = self.fps
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        info["true_reward"] = float(reward)
        return obs, 0.0, terminated, truncated, info


def _guess_fps(env: gym.Env) -> float:
    dt = getattr(env.unwrapped, "dt", None)
    if dt:
        return 1.0 / float(dt)
    fps = (env.metadata or {}).get("render_fps") or (env.unwrapped.metadata or {}).get("render_fps")
    if fps:
        return float(fps)
    tau = getattr(env.unwrapped, "tau", None)
    return 1.0 / float(tau) if tau else 30.0


# --------------------------------------------------------------------------------------------
# Atari


class AtariPreprocessing(gym.Wrapper):
    """The paper's Atari preprocessing without OpenCV: frame skip with max-pooling of the last two
    frames, 84×84 grey (area resampling), no-op starts, optional life-loss terminals, and the score
    rows blanked. ``info["rgb"]`` holds the native RGB frame of the returned observation.

    Wraps an ALE env created with ``frameskip=1``.
    """

    def __init__(self, env: gym.Env, *, frame_skip: int = 4, screen_size: int = 84, noop_max: int = 30,
                 terminal_on_life_loss: bool = False,
                 score_bands: Sequence[tuple[int, int]] | None = DEFAULT_SCORE_BANDS,
                 keep_rgb: bool = True):
        super().__init__(env)
        if frame_skip < 1:
            raise ValueError(f"frame_skip must be ≥ 1, got {frame_skip}")
        if getattr(env.unwrapped, "_frameskip", 1) != 1:
            raise ValueError("AtariPreprocessing needs the ALE env made with frameskip=1")
        self.frame_skip = int(frame_skip)
        self.screen_size = int(screen_size)
        self.noop_max = int(noop_max)
        self.terminal_on_life_loss = bool(terminal_on_life_loss)
        self.keep_rgb = bool(keep_rgb)
        scale = self.screen_size / 84.0
        self.score_bands = tuple((int(round(a * scale)), int(round(b * scale))) for a, b in (score_bands or ()))
        self.ale = env.unwrapped.ale
        h, w = env.observation_space.shape[:2]
        self._bufs = [np.empty((h, w), dtype=np.uint8), np.empty((h, w), dtype=np.uint8)]
        self.observation_space = gym.spaces.Box(0, 255, (self.screen_size, self.screen_size), np.uint8)
        self.lives = 0
        self.game_over = False

    def _obs(self) -> np.ndarray:
        from PIL import Image

        if self.frame_skip > 1:
            frame = np.maximum(self._bufs[0], self._bufs[1])
        else:
            frame = self._bufs[0]
        out = np.asarray(Image.fromarray(frame).resize((self.screen_size, self.screen_size), Image.BOX))
        out = np.array(out, dtype=np.uint8)  # writable copy
        for a, b in self.score_bands:
            out[a:b] = 0
        return out

    def _info(self, info: dict) -> dict:
        info = dict(info)
        if self.keep_rgb:
            info["rgb"] = self.ale.getScreenRGB()
        return info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        _, info = self.env.reset(seed=seed, options=options)
        noops = int(self.env.unwrapped.np_random.integers(1, self.noop_max + 1)) if self.noop_max > 0 else 0
        for _ in range(noops):
            _, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                _, info = self.env.reset(seed=seed, options=options)
        self.lives = self.ale.lives()
        self.ale.getScreenGrayscale(self._bufs[0])
        self._bufs[1].fill(0)
        return self._obs(), self._info(info)

    def step(self, action):
        total, terminated, truncated, info = 0.0, False, False, {}
        for t in range(self.frame_skip):
            _, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            self.game_over = terminated
            if self.terminal_on_life_loss:
                lives = self.ale.lives()
                terminated = terminated or lives < self.lives
                self.game_over = terminated
                self.lives = lives
            if terminated or truncated:
                break
            if t == self.frame_skip - 2:
                self.ale.getScreenGrayscale(self._bufs[1])
            elif t == self.frame_skip - 1:
                self.ale.getScreenGrayscale(self._bufs[0])
        if terminated or truncated or self.frame_skip == 1:
            self.ale.getScreenGrayscale(self._bufs[0])
        return self._obs(), total, terminated, truncated, self._info(info)


def make_atari(env_id: str, *, frame_skip: int = 4, frame_stack: int = 4, screen_size: int = 84,
               noop_max: int = 30, repeat_action_probability: float = 0.0,
               terminal_on_life_loss: bool = False, blank_score: bool = True,
               score_bands: Sequence[tuple[int, int]] | None = None, keep_rgb: bool = True,
               full_action_space: bool = False, max_num_frames_per_episode: int | None = 108_000,
               **ale_kwargs: Any) -> gym.Env:
    """`ALE/<Game>-v5` as in the paper: obs (frame_stack, 84, 84) uint8, score blanked, sticky
    actions off, native RGB frame in ``info["rgb"]``."""
    import ale_py

    gym.register_envs(ale_py)
    kwargs: dict[str, Any] = dict(frameskip=1, repeat_action_probability=repeat_action_probability,
                                  full_action_space=full_action_space, **ale_kwargs)
    if max_num_frames_per_episode is not None:
        kwargs["max_num_frames_per_episode"] = max_num_frames_per_episode
    env = gym.make(env_id, **kwargs)
    if not blank_score:
        bands: Sequence[tuple[int, int]] = ()
    elif score_bands is not None:
        bands = tuple(tuple(b) for b in score_bands)  # type: ignore[misc]
    else:
        bands = SCORE_BANDS.get(atari_game(env_id), DEFAULT_SCORE_BANDS)
    env = AtariPreprocessing(env, frame_skip=frame_skip, screen_size=screen_size, noop_max=noop_max,
                             terminal_on_life_loss=terminal_on_life_loss, score_bands=bands,
                             keep_rgb=keep_rgb)
    if frame_stack > 1:
        env = gym.wrappers.FrameStackObservation(env, frame_stack)
    return TrueRewardToInfo(env, fps=ATARI_FPS / frame_skip)


# --------------------------------------------------------------------------------------------
# MuJoCo


class MujocoStateInfo(gym.Wrapper):
    """Adds the physics state of each observation (``qpos``, ``qvel``) to the info."""

    def _add(self, info: dict) -> dict:
        data = self.env.unwrapped.data
        info = dict(info)
        info["qpos"] = np.array(data.qpos, dtype=np.float64)
        info["qvel"] = np.array(data.qvel, dtype=np.float64)
        return info

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, self._add(info)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, self._add(info)


# Locomotion envs that end an episode when the body is "unhealthy" (fallen). Like the paper, we keep
# episodes at a fixed length by default: an early end leaks reward information (falling ends the
# episode) and makes episodes shorter than a segment under a fresh policy.
FIXED_LENGTH_MUJOCO = ("Hopper", "Walker2d", "Ant", "Humanoid", "HumanoidStandup")


class UnhealthyPenalty(gym.Wrapper):
    """Subtracts `penalty` from the env reward at every step the body is unhealthy (fallen): the
    paper's replacement for early termination, which keeps episodes at a fixed length but still
    says "stay in the healthy range". Without it a fallen hopper loses only the healthy bonus
    (1 per step) and can gain more by crawling forward on the ground."""

    def __init__(self, env: gym.Env, penalty: float):
        super().__init__(env)
        if not hasattr(env.unwrapped, "is_healthy"):
            raise ValueError(f"{env.spec.id if env.spec else env}: unhealthy_penalty needs an env with is_healthy")
        self.penalty = float(penalty)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if not self.env.unwrapped.is_healthy:
            reward = float(reward) - self.penalty
        return obs, reward, terminated, truncated, info


def make_mujoco(env_id: str, unhealthy_penalty: float = 0.0, **kwargs: Any) -> gym.Env:
    """A MuJoCo env for rlhp: fixed-length episodes for the locomotion envs of
    `FIXED_LENGTH_MUJOCO`, physics state in the info, the env reward moved to the info.
    `unhealthy_penalty` > 0 subtracts that much per unhealthy step (`UnhealthyPenalty`)."""
    name = env_id.split("/")[-1].split("-")[0]
    if name in FIXED_LENGTH_MUJOCO and name != "HumanoidStandup":
        kwargs.setdefault("terminate_when_unhealthy", False)
    env: gym.Env = gym.make(env_id, **kwargs)
    if unhealthy_penalty:
        env = UnhealthyPenalty(env, unhealthy_penalty)
    env = MujocoStateInfo(env)
    return TrueRewardToInfo(env, fps=1.0 / float(env.unwrapped.dt))


# --------------------------------------------------------------------------------------------
# Fixed-horizon CartPole


class FixedHorizonCartPole(CartPoleEnv):
    """CartPole that always runs `horizon` steps (like `seals/CartPole-v0`).

    The true reward is 1 while the pole is up (|θ| ≤ 12°, |x| ≤ 2.4) and 0 otherwise; the episode
    never terminates early — the physics keeps running after the pole falls — so the length of an
    episode leaks nothing about the reward and full-length segments of a good and a bad policy do
    not tie. The pole angle is wrapped to [-π, π); the observation space is unbounded.
    """

    def __init__(self, horizon: int = 200, render_mode: str | None = None):
        super().__init__(render_mode=render_mode)
        if horizon < 1:
            raise ValueError(f"horizon must be ≥ 1, got {horizon}")
        self.horizon = int(horizon)
        high = np.full(4, np.inf, dtype=np.float32)
        self.observation_space = gym.spaces.Box(-high, high, dtype=np.float32)
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._t = 0
        return super().reset(seed=seed, options=options)

    def step(self, action):
        assert self.action_space.contains(action), f"{action!r} ({type(action)}) invalid"
        assert self.state is not None, "Call reset before using step method."
        x, x_dot, theta, theta_dot = self.state
        force = self.force_mag if int(action) == 1 else -self.force_mag
        costheta, sintheta = math.cos(theta), math.sin(theta)
        temp = (force + self.polemass_length * np.square(theta_dot) * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * np.square(costheta) / self.total_mass))
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        x = x + self.tau * x_dot
        x_dot = x_dot + self.tau * xacc
        theta = theta + self.tau * theta_dot
        theta_dot = theta_dot + self.tau * thetaacc
        theta = (theta + math.pi) % (2 * math.pi) - math.pi
        self.state = np.array((x, x_dot, theta, theta_dot), dtype=np.float64)
        self._t += 1
        up = abs(x) <= self.x_threshold and abs(theta) <= self.theta_threshold_radians
        if self.render_mode == "human":
            self.render()
        return (np.array(self.state, dtype=np.float32), 1.0 if up else 0.0, False,
                self._t >= self.horizon, {})


# --------------------------------------------------------------------------------------------
# Registration and the one entry point


def register_rlhp_envs() -> None:
    """Register the project's envs and the ALE envs in this process (idempotent)."""
    if FIXED_CARTPOLE_ID not in gym.registry:
        gym.register(FIXED_CARTPOLE_ID, entry_point=FixedHorizonCartPole, kwargs={"horizon": 200})
    try:
        import ale_py

        gym.register_envs(ale_py)
    except ImportError:  # pragma: no cover - ale-py is a dependency
        pass


def make_env(env_id: str, **opts: Any) -> gym.Env:
    """Build `env_id` for the actors; the result always has `TrueRewardToInfo` outermost.

    Atari (`ALE/<Game>-v5`) options: see `make_atari`. MuJoCo (`Hopper-v5`, …) and other gymnasium
    ids pass `opts` to `gym.make`. `rlhp/FixedCartPole-v0` takes `horizon`. ``goal``
    (``package.module:function``, see `actors.goals`) replaces the true reward with a goal's.
    """
    register_rlhp_envs()
    goal = opts.pop("goal", None)
    if is_atari(env_id):
        env = make_atari(env_id, **opts)
    elif is_mujoco(env_id):
        env = make_mujoco(env_id, **opts)
    else:
        fps = opts.pop("fps", None)
        env = TrueRewardToInfo(gym.make(env_id, **opts), fps=fps)
    if goal:  # the goal becomes "the true reward" (actors.goals), still outside the policy's view
        from actors.goals import GoalReward

        env = TrueRewardToInfo(GoalReward(env.env, goal), fps=env.fps)
    return env


def random_actions(space: gym.Space, scales: Sequence[float] = ()) -> Any:
    """The random policy of the initial segments: `sample(episode)` draws one action of random
    episode `episode`: uniform in the action box, stretched about its centre by
    `scales[episode % len(scales)]` and clipped to the box (below 1: a smaller box; 2: half of
    each coordinate at the box's edge, as an untrained Gaussian policy acts; no scales: the box,
    `space.sample()`). It draws from the space's own generator (`space.seed`), so a seeded run is
    reproducible. Raises ValueError for a scale that is not a positive number or for scales on an
    action space that is not a bounded Box."""
    scales = [float(s) for s in scales]
    bad = [s for s in scales if not 0.0 < s < math.inf]
    if bad:
        raise ValueError(f"random action scales must be positive numbers, got {bad}")
    if any(s != 1.0 for s in scales) and not (isinstance(space, gym.spaces.Box) and space.is_bounded()):
        raise ValueError(f"random action scales need a bounded continuous (Box) action space, not {space}")
    mid = (space.low + space.high) / 2.0 if isinstance(space, gym.spaces.Box) else None

    def sample(episode: int) -> Any:
        scale = scales[episode % len(scales)] if scales else 1.0
        action = space.sample()
        if scale == 1.0:
            return action
        return np.clip(mid + scale * (action - mid), space.low, space.high).astype(space.dtype)

    return sample


def default_segment_length(env_id: str, seconds: float = 1.5) -> int:
    """Paper: 25 steps on Atari; ~1.5 s of simulated time on MuJoCo, kept within 15–60 steps and
    within the env's episode length (Reacher's episodes are 50 steps: a longer window would never
    fit, and segments never span two episodes); 10 steps on the pendulum tasks (`SHORT_SEGMENTS`).

    Other envs: 25 steps.
    """
    if is_atari(env_id):
        return 25
    if is_mujoco(env_id):
        name = env_id.split("-v", 1)[0]
        if name in SHORT_SEGMENTS:
            return SHORT_SEGMENTS[name]
        dt = MUJOCO_DT.get(name)
        if dt is not None and env_id.endswith("-v5"):
            fps = 1.0 / dt
        else:
            env = make_env(env_id)
            try:
                fps = env.fps  # type: ignore[attr-defined]
            finally:
                env.close()
        length = int(min(60, max(15, round(seconds * fps))))
        horizon = _max_episode_steps(env_id)
        return min(length, horizon) if horizon else length
    return 25


def _max_episode_steps(env_id: str) -> int | None:
    try:
        return gym.spec(env_id).max_episode_steps
    except gym.error.Error:
        return None


def rllib_env_creator(env_config: dict) -> gym.Env:
    """RLlib env creator: ``env_config = {"env_id": ..., "env_opts": {...}, ...}`` (other keys, such
    as the segment options read by `actors.callbacks`, are ignored here)."""
    return make_env(str(env_config["env_id"]), **dict(env_config.get("env_opts") or {}))


class RLlibEnv(gym.Wrapper):
    """The env class given to RLlib (``config.environment(env=RLlibEnv, env_config=...)``; RLlib
    2.60 takes a class or a registered name, not a function): `rllib_env_creator(env_config)`.
    Built inside each env-runner process; registration happens there."""

    def __init__(self, env_config: dict | None = None):
        super().__init__(rllib_env_creator(dict(env_config or {})))
