"""Domain types shared by every layer, with no protobuf or gRPC import.

`Space` (observation and action spaces), `Preference` (a labeler's answer), the error types the
service cores raise (`InvalidRequest`, `NotFound`, `FailedPrecondition`, `Unauthenticated`, `PermissionDenied`, `Unavailable`; servers
map them to status codes in `rlhp.rpc`), and the checks of arrays against a `Space`
(`check_transitions`, `check_finite`). Plain Python + numpy, so a core can use them without loading
the generated stubs. `rlhp.wire` (the protobuf codec) re-exports all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np


class InvalidRequest(ValueError):
    """A request is malformed: wrong shape, dtype, NaN, size, missing field, unknown id."""


class NotFound(LookupError):
    """A request names something the service does not have (unknown or expired id)."""


class FailedPrecondition(RuntimeError):
    """The request is well formed but the service is not in a state to honour it."""


class Unauthenticated(PermissionError):
    """Missing, unknown or revoked token."""


class PermissionDenied(PermissionError):
    """A valid token that may not do this: another role, or an experiment outside its scope."""


class Unavailable(ConnectionError):
    """The service cannot do this now, e.g. its disk is full or read-only; nothing was changed and
    the same request may succeed later (UNAVAILABLE, which clients retry)."""


@dataclass(frozen=True)
class Space:
    """Observation and action spaces, enough to build a reward model and validate inputs.

    On the wire: `rlhp.wire.space_to_proto` / `space_from_proto`."""

    obs_shape: tuple[int, ...]
    obs_dtype: str = "float32"
    action_kind: str = "box"  # "box" or "discrete"
    action_n: int = 0  # number of discrete actions
    act_shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.action_kind not in ("box", "discrete"):
            raise ValueError(f"action_kind must be 'box' or 'discrete', not {self.action_kind!r}")
        if self.action_kind == "discrete" and self.action_n <= 0:
            raise ValueError("a discrete action space needs action_n > 0")
        if any(int(s) <= 0 for s in self.obs_shape):
            raise ValueError(f"obs_shape must be positive, got {self.obs_shape}")
        if any(int(s) <= 0 for s in self.act_shape):
            raise ValueError(f"act_shape must be positive, got {self.act_shape}")

    @property
    def is_image(self) -> bool:
        """Stacked frames (C, H, W) or (H, W, C) of at least 32×32 use the CNN."""
        return len(self.obs_shape) == 3 and sorted(self.obs_shape)[1] >= 32

    @property
    def action_dim(self) -> int:
        """Width of the action input to a reward model (one-hot for discrete)."""
        if self.action_kind == "discrete":
            return self.action_n
        return int(np.prod(self.act_shape)) if self.act_shape else 1

    def to_string(self) -> str:
        obs = "x".join(str(s) for s in self.obs_shape) + ":" + self.obs_dtype
        act = f"discrete:{self.action_n}" if self.action_kind == "discrete" else (
            "box:" + ("x".join(str(s) for s in self.act_shape) or "1"))
        return f"{obs}/{act}"

    @classmethod
    def parse(cls, text: str) -> "Space":
        """Parse `OBS[:DTYPE]/ACTION`, e.g. `11/box:3` (Hopper), `4x84x84:uint8/discrete:6` (Pong).

        OBS is a shape with `x` between dimensions; DTYPE defaults to float32 (uint8 for images);
        ACTION is `discrete:N` or `box:SHAPE`.
        """
        try:
            obs_part, act_part = text.strip().split("/")
            obs_fields = obs_part.split(":")
            obs_shape = tuple(int(s) for s in obs_fields[0].split("x"))
            default_dtype = "uint8" if len(obs_shape) == 3 else "float32"
            obs_dtype = obs_fields[1] if len(obs_fields) > 1 else default_dtype
            np.dtype(obs_dtype)
            kind, _, rest = act_part.partition(":")
            if kind == "discrete":
                return cls(obs_shape, obs_dtype, "discrete", int(rest), ())
            if kind == "box":
                act_shape = tuple(int(s) for s in rest.split("x")) if rest else (1,)
                return cls(obs_shape, obs_dtype, "box", 0, act_shape)
            raise ValueError(f"unknown action kind {kind!r}")
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"cannot parse space {text!r} ({e}); expected OBS[:DTYPE]/ACTION such as "
                "'11/box:3' or '4x84x84:uint8/discrete:6'"
            ) from None

    @classmethod
    def from_gym(cls, observation_space, action_space) -> "Space":
        """Build from gymnasium spaces (Box observations; Discrete or Box actions)."""
        obs_shape = tuple(int(s) for s in observation_space.shape)
        obs_dtype = np.dtype(observation_space.dtype).name
        if hasattr(action_space, "n"):
            return cls(obs_shape, obs_dtype, "discrete", int(action_space.n), ())
        return cls(obs_shape, obs_dtype, "box", 0, tuple(int(s) for s in action_space.shape))


class Preference(IntEnum):
    """A labeler's answer; values equal the `rlhp.v1.Preference` enum on the wire."""

    LEFT = 1
    RIGHT = 2
    EQUAL = 3
    INCOMPARABLE = 4

    @property
    def target(self) -> float | None:
        """Probability that the left segment is better, or None (never trained on)."""
        return {Preference.LEFT: 1.0, Preference.RIGHT: 0.0, Preference.EQUAL: 0.5}.get(self)

    @classmethod
    def parse(cls, value: int | str) -> "Preference":
        try:
            return cls[value.upper()] if isinstance(value, str) else cls(int(value))
        except (KeyError, ValueError, TypeError):
            raise InvalidRequest(
                f"answer {value!r} is not one of LEFT, RIGHT, EQUAL, INCOMPARABLE") from None


