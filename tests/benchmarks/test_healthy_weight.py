"""`benchmarks/healthy_weight.py`: PPO with Hopper's healthy bonus re-weighted, each episode scored
with the bonus at 1. A real (short) RLlib run in its own process and Ray cluster."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from .conftest import ROOT


def _script(*args: str, timeout: float = 240.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "healthy_weight.py"), *args],
                          cwd=str(ROOT), capture_output=True, text=True, timeout=timeout)


def test_bad_arguments_are_a_clean_usage_error(tmp_path):
    for weight in ("-1", "0"):  # at 0 the env's info no longer tells the healthy steps
        p = _script("--weight", weight, "--out", str(tmp_path / "x.json"), timeout=60)
        assert p.returncode == 2 and "--weight must be in (0, 10]" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_episodes_are_scored_with_the_bonus_at_one(tmp_path):
    out = tmp_path / "hw.json"
    p = _script("--weight", "0.5", "--seeds", "1", "--steps", "8192", "--out", str(out), "--quiet")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    [run] = json.loads(out.read_text())
    assert run["arm"] == "true-healthy0.5" and run["steps"] >= 8192
    ended = [r for r in run["rows"] if math.isfinite(r["trained_return"])]
    assert ended, "no episode ended in 8,192 steps of 8 envs with 1,000-step episodes"
    for r in ended:  # a random-ish Hopper is upright for its first ~20-40 steps of each episode
        assert 0 < r["healthy_steps"] < 1000
        assert r["true_return"] == pytest.approx(r["trained_return"] + 0.5 * r["healthy_steps"])
    assert "| hopper | 0.5 | 1 |" in p.stdout
