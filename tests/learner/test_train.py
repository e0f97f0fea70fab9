"""End to end: `rlhp train` on fixed-horizon CartPole with real services, real Ray (local cluster on
loopback), real RLlib PPO and the synthetic teacher through the gRPC labeler API.

- a smoke run writes a complete run directory, and `--resume` continues its step and label counts;
- with at most 200 labels the greedy policy keeps the pole up ≥ 80% of the 200 steps (the reward is
  learned from preferences only);
- with a teacher whose preferences are the OPPOSITE of the env reward, the policy follows the
  preferences (drops the pole), which proves the env reward never reaches the learner.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from learner import configs, experiment
from learner.evaluate import evaluate
from learner.train import Trainer
from learner.train_cli import main as train_main
from query_service.teacher import SyntheticTeacher

ENV = "rlhp/FixedCartPole-v0"
HORIZON = 200


def _run(cfg, run_dir: Path, resume: bool = False, teacher_factory=None) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    configs.save(cfg, run_dir / "config.yaml")
    lines: list[str] = []
    trainer = Trainer(cfg, run_dir, resume=resume, out=lines.append, teacher_factory=teacher_factory)
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    summary["lines"] = lines
    return summary


def _labels(run_dir: Path) -> int:
    with sqlite3.connect(run_dir / "labels.sqlite") as c:
        return c.execute("SELECT COUNT(*) FROM labels").fetchone()[0]


def test_smoke_run_then_resume_continues_counts(tmp_path, ray_local):
    cfg = experiment.resolve(ENV, "smoke", sets=["run.max_env_steps=1000", "run.checkpoint_every=1"],
                             runs_dir=str(tmp_path))
    run_dir = tmp_path / cfg.experiment
    first = _run(cfg, run_dir)
    assert first["env_steps"] >= 1000
    for name in ("config.yaml", "state.json", "metrics.csv", "labels.sqlite",
                 "reward/reward_model.pt", "policy/rllib_checkpoint.json"):
        assert (run_dir / name).exists(), name
    state = json.loads((run_dir / "state.json").read_text())
    labels_before = _labels(run_dir)
    assert labels_before >= cfg.query.initial
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) - 1 == first["iterations"]

    # Resume with a larger budget: the step count continues from the saved state, labels grow.
    cfg2 = configs.apply(experiment.load(str(run_dir / "config.yaml")),
                         {"run": {"max_env_steps": 2000}, "query": {"total_env_steps": 2000.0}})
    second = _run(cfg2, run_dir, resume=True)
    assert any("resuming at iteration" in line for line in second["lines"])
    assert second["env_steps"] >= 2000
    assert second["steps_this_session"] < second["env_steps"]  # did not start again from 0
    assert json.loads((run_dir / "state.json").read_text())["iteration"] > state["iteration"]
    assert _labels(run_dir) >= labels_before
    rows2 = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows2) - 1 == second["iterations"]  # appended, header once


def test_reward_steps_per_iteration_trains_in_the_driver_not_in_the_background(tmp_path, ray_local):
    cfg = experiment.resolve(ENV, "smoke", runs_dir=str(tmp_path),
                             sets=["run.max_env_steps=1000", "run.pretrain_steps=5",
                                   "run.reward_steps_per_iteration=7"])
    run_dir = tmp_path / cfg.experiment
    run_dir.mkdir(parents=True)
    trainer = Trainer(cfg, run_dir, out=lambda line: None)
    try:
        summary = trainer.run()
        assert not trainer.model.training  # no background thread
        stats = trainer.model.stats()
    finally:
        trainer.close()
    assert summary["iterations"] >= 2
    assert stats.train_steps == 5 + 7 * summary["iterations"]


@pytest.mark.parametrize("runners", [0, 1])
def test_appo_run_counts_its_env_steps_and_ends(tmp_path, ray_local, runners):
    """`rl.algo=appo`, in the driver and with a remote env runner sampling beside the learner. APPO
    reports its step counts as numpy integers, which the run once counted as 0 steps: it never ended."""
    cfg = experiment.resolve(ENV, "smoke", runs_dir=str(tmp_path),
                             sets=["rl.algo=appo", f"rl.num_env_runners={runners}", "run.max_env_steps=1500",
                                   "run.pretrain_steps=5"])
    run_dir = tmp_path / cfg.experiment
    summary = _run(cfg, run_dir)
    assert not [line for line in summary["lines"] if "no env steps came back" in line]
    assert summary["env_steps"] >= 1500
    rows = [line.split(",") for line in (run_dir / "metrics.csv").read_text().splitlines()]
    steps = [int(r[rows[0].index("env_steps")]) for r in rows[1:]]
    assert len(steps) == summary["iterations"]
    # with a remote runner the first iterations may end before its first samples come back
    first = next(i for i, n in enumerate(steps) if n > 0)
    assert all(b > a for a, b in zip(steps[first:], steps[first + 1:]))  # from then on every iteration sampled
    assert (run_dir / "policy/rllib_checkpoint.json").exists()


def test_cli_errors_are_messages_not_tracebacks(tmp_path, capsys):
    assert train_main(["--env", ENV, "--set", "reward.nope=1", "--runs-dir", str(tmp_path)]) == 2
    assert "unknown config field 'reward.nope'" in capsys.readouterr().err
    assert train_main(["--resume", str(tmp_path / "missing")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert train_main([]) == 2
    # the embedded services have no TLS: another address than loopback must be asked for
    assert train_main(["--env", ENV, "--preset", "smoke", "--runs-dir", str(tmp_path), "--name", "open",
                       "--set", "run.host=0.0.0.0"]) == 1
    assert "run.insecure=true" in capsys.readouterr().err


def test_episodes_shorter_than_a_segment_are_an_error_not_a_hang(tmp_path, capsys):
    """InvertedDoublePendulum's random episodes last 4-16 steps: with 1.5 s segments (30 steps) the
    random-segment collection once looped forever without a word."""
    args = ["--env", "InvertedDoublePendulum-v5", "--preset", "smoke", "--runs-dir", str(tmp_path),
            "--set", "env.segment_length=30"]
    assert train_main([*args, "--name", "idp"]) == 1
    err = capsys.readouterr().err
    assert "episodes end too soon" in err and "env.segment_length" in err and "Traceback" not in err
    # the default segments fit (actors.envs.SHORT_SEGMENTS): the collection goes through
    cfg = experiment.resolve("InvertedDoublePendulum-v5", "smoke", runs_dir=str(tmp_path), name="short")
    run_dir = tmp_path / "short"
    run_dir.mkdir()
    trainer = Trainer(cfg, run_dir, out=lambda line: None)
    try:
        trainer.start_services()
        assert trainer.collect_random_segments() >= cfg.run.initial_segments
    finally:
        trainer.close()


def test_random_segments_at_mixed_action_scales(tmp_path, capsys):
    """`run.random_action_scales`: the initial random-policy episodes alternate action scales, and
    the stored segments keep the actions as taken; a scale that is not positive is a clear error."""
    cfg = experiment.resolve("Reacher-v5", "smoke", runs_dir=str(tmp_path), name="scales",
                             sets=["run.random_action_scales=0.1,1", "run.initial_segments=12"])
    run_dir = tmp_path / "scales"
    run_dir.mkdir()
    trainer = Trainer(cfg, run_dir, out=lambda line: None)
    try:
        trainer.start_services()
        assert trainer.collect_random_segments() == 12
        store = trainer.qcore.store
        segs = store.load_segments(trainer.experiment, store.recent_segment_ids(trainer.experiment, 100))
    finally:
        trainer.close()
    peaks = sorted(float(np.abs(s.actions).max()) for s in segs.values())
    assert len(peaks) == 12 and all(s.random_policy for s in segs.values())
    assert max(peaks[:6]) <= 0.1 + 1e-6 and min(peaks[6:]) > 0.5  # 6 episodes at 0.1, 6 at the whole box
    assert train_main(["--env", "Reacher-v5", "--preset", "smoke", "--runs-dir", str(tmp_path), "--name", "bad",
                       "--set", "run.random_action_scales=0,1"]) == 1
    err = capsys.readouterr().err
    assert "run.random_action_scales" in err and "positive" in err and "Traceback" not in err


def _cartpole_cfg(tmp_path: Path, name: str):
    # The `classic` preset as users get it (≤ 200 labels, 40k env steps); seed 1 of the sweep in
    # `benchmarks/label_efficiency.py --task cartpole` (docs/label_efficiency.md).
    cfg = experiment.resolve(ENV, "classic", runs_dir=str(tmp_path), name=name, seed=1)
    assert cfg.query.label_budget == 200 and cfg.run.max_env_steps == 40_000
    return cfg


@pytest.mark.slow
def test_cartpole_from_at_most_200_labels(tmp_path, ray_local):
    cfg = _cartpole_cfg(tmp_path, "learn")
    run_dir = tmp_path / "learn"
    _run(cfg, run_dir)
    assert _labels(run_dir) <= 200
    returns = evaluate(run_dir, episodes=5)
    assert np.mean(returns) >= 0.8 * HORIZON, returns


def _record_of(run_dir: Path) -> tuple[list[dict], list[tuple], np.ndarray]:
    """What a run did: its metrics rows (without wall-clock columns), its labels (query id and
    answer, in the order given) and its final reward model's scores of fixed observations."""
    import csv

    from reward_service.core import RewardModel

    with open(run_dir / "metrics.csv") as f:
        rows = [{k: v for k, v in r.items() if k not in ("time_s", "steps_per_s")} for r in csv.DictReader(f)]
    with sqlite3.connect(run_dir / "labels.sqlite") as c:
        labels = c.execute("SELECT query_id, answer FROM labels ORDER BY created").fetchall()
    model = RewardModel.load(str(run_dir / "reward" / "reward_model.pt"))
    obs = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    return rows, labels, np.asarray(model.score(obs, np.zeros(50, dtype=np.int64))[0])


