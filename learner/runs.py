"""The run directory of `rlhp train` and the error a run stops with; shared by both runners
(`learner.train.Trainer`, `learner.multi.MultiRunner`) and by `rlhp evaluate`.

    runs/<name>/
        config.yaml            the experiment config (`learner.configs.save`)
        state.json             iteration and env steps of the last checkpoint (`write_state`)
        policy/                the RLlib checkpoint (`save_policy_atomically`; `policy_dir` finds it)
        reward/reward_model.pt the ensemble (reward_service.core.RewardModel.checkpoint)
        labels.sqlite          the query service's database (segments, queries, labels, tokens)
        tokens/<name>.token    the run's own tokens, kept across resumes (`query_service.tokens`)
        metrics.csv            one row per iteration (`learner.metrics`)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
TOKEN_DIR = "tokens"


class TrainError(RuntimeError):
    """A run cannot start or continue; the message says why and what to do."""


def atomic_json(path: Path, data: dict) -> None:
    """Write `data` as JSON beside `path`, then swap it in: a crash leaves the old file or the new."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def write_state(run_dir: Path, iteration: int, env_steps: int, experiment: str) -> None:
    atomic_json(Path(run_dir) / STATE_FILE, {"iteration": iteration, "env_steps": env_steps,
                                             "experiment": experiment, "time": time.time()})


def read_state(run_dir: Path) -> dict | None:
    """The saved `state.json` of a run, or None when it has none (a fresh run)."""
    path = Path(run_dir) / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def save_policy_atomically(algo: Any, path: Path) -> None:
    """RLlib writes checkpoints in place; write beside, then swap, so a crash leaves a whole one."""
    new, old = path.with_name(path.name + ".new"), path.with_name(path.name + ".old")
    shutil.rmtree(new, ignore_errors=True)
    algo.save_to_path(str(new))
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)


def policy_dir(run_dir: Path) -> Path | None:
    """The newest complete policy checkpoint of a run (see `save_policy_atomically`)."""
    for name in ("policy", "policy.old"):
        if (Path(run_dir) / name / "rllib_checkpoint.json").exists():
            return Path(run_dir) / name
    return None


def token_dir(run_dir: Path) -> Path:
    """Where a run keeps the plain tokens it created for itself (mode 0600 files)."""
    return Path(run_dir) / TOKEN_DIR
