"""The synthetic teacher (B-Pref semantics) and its loop over the real gRPC API."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from query_service.client import QueryClient
from query_service.config import QueryConfig
from query_service.core import QueryService
from query_service.server import serve
from query_service.teacher import SyntheticTeacher, main, run_teacher
from query_service.types import SegmentRecord
from rlhp.wire import PermissionDenied, Preference

L, R, EQ, INC = Preference.LEFT, Preference.RIGHT, Preference.EQUAL, Preference.INCOMPARABLE


def agreement(teacher: SyntheticTeacher, n: int = 4000, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n):
        a, b = rng.normal(size=25) * 0.1, rng.normal(size=25) * 0.1
        truth = L if a.sum() > b.sum() else R
        hits += teacher.answer(a, b) == truth
    return hits / n


def test_rational_teacher_matches_true_returns_and_gets_noisier_as_beta_falls():
    rates = {beta: agreement(SyntheticTeacher(beta=beta, seed=1)) for beta in (math.inf, 1.0, 0.1)}
    print(f"\nagreement with the true-return ordering: {rates}")
    assert rates[math.inf] == 1.0
    assert rates[math.inf] > rates[1.0] > rates[0.1]
    assert rates[0.1] < 0.65  # |ΔR| ~ 0.7 here: β = 0.1 is close to a coin flip


def test_mistakes_skip_equal_and_myopia():
    assert agreement(SyntheticTeacher(mistake_prob=1.0)) == 0.0
    # 4000 answers, each right with p = 0.8: the rate lies within 4 standard deviations (±0.025)
    n, p = 4000, 0.8
    assert abs(agreement(SyntheticTeacher(mistake_prob=0.2, seed=3), n=n) - p) < 4 * math.sqrt(p * (1 - p) / n)
    t = SyntheticTeacher(skip_threshold=1.0, equal_threshold=0.5)
    assert t.answer([0.2, 0.3], [0.1, 0.1]) == INC  # both below the skip threshold
    assert t.answer([1.0, 0.3], [1.0, 0.0]) == EQ  # |ΔR| = 0.3 < 0.5
    assert t.answer([1.0, 1.0], [0.1, 0.0]) == L
    assert SyntheticTeacher().answer([1.0], [1.0]) == EQ  # exact tie
    # negative thresholds work (rewards may be negative); the default -inf never skips
    assert SyntheticTeacher(skip_threshold=-1.0).answer([-2.0, -1.0], [-1.5, -0.6]) == INC
    assert SyntheticTeacher(skip_threshold=-1.0).answer([-0.5, 0.0], [-1.5, -0.6]) == L
    assert SyntheticTeacher().answer([-50.0], [-60.0]) == L
    with pytest.raises(ValueError):
        SyntheticTeacher(skip_threshold=math.nan)
    # myopic: later steps weigh more. Left earns early, right late, same sum.
    early, late = [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]
    assert SyntheticTeacher(gamma=0.5).answer(early, late) == R
    assert SyntheticTeacher(gamma=1.0).answer(early, late) == EQ
    with pytest.raises(ValueError):
        SyntheticTeacher(beta=0)
    with pytest.raises(ValueError):
        SyntheticTeacher(gamma=1.5)


def _records(n: int) -> list[SegmentRecord]:
    rng = np.random.default_rng(0)
    return [SegmentRecord(id=f"s{i}", experiment="Hop", env_id="Hopper-v5",
                          observations=rng.normal(size=(8, 3)).astype(np.float32),
                          actions=rng.normal(size=(8, 1)).astype(np.float32),
                          true_rewards=rng.normal(size=8).astype(np.float32)) for i in range(n)]


def test_run_teacher_labels_through_grpc(tmp_path):
    core = QueryService(tmp_path, QueryConfig.smoke(initial_labels=0, label_budget=12), seed=0)
    prod = core.create_token("actors", "producer")
    teach = core.create_token("teacher", "teacher")
    human = core.create_token("alice", "labeler")
    server = serve(core)
    core.start()
    try:
        producer = QueryClient(server.address, prod)
        producer.add_segments(_records(20))
        producer.report_progress("Hop", 10**9)
        # a human token sees no true rewards: the teacher refuses to guess (and gives the query back)
        with pytest.raises(PermissionDenied, match="teacher-role token"):
            run_teacher(QueryClient(server.address, human), SyntheticTeacher(), threading.Event(), max_labels=1)
        client = QueryClient(server.address, teach)
        n = run_teacher(client, SyntheticTeacher(), threading.Event(), max_labels=12, poll_seconds=0.05)
        assert n == 12
        # every label agrees with the true-return ordering (β = ∞)
        rows = core.store.conn().execute("SELECT left_id, right_id, answer FROM labels").fetchall()
        segs = core.store.load_segments("Hop", [i for r in rows for i in (r[0], r[1])])
        for left, right, answer in rows:
            truth = L if segs[left].true_rewards.sum() > segs[right].true_rewards.sum() else R
            assert answer == truth
        st = core.stats()
        assert st.experiments[0].labels == 12 and st.labelers[0].name == "teacher"
        # budget reached: the loop waits and says why, and stops on the event
        stop = threading.Event()
        waits: list[str] = []

        def on_wait(text: str) -> None:
            waits.append(text)
            stop.set()

        assert run_teacher(client, SyntheticTeacher(), stop, poll_seconds=0.05, on_wait=on_wait) == 0
        assert "label budget reached for Hop" in waits[0]
    finally:
        server.stop()
        core.close()


def test_cli_needs_a_token(capsys, monkeypatch):
    monkeypatch.delenv("RLHP_TOKEN", raising=False)
    assert main(["--server", "127.0.0.1:1"]) == 2
    assert "teacher token" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