@pytest.mark.slow
def test_lockstep_runs_of_one_seed_are_the_same_run(tmp_path, ray_local):
    """The `classic` preset runs in lockstep: two runs of one seed select the same queries, get the
    same labels, train the same reward model and the same policy, however loaded the machine is
    (the teacher, selection and forwarding run on their own threads otherwise)."""
    records = []
    for name in ("first", "second"):
        cfg = experiment.resolve(ENV, "classic", runs_dir=str(tmp_path), name=name, seed=5,
                                 sets=["run.max_env_steps=3000"])
        assert cfg.run.lockstep
        _run(cfg, tmp_path / name)
        records.append(_record_of(tmp_path / name))
    (rows_a, labels_a, scores_a), (rows_b, labels_b, scores_b) = records
    assert len(rows_a) == 3 and rows_a == rows_b
    assert len(labels_a) == cfg.query.label_budget and labels_a == labels_b
    np.testing.assert_array_equal(scores_a, scores_b)


class _OppositeTeacher(SyntheticTeacher):
    """Prefers the segment with the LOWER env reward: the opposite of the env's own reward."""

    def answer(self, left_rewards, right_rewards):
        return super().answer(-np.asarray(left_rewards), -np.asarray(right_rewards))


@pytest.mark.slow
def test_policy_follows_preferences_not_the_env_reward(tmp_path, ray_local):
    cfg = _cartpole_cfg(tmp_path, "opposite")
    run_dir = tmp_path / "opposite"
    _run(cfg, run_dir, teacher_factory=lambda i: _OppositeTeacher(seed=i))
    returns = evaluate(run_dir, episodes=5)
    # A random policy keeps the pole up ~20 of 200 steps; one that follows the env reward, ~200.
    assert np.mean(returns) <= 0.2 * HORIZON, returns


