"""Bad requests, made from good ones: protobuf-aware mutations, byte-level damage and random bytes.

`Mutator(rng).request(seed_message)` returns the serialized bytes of one fuzz case built from a
valid message: fields dropped, numbers set to extremes (negative, huge, NaN, ±inf), strings made
empty, binary, path-like or 1 MB long, ids unknown, enums out of range, repeated fields emptied or
multiplied, tensors with negative or huge shapes and wrong dtypes, then sometimes the bytes
themselves flipped or cut. One case in ten is plain random bytes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from google.protobuf.descriptor import FieldDescriptor as FD

MB = 1_000_000

_INT_RANGES = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1), FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1), FD.TYPE_UINT32: (0, 2**32 - 1), FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1), FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1), FD.TYPE_UINT64: (0, 2**64 - 1), FD.TYPE_FIXED64: (0, 2**64 - 1),
}
_STRINGS = ["", "\x00", "nope", "../../../etc/passwd", "é" * 50, "\n\r\t", "🙂" * 10, "a" * 201, "ALE/Pong-v5",
            "float64", "uint8", "int64", "complex128", "<f4", "object", "float32 ", "U10", "mp4", "webm", "gif",
            "127.0.0.1:1", "x:99999", "::::", "LEFT"]


class Mutator:
    """Fuzz cases from valid messages (see the module docstring); `rng` a numpy Generator."""

    def __init__(self, rng: np.random.Generator, big: float = 0.01) -> None:
        self.rng = rng
        self.big = big  # probability of 1 MB strings/bytes and of huge repeated fields

    # ---- one case ----------------------------------------------------------------------------
    def request(self, seed: Any) -> bytes:
        r = self.rng.random()
        if r < 0.1:
            return self.random_bytes()
        msg = type(seed)()
        msg.CopyFrom(seed)
        if r < 0.85:
            for _ in range(int(self.rng.integers(1, 5))):
                self.mutate(msg)
        data = msg.SerializeToString()
        if r >= 0.7 and self.rng.random() < 0.5:
            data = self.damage(data)
        return data

    def random_bytes(self) -> bytes:
        n = MB if self.rng.random() < self.big else int(self.rng.integers(0, 4096))
        return self.rng.bytes(n)

    def damage(self, data: bytes) -> bytes:
        """Flip, cut, insert or repeat bytes of a serialized message."""
        b = bytearray(data)
        op = int(self.rng.integers(0, 4))
        if op == 0 and b:
            for _ in range(int(self.rng.integers(1, 9))):
                b[int(self.rng.integers(0, len(b)))] ^= 1 << int(self.rng.integers(0, 8))
        elif op == 1 and b:
            b = b[: int(self.rng.integers(0, len(b)))]
        elif op == 2:
            at = int(self.rng.integers(0, len(b) + 1))
            b[at:at] = self.rng.bytes(int(self.rng.integers(1, 32)))
        else:
            b = b * int(self.rng.integers(2, 4))  # repeated fields merge, scalars take the last value
        return bytes(b)

    # ---- structure ---------------------------------------------------------------------------
    def mutate(self, msg: Any, depth: int = 0) -> None:
        fields = msg.DESCRIPTOR.fields
        if not fields:
            return
        f = fields[int(self.rng.integers(0, len(fields)))]
        repeated = f.is_repeated
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            msg.ClearField(f.name)
            return
        op = self.rng.random()
        if op < 0.2:
            msg.ClearField(f.name)
        elif f.type == FD.TYPE_MESSAGE:
            if repeated:
                self._repeated_messages(getattr(msg, f.name), depth)
            elif depth < 4:
                self.mutate(getattr(msg, f.name), depth + 1)
        elif repeated:
            self._repeated_scalars(getattr(msg, f.name), f)
        else:
            setattr(msg, f.name, self.value(f))

    def _repeated_messages(self, items: Any, depth: int) -> None:
        op = self.rng.random()
        if op < 0.2 or not len(items):
            del items[:]
            if op >= 0.1:
                items.add()  # one empty element
        elif op < 0.35:  # many copies of one element
            n = 1000 if self.rng.random() < self.big else int(self.rng.integers(2, 20))
            first = items[0]
            for _ in range(n):
                items.add().CopyFrom(first)
        elif depth < 4:
            self.mutate(items[int(self.rng.integers(0, len(items)))], depth + 1)

    def _repeated_scalars(self, items: Any, f: Any) -> None:
        op = self.rng.random()
        if op < 0.3:
            del items[:]
        elif op < 0.5 and len(items):
            items[int(self.rng.integers(0, len(items)))] = self.value(f)
        else:
            n = 100_000 if self.rng.random() < self.big else int(self.rng.integers(1, 8))
            items.extend(self.value(f) for _ in range(n))

    def value(self, f: Any) -> Any:
        """An extreme or odd value of field `f`'s type."""
        rng = self.rng
        t = f.type
        if t in _INT_RANGES:
            lo, hi = _INT_RANGES[t]
            pick = [0, 1, -1, 2, 3, 7, 255, 10**6, 10**9, 2**31 - 1, -(2**31), hi, lo,
                    int(rng.integers(-1000, 1000))]
            v = pick[int(rng.integers(0, len(pick)))]
            return min(hi, max(lo, v))
        if t in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
            pick = [0.0, -0.0, 1.0, -1.0, math.nan, math.inf, -math.inf, 1e38, -1e38, 1e-45,
                    float(rng.normal() * 1e3)]
            return pick[int(rng.integers(0, len(pick)))]
        if t == FD.TYPE_BOOL:
            return bool(rng.integers(0, 2))
        if t == FD.TYPE_ENUM:
            return int(rng.integers(-3, 12))
        if t == FD.TYPE_STRING:
            if rng.random() < self.big:
                return "x" * MB
            if rng.random() < 0.3:
                return "".join(chr(int(c)) for c in rng.integers(1, 0x2FF, int(rng.integers(0, 40))))
            return _STRINGS[int(rng.integers(0, len(_STRINGS)))]
        if t == FD.TYPE_BYTES:
            if rng.random() < self.big:
                return rng.bytes(MB)
            return rng.bytes(int(rng.integers(0, 64)))
        raise TypeError(f"no fuzz value for field type {t} ({f.full_name})")
