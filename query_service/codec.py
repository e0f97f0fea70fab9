"""Codec of the query service: its plain types (`query_service.types`) ⇄ `rlhp.v1` query messages.

Imported by both `server.py` and `client.py`, so a client (an env runner, the labeling page, a
teacher) loads neither the server nor the core, SQLite or a model to talk to the service. Decoding
checks shapes, dtypes and byte counts (`rlhp.wire`); the core checks the rest.
"""

from __future__ import annotations

import numpy as np

from rlhp import wire
from rlhp.v1 import common_pb2, query_pb2
from rlhp.wire import InvalidRequest, Preference

from .types import (ExperimentStats, LabelerStats, Lease, Progress, QueryData, QueryStats, SegmentRecord,
                    SubmitResult)

SERVICE = "rlhp.v1.QueryService"


# ---- segments --------------------------------------------------------------------------------

def record_from_proto(m: query_pb2.SegmentRecord, i: int = 0) -> SegmentRecord:
    """Decode one SegmentRecord (shape/dtype/byte-count checks; the core checks the rest)."""
    where = f"segment {i}" + (f" ({m.segment.id!r})" if m.segment.id else "")
    if not m.HasField("segment"):
        raise InvalidRequest(f"{where}: the segment (id, observations, actions) is missing")

    def opt(t: common_pb2.Tensor, name: str) -> np.ndarray | None:
        return wire.from_tensor(t, f"{where}: {name}") if wire.has_tensor(t) else None

    return SegmentRecord(
        id=m.segment.id, experiment=m.experiment, env_id=m.env_id,
        observations=wire.from_tensor(m.segment.observations, f"{where}: observations"),
        actions=wire.from_tensor(m.segment.actions, f"{where}: actions"),
        true_rewards=wire.from_tensor(m.true_rewards, f"{where}: true_rewards"),
        frames=opt(m.frames, "frames"), qpos=opt(m.qpos, "qpos"), qvel=opt(m.qvel, "qvel"),
        env_step=int(m.env_step), fps=float(m.fps), random_policy=bool(m.random_policy))


def record_to_proto(r: SegmentRecord, out: query_pb2.SegmentRecord | None = None) -> query_pb2.SegmentRecord:
    m = out if out is not None else query_pb2.SegmentRecord()
    m.segment.id = r.id
    wire.to_tensor(r.observations, m.segment.observations)
    wire.to_tensor(r.actions, m.segment.actions)
    m.experiment = r.experiment
    m.env_id = r.env_id
    wire.to_tensor(np.asarray(r.true_rewards), m.true_rewards)
    for name in ("frames", "qpos", "qvel"):
        v = getattr(r, name)
        if v is not None and np.size(v) > 0:
            wire.to_tensor(v, getattr(m, name))
    m.env_step = int(r.env_step)
    m.fps = float(r.fps)
    m.random_policy = bool(r.random_policy)
    return m


# ---- queries and labels ------------------------------------------------------------------------

def query_to_proto(q: QueryData) -> query_pb2.Query:
    m = query_pb2.Query(id=q.id, experiment=q.experiment, env_id=q.env_id, left_id=q.left_id,
                        right_id=q.right_id, lease_expires=q.lease_expires, model_version=q.model_version,
                        fps=q.fps, length=q.length, goal=q.goal)
    if q.left_rewards is not None:
        wire.to_tensor(np.asarray(q.left_rewards, np.float32), m.teacher.left_rewards)
        wire.to_tensor(np.asarray(q.right_rewards, np.float32), m.teacher.right_rewards)
    return m


def query_from_proto(m: query_pb2.Query) -> QueryData:
    teach = wire.has_tensor(m.teacher.left_rewards)
    return QueryData(id=m.id, experiment=m.experiment, env_id=m.env_id, left_id=m.left_id, right_id=m.right_id,
                     lease_expires=m.lease_expires, model_version=m.model_version, fps=m.fps, length=m.length,
                     goal=m.goal,
                     left_rewards=wire.from_tensor(m.teacher.left_rewards) if teach else None,
                     right_rewards=wire.from_tensor(m.teacher.right_rewards) if teach else None)


