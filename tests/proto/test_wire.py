"""rlhp.wire: tensor codec, Space syntax, validation helpers."""

from __future__ import annotations

import numpy as np
import pytest

from rlhp import wire
from rlhp.v1 import common_pb2

ALL_DTYPES = ["float32", "float64", "uint8", "int32", "int64", "float16", "bool"]


def _sample(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(0)
    if dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.startswith("float"):
        return rng.normal(size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -1000), min(info.max, 1000), size=shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (5,), (3, 4), (2, 4, 84, 84), (7, 0, 3)])
def test_tensor_round_trip(dtype, shape):
    arr = _sample(dtype, shape)
    t = wire.to_tensor(arr)
    assert list(t.shape) == list(shape)
    assert wire.DTYPE_NAMES[t.dtype] == dtype
    # Through serialized bytes, as on the wire.
    back = wire.from_tensor(common_pb2.Tensor.FromString(t.SerializeToString()))
    assert back.dtype == np.dtype(dtype) and back.shape == shape
    np.testing.assert_array_equal(back, arr)


def test_tensor_round_trip_non_contiguous_and_big_endian():
    arr = np.arange(24, dtype=">f4").reshape(4, 6)[:, ::2]
    back = wire.from_tensor(wire.to_tensor(arr))
    assert back.dtype == np.dtype("<f4")
    np.testing.assert_array_equal(back, arr.astype("<f4"))
    # The bytes are little-endian C order, whatever the input's layout.
    assert wire.to_tensor(arr).data == np.ascontiguousarray(arr, dtype="<f4").tobytes()


def test_tensor_into_existing_message_replaces_shape():
    t = wire.to_tensor(np.zeros((2, 3), np.float32))
    wire.to_tensor(np.zeros(5, np.int64), out=t)
    assert list(t.shape) == [5] and t.dtype == common_pb2.INT64


def test_byte_count_mismatch_is_invalid_request():
    t = wire.to_tensor(np.zeros((4, 11), np.float32))
    t.data = t.data[:-4]
    with pytest.raises(wire.InvalidRequest, match=r"observations has shape \[4, 11\] and dtype float32, "
                                                  r"which needs 176 bytes, but 172 bytes were sent"):
        wire.from_tensor(t, "observations")


def test_shape_too_large_for_data():
    t = common_pb2.Tensor(dtype=common_pb2.UINT8, shape=[10], data=b"\x00" * 11)
    with pytest.raises(wire.InvalidRequest, match="needs 10 bytes, but 11"):
        wire.from_tensor(t)


def test_missing_unknown_and_negative():
    with pytest.raises(wire.InvalidRequest, match="actions is missing"):
        wire.from_tensor(common_pb2.Tensor(), "actions")
    with pytest.raises(wire.InvalidRequest, match="dtype is unset or unknown"):
        wire.from_tensor(common_pb2.Tensor(shape=[1], data=b"\x00"), "x")
    with pytest.raises(wire.InvalidRequest, match="unknown"):
        wire.from_tensor(common_pb2.Tensor(dtype=99, shape=[1], data=b"\x00"), "x")
    with pytest.raises(wire.InvalidRequest, match="negative dimension"):
        wire.from_tensor(common_pb2.Tensor(dtype=common_pb2.UINT8, shape=[-1], data=b""), "x")
    assert not wire.has_tensor(common_pb2.Tensor())
    assert wire.has_tensor(wire.to_tensor(np.zeros(0, np.float32)))


@pytest.mark.parametrize("shape, says", [
    ([10**6, 2**63 - 1, 255, 0, 10**9], "longer than a message"),  # found by fuzzing: np.prod wrapped to 0
    ([2**32, 2**32, 0], "longer than a message"),
    ([1] * 40, "40 dimensions"),
    ([2**20, 2**20, 2**20], "needs"),  # Python ints: no overflow into a small, matching byte count
])
def test_huge_or_many_dimensions_with_empty_data_are_invalid_request(shape, says):
    with pytest.raises(wire.InvalidRequest, match=says):
        wire.from_tensor(common_pb2.Tensor(dtype=common_pb2.FLOAT32, shape=shape, data=b""), "x")


