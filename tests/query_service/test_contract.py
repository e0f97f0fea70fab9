"""One contract, two backends: the query service core in-process (`LocalClient`) and a
`QueryClient` talking to a real server on loopback. The same assertions — values and exception
types — must hold for both (like tests/reward_service/test_contract.py)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import pytest

from query_service.client import QueryClient
from query_service.config import QueryConfig
from query_service.core import QueryService
from query_service.local import LocalClient
from query_service.server import serve
from query_service.types import AddSegmentsResult, Progress, QueryBackend, SegmentRecord
from rlhp.wire import FailedPrecondition, InvalidRequest, NotFound, PermissionDenied, Preference, Unauthenticated

EXP = "Hop"


@dataclass
class Backend:
    kind: str
    core: QueryService  # the core behind it (to select queries, or to look inside)
    connect: Callable[[str], QueryBackend]  # token -> what the tests call
    tokens: dict[str, str]


@pytest.fixture(params=["core", "grpc"])
def backend(request, tmp_path):
    core = QueryService(tmp_path / "run", QueryConfig.smoke(initial_labels=0, queue_target=4, label_budget=20),
                        seed=0)
    tokens = {"actors": core.create_token("actors", "producer", [EXP]),
              "alice": core.create_token("alice", "labeler"),
              "bob": core.create_token("bob", "labeler"),
              "teacher": core.create_token("teacher", "teacher")}
    clients: list = []
    server = None
    if request.param == "core":
        def connect(token: str) -> QueryBackend:
            return LocalClient(core, token)
    else:
        server = serve(core, host="127.0.0.1", port=0)

        def connect(token: str) -> QueryBackend:
            c = QueryClient(server.address, token)
            clients.append(c)
            return c
    try:
        yield Backend(request.param, core, connect, tokens)
    finally:
        for c in clients:
            c.close()
        if server is not None:
            server.stop(0)
        core.close()


def records(n: int, start: int = 0, experiment: str = EXP) -> list[SegmentRecord]:
    rng = np.random.default_rng(start)
    return [SegmentRecord(id=f"s{i}", experiment=experiment, env_id="Hopper-v5",
                          observations=rng.normal(size=(10, 3)).astype(np.float32),
                          actions=rng.normal(size=(10, 2)).astype(np.float32),
                          true_rewards=np.full(10, float(i), np.float32)) for i in range(start, start + n)]


def ready(b: Backend) -> tuple[QueryBackend, QueryBackend]:
    """(producer, alice) with 8 segments stored, progress reported and queries selected."""
    prod, alice = b.connect(b.tokens["actors"]), b.connect(b.tokens["alice"])
    prod.add_segments(records(8))
    prod.report_progress(EXP, 10**9)
    assert b.core.select_once() == 4
    return prod, alice


def test_add_segments_counts_duplicates_and_is_all_or_nothing(backend):
    prod = backend.connect(backend.tokens["actors"])
    assert prod.add_segments(records(5)) == AddSegmentsResult(5, 0, 0, 5)
    assert prod.add_segments(records(3, start=3)) == AddSegmentsResult(1, 2, 0, 6)
    bad = records(2, start=10)
    bad[1] = replace(bad[1], true_rewards=np.full(9, 1.0, np.float32))
    with pytest.raises(InvalidRequest, match="true_rewards"):
        prod.add_segments(bad)
    assert prod.stats().experiments[0].segments == 6  # segment 10 was not stored either
    with pytest.raises(PermissionDenied, match="may not add segments to experiment 'Other'"):
        prod.add_segments(records(1, start=20, experiment="Other"))
    with pytest.raises(PermissionDenied, match="role 'labeler'"):  # a labeler is not a producer
        backend.connect(backend.tokens["alice"]).add_segments(records(1, start=30))


def test_progress_follows_the_schedule(backend):
    prod = backend.connect(backend.tokens["actors"])
    prod.add_segments(records(4))
    p = prod.report_progress(EXP, 0)
    assert isinstance(p, Progress) and p.labels == 0 and p.label_budget == 20
    assert p.labels_wanted == backend.core.labels_wanted(0)
    later = prod.report_progress(EXP, 10**9)
    assert later.labels_wanted == 20
    assert prod.report_progress(EXP, 5).labels_wanted == 20  # env steps never go back
    with pytest.raises(InvalidRequest):
        prod.report_progress(EXP, -1)
    with pytest.raises(InvalidRequest):
        prod.report_progress("", 1)


def test_lease_submit_is_idempotent_and_final(backend):
    _, alice = ready(backend)
    lease = alice.lease()
    assert lease.available and lease.query.experiment == EXP and lease.pending == 3
    assert lease.query.left_rewards is None  # a human never sees true rewards
    q = lease.query
    assert alice.submit(q.id, Preference.LEFT, 2.5).status == "ACCEPTED"
    again = alice.submit(q.id, "LEFT")
    assert again.status == "DUPLICATE" and again.answered == 1
    assert alice.submit(q.id, Preference.RIGHT).status == "ALREADY_ANSWERED"
    bob = backend.connect(backend.tokens["bob"])
    with pytest.raises(FailedPrecondition):  # bob never leased it
        bob.submit(alice.lease().query.id, Preference.LEFT)
    s = alice.stats()
    assert s.experiments[0].labels == 1 and [(x.name, x.answered) for x in s.labelers] == [("alice", 1)]


def test_teacher_sees_true_rewards(backend):
    ready(backend)
    q = backend.connect(backend.tokens["teacher"]).lease().query
    left = int(q.left_id[1:])
    np.testing.assert_array_equal(q.left_rewards, np.full(10, float(left), np.float32))
    assert q.right_rewards.shape == (10,)


def test_errors_are_the_cores_exceptions(backend):
    _, alice = ready(backend)
    q = alice.lease().query
    with pytest.raises(NotFound):
        alice.submit("no-such-query", Preference.LEFT)
    with pytest.raises(InvalidRequest, match="unset"):
        alice.submit(q.id, 0)
    with pytest.raises(InvalidRequest, match="unset"):
        alice.get_clip(q.id, 0)
    with pytest.raises(InvalidRequest):
        alice.get_clip(q.id, Preference.EQUAL)
    with pytest.raises(InvalidRequest):
        alice.lease(lease_seconds=-1)
    with pytest.raises(Unauthenticated):
        backend.connect("not-a-token").lease()
    with pytest.raises(Unauthenticated, match="missing token"):
        backend.connect("").lease()
    bob = backend.connect(backend.tokens["bob"])
    with pytest.raises(FailedPrecondition):
        bob.release(q.id)  # not bob's lease
    with pytest.raises(NotFound):
        alice.release("nope")


def test_release_gives_the_query_back(backend):
    _, alice = ready(backend)
    first = alice.lease().query
    alice.release(first.id)
    alice.release(first.id)  # idempotent
    second = alice.lease()
    assert second.available and second.query.id != first.id  # skipped ones come last
    assert second.pending == 3


def test_nothing_to_label_says_what_it_waits_for(backend):
    alice = backend.connect(backend.tokens["alice"])
    lease = alice.lease()
    assert not lease.available and lease.query is None
    assert "waiting for the agent to produce clips" in lease.waiting_for
    prod = backend.connect(backend.tokens["actors"])
    prod.add_segments(records(4))
    prod.report_progress(EXP, 0)
    assert EXP in alice.lease().waiting_for


def test_the_core_builds_no_reward_client_of_its_own(tmp_path):
    """Reward backends by address come from the injected `reward_factory`; without one, an
    address is refused rather than dialled by the core."""
    core = QueryService(tmp_path / "a", QueryConfig.smoke())
    made: list[str] = []

    class Backend:
        def disagreement(self, segments, pairs):
            return np.zeros(len(pairs)), np.full(len(pairs), 0.5), 1

    routed = QueryService(tmp_path / "b", QueryConfig.smoke(), reward_factory=lambda a: made.append(a) or Backend())
    try:
        for svc in (core, routed):
            token = svc.create_token("actors", "producer")
            svc.add_segments(token, records(2))
        with pytest.raises(FailedPrecondition, match="reward_factory"):
            core.report_progress(core.create_token("p2", "producer"), EXP, 1, reward_address="127.0.0.1:1")
        assert core.reward_for(EXP) is None
        routed.report_progress(routed.create_token("p2", "producer"), EXP, 1, reward_address="127.0.0.1:1")
        assert isinstance(routed.reward_for(EXP), Backend) and made == ["127.0.0.1:1"]
    finally:
        core.close()
        routed.close()


def test_the_goal_reaches_labelers_stats_and_every_label(backend):
    prod, alice = ready(backend)
    assert alice.lease().query.goal == ""  # none given yet
    prod.report_progress(EXP, 10**9, goal="move forward fast without falling")
    lease = alice.lease()
    assert lease.query.goal == "move forward fast without falling"
    prod.report_progress(EXP, 10**9)  # "" keeps the goal known
    assert prod.stats().experiments[0].goal == "move forward fast without falling"
    alice.submit(lease.query.id, Preference.LEFT)
    prod.report_progress(EXP, 10**9, goal="hop backwards")  # a new goal: later labels carry it
    second = alice.lease().query
    assert second.goal == "hop backwards"
    alice.submit(second.id, Preference.RIGHT)
    with backend.core.store.read() as c:
        stored = dict(c.execute("SELECT query_id, goal FROM labels").fetchall())
    assert stored == {lease.query.id: "move forward fast without falling", second.id: "hop backwards"}
    with pytest.raises(InvalidRequest, match="goal"):
        prod.report_progress(EXP, 10**9, goal="x" * 201)
    with pytest.raises(InvalidRequest, match="goal"):
        prod.report_progress(EXP, 10**9, goal="two\nlines")


def test_stats_need_a_token_and_show_only_what_it_may_see(backend):
    prod, alice = ready(backend)
    alice.submit(alice.lease().query.id, Preference.LEFT)
    other = backend.core.create_token("other-actors", "producer", ["Pong"])
    carol = backend.connect(backend.core.create_token("carol", "labeler", ["Pong"]))
    backend.connect(other).report_progress("Pong", 5)
    everyone = prod.stats()  # a producer sees its experiments and every labeler
    assert [e.experiment for e in everyone.experiments] == [EXP]
    assert {lab.name for lab in everyone.labelers} >= {"alice"}
    mine = alice.stats()  # a labeler of all experiments sees them, and only herself among labelers
    assert sorted(e.experiment for e in mine.experiments) == sorted([EXP, "Pong"])
    assert [lab.name for lab in mine.labelers] == ["alice"]
    scoped = carol.stats()
    assert [e.experiment for e in scoped.experiments] == ["Pong"] and scoped.labelers == ()
    with pytest.raises(Unauthenticated, match="missing token"):
        backend.connect("").stats()
    with pytest.raises(Unauthenticated):
        backend.connect("not-a-token").stats()