def model_actions(actions: Any, low: Any = None, high: Any = None) -> np.ndarray:
    """Actions as the reward model takes them, decided in one place for the actors (segments), the
    learner connector and the diagnostics: int64 for discrete actions; float32 for continuous ones,
    clipped to [`low`, `high`] when given (the action the env applied, whatever the policy sampled)."""
    a = np.asarray(actions)
    if a.dtype.kind in "iub":
        return a.astype(np.int64)
    a = a.astype(np.float32)
    if low is not None and high is not None:
        a = np.clip(a, low, high).astype(np.float32)
    return a


def check_finite(arr: np.ndarray, name: str) -> None:
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.isfinite(arr).sum())
        raise InvalidRequest(f"{name} contains {bad} NaN or infinite value(s)")


def check_transitions(space: Space, obs: np.ndarray, act: np.ndarray, what: str = "batch",
                      leading: int = 1) -> None:
    """Validate a batch (`leading`=1: [N, ...]) or a set of segments (`leading`=2: [P, T, ...])."""
    lead = obs.shape[:leading]
    if obs.ndim != leading + len(space.obs_shape) or tuple(obs.shape[leading:]) != space.obs_shape:
        raise InvalidRequest(
            f"{what}: observations have shape {list(obs.shape)}, expected "
            f"{['N'] * leading if leading == 1 else ['P', 'T'][:leading]} + {list(space.obs_shape)}"
        )
    if any(n == 0 for n in lead):
        raise InvalidRequest(f"{what} is empty")
    if obs.dtype.kind not in "fui" and obs.dtype != np.bool_:
        raise InvalidRequest(f"{what}: observations must be numeric, got {obs.dtype}")
    check_finite(obs, f"{what}: observations")
    if space.action_kind == "discrete":
        if act.shape != lead and act.shape != lead + (1,):
            raise InvalidRequest(f"{what}: discrete actions have shape {list(act.shape)}, expected {list(lead)}")
        if act.dtype.kind not in "iu":
            raise InvalidRequest(f"{what}: discrete actions must be integers, got {act.dtype}")
        if act.size and (act.min() < 0 or act.max() >= space.action_n):
            raise InvalidRequest(
                f"{what}: discrete actions must lie in [0, {space.action_n - 1}], got "
                f"[{int(act.min())}, {int(act.max())}]")
    else:
        want = lead + (space.act_shape or (1,))
        if act.shape != want and not (space.act_shape in ((), (1,)) and act.shape == lead):
            raise InvalidRequest(f"{what}: actions have shape {list(act.shape)}, expected {list(want)}")
        if act.dtype.kind not in "fui":
            raise InvalidRequest(f"{what}: actions must be numeric, got {act.dtype}")
        check_finite(act, f"{what}: actions")
