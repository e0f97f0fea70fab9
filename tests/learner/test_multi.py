"""Many games at once (`learner/multi.py`): Ray Tune runs one trial per game, each with its own
policy and reward service, sharing one query service and one synthetic labeler pool.

The end-to-end test runs two FixedCartPole experiments with the smoke preset on the shared local
Ray cluster (loopback, 2 CPUs: one per trial) and kills one game's process once after its first
checkpoint: Tune restarts it and it resumes from its checkpoint while the other game goes on.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from learner import multi
from learner.metrics import read_csv
from learner.train_cli import build_parser, main as train_main

ENV = "rlhp/FixedCartPole-v0"


def _args(tmp_path: Path, *extra: str):
    return build_parser().parse_args(["--env", ENV, "--env", ENV, "--preset", "smoke", "--runs-dir",
                                      str(tmp_path), "--name", "g", *extra])


def test_plan_names_seeds_and_dispatch(tmp_path):
    assert multi.unique_names(["ALE/Pong-v5", "ALE/Breakout-v5", "ALE/Pong-v5"]) == [
        "pong-v5", "breakout-v5", "pong-v5-2"]
    args = _args(tmp_path, "--steps", "1000", "--labels", "20")
    assert multi.wanted(args)
    assert not multi.wanted(build_parser().parse_args(["--env", ENV]))
    group, games = multi.plan(args)
    assert group == (tmp_path / "g").resolve()
    assert [g.name for g in games] == ["fixedcartpole-v0", "fixedcartpole-v0-2"]
    assert [g.cfg.run.seed for g in games] == [0, 1]  # two copies of a game are two experiments
    assert all(g.cfg.query.label_budget == 20 and g.cfg.run.max_env_steps == 1000 for g in games)
    assert all((g.run_dir / "config.yaml").exists() for g in games)
    assert multi.wanted(build_parser().parse_args(["--resume", str(group)]))
    again, games2 = multi.plan(build_parser().parse_args(["--resume", str(group), "--steps", "2000"]))
    assert again == group and [g.cfg.run.max_env_steps for g in games2] == [2000, 2000]
    with pytest.raises(multi.TrainError, match="--resume"):
        multi.plan(_args(tmp_path))  # the group exists
    # --device cuda: the games share the GPU, each learner asks for its part
    _, on_gpu = multi.plan(_args(tmp_path, "--name", "gpu", "--device", "cuda"))
    assert [(g.cfg.reward.device, g.cfg.rl.num_gpus_per_learner) for g in on_gpu] == [("cuda", 0.5)] * 2
    # ... and Ray places it: the trial's own bundle (its learner runs in the trial process) holds it
    bundles = multi._resources({g.name: g for g in on_gpu})({"experiment": on_gpu[0].name}).bundles
    assert bundles[0] == {"CPU": 1, "GPU": 0.5} and all("GPU" not in b for b in bundles[1:])
    # CLI: no shared reward address, and a foreign query service needs a producer token
    assert train_main(["--env", ENV, "--env", ENV, "--reward-address", "127.0.0.1:1"]) == 2


def _labels(group: Path) -> dict[str, set[str]]:
    with sqlite3.connect(group / "labels.sqlite") as c:
        out: dict[str, set[str]] = {}
        for qid, exp in c.execute("SELECT query_id, experiment FROM labels"):
            out.setdefault(exp, set()).add(qid)
        return out


def test_two_games_share_one_query_service_and_a_killed_game_resumes(tmp_path, ray_local):
    from reward_service.core import RewardModel

    group, games = multi.plan(_args(tmp_path, "--steps", "1500", "--set", "run.checkpoint_every=1"))
    steady, victim = games
    lines: list[str] = []
    runner = multi.MultiRunner(games, group, table_every=2.0, out=lines.append, max_failures=2,
                               fault={"experiment": victim.name, "after_iteration": 1})
    try:
        summary = runner.run()
    finally:
        runner.close()
    print("\n".join(lines[-6:]))

    for g in games:  # both games ran to their budget and have labels
        s = summary[g.name]
        assert s["error"] == "" and s["env_steps"] >= 1500 and s["iteration"] >= 3, (g.name, s)
        rows = read_csv(g.run_dir)
        assert rows[-1]["labels"] >= g.cfg.query.initial and rows[-1]["env_steps"] >= 1500
    assert summary[steady.name]["restarts"] == 0 and summary[victim.name]["restarts"] == 1

    # the killed game resumed from its checkpoint: counts continue, nothing started again from 0
    crash = json.loads((victim.run_dir / multi.FAULT_MARKER).read_text())
    log = (victim.run_dir / "train.log").read_text()
    assert f"resuming at iteration {crash['iteration']}" in log and "policy restored" in log
    iterations = [int(r["iteration"]) for r in read_csv(victim.run_dir)]
    steps = [int(r["env_steps"]) for r in read_csv(victim.run_dir)]
    assert iterations == sorted(set(iterations)) and iterations[0] == 1  # no iteration twice
    assert steps == sorted(steps) and steps[crash["iteration"]] > crash["env_steps"]
    assert json.loads((victim.run_dir / "state.json").read_text())["iteration"] > crash["iteration"]
    assert "resuming" not in (steady.run_dir / "train.log").read_text()  # the other game went on

    # each game's labels reached its own reward model, and only its own
    labels = _labels(group)
    seen = {g.name: set(RewardModel.load(str(g.run_dir / "reward" / "reward_model.pt")).seen_comparison_ids())
            for g in games}
    for g, other in ((steady, victim), (victim, steady)):
        assert len(labels[g.name]) >= g.cfg.query.initial
        assert seen[g.name] and seen[g.name] <= labels[g.name]
        assert not seen[g.name] & labels[other.name]
    # the live table showed both games
    assert any(steady.name in line and victim.name in line for line in lines)


def test_table_shows_each_games_correlation_scored_by_its_own_reward_model(tmp_path):
    import numpy as np

    from query_service.core import QueryService
    from query_service.types import SegmentRecord

    group, games = multi.plan(_args(tmp_path))
    runner = multi.MultiRunner(games, group, out=lambda s: None)

    class Oracle:  # a "reward service" that predicts the true reward: corr 1
        def score(self, obs, act):
            return obs[:, 0].astype(np.float32), 7

    asked: list[str] = []

    def factory(address: str):
        asked.append(address)
        return Oracle()

    runner.qcore = QueryService(group, games[0].cfg.query, reward_factory=factory)
    try:
        name = games[0].name
        token = runner.qcore.create_token("p", "producer")
        rng = np.random.default_rng(0)
        recs = []
        for i in range(10):
            true = rng.normal(size=5).astype(np.float32)
            obs = np.concatenate([true[:, None], rng.normal(size=(5, 3))], axis=1).astype(np.float32)
            recs.append(SegmentRecord(id=f"s{i}", experiment=name, env_id=ENV, observations=obs,
                                      actions=np.zeros((5, 1), np.float32), true_rewards=true))
        runner.qcore.add_segments(token, recs)
        assert "corr 1" not in runner.table()  # no reward service known for the game yet
        runner.qcore.report_progress(token, name, 100, reward_address="127.0.0.1:1")
        assert runner.refresh_corr()[name] == pytest.approx(1.0)
        table = runner.table()
        assert asked == ["127.0.0.1:1"] and runner.corr[name] == pytest.approx(1.0)
        assert f"{name}: pending, corr 1.00" in table and "fixedcartpole-v0-2: pending" in table
    finally:
        runner.qcore.close()
