"""Codec between numpy arrays / `Space` and the `rlhp.v1` wire messages, with validation.

Everything here is plain protobuf + numpy (no grpc, no ray). Decoding failures raise
`InvalidRequest` with a message a person understands; servers map it to `INVALID_ARGUMENT`.
The domain types live in `rlhp.types` (no protobuf import) and are re-exported here, so
`from rlhp.wire import Space, Preference, InvalidRequest` keeps working.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from rlhp.types import (FailedPrecondition, InvalidRequest, NotFound, PermissionDenied, Preference, Space,
                        Unauthenticated, Unavailable, check_finite, check_transitions)
from rlhp.v1 import common_pb2

__all__ = [
    "MAX_MESSAGE_BYTES", "DTYPE_NAMES", "dtype_to_wire", "dtype_from_wire", "to_tensor", "from_tensor",
    "has_tensor", "space_to_proto", "space_from_proto",
    # re-exported from rlhp.types
    "FailedPrecondition", "InvalidRequest", "NotFound", "PermissionDenied", "Preference", "Space", "Unauthenticated",
    "Unavailable",
    "check_finite", "check_transitions",
]

# Largest gRPC message we send or accept. Batches beyond this stream in chunks.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_DIMS = 32
"""Most dimensions a tensor on the wire may have (numpy's own limit is 64)."""


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
    if len(shape) > MAX_DIMS:
        raise InvalidRequest(f"{name} has {len(shape)} dimensions; at most {MAX_DIMS} are accepted")
    if any(s < 0 for s in shape):
        raise InvalidRequest(f"{name} has a negative dimension in shape {list(shape)}")
    if any(s > MAX_MESSAGE_BYTES for s in shape):  # no dimension can be longer than a message
        raise InvalidRequest(f"{name} has a dimension longer than a message can carry in shape {list(shape)}")
    expected = math.prod(shape) * dt.itemsize  # Python ints: np.prod wraps around on huge shapes
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


def space_to_proto(space: Space) -> common_pb2.SpaceSpec:
    return common_pb2.SpaceSpec(
        obs_shape=list(space.obs_shape),
        obs_dtype=dtype_to_wire(space.obs_dtype),
        action_kind=space.action_kind,
        action_n=space.action_n,
        act_shape=list(space.act_shape),
    )


def space_from_proto(p: common_pb2.SpaceSpec) -> Space:
    return Space(
        obs_shape=tuple(p.obs_shape),
        obs_dtype=str(dtype_from_wire(p.obs_dtype).newbyteorder("=").name),
        action_kind=p.action_kind,
        action_n=int(p.action_n),
        act_shape=tuple(p.act_shape),
    )
