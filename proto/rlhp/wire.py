"""Codec between numpy arrays and the `rlhp.v1` wire messages, with validation.

Everything here is plain protobuf + numpy (no grpc, no ray), so service cores may use it.
Validation failures raise `InvalidRequest` with a message a person understands; servers map
it to `INVALID_ARGUMENT`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Sequence

import numpy as np

from rlhp.v1 import common_pb2

# Largest gRPC message we send or accept. Batches beyond this stream in chunks.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class InvalidRequest(ValueError):
    """A request is malformed: wrong shape, dtype, NaN, size, missing field, unknown id."""


class NotFound(LookupError):
    """A request names something the service does not have (unknown or expired id)."""


class FailedPrecondition(RuntimeError):
    """The request is well formed but the service is not in a state to honour it."""


class Unauthenticated(PermissionError):
    """Missing, unknown or revoked token."""


_TO_NUMPY = {
    common_pb2.FLOAT32: np.dtype("<f4"),
    common_pb2.FLOAT64: np.dtype("<f8"),
    common_pb2.UINT8: np.dtype("u1"),
    common_pb2.INT32: np.dtype("<i4"),
    common_pb2.INT64: np.dtype("<i8"),
    common_pb2.FLOAT16: np.dtype("<f2"),
    common_pb2.BOOL: np.dtype("?"),
}
_FROM_NUMPY = {v.newbyteorder("=") if v.byteorder != "|" else v: k for k, v in _TO_NUMPY.items()}
DTYPE_NAMES = {k: common_pb2.DType.Name(k).lower() for k in _TO_NUMPY}


def dtype_to_wire(dtype: np.dtype | type | str) -> int:
    dt = np.dtype(dtype)
    key = dt.newbyteorder("=") if dt.byteorder not in ("|", "=") else dt
    if key not in _FROM_NUMPY:
        raise InvalidRequest(f"dtype {dt} cannot travel on the wire (use one of {sorted(DTYPE_NAMES.values())})")
    return _FROM_NUMPY[key]


def dtype_from_wire(code: int) -> np.dtype:
    if code not in _TO_NUMPY:
        raise InvalidRequest(f"tensor dtype is unset or unknown (code {code})")
    return _TO_NUMPY[code]


def to_tensor(array: np.ndarray | Sequence, out: common_pb2.Tensor | None = None) -> common_pb2.Tensor:
    """Encode an array (any numeric dtype we support) as a `rlhp.v1.Tensor`."""
    arr = np.asarray(array)
    code = dtype_to_wire(arr.dtype)
    arr = np.asarray(arr, dtype=_TO_NUMPY[code], order="C")  # (ascontiguousarray turns 0-d into [1])
    t = out if out is not None else common_pb2.Tensor()
    t.dtype = code
    del t.shape[:]
    t.shape.extend(int(s) for s in arr.shape)
    t.data = arr.tobytes()
    return t


def from_tensor(t: common_pb2.Tensor, name: str = "tensor") -> np.ndarray:
    """Decode a `rlhp.v1.Tensor`; raises InvalidRequest when dtype/shape/data disagree."""
    if t.dtype == common_pb2.DTYPE_UNSPECIFIED and not t.shape and not t.data:
        raise InvalidRequest(f"{name} is missing")
    try:
        dt = dtype_from_wire(t.dtype)
    except InvalidRequest as e:
        raise InvalidRequest(f"{name}: {e}") from None
    shape = tuple(int(s) for s in t.shape)
    if any(s < 0 for s in shape):
        raise InvalidRequest(f"{name} has a negative dimension in shape {list(shape)}")
    expected = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    data = t.data  # each access copies the bytes out of the message: read them once
    if expected != len(data):
        raise InvalidRequest(
            f"{name} has shape {list(shape)} and dtype {DTYPE_NAMES[t.dtype]}, which needs "
            f"{expected} bytes, but {len(data)} bytes were sent"
        )
    return np.frombuffer(data, dtype=dt).reshape(shape)


def has_tensor(t: common_pb2.Tensor) -> bool:
    """True when the (optional) tensor field was filled in."""
    return t.dtype != common_pb2.DTYPE_UNSPECIFIED or len(t.shape) > 0 or len(t.data) > 0


def check_finite(arr: np.ndarray, name: str) -> None:
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.isfinite(arr).sum())
        raise InvalidRequest(f"{name} contains {bad} NaN or infinite value(s)")


@dataclass(frozen=True)
class Space:
    """Observation and action spaces, enough to build a reward model and validate inputs."""

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

    def to_proto(self) -> common_pb2.SpaceSpec:
        return common_pb2.SpaceSpec(
            obs_shape=list(self.obs_shape),
            obs_dtype=dtype_to_wire(self.obs_dtype),
            action_kind=self.action_kind,
            action_n=self.action_n,
            act_shape=list(self.act_shape),
        )

    @classmethod
    def from_proto(cls, p: common_pb2.SpaceSpec) -> "Space":
        return cls(
            obs_shape=tuple(p.obs_shape),
            obs_dtype=str(dtype_from_wire(p.obs_dtype).newbyteorder("=").name),
            action_kind=p.action_kind,
            action_n=int(p.action_n),
            act_shape=tuple(p.act_shape),
        )

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
