"""SIGKILL the reward service during `rlhp train --reward-address` (real processes): the learner keeps
going with its copy of the last version it fetched and says so in the progress line; the service,
restarted with `--resume`, loads its checkpoint, and the query service sends it again every label it
had lost (those after the checkpoint), so it ends with all of them."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from learner import configs, experiment
from learner.train import Trainer
from reward_service.client import RewardClient
from rlhp.types import Preference

ROOT = Path(__file__).resolve().parents[2]
ENV = "rlhp/FixedCartPole-v0"



def _start(ckpt: Path, port: int, *extra: str) -> subprocess.Popen:
    port_file = ckpt.parent / "port"
    port_file.unlink(missing_ok=True)
    log = ckpt.parent / "reward_service.log"  # a file, not a pipe nobody reads while it runs
    proc = subprocess.Popen(
        [sys.executable, "-m", "reward_service", "--port", str(port), "--port-file", str(port_file), "--smoke",
         "--threads", "1", "--checkpoint-dir", str(ckpt), "--checkpoint-every", "0", *extra],
        cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1"), stdout=open(log, "a"),
        stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"reward service did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return proc


def _trainable_labels(run_dir: Path) -> int:
    with closing(sqlite3.connect(run_dir / "labels.sqlite")) as c:
        return c.execute("SELECT COUNT(*) FROM labels WHERE answer!=?", (int(Preference.INCOMPARABLE),)).fetchone()[0]


@pytest.mark.slow
def test_reward_service_killed_during_training(tmp_path, ray_local, free_port):
    port = free_port
    address = f"127.0.0.1:{port}"
    ckpt = tmp_path / "reward"
    proc = _start(ckpt, port, "--obs-space", "4/discrete:2")
    cfg = experiment.resolve(ENV, "smoke", runs_dir=str(tmp_path), name="rk",
                             sets=["run.max_env_steps=7000", "query.reward_check_interval=1"])
    run_dir = tmp_path / "rk"
    run_dir.mkdir()
    configs.save(cfg, run_dir / "config.yaml")
    lines: list[str] = []
    rows: list[dict] = []
    state: dict = {}
    trainer = Trainer(cfg, run_dir, reward_address=address, out=lines.append)

    def on_iteration(row: dict) -> None:
        nonlocal proc
        rows.append(row)
        if row["iteration"] == 2:
            with RewardClient(address) as client:
                _, state["ckpt_version"] = client.checkpoint()
                state["ckpt_seen"] = client.stats().comparisons_seen
        elif row["iteration"] == 3:
            state["version_before"] = row["reward_version"]
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        elif row["iteration"] == 6:
            proc = _start(ckpt, port, "--resume")

    trainer.on_iteration = on_iteration
    try:
        summary = trainer.run()
        # the labels the restarted service lost come back to it. The synthetic teacher still answers
        # the queries pending when the run ended (until `trainer.close()`), so the number of labels
        # is read again each time: a label stored after a first count must not look like an extra.
        deadline = time.monotonic() + 60
        with RewardClient(address) as client:
            while True:
                want = _trainable_labels(run_dir)
                seen = client.stats().comparisons_seen
                if seen == want or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
    finally:
        trainer.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert summary["env_steps"] >= 7000
    down = [r for r in rows if 4 <= r["iteration"] <= 6]
    assert down and all(r["reward_fallback"] == 1 for r in down)  # the learner went on with its copy
    assert all(0 < r["reward_version"] <= state["version_before"] for r in down)
    assert any("reward service unreachable: scored with the learner's copy" in line for line in lines)
    assert rows[-1]["reward_fallback"] == 0  # and uses the service again once it is back
    assert state["ckpt_seen"] < want  # labels came after the checkpoint ...
    assert seen == want  # ... and the restarted service has every one of them