def _media_of_policy_segments(run_dir: Path, experiment_name: str) -> list[dict]:
    from query_service.store import unpack

    with sqlite3.connect(run_dir / "labels.sqlite") as c:
        rows = c.execute("SELECT media, random_policy FROM segments WHERE experiment=?",
                         (experiment_name,)).fetchall()
    return [dict(unpack(m), random_policy=bool(r)) for m, r in rows if m is not None]


@pytest.mark.parametrize("env_id, arch", [("ALE/Pong-v5", "cnn"), ("Hopper-v5", "mlp")])
def test_smoke_run_atari_and_mujoco(tmp_path, ray_local, env_id, arch):
    # PPO's CNN update runs at a few env steps/s on one CPU core: keep the Atari budget tiny.
    steps, batch = (256, 128) if arch == "cnn" else (1000, 500)
    cfg = experiment.resolve(env_id, "smoke", runs_dir=str(tmp_path),
                             sets=[f"run.max_env_steps={steps}", "run.pretrain_steps=5",
                                   "run.initial_segments=12", "query.initial_labels=6",
                                   f"rl.overrides={{train_batch_size_per_learner: {batch}, "
                                   f"minibatch_size: 64, num_epochs: 1}}"])
    run_dir = tmp_path / cfg.experiment
    summary = _run(cfg, run_dir)
    assert summary["env_steps"] >= steps
    from reward_service.core import RewardModel

    model = RewardModel.load(str(run_dir / "reward" / "reward_model.pt"))
    assert model.stats().architecture == arch
    media = _media_of_policy_segments(run_dir, cfg.experiment)
    # Random-policy segments from the driver AND segments streamed by the RLlib env runner.
    assert any(m["random_policy"] for m in media) and any(not m["random_policy"] for m in media)
    m = next(m for m in media if not m["random_policy"])
    if arch == "cnn":
        assert m["frames"].dtype == np.uint8 and m["frames"].shape[1:] == (210, 160, 3)
    else:
        assert m["qpos"].shape[1] == 6 and m["qvel"].shape[1] == 6
    assert _labels(run_dir) >= cfg.query.initial