@pytest.mark.parametrize("dtype", ["complex64", "int16", "uint32", "object", "U3"])
def test_unsupported_dtypes_are_invalid_request(dtype):
    arr = np.zeros(3, dtype=dtype)
    with pytest.raises(wire.InvalidRequest, match="cannot travel on the wire"):
        wire.to_tensor(arr)


@pytest.mark.parametrize("text, expected", [
    ("11/box:3", wire.Space((11,), "float32", "box", 0, (3,))),
    ("17:float64/box:6", wire.Space((17,), "float64", "box", 0, (6,))),
    ("4x84x84:uint8/discrete:6", wire.Space((4, 84, 84), "uint8", "discrete", 6, ())),
    ("4x84x84/discrete:18", wire.Space((4, 84, 84), "uint8", "discrete", 18, ())),
    ("8/box", wire.Space((8,), "float32", "box", 0, (1,))),
    (" 3x2/box:2x2 ", wire.Space((3, 2), "float32", "box", 0, (2, 2))),
])
def test_space_parse(text, expected):
    space = wire.Space.parse(text)
    assert space == expected
    assert wire.Space.parse(space.to_string()) == space
    assert wire.space_from_proto(common_pb2.SpaceSpec.FromString(wire.space_to_proto(space).SerializeToString())) == space


def test_space_properties():
    pong = wire.Space.parse("4x84x84:uint8/discrete:6")
    hopper = wire.Space.parse("11/box:3")
    assert pong.is_image and pong.action_dim == 6
    assert not hopper.is_image and hopper.action_dim == 3
    assert pong.to_string() == "4x84x84:uint8/discrete:6"
    assert hopper.to_string() == "11:float32/box:3"


@pytest.mark.parametrize("text", [
    "", "11", "11/box:3/x", "ax3/box:3", "11/discrete:0", "11/discrete:x", "11/tuple:3",
    "0/box:3", "11/box:-3", "11:notadtype/box:3", "-4x84/discrete:2", "11/box:3x",
])
def test_space_parse_errors(text):
    with pytest.raises(ValueError, match="cannot parse space .* expected OBS\\[:DTYPE\\]/ACTION"):
        wire.Space.parse(text)


def test_check_transitions():
    space = wire.Space.parse("11/box:3")
    ok_obs, ok_act = np.zeros((4, 11), np.float32), np.zeros((4, 3), np.float32)
    wire.check_transitions(space, ok_obs, ok_act)
    bad = ok_obs.copy()
    bad[1, 2] = np.nan
    with pytest.raises(wire.InvalidRequest, match="1 NaN"):
        wire.check_transitions(space, bad, ok_act)
    with pytest.raises(wire.InvalidRequest, match="expected"):
        wire.check_transitions(space, np.zeros((4, 12), np.float32), ok_act)
    with pytest.raises(wire.InvalidRequest, match="empty"):
        wire.check_transitions(space, ok_obs[:0], ok_act[:0])
    pong = wire.Space.parse("4x84x84/discrete:6")
    frames = np.zeros((2, 4, 84, 84), np.uint8)
    wire.check_transitions(pong, frames, np.array([0, 5]))
    with pytest.raises(wire.InvalidRequest, match=r"must lie in \[0, 5\]"):
        wire.check_transitions(pong, frames, np.array([0, 6]))
    with pytest.raises(wire.InvalidRequest, match="must be integers"):
        wire.check_transitions(pong, frames, np.array([0.0, 1.0]))


def test_preference():
    assert wire.Preference.parse("left") is wire.Preference.LEFT
    assert wire.Preference.parse(2) is wire.Preference.RIGHT
    assert wire.Preference.EQUAL.target == 0.5 and wire.Preference.INCOMPARABLE.target is None
    assert int(wire.Preference.INCOMPARABLE) == common_pb2.INCOMPARABLE
    for bad in (0, 9, "maybe"):
        with pytest.raises(wire.InvalidRequest, match="not one of LEFT, RIGHT, EQUAL, INCOMPARABLE"):
            wire.Preference.parse(bad)
