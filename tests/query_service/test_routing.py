"""Many experiments (games), one query service, one reward service each: per-experiment routing.

Two real reward services (RewardModel cores served by gRPC on 127.0.0.1) and one query service
(core served on 127.0.0.1, SQLite in tmp_path). The two games have different observation sizes, so
a comparison or a disagreement call sent to the wrong reward service would be refused outright.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from query_service.client import QueryClient
from query_service.config import QueryConfig
from query_service.core import QueryService
from query_service.server import serve
from query_service.types import SegmentRecord
from reward_service.client import RewardClient
from reward_service.config import RewardConfig
from reward_service.core import RewardModel
from reward_service.server import serve as serve_reward
from rlhp.wire import InvalidRequest, PermissionDenied, Preference, Space

GAMES = {"pong": ("ALE/Pong-v5", 4), "breakout": ("ALE/Breakout-v5", 6)}  # experiment: (env id, obs dim)


def records(exp: str, n: int = 16, start: int = 0) -> list[SegmentRecord]:
    env_id, dim = GAMES[exp]
    rng = np.random.default_rng(start + dim)
    return [SegmentRecord(
        id=f"{exp}-s{i}", experiment=exp, env_id=env_id,
        observations=rng.normal(size=(8, dim)).astype(np.float32),
        actions=rng.normal(size=(8, 1)).astype(np.float32),
        true_rewards=rng.normal(size=8).astype(np.float32), env_step=i, fps=15.0)
        for i in range(start, start + n)]


def reward_service(exp: str):
    model = RewardModel(Space(obs_shape=(GAMES[exp][1],), action_kind="box", act_shape=(1,)),
                        RewardConfig.smoke(seed=1))
    return model, serve_reward(model, host="127.0.0.1", port=0)


def seen(model: RewardModel) -> set[str]:
    return set(model.seen_comparison_ids())  # comparison (= query) ids the model has received


class World:
    """One query service (`core`, served) and a reward service per game."""

    def __init__(self, run_dir, config: QueryConfig | None = None) -> None:
        self.run_dir = run_dir
        self.config = config or QueryConfig.smoke(initial_labels=0)
        self.models, self.rservers = {}, {}
        for exp in GAMES:
            self.models[exp], self.rservers[exp] = reward_service(exp)
        self.open()
        self.tokens = {
            "pong": self.core.create_token("actors-pong", "producer", ["pong"]),
            "breakout": self.core.create_token("actors-breakout", "producer", ["breakout"]),
            "alice": self.core.create_token("alice", "labeler", ["pong"]),  # may label pong only
            "pool": self.core.create_token("pool", "teacher"),  # the shared pool: every game
        }

    def open(self) -> None:
        self.core = QueryService(self.run_dir, self.config, reward=None, seed=0,  # no default backend
                                 reward_factory=RewardClient)
        self.server = serve(self.core)
        self.clients: dict[str, QueryClient] = {}

    def client(self, name: str) -> QueryClient:
        if name not in self.clients:
            self.clients[name] = QueryClient(self.server.address, self.tokens[name])
        return self.clients[name]

    def restart_query_service(self) -> None:
        self.close_query_service()
        self.open()

    def close_query_service(self) -> None:
        for c in self.clients.values():
            c.close()
        self.server.stop(0)
        self.core.close()

    def report(self, exp: str, address: str | None = None, budget: int = 0):
        addr = self.rservers[exp].address if address is None else address
        return self.client(exp).report_progress(exp, 10**9, reward_address=addr, env_id=GAMES[exp][0],
                                                label_budget=budget)

    def label(self, who: str = "pool", experiments=(), limit: int = 100) -> list:
        """Lease and answer until nothing is left (selecting as we go); returns the queries."""
        done = []
        for _ in range(limit):
            self.core.select_once()
            lease = self.client(who).lease(experiments)
            if not lease.available:
                break
            q = lease.query
            self.client(who).submit(q.id, Preference.LEFT if q.length % 2 == 0 else Preference.RIGHT)
            done.append(q)
        return done

    def forward_all(self) -> int:
        n = 0
        while (k := self.core.forward_once()) > 0:
            n += k
        return n

    def labels(self, exp: str) -> set[str]:
        with self.core.store.read() as c:
            return {r[0] for r in c.execute("SELECT query_id FROM labels WHERE experiment=?", (exp,))}

    def close(self) -> None:
        self.close_query_service()
        for s in self.rservers.values():
            s.stop(0)


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path / "query")
    yield w
    w.close()


def test_labels_of_each_game_reach_only_that_games_reward_service(world):
    for exp in GAMES:
        world.client(exp).add_segments(records(exp))
    p_pong = world.report("pong", budget=6)
    p_breakout = world.report("breakout", budget=10)
    # the learner's budget replaces the service default (40) for its experiment, nothing else
    assert (p_pong.label_budget, p_pong.labels_wanted) == (6, 6)
    assert (p_breakout.label_budget, p_breakout.labels_wanted) == (10, 10)

    queries = world.label("pool")
    by_game = {exp: [q for q in queries if q.experiment == exp] for exp in GAMES}
    assert len(by_game["pong"]) == 6 and len(by_game["breakout"]) == 10  # each budget, exactly
    for exp, qs in by_game.items():
        assert {q.env_id for q in qs} == {GAMES[exp][0]}  # labelers see which game it is
    # selection asked each game's own ensemble (a wrong route would fail on the observation size
    # and fall back to random selection)
    assert world.core.selection_fallbacks == 0
    assert world.forward_all() == 16
    assert world.core.unforwarded() == 0
    for exp in GAMES:
        assert seen(world.models[exp]) == world.labels(exp) == {q.id for q in by_game[exp]}
    stats = {e.experiment: e for e in world.client("pool").stats().experiments}
    assert stats["pong"].env_id == "ALE/Pong-v5" and stats["pong"].labels_forwarded == 6
    assert stats["breakout"].label_budget == 10
    assert "label budget reached for pong" in world.client("pool").lease().waiting_for


def test_tokens_limited_to_some_experiments(world):
    for exp in GAMES:
        world.client(exp).add_segments(records(exp))
        world.report(exp, budget=4)
    alice = world.client("alice")
    got = world.label("alice")
    assert got and {q.experiment for q in got} == {"pong"}  # only what her token allows
    with pytest.raises(PermissionDenied, match="may not label experiment 'breakout'"):
        alice.lease(["breakout"])
    world.core.select_once()
    other = world.client("pool").lease(["breakout"]).query
    with pytest.raises(PermissionDenied):
        alice.submit(other.id, Preference.LEFT)
    # producers too: the pong learner may neither report for nor add segments to breakout
    with pytest.raises(PermissionDenied):
        world.client("pong").report_progress("breakout", 10, reward_address=world.rservers["pong"].address)
    with pytest.raises(PermissionDenied):
        world.client("pong").add_segments(records("breakout", 2, start=100))


def test_routing_survives_a_restart_and_follows_a_moved_reward_service(world):
    for exp in GAMES:
        world.client(exp).add_segments(records(exp))
        world.report(exp, budget=4)
    world.label()
    assert world.forward_all() == 8
    world.restart_query_service()  # routes, budgets and labels come back from labels.sqlite
    assert world.core.reward_address("pong") == world.rservers["pong"].address
    # progress without an address keeps the known route (and a budget of 0 keeps the known budget)
    world.client("pong").report_progress("pong", 10**9 + 1)
    world.client("breakout").report_progress("breakout", 10**9 + 1, label_budget=8)
    assert world.client("pong").report_progress("pong", 10**9).label_budget == 4
    more = world.label()
    assert {q.experiment for q in more} == {"breakout"} and len(more) == 4
    assert world.forward_all() == 4
    for exp in GAMES:
        assert seen(world.models[exp]) == world.labels(exp)

    # breakout's learner restarts elsewhere, its reward model restored from an older checkpoint
    # that has none of the labels: a new address re-sends all of breakout's labels there, only there
    old = world.rservers["breakout"]
    model2, server2 = reward_service("breakout")
    world.rservers["breakout"] = server2
    old.stop(0)
    try:
        world.report("breakout")
        assert world.forward_all() == 8
        assert seen(model2) == world.labels("breakout") and len(seen(model2)) == 8
        assert seen(world.models["pong"]) == world.labels("pong")  # pong's untouched
    finally:
        world.models["breakout"] = model2


def test_labels_wait_for_an_address_and_one_service_down_does_not_block_the_other(world):
    for exp in GAMES:
        world.client(exp).add_segments(records(exp))
        world.client(exp).report_progress(exp, 10**9, label_budget=3)  # no address yet
    world.label()
    assert world.core.forward_once() == 0 and world.core.unforwarded() == 6  # nowhere to send them
    world.report("pong")
    assert world.forward_all() == 3 and world.core.unforwarded() == 3
    world.rservers["breakout"].stop(0)  # breakout's reward service is down
    world.report("breakout")
    world.client("pong").report_progress("pong", 10**9, label_budget=6)
    world.label()
    with pytest.raises(Exception):
        world.core.forward_once()  # says breakout's service is unreachable ...
    assert seen(world.models["pong"]) == world.labels("pong") and len(world.labels("pong")) == 6  # ... pong's went
    assert world.core.unforwarded() == 3

    # the background loop keeps forwarding pong while breakout is down (own backoff per experiment)
    world.core.start()
    world.client("pong").report_progress("pong", 10**9, label_budget=8)
    world.label()
    deadline = time.time() + 20
    while seen(world.models["pong"]) != world.labels("pong") and time.time() < deadline:
        time.sleep(0.05)
    assert len(seen(world.models["pong"])) == 8
    assert world.core.forward_failures >= 1 and "breakout" in world.core.last_forward_error


def test_report_progress_validation(world):
    pong = world.client("pong")
    with pytest.raises(InvalidRequest, match="HOST:PORT"):
        pong.report_progress("pong", 1, reward_address="localhost")
    with pytest.raises(InvalidRequest, match="label_budget"):
        pong.report_progress("pong", 1, label_budget=-1)
    with pytest.raises(InvalidRequest, match="label_budget"):
        pong.report_progress("pong", 1, label_budget=10**9)
    with pytest.raises(InvalidRequest, match="env_id"):
        pong.report_progress("pong", 1, env_id="x" * 300)
    # the in-process core validates the same way (and rejects non-strings)
    with pytest.raises(InvalidRequest):
        world.core.report_progress(world.tokens["pong"], "pong", 1, reward_address=12345)
    assert world.core.reward_address("pong") == ""
