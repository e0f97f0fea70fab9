"""Codec of the reward service: its plain types (`reward_service.types`) ⇄ `rlhp.v1` reward messages.

Imported by both `server.py` and `client.py` (the client encodes what the server decodes), so a
client loads neither the server nor the core (torch) to talk to the service.
"""

from __future__ import annotations

import numpy as np

from rlhp import wire
from rlhp.v1 import common_pb2, reward_pb2
from reward_service.types import ComparisonData, MemberStats, RewardStats, SegmentData

SERVICE_NAME = "rlhp.v1.RewardService"


def decode_tensor(message, field: str, name: str) -> np.ndarray:
    """The tensor in `message.field`; InvalidRequest naming `name` when absent or inconsistent."""
    if not message.HasField(field) or not wire.has_tensor(getattr(message, field)):
        raise wire.InvalidRequest(f"{name} is missing (a rlhp.v1.Tensor with dtype, shape and data)")
    return wire.from_tensor(getattr(message, field), name)


def decode_segment(seg: common_pb2.Segment, index: int) -> SegmentData:
    where = f"segment {seg.id!r}" if seg.id else f"segment {index}"
    return SegmentData(
        id=seg.id,
        observations=decode_tensor(seg, "observations", f"{where}: observations"),
        actions=decode_tensor(seg, "actions", f"{where}: actions"),
    )


def encode_segment(seg: SegmentData, out: common_pb2.Segment) -> None:
    out.id = seg.id
    # A missing array stays unset, so the service answers "... observations is missing".
    if seg.observations is not None:
        wire.to_tensor(seg.observations, out.observations)
    if seg.actions is not None:
        wire.to_tensor(seg.actions, out.actions)


def decode_answer(value: int, comparison_id: str) -> wire.Preference:
    """The proto field `label` as the comparison's `answer` (error messages name the proto field)."""
    if value == common_pb2.PREFERENCE_UNSPECIFIED:
        raise wire.InvalidRequest(
            f"comparison {comparison_id!r}: label PREFERENCE_UNSPECIFIED (unset) is not one of "
            "LEFT, RIGHT, EQUAL, INCOMPARABLE")
    try:
        return wire.Preference(value)
    except ValueError:
        raise wire.InvalidRequest(
            f"comparison {comparison_id!r}: label {value} is not one of "
            "LEFT=1, RIGHT=2, EQUAL=3, INCOMPARABLE=4") from None


def decode_comparison(c: reward_pb2.Comparison) -> ComparisonData:
    # Ids are checked by the core (empty ids, unknown segments), with the same messages in-process.
    return ComparisonData(id=c.id, left_id=c.left_id, right_id=c.right_id,
                          answer=decode_answer(c.label, c.id))


def stats_to_proto(s: RewardStats) -> reward_pb2.StatsResponse:
    out = reward_pb2.StatsResponse(
        model_version=int(s.model_version),
        comparisons=int(s.comparisons),
        comparisons_seen=int(s.comparisons_seen),
        segments=int(s.segments),
        train_loss=float(s.train_loss),
        val_loss=float(s.val_loss),
        train_accuracy=float(s.train_accuracy),
        val_accuracy=float(s.val_accuracy),
        train_steps=int(s.train_steps),
        architecture=s.architecture,
        target_std=float(s.target_std),
    )
    for m in s.members:
        out.members.add(norm_mean=float(m.norm_mean), norm_std=float(m.norm_std),
                        train_loss=float(m.train_loss), val_loss=float(m.val_loss), l2=float(m.l2))
    if s.space is not None:
        out.space.CopyFrom(wire.space_to_proto(s.space))
    return out


def encode_comparison(c: ComparisonData, out: reward_pb2.Comparison) -> None:
    """A label of the query service as the reward service's comparison: `answer` goes in the proto
    field `label` (unset answer: 0, refused)."""
    out.id = c.id or ""
    out.left_id = c.left_id or ""
    out.right_id = c.right_id or ""
    out.label = 0 if c.answer is None else int(wire.Preference.parse(c.answer))


def stats_from_proto(r: reward_pb2.StatsResponse) -> RewardStats:
    return RewardStats(
        model_version=int(r.model_version),
        comparisons=int(r.comparisons),
        comparisons_seen=int(r.comparisons_seen),
        segments=int(r.segments),
        train_loss=float(r.train_loss),
        val_loss=float(r.val_loss),
        train_accuracy=float(r.train_accuracy),
        val_accuracy=float(r.val_accuracy),
        train_steps=int(r.train_steps),
        members=tuple(MemberStats(norm_mean=m.norm_mean, norm_std=m.norm_std, train_loss=m.train_loss,
                                  val_loss=m.val_loss, l2=m.l2) for m in r.members),
        space=wire.space_from_proto(r.space) if r.HasField("space") else None,
        architecture=r.architecture,
        target_std=float(r.target_std),
    )
