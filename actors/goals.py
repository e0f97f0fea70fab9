"""Goals that are not the environment's reward: what the synthetic teacher judges by.

The paper's point is that the goal need not be the env reward (a Hopper backflip; Enduro "keep even
with other cars"). A **goal** is a per-step function ``goal(obs, action, next_obs, info) -> float``
named by an import path (``package.module:function``, config ``teacher.goal``). `GoalReward`
replaces the env reward with it *below* `actors.envs.TrueRewardToInfo`, so everything that reads
"the true reward" — the synthetic teacher, `rlhp evaluate`, the training metrics — reads the goal,
and the policy still sees neither (it learns only from the preferences). ``info`` holds the MuJoCo
physics state after the step (``qpos``, ``qvel``) for MuJoCo envs.

A goal may carry a ``measure(qpos: np.ndarray [T+1, nq]) -> dict[str, float]``: what `rlhp
evaluate` reports per episode (e.g. full backward rotations for the backflip).
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Callable

import gymnasium as gym
import numpy as np

Goal = Callable[[Any, Any, Any, dict], float]


def load_goal(path: str) -> Goal:
    """``"package.module:function"`` → the function; a clear error for anything else."""
    module, sep, name = str(path).partition(":")
    if not sep or not module or not name:
        raise ValueError(f"goal {path!r}: give it as package.module:function")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"goal {path!r}: {e}") from None
    if not callable(fn):
        raise ValueError(f"goal {path!r} is not a function")
    return fn


class GoalReward(gym.Wrapper):
    """The env's reward replaced by ``goal(obs, action, next_obs, info)``; the env's own reward
    stays in ``info["env_reward"]``."""

    def __init__(self, env: gym.Env, goal: Goal | str):
        super().__init__(env)
        self.goal = load_goal(goal) if isinstance(goal, str) else goal
        self._obs: Any = None

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._obs = obs
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        info["env_reward"] = float(reward)
        goal_reward = float(self.goal(self._obs, action, obs, info))
        self._obs = obs
        return obs, goal_reward, terminated, truncated, info


# --------------------------------------------------------------------------------------------
# Hopper backflip


def hopper_backflip(obs: Any, action: Any, next_obs: Any, info: dict) -> float:
    """Rotate the torso backwards: the backward angular velocity of Hopper's torso (rad/s, −qvel[2];
    +qvel[2] tips the torso forward, towards +x), plus a small bonus for height so that flips in
    the air beat rolling on the floor (qpos[1] is the torso's height, 1.25 standing)."""
    qpos, qvel = info["qpos"], info["qvel"]
    return float(-qvel[2] + 0.5 * max(0.0, float(qpos[1]) - 0.7))


def backflips(qpos: np.ndarray) -> dict[str, float]:
    """Full backward rotations of Hopper's torso in an episode: the unwrapped torso angle qpos[2]
    (a hinge, so it is not wrapped) falls by 2π per backflip."""
    angle = np.asarray(qpos, dtype=np.float64)[:, 2]
    turned = float(angle[0] - angle.min()) if len(angle) else 0.0
    return {"backflips": float(math.floor(max(0.0, turned) / (2 * math.pi))),
            "backward_rotation_rad": turned}


hopper_backflip.measure = backflips  # type: ignore[attr-defined]
hopper_backflip.description = (  # type: ignore[attr-defined]
    "do backflips: the hopper turns over backwards, in the air rather than rolling on the floor")


# ---- the goal in words, for labelers ---------------------------------------------------------

# What a person is asked to prefer when the goal is the env's own reward, per env family; the
# labeling page shows it above the clips ("Which clip is closer to the goal?").
GOAL_TEXTS = {
    "Pong": "win points: get the ball past the opponent (the right paddle is yours) and do not let it past you",
    "Breakout": "break bricks with the ball and do not let the ball fall past the paddle",
    "Enduro": "pass as many cars as possible without crashing",
    "SpaceInvaders": "shoot the invaders and avoid their shots",
    "Seaquest": "shoot sharks and submarines, rescue divers, and surface before the oxygen runs out",
    "Qbert": "change the colour of the cubes by hopping on them, without falling off or being caught",
    "BeamRider": "destroy enemy ships and dodge what they shoot",
    "Hopper": "move forward (to the right) fast without falling",
    "Walker2d": "walk forward (to the right) fast without falling",
    "HalfCheetah": "run forward (to the right) as fast as possible",
    "Ant": "walk forward fast without flipping over",
    "Swimmer": "swim forward (to the right) fast",
    "Reacher": "touch the target (the small ball) with the tip of the arm, using little force",
    "InvertedPendulum": "keep the pole upright",
    "InvertedDoublePendulum": "keep both poles upright and balanced",
    "CartPole": "keep the pole upright and the cart near the middle",
    "Pendulum": "swing the pendulum up and keep it upright",
}


def default_goal_text(env_id: str) -> str:
    """The goal in words for `env_id` when the env's reward is the goal (a generic one for games
    and tasks without their own line)."""
    base = env_id.split("/", 1)[-1].split("-v", 1)[0].replace("NoFrameskip", "").replace("Fixed", "")
    if base in GOAL_TEXTS:
        return GOAL_TEXTS[base]
    if env_id.startswith("ALE/"):
        return "score points in the game"
    return "do the task the environment is built for, as well as possible"
