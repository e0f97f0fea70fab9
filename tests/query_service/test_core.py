"""The query service core in-process: validation, auth, schedule, leases, labels (selection and forwarding:
`test_selection.py`, `test_forwarding.py`)."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from query_service.config import QueryConfig
from query_service.core import QueryService
from query_service.testing import open_experiment, segment_records
from query_service.types import SegmentRecord
from rlhp.wire import FailedPrecondition, InvalidRequest, NotFound, PermissionDenied, Preference, Unauthenticated


# ------------------------------------------------------------------------------------ validation
def _bad(rec: SegmentRecord, **kw) -> SegmentRecord:
    from dataclasses import replace
    return replace(rec, **kw)


BAD = {
    "empty id": dict(id=""),
    "empty experiment": dict(experiment=" "),
    "T=0": dict(observations=np.zeros((0, 4), np.float32), actions=np.zeros((0, 1), np.float32),
                true_rewards=np.zeros(0, np.float32)),
    "action length": dict(actions=np.zeros((9, 1), np.float32)),
    "reward shape": dict(true_rewards=np.zeros((10, 1), np.float32)),
    "reward nan": dict(true_rewards=np.full(10, np.nan, np.float32)),
    "obs inf": dict(observations=np.full((10, 4), np.inf, np.float32)),
    "frames dtype": dict(frames=np.zeros((10, 8, 8, 3), np.float32)),
    "frames shape": dict(frames=np.zeros((10, 8, 8), np.uint8)),
    "qpos length": dict(qpos=np.zeros((3, 5))),
    "strings": dict(observations=np.array([["a"] * 4] * 10)),
    "fps": dict(fps=-1.0),
    "negative env_step": dict(env_step=-5),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_segments_are_refused_and_nothing_is_stored(svc, case):
    prod = svc.create_token("actors", "producer")
    good = segment_records(3)
    with pytest.raises(InvalidRequest):
        svc.add_segments(prod, good[:2] + [_bad(good[2], **BAD[case])])
    assert svc.stats().experiments == () or svc.stats().experiments[0].segments == 0


def test_shape_must_match_the_experiment(svc):
    prod = svc.create_token("actors", "producer")
    svc.add_segments(prod, segment_records(2))
    with pytest.raises(InvalidRequest, match="experiment 'Hop' stores"):
        svc.add_segments(prod, segment_records(2, start=5, obs_dim=6))
    assert svc.stats().experiments[0].segments == 2


def test_duplicates_and_eviction_keeps_queried_segments(tmp_path, clock):
    svc = QueryService(tmp_path, QueryConfig.smoke(max_segments=10, initial_labels=0), clock=clock, seed=1)
    prod, alice = open_experiment(svc, n=10)
    r = svc.add_segments(prod, segment_records(3))  # s0..s2 again
    assert (r.accepted, r.duplicates, r.dropped, r.stored) == (0, 3, 0, 10)
    assert svc.select_once() == 4
    queried = svc.store.conn().execute("SELECT left_id, right_id FROM queries").fetchall()
    queried = {i for row in queried for i in row}
    r = svc.add_segments(prod, segment_records(10, start=100))
    assert r.accepted == 10 and r.stored == 10 and r.dropped == 10
    kept = {row[0] for row in svc.store.conn().execute("SELECT id FROM segments")}
    assert queried <= kept  # segments of queries survive eviction
    assert len(kept - queried) == 10 - len(queried)
    svc.close()


# ------------------------------------------------------------------------------------ auth
def test_tokens(svc):
    prod, alice = open_experiment(svc)
    for bad in ("", None, "nope"):
        with pytest.raises(Unauthenticated):
            svc.lease(bad)
    with pytest.raises(PermissionDenied, match="role"):
        svc.add_segments(alice, segment_records(1))
    with pytest.raises(PermissionDenied, match="role"):
        svc.lease(prod)
    svc.revoke_token("alice")
    with pytest.raises(Unauthenticated, match="revoked"):
        svc.lease(alice)
    with pytest.raises(NotFound):
        svc.revoke_token("nobody")
    # only a salted hash is stored
    row = svc.store.conn().execute("SELECT token_hash FROM labelers WHERE name='alice'").fetchone()
    assert alice not in row[0] and len(row[0]) == 64


def test_restricted_labeler_never_gets_other_experiments(svc):
    prod = svc.create_token("actors", "producer")
    svc.add_segments(prod, segment_records(10, exp="A") + segment_records(10, exp="B", start=50))
    svc.report_progress(prod, "A", 10**9)
    svc.report_progress(prod, "B", 10**9)
    svc.select_once()
    bob = svc.create_token("bob", "labeler", ["B"])
    seen = set()
    while True:
        lease = svc.lease(bob)
        if not lease.available:
            break
        seen.add(lease.query.experiment)
        svc.submit(bob, lease.query.id, Preference.LEFT)
    assert seen == {"B"}
    with pytest.raises(PermissionDenied):
        svc.lease(bob, ["A"])
    a_query = svc.store.conn().execute("SELECT id FROM queries WHERE experiment='A'").fetchone()[0]
    with pytest.raises(PermissionDenied):
        svc.submit(bob, a_query, Preference.LEFT)


# ------------------------------------------------------------------------------------ schedule
def test_labels_wanted_follows_the_decay():
    cfg = QueryConfig(label_budget=700, initial_labels=175, schedule_n0=2e6, total_env_steps=1e7)
    assert cfg.labels_wanted(0) == 175
    # whole budget at the planned end, never more
    assert cfg.labels_wanted(1e7) == 700 and cfg.labels_wanted(1e9) == 700
    ts = np.array([0, 1e6, 2e6, 4e6, 8e6])
    wanted = np.array([cfg.labels_wanted(t) for t in ts])
    assert (np.diff(wanted) > 0).all()
    # the label rate decays as N0/(T+N0): rate(T)/rate(0) = N0/(T+N0) (a large budget keeps the
    # integer rounding of labels_wanted out of the measurement)
    big = cfg.with_(label_budget=700_000, initial_labels=175_000)
    dt = 1e4
    rate0 = (big.labels_wanted(dt) - big.labels_wanted(0)) / dt
    for t in (1e6, 2e6, 6e6):
        rate = (big.labels_wanted(t + dt) - big.labels_wanted(t)) / dt
        assert rate / rate0 == pytest.approx(2e6 / (t + 2e6), rel=0.03)
    # the closed form
    r0 = cfg.rate
    assert r0 == pytest.approx(525 / (2e6 * math.log(6)))
    assert cfg.labels_wanted(3e6) == 175 + math.floor(r0 * 2e6 * math.log1p(1.5))
    # env_steps_for inverts it
    t = cfg.env_steps_for(400)
    assert cfg.labels_wanted(t) >= 400 > cfg.labels_wanted(t * 0.99)
    assert cfg.env_steps_for(701) is None


def test_schedule_drives_selection_and_waiting_for_says_why(svc):
    prod = svc.create_token("actors", "producer")
    alice = svc.create_token("alice", "labeler")
    lease = svc.lease(alice, ["Pong"])
    assert not lease.available and "0 segments so far for Pong" in lease.waiting_for
    cfg = svc.config  # smoke: budget 40, initial 0, N0 1000
    svc.add_segments(prod, segment_records(30))
    p = svc.report_progress(prod, "Hop", 0)
    assert p.labels_wanted == 0 and p.label_budget == 40
    assert svc.select_once() == 0
    lease = svc.lease(alice)
    assert "label schedule satisfied" in lease.waiting_for and "more env steps" in lease.waiting_for
    steps = math.ceil(cfg.env_steps_for(3))
    p = svc.report_progress(prod, "Hop", steps)
    assert p.labels_wanted == 3
    assert svc.select_once() == 3
    assert svc.report_progress(prod, "Hop", 1).queries_pending == 3  # env steps stay monotone
    for _ in range(3):
        lease = svc.lease(alice)
        svc.submit(alice, lease.query.id, Preference.RIGHT, 2.0)
    assert svc.select_once() == 0
    assert "label schedule satisfied for Hop (3 labels given" in svc.lease(alice).waiting_for
    svc.report_progress(prod, "Hop", 10**9)
    assert svc.select_once() == cfg.queue_target
    st = svc.stats().experiments[0]
    assert (st.labels, st.labels_wanted, st.queries_pending) == (3, 40, cfg.queue_target)


def test_initial_batch_uses_random_policy_segments(tmp_path, clock):
    svc = QueryService(tmp_path, QueryConfig.smoke(initial_labels=6, queue_target=6), clock=clock, seed=0)
    prod = svc.create_token("actors", "producer")
    svc.add_segments(prod, segment_records(6, random_policy=True) + segment_records(20, start=100))
    svc.report_progress(prod, "Hop", 0)
    assert svc.select_once() == 6
    rows = svc.store.conn().execute("SELECT left_id, right_id, initial, model_version FROM queries").fetchall()
    assert all(r["initial"] == 1 and r["model_version"] == 0 for r in rows)
    assert all(int(i[1:]) < 6 for r in rows for i in (r["left_id"], r["right_id"]))
    svc.close()


# ------------------------------------------------------------------------------------ labels
def test_submit_rules(svc, clock):
    prod, alice = open_experiment(svc)
    bob = svc.create_token("bob", "labeler")
    svc.select_once()
    lease = svc.lease(alice)
    q = lease.query
    assert lease.available and q.left_rewards is None and q.length == 10 and q.fps == 20.0
    with pytest.raises(InvalidRequest):
        svc.submit(alice, q.id, 0)
    with pytest.raises(InvalidRequest):
        svc.submit(alice, q.id, 9)
    with pytest.raises(InvalidRequest):
        svc.submit(alice, q.id, Preference.LEFT, seconds=float("nan"))
    with pytest.raises(NotFound):
        svc.submit(alice, "no-such-query", Preference.LEFT)
    with pytest.raises(FailedPrecondition):  # bob never leased it
        svc.submit(bob, q.id, Preference.LEFT)
    assert svc.submit(alice, q.id, Preference.LEFT, 3.0).status == "ACCEPTED"
    r = svc.submit(alice, q.id, Preference.LEFT, 3.0)
    assert r.status == "DUPLICATE" and r.answered == 1
    assert svc.submit(alice, q.id, Preference.RIGHT).status == "ALREADY_ANSWERED"
    assert svc.store.conn().execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 1


def test_lease_expires_and_late_answer_is_accepted(svc, clock):
    prod, alice = open_experiment(svc)
    bob = svc.create_token("bob", "labeler")
    svc.select_once()
    first = svc.lease(alice, lease_seconds=5).query
    n_queued = svc.lease(bob).pending  # bob took one more
    clock.t += 6  # alice's lease expires
    # the expired query comes back (FIFO: it is the oldest)
    lease = svc.lease(bob, lease_seconds=5)
    again = lease.query
    assert again.id == first.id
    assert lease.pending == n_queued  # it came back to the queue (+1) and bob leased it (−1)
    # alice answers late, before bob: accepted, bob's newer lease is cancelled
    r = svc.submit(alice, first.id, Preference.EQUAL)
    assert r.status == "ACCEPTED" and "expired" in r.message
    assert svc.submit(bob, first.id, Preference.LEFT).status == "ALREADY_ANSWERED"
    state = svc.store.conn().execute("SELECT state, lease_owner FROM queries WHERE id=?", (first.id,)).fetchone()
    assert tuple(state) == ("answered", None)  # bob's lease is gone
    assert svc.stats().experiments[0].queries_leased == 1  # only bob's other lease is live


def test_release_sends_query_to_the_back(svc):
    prod, alice = open_experiment(svc)
    svc.select_once()
    q1 = svc.lease(alice).query
    svc.release(alice, q1.id)
    svc.release(alice, q1.id)  # idempotent
    q2 = svc.lease(alice).query
    assert q2.id != q1.id
    bob = svc.create_token("bob", "labeler")
    with pytest.raises(FailedPrecondition):
        svc.release(bob, q2.id)
    with pytest.raises(NotFound):
        svc.release(alice, "nope")


def test_concurrent_labelers_never_share_a_live_query(tmp_path):
    cfg = QueryConfig.smoke(initial_labels=0, queue_target=40, label_budget=40)
    svc = QueryService(tmp_path, cfg, seed=0)
    prod = svc.create_token("actors", "producer")
    svc.add_segments(prod, segment_records(30))
    svc.report_progress(prod, "Hop", 10**9)
    assert svc.select_once() == 40
    tokens = [svc.create_token(f"l{i}", "labeler") for i in range(8)]
    leased: list[tuple[str, str]] = []
    statuses: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def work(tok: str) -> None:
        barrier.wait()
        while True:
            lease = svc.lease(tok)
            if not lease.available:
                return
            with lock:
                leased.append((tok, lease.query.id))
            r = svc.submit(tok, lease.query.id, Preference.LEFT)
            with lock:
                statuses.append(r.status)

    threads = [threading.Thread(target=work, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ids = [q for _, q in leased]
    assert len(ids) == len(set(ids)) == 40
    assert statuses.count("ACCEPTED") == 40
    assert svc.store.conn().execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 40
    svc.close()


def test_teacher_sees_true_rewards(svc):
    prod, alice = open_experiment(svc)
    teach = svc.create_token("teacher", "teacher")
    svc.select_once()
    q = svc.lease(teach).query
    segs = svc.store.load_segments("Hop", [q.left_id, q.right_id])
    np.testing.assert_array_equal(q.left_rewards, segs[q.left_id].true_rewards)
    np.testing.assert_array_equal(q.right_rewards, segs[q.right_id].true_rewards)


def test_state_survives_restart(tmp_path, clock):
    cfg = QueryConfig.smoke(initial_labels=0)
    svc = QueryService(tmp_path, cfg, clock=clock, seed=0)
    prod, alice = open_experiment(svc)
    svc.select_once()
    q1 = svc.lease(alice).query
    svc.submit(alice, q1.id, Preference.LEFT)
    q2 = svc.lease(alice, lease_seconds=10).query
    svc.close()
    svc = QueryService(tmp_path, cfg, clock=clock, seed=0)
    assert svc.submit(alice, q1.id, Preference.LEFT).status == "DUPLICATE"  # tokens and labels kept
    bob = svc.create_token("bob", "labeler")
    assert all(svc.lease(bob).query.id != q2.id for _ in range(2))  # alice's lease still live
    clock.t += 11
    ids = set()
    while (lease := svc.lease(bob)).available:
        ids.add(lease.query.id)
    assert q2.id in ids  # ... until it expires
    svc.close()


def test_get_clip_rules(svc):
    prod = svc.create_token("actors", "producer")
    alice = svc.create_token("alice", "labeler")
    recs = segment_records(4)
    rng = np.random.default_rng(0)
    from dataclasses import replace
    recs = [replace(r, frames=rng.integers(0, 255, (10, 16, 16, 3), dtype=np.uint8)) for r in recs]
    svc.add_segments(prod, recs)
    svc.report_progress(prod, "Hop", 10**9)
    svc.select_once()
    q = svc.lease(alice).query
    with pytest.raises(InvalidRequest):
        svc.get_clip(alice, q.id, Preference.EQUAL)
    with pytest.raises(InvalidRequest):
        svc.get_clip(alice, q.id, Preference.LEFT, "gif")
    with pytest.raises(NotFound):
        svc.get_clip(alice, "nope", Preference.LEFT)
    bob = svc.create_token("bob", "labeler")
    with pytest.raises(FailedPrecondition):
        svc.get_clip(bob, q.id, Preference.LEFT)
    mime, data = svc.get_clip(alice, q.id, Preference.LEFT, "mp4")
    assert mime == "video/mp4" and len(data) > 100


def test_get_clip_served_from_cache_without_loading_the_segment(svc, monkeypatch):
    prod = svc.create_token("actors", "producer")
    alice = svc.create_token("alice", "labeler")
    rng = np.random.default_rng(0)
    from dataclasses import replace
    recs = [replace(r, frames=rng.integers(0, 255, (10, 16, 16, 3), dtype=np.uint8)) for r in segment_records(4)]
    svc.add_segments(prod, recs)
    svc.report_progress(prod, "Hop", 10**9)
    svc.select_once()
    q = svc.lease(alice).query
    first = svc.get_clip(alice, q.id, Preference.RIGHT, "mp4")

    def no_load(*a, **kw):
        raise AssertionError("a cached clip must not load the segment's arrays")

    monkeypatch.setattr(svc.store, "load_segments", no_load)
    assert svc.get_clip(alice, q.id, Preference.RIGHT, "mp4") == first
    with pytest.raises(AssertionError):  # not cached yet: it still loads and renders
        svc.get_clip(alice, q.id, Preference.LEFT, "mp4")


def test_lease_order_puts_skipped_queries_last_and_offers_them_again(svc):
    prod, alice = open_experiment(svc)
    svc.select_once()
    order = [r[0] for r in svc.store.conn().execute(
        "SELECT id FROM queries WHERE state='queued' ORDER BY order_key, disagreement DESC")]
    assert len(order) >= 3
    skipped = []
    while (lease := svc.lease(alice)).available and lease.query.id not in skipped:
        skipped.append(lease.query.id)
        svc.release(alice, lease.query.id)
    assert skipped == order  # oldest first, never a skipped one while an unskipped one waits
    assert lease.available  # all skipped: they are offered again, in queue order
    first = svc.store.conn().execute("SELECT id FROM queries WHERE state='queued' OR id=? "
                                     "ORDER BY order_key, disagreement DESC LIMIT 1", (lease.query.id,)).fetchone()
    assert lease.query.id == first[0]
    bob = svc.create_token("bob", "labeler")
    assert svc.lease(bob).query.id != lease.query.id  # bob skipped nothing: plain queue order


def test_lease_expiry_and_next_query_use_indexes(svc):
    c = svc.store.conn()
    plans = {}
    for name, sql, args in (
            ("expire", "UPDATE queries SET state='queued', lease_owner=NULL, lease_expires=NULL "
                       "WHERE state='leased' AND lease_expires <= ?", (0.0,)),
            ("next", "SELECT q.* FROM queries q WHERE q.state='queued' ORDER BY q.order_key LIMIT 1", ()),
            ("next_scoped", "SELECT q.* FROM queries q WHERE q.state='queued' AND q.experiment IN (?) "
                            "ORDER BY q.order_key LIMIT 1", ("Hop",))):
        plans[name] = " ".join(r[3] for r in c.execute("EXPLAIN QUERY PLAN " + sql, args))
    assert "queries_lease_expiry" in plans["expire"], plans
    assert "queries_queued" in plans["next"], plans
    assert "queries_state" in plans["next_scoped"], plans
