"""`python -m reward_service` as a person runs it: `--help`, bad arguments (exit 2, no traceback),
and a subprocess that serves, checkpoints on SIGTERM and resumes (then exits on SIGINT)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from reward_service.client import RewardClient
from reward_service.core import CHECKPOINT_NAME, RewardModel
from reward_service.types import ComparisonData, SegmentData
from rlhp.wire import Preference, Space, Unauthenticated

ROOT = Path(__file__).resolve().parents[2]
HOPPER = Space.parse("11/box:3")



def _env() -> dict:
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def test_help_exits_zero():
    r = subprocess.run([sys.executable, "-m", "reward_service", "--help"], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "--obs-space" in r.stdout and "11/box:3" in r.stdout and "discrete:N" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--obs-space", "eleven/box:3"], "cannot parse space"),
    ([], "--obs-space is required"),
    (["--obs-space", "11/box:3", "--members", "0"], "--members must be >= 1"),
    (["--resume"], "--resume needs --checkpoint-dir"),
    (["--obs-space", "11/box:3", "--port", "70000"], "not a port number"),
    (["--obs-space", "11/box:3", "--host", "0.0.0.0"], "reachable from other machines: serve TLS"),
    (["--obs-space", "11/box:3", "--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
    (["--obs-space", "11/box:3", "--tls-cert", "/nope/c.pem", "--tls-key", "/nope/k.pem"],
     "cannot read the TLS certificate or key"),
    (["--obs-space", "11/box:3", "--token-file", "/nope/token"], "cannot read --token-file /nope/token"),
])
def test_bad_arguments_exit_2_without_traceback(args, message):
    r = subprocess.run([sys.executable, "-m", "reward_service", *args], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr


def _start(tmp_path, *extra: str) -> tuple[subprocess.Popen, int]:
    port_file = tmp_path / "port"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "reward_service", "--port", "0", "--obs-space", "11/box:3", "--smoke",
         "--threads", "1", "--checkpoint-dir", str(tmp_path / "ckpt"), "--port-file", str(port_file), *extra],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"reward service did not start:\n{proc.communicate()[0]}")
        time.sleep(0.1)
    return proc, int(port_file.read_text())


def _terminate(proc: subprocess.Popen, sig=signal.SIGTERM) -> str:
    proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"reward service did not exit after {sig.name}:\n{proc.communicate()[0]}")
    assert proc.returncode == 0, out
    return out


def test_subprocess_serves_and_checkpoints_on_sigterm(tmp_path):
    proc, port = _start(tmp_path)
    try:
        address = f"127.0.0.1:{port}"
        with RewardClient(address, timeout=30) as client:
            stats = client.stats()
            assert stats.space == HOPPER and stats.model_version == 0
            segs = [_segment_data(f"s{i}", i) for i in range(4)]
            client.add_comparisons(segs, [ComparisonData("c0", "s0", "s1", Preference.LEFT),
                                          ComparisonData("c1", "s2", "s3", Preference.RIGHT)])
            seg = _segment_data("x", 99)
            rewards, _ = client.score(np.repeat(seg.observations, 2, 0)[:16], np.repeat(seg.actions, 2, 0)[:16])
            assert rewards.shape == (16,)
    finally:
        out = _terminate(proc)
    assert f"listening on 127.0.0.1:{port}" in out
    assert "final checkpoint" in out and "Traceback" not in out
    ckpt = tmp_path / "ckpt" / CHECKPOINT_NAME
    assert ckpt.stat().st_size > 0
    assert RewardModel.load(str(ckpt)).stats().comparisons == 2

    # --resume picks the checkpoint up, here behind a shared token; SIGINT also exits cleanly.
    token = "tok-" + os.urandom(8).hex()
    (tmp_path / "token").write_text(token + "\n")
    proc, port = _start(tmp_path, "--resume", "--token-file", str(tmp_path / "token"))
    try:
        with RewardClient(f"127.0.0.1:{port}", timeout=30, token=token) as client:
            assert client.stats().comparisons == 2
        with RewardClient(f"127.0.0.1:{port}", timeout=30, token="") as client:
            with pytest.raises(Unauthenticated, match="needs its token"):
                client.stats()
    finally:
        out = _terminate(proc, signal.SIGINT)
    assert token not in out


def _segment_data(sid: str, seed: int) -> SegmentData:
    rng = np.random.default_rng(seed)
    return SegmentData(sid, rng.normal(size=(10, 11)).astype(np.float32),
                       rng.uniform(-1, 1, size=(10, 3)).astype(np.float32))