def lease_to_proto(lease: Lease) -> query_pb2.LeaseQueryResponse:
    m = query_pb2.LeaseQueryResponse(available=lease.available, waiting_for=lease.waiting_for,
                                     pending=lease.pending, answered=lease.answered)
    if lease.query is not None:
        m.query.CopyFrom(query_to_proto(lease.query))
    return m


def lease_from_proto(r: query_pb2.LeaseQueryResponse) -> Lease:
    return Lease(r.available, query_from_proto(r.query) if r.available else None, r.waiting_for, r.pending,
                 r.answered)


def preference_from_wire(value: int, what: str) -> Preference:
    """A `Preference` from its wire value; InvalidRequest for 0 (PREFERENCE_UNSPECIFIED, unset)."""
    if value == 0:
        raise InvalidRequest(f"{what} is unset (PREFERENCE_UNSPECIFIED)")
    return Preference.parse(int(value))


def preference_to_wire(value: Preference | int | str) -> int:
    """Wire value of an answer or side; 0 (unset) is passed through so the server can refuse it."""
    if isinstance(value, str):
        return int(Preference.parse(value)) if value and value != "PREFERENCE_UNSPECIFIED" else 0
    return int(value)


def submit_result_to_proto(r: SubmitResult) -> query_pb2.SubmitLabelResponse:
    return query_pb2.SubmitLabelResponse(status=query_pb2.SubmitStatus.Value(r.status), message=r.message,
                                         answered=r.answered)


def submit_result_from_proto(r: query_pb2.SubmitLabelResponse) -> SubmitResult:
    return SubmitResult(query_pb2.SubmitStatus.Name(r.status), r.message, r.answered)


# ---- progress and stats ------------------------------------------------------------------------

def progress_to_proto(p: Progress) -> query_pb2.ReportProgressResponse:
    return query_pb2.ReportProgressResponse(labels=p.labels, labels_wanted=p.labels_wanted,
                                            queries_pending=p.queries_pending, label_budget=p.label_budget)


def progress_from_proto(r: query_pb2.ReportProgressResponse) -> Progress:
    return Progress(r.labels, r.labels_wanted, r.queries_pending, r.label_budget)


def stats_to_proto(s: QueryStats) -> query_pb2.QueryStatsResponse:
    m = query_pb2.QueryStatsResponse()
    for e in s.experiments:
        m.experiments.add(experiment=e.experiment, env_id=e.env_id, segments=e.segments,
                          queries_pending=e.queries_pending, queries_leased=e.queries_leased, labels=e.labels,
                          labels_wanted=e.labels_wanted, label_budget=e.label_budget, env_steps=e.env_steps,
                          labels_forwarded=e.labels_forwarded, goal=e.goal)
    for lab in s.labelers:
        m.labelers.add(name=lab.name, answered=lab.answered, mean_seconds=lab.mean_seconds,
                       median_seconds=lab.median_seconds, gold_answered=lab.gold_answered,
                       gold_correct=lab.gold_correct, agreement_checks=lab.agreement_checks, agreed=lab.agreed,
                       excluded=lab.excluded)
    return m


def stats_from_proto(r: query_pb2.QueryStatsResponse) -> QueryStats:
    return QueryStats(
        tuple(ExperimentStats(e.experiment, e.env_id, e.segments, e.queries_pending, e.queries_leased, e.labels,
                              e.labels_wanted, e.label_budget, e.env_steps, e.labels_forwarded, e.goal)
              for e in r.experiments),
        tuple(LabelerStats(x.name, x.answered, float(np.float32(x.mean_seconds)), float(np.float32(x.median_seconds)),
                           x.gold_answered, x.gold_correct, x.agreement_checks, x.agreed, x.excluded)
              for x in r.labelers))
