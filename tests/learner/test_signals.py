"""`rlhp train` as a person sees it: the terminal shows the run's own lines, not Ray/RLlib/gRPC log
noise (that goes to `<run>/logs/driver.log`); stopped by SIGTERM (what a scheduler or `kill` sends)
it writes a checkpoint, says how to continue, exits 143 without a stack dump, and `--resume`
continues it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _train(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_ADDRESS="")
    env.pop("GRPC_VERBOSITY", None)  # the command itself must quiet gRPC (scripts/test.sh sets it)
    return subprocess.Popen([sys.executable, "-m", "learner.cli", "train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _rows(run_dir: Path) -> int:
    p = run_dir / "metrics.csv"
    return max(0, len(p.read_text().splitlines()) - 1) if p.exists() else 0


@pytest.mark.slow
def test_sigterm_checkpoints_and_resume_continues(tmp_path):
    run_dir = tmp_path / "sig"
    proc = _train("--env", "rlhp/FixedCartPole-v0", "--preset", "smoke", "--runs-dir", str(tmp_path),
                  "--name", "sig", "--steps", "1000000", "--set", "run.checkpoint_every=1000")
    try:
        deadline = time.time() + 600
        while _rows(run_dir) < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        if proc.poll() is not None or _rows(run_dir) < 2:
            proc.kill()
            out, _ = proc.communicate(timeout=60)
            log = run_dir / "logs" / "driver.log"
            tail = log.read_text()[-3000:] if log.exists() else "(no driver.log)"
            pytest.fail(f"the run did not reach its second iteration (rc {proc.returncode}):\n{out[-3000:]}\n"
                        f"--- driver.log ---\n{tail}")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out[-3000:]
    assert "stopped by SIGTERM: writing a checkpoint" in out
    assert f"continue with: rlhp train --resume {run_dir}" in out
    assert "SIGTERM received" not in out and "Traceback" not in out, out[-3000:]
    # the library noise went to the run's log file, not to the terminal
    for noise in ("fork_posix", "\tWARNING", "DeprecationWarning", "new API stack"):  # Ray's format: "<time>\tWARNING"
        assert noise not in out, (noise, out[-3000:])
    assert "new API stack" in (run_dir / "logs" / "driver.log").read_text()
    state = json.loads((run_dir / "state.json").read_text())
    # checkpoint_every=1000 never fired: this checkpoint is the one SIGTERM wrote
    assert state["iteration"] >= 2 and (run_dir / "policy" / "rllib_checkpoint.json").exists()
    steps = int(state["env_steps"])

    again = _train("--resume", str(run_dir), "--steps", str(steps + 1000))
    out2, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out2[-3000:]
    assert f"resuming at iteration {state['iteration']}, {steps:,} env steps" in out2
    after = json.loads((run_dir / "state.json").read_text())
    assert after["iteration"] > state["iteration"] and after["env_steps"] >= steps + 1000
    # No token of the run is anywhere but in its own tokens/ files: not in config.yaml, metrics,
    # logs, the database (hashes only), the reward model or the RLlib checkpoint, nor on the terminal.
    tokens = [f.read_text().strip() for f in (run_dir / "tokens").glob("*.token")]
    assert len(tokens) >= 2  # the env runners' producer token and the teacher's
    holders = [f for f in run_dir.rglob("*") if f.is_file() and "tokens" not in f.relative_to(run_dir).parts
               and any(t.encode() in f.read_bytes() for t in tokens)]
    assert not holders, holders
    assert not any(t in out or t in out2 for t in tokens)
