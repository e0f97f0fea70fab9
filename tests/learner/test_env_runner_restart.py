"""An env runner dies during `rlhp train` (SIGKILL to its Ray actor process): RLlib starts a new
one (`restart_failed_env_runners`, on in `learner.algo.build_algo_config`), the run reaches its step
budget, and the new runner streams segments like the old one did."""

from __future__ import annotations

import os
import signal
import time

import pytest

from learner import configs, experiment
from learner.train import Trainer

ENV = "rlhp/FixedCartPole-v0"


def _runner_pids(trainer: Trainer) -> list[int]:
    return trainer.algo.env_runner_group.foreach_env_runner(lambda runner: os.getpid(), local_env_runner=False)


@pytest.mark.slow
def test_a_killed_env_runner_is_replaced_and_the_run_goes_on(tmp_path, ray_local):
    cfg = experiment.resolve(ENV, "smoke", runs_dir=str(tmp_path), name="kill",
                             sets=["rl.num_env_runners=1", "run.max_env_steps=5000", "run.pretrain_steps=5"])
    run_dir = tmp_path / "kill"
    run_dir.mkdir()
    configs.save(cfg, run_dir / "config.yaml")
    seen: dict = {"killed": None, "rows": []}
    trainer = Trainer(cfg, run_dir, out=lambda line: None)

    def on_iteration(row: dict) -> None:
        seen["rows"].append(row)
        if row["iteration"] == 2:
            (pid,) = _runner_pids(trainer)
            os.kill(pid, signal.SIGKILL)
            seen["killed"] = pid
            time.sleep(0.5)

    trainer.on_iteration = on_iteration
    try:
        summary = trainer.run()
        after = _runner_pids(trainer)
    finally:
        trainer.close()
    assert seen["killed"] is not None
    assert summary["env_steps"] >= 5000 and summary["iterations"] > 3
    assert len(after) == 1 and after[0] != seen["killed"]  # a new process took its place
    rows = seen["rows"]
    sent_at_kill = rows[1]["segments_sent"]
    assert rows[-1]["segments_sent"] > sent_at_kill  # and streams segments again
