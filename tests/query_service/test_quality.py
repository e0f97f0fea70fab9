"""Quality control of labelers (`query_service/quality.py`): gold queries a human cannot tell from
others, agreement between two humans on one pair, the numbers per labeler, and excluding a labeler
(automatically below a gold accuracy, or by command) with their labels withdrawn from a real reward
model and sent again when they are included."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from query_service.config import QueryConfig
from query_service.core import QueryService
from query_service.testing import FakeClock, segment_records
from rlhp.types import Preference

L, R, EQ = Preference.LEFT, Preference.RIGHT, Preference.EQUAL
ROOT = Path(__file__).resolve().parents[2]
FLIP = {L: R, R: L, EQ: EQ}


def _svc(tmp_path, reward=None, **kw) -> QueryService:
    cfg = QueryConfig.smoke(initial_labels=0, queue_target=20, selection="random", label_budget=200, **kw)
    return QueryService(tmp_path / "run", cfg, clock=FakeClock(), seed=3, reward=reward)


def _setup(svc, n_segments: int = 40) -> dict[str, str]:
    tokens = {"actors": svc.create_token("actors", "producer"), "teach": svc.create_token("teach", "teacher")}
    for name in ("alice", "bob", "carol"):
        tokens[name] = svc.create_token(name, "labeler")
    svc.add_segments(tokens["actors"], segment_records(n_segments, rng=np.random.default_rng(0)))
    svc.report_progress(tokens["actors"], "Hop", 10**9)
    svc.select_once()
    return tokens


def _answer_truthfully(svc, token: str, n: int) -> list[tuple[str, Preference]]:
    """Lease and answer `n` queries with the answer a perfect teacher gives; returns (id, answer)."""
    out = []
    for _ in range(n):
        lease = svc.lease(token)
        assert lease.available
        q = lease.query
        rewards = svc.store.load_rewards("Hop", [q.left_id, q.right_id])
        d = float(rewards[q.left_id].sum() - rewards[q.right_id].sum())
        ans = L if d > 0 else R if d < 0 else EQ
        svc.submit(token, q.id, ans)
        out.append((q.id, ans))
    return out


def _n(svc, sql: str, *args) -> int:
    return svc.store.conn().execute(sql, args).fetchone()[0]


def test_gold_queries_look_like_any_query_are_scored_and_never_become_labels(tmp_path):
    svc = _svc(tmp_path, gold_rate=1.0)
    t = _setup(svc)
    teacher = dict(_answer_truthfully(svc, t["teach"], 6))  # the teacher's labels are the gold
    labels_before = svc.stats().experiments[0].labels
    wanted_before = svc.progress("Hop")
    seen_pairs = set()
    for i in range(6):
        lease = svc.lease(t["alice"])
        q = lease.query
        assert q.id not in teacher and q.left_rewards is None  # a new id; no hint of what it is
        row = svc.store.conn().execute("SELECT of_query, expected FROM checks WHERE query_id=?", (q.id,)).fetchone()
        assert row is not None and row["of_query"] in teacher
        original = svc.store.conn().execute("SELECT left_id, right_id FROM queries WHERE id=?",
                                            (row["of_query"],)).fetchone()
        assert {q.left_id, q.right_id} == {original["left_id"], original["right_id"]}
        swapped = q.left_id != original["left_id"]
        assert Preference(row["expected"]) == (FLIP[teacher[row["of_query"]]] if swapped else teacher[row["of_query"]])
        seen_pairs.add(row["of_query"])
        # alice answers the first four right (in the orientation she is shown), the last two wrong
        right = Preference(row["expected"])
        r = svc.submit(t["alice"], q.id, right if i < 4 else FLIP[right] if right != EQ else L)
        assert r.status == "ACCEPTED" and r.answered == i + 1  # the count moves like for any query
    assert len(seen_pairs) == 6  # never the same gold pair twice to one labeler
    assert svc.stats().experiments[0].labels == labels_before  # no label was stored ...
    assert svc.progress("Hop").labels_wanted == wanted_before.labels_wanted  # ... nor counted by the schedule
    me = next(x for x in svc.stats().labelers if x.name == "alice")
    assert (me.gold_answered, me.gold_correct) == (6, 4)
    teach = next(x for x in svc.stats().labelers if x.name == "teach")
    assert teach.answered == 6 and teach.gold_answered == 0  # teachers get no gold (they make it)


def test_repeats_measure_agreement_and_agreed_pairs_become_gold(tmp_path):
    svc = _svc(tmp_path, agreement_rate=1.0)
    t = _setup(svc)
    first = dict(_answer_truthfully(svc, t["alice"], 4))  # every label of hers is repeated for someone else
    assert _n(svc, "SELECT COUNT(*) FROM checks WHERE kind='repeat' AND expected_by='alice'") == 4
    assert svc.progress("Hop").queries_pending == _n(svc, "SELECT COUNT(*) FROM queries WHERE state='queued' "
                                                            "AND check_of=''")  # repeats are not pending queries
    hers = {r[0] for r in svc.store.conn().execute("SELECT query_id FROM checks WHERE expected_by='alice'")}
    leased = []
    while (lease := svc.lease(t["alice"])).available:  # everything queued that she may take ...
        leased.append(lease.query.id)
    assert leased and not hers & set(leased)  # ... and never a repeat of her own answer
    for qid in leased:
        svc.release(t["alice"], qid)
    # bob answers the repeats: the first two as alice did, the others the other way
    answered = 0
    while answered < 4:
        lease = svc.lease(t["bob"])
        q = lease.query
        row = svc.store.conn().execute("SELECT expected FROM checks WHERE query_id=?", (q.id,)).fetchone()
        if row is None:  # an ordinary query
            svc.submit(t["bob"], q.id, L)
            continue
        expected = Preference(row["expected"])
        svc.submit(t["bob"], q.id, expected if answered < 2 else (FLIP[expected] if expected != EQ else L))
        answered += 1
    stats = {x.name: x for x in svc.stats().labelers}
    assert (stats["alice"].agreement_checks, stats["alice"].agreed) == (4, 2)
    assert (stats["bob"].agreement_checks, stats["bob"].agreed) == (4, 2)
    assert set(first) <= {r[0] for r in svc.store.conn().execute("SELECT query_id FROM labels")}
    # a pair two labelers agreed on is gold for a third
    svc.config = QueryConfig.smoke(initial_labels=0, queue_target=20, selection="random", label_budget=200,
                                   gold_rate=1.0)
    kinds = []
    for _ in range(10):  # (a queued repeat of bob's comes first; gold is mixed in with ordinary queries)
        q = svc.lease(t["carol"]).query
        row = svc.store.conn().execute("SELECT kind, expected_by FROM checks WHERE query_id=?", (q.id,)).fetchone()
        kinds.append(row["kind"] if row else "query")
        if row is not None and row["kind"] == "gold":
            assert row["expected_by"] == "alice"  # one of the two pairs bob agreed with her on
            break
    assert kinds[-1] == "gold", kinds


def test_a_labeler_below_the_gold_accuracy_is_excluded_and_the_reward_model_loses_their_labels(tmp_path):
    from reward_service.config import RewardConfig
    from reward_service.core import RewardModel
    from rlhp.types import Space

    model = RewardModel(Space.parse("4/box:1"), RewardConfig.smoke())
    svc = _svc(tmp_path, reward=model, gold_rate=0.0, min_gold_accuracy=0.75, min_gold_answers=4)
    t = _setup(svc)
    _answer_truthfully(svc, t["teach"], 8)
    mallory = svc.create_token("mallory", "labeler")
    mine = [qid for qid, _ in _answer_truthfully(svc, mallory, 5)]
    svc.forward_once()
    assert model.stats().comparisons_seen == 13
    svc.config = QueryConfig.smoke(initial_labels=0, queue_target=20, selection="random", label_budget=200,
                                   gold_rate=1.0, min_gold_accuracy=0.75, min_gold_answers=4)
    for _ in range(4):  # four gold answers, all wrong
        q = svc.lease(mallory).query
        expected = Preference(svc.store.conn().execute("SELECT expected FROM checks WHERE query_id=?",
                                                       (q.id,)).fetchone()["expected"])
        svc.submit(mallory, q.id, R if expected == L else L)
    stats = {x.name: x for x in svc.stats().labelers}
    assert stats["mallory"].excluded and (stats["mallory"].gold_answered, stats["mallory"].gold_correct) == (4, 0)
    assert _n(svc, "SELECT COUNT(*) FROM labels WHERE labeler='mallory'") == 5  # kept in the database
    while svc.unforwarded():
        svc.forward_once()  # withdraws them from the reward model
    assert model.stats().comparisons == 8  # the teacher's eight; mallory's five are gone
    # she labels on: stored, never forwarded while excluded
    q = svc.lease(mallory).query
    while svc.store.conn().execute("SELECT 1 FROM checks WHERE query_id=?", (q.id,)).fetchone():
        svc.submit(mallory, q.id, L)
        q = svc.lease(mallory).query
    svc.submit(mallory, q.id, L)
    assert svc.unforwarded() == 0 and _n(svc, "SELECT COUNT(*) FROM labels WHERE labeler='mallory'") == 6
    # one command undoes it: all six go to the reward model
    assert svc.include_labeler("mallory") == 6
    while svc.unforwarded():
        svc.forward_once()
    assert model.stats().comparisons == 14 and len(mine) == 5
    # included by hand, she is not excluded again automatically by her old gold answers
    q = svc.lease(mallory).query
    svc.submit(mallory, q.id, L)
    assert not next(x for x in svc.stats().labelers if x.name == "mallory").excluded


def test_rlhp_labelers_command_lists_excludes_and_includes(tmp_path):
    svc = _svc(tmp_path)
    t = _setup(svc)
    _answer_truthfully(svc, t["alice"], 3)
    svc.close()
    run = str(tmp_path / "run")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "learner.cli", "labelers", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    out = cli("list", "--run-dir", run)
    assert out.returncode == 0 and "alice" in out.stdout and "used" in out.stdout, out.stderr
    out = cli("exclude", "--run-dir", run, "--name", "alice")
    assert out.returncode == 0 and "3 label(s) withheld" in out.stdout
    assert "EXCLUDED" in cli("list", "--run-dir", run).stdout
    assert "3 label(s) will be sent" in cli("include", "--run-dir", run, "--name", "alice").stdout
    bad = cli("exclude", "--run-dir", run, "--name", "nobody")
    assert bad.returncode == 1 and "no labeler named 'nobody'" in bad.stderr and "Traceback" not in bad.stderr


def test_exclusion_races_with_forwarding_end_in_the_right_state(tmp_path):
    """An exclusion while a label is being sent, and an inclusion while labels are being withdrawn,
    leave every label where it belongs (found in review: the forwarder overwrote the states)."""
    from query_service.quality import WITHDRAW, WITHHELD
    from query_service.store import Store

    svc = _svc(tmp_path)
    t = _setup(svc)
    (a, _), (b, _) = _answer_truthfully(svc, t["alice"], 2)
    state = lambda qid: _n(svc, "SELECT forwarded FROM labels WHERE query_id=?", qid)  # noqa: E731
    before = svc.progress("Hop").labels
    svc.exclude_labeler("alice")  # while `a` is on its way to the reward model ...
    assert svc.progress("Hop").labels == before - 2  # (withheld labels do not count for the schedule)
    with svc.store.write() as c:
        Store.set_forwarded(c, [a], 1)  # ... which then marks it sent
    assert state(a) == WITHDRAW  # so it is taken back, not left in the model
    with svc.store.write() as c:
        Store.include_labeler(c, "alice")  # included while `a` is being withdrawn ...
        Store.withdrawn(c, [a])  # ... and the reward model gave it back
    assert state(a) == 0 and state(b) == 0  # both are sent (again)
    assert svc.progress("Hop").labels == before
    with svc.store.write() as c:
        Store.exclude_labeler(c, "alice")
    assert state(a) == WITHHELD
