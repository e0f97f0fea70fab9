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
import math
import numbers
import os
import shutil
import time
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
TOKEN_DIR = "tokens"


class TrainError(RuntimeError):
    """A run cannot start or continue; the message says why and what to do."""


def result_at(result: dict, *path: str, default: Any = math.nan) -> Any:
    """The entry of an RLlib result dict at `path`, or `default`."""
    node: Any = result
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def as_count(value: Any) -> int:
    """A step count from RLlib's results as an int, 0 when missing or not finite. APPO reports its
    counts as numpy integers, which are not Python ints (with only int/float accepted, an APPO run
    counted 0 env steps every iteration and never ended)."""
    if isinstance(value, numbers.Real) and math.isfinite(value):
        return int(value)
    return 0


_library_log: Any = None  # the FileHandler of `library_logs_to`, once set


GCS_WAIT_S = "90"  # Ray waits 30 s by default for its GCS to publish its port


def init_local_ray(attempts: int = 2, **kwargs: Any) -> None:
    """`ray.init(address="local", **kwargs)` that survives a slow start on a loaded machine.

    Seen in CI and in stress runs on 2 cores, right after another run's Ray shut down: Ray gave up
    waiting for its own processes, either the GCS ("Timed out waiting for file .../gcs_server_port_
    ...", a 30 s wait) or the raylet ("The current node timed out during startup", a fixed 30 s, as
    a bare `Exception`), and `rlhp train` stopped. So the GCS wait is 90 s (unless
    `RAY_gcs_server_port_wait_time_s` is set), and a failed start is shut down and tried again with
    a new session. (A node that failed inside `ray.init` is not registered, so `ray.shutdown` cannot
    stop what it had started; on Linux Ray ties those processes to the driver's life, so they end
    with it at the latest.) The last failure is raised as a `RuntimeError` that names the number of
    attempts."""
    import logging

    import ray

    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", GCS_WAIT_S)
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address="local", **kwargs)
            return
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for a slow raylet
            ray.shutdown()
            if attempt == attempts:
                raise RuntimeError(f"{e} ({attempts} attempts)") from e
            logging.getLogger("rlhp.ray").warning("Ray did not start (%s); trying again", e)
            time.sleep(2.0)


def library_logs_to(path: Path) -> None:
    """Send Ray's, RLlib's and Python's warnings (deprecations, "new API stack", gputil...) to the
    file `path` instead of the terminal, where only the run's own progress lines belong.
    `ray.init` and RLlib's imports drop or replace logger handlers: `reattach_library_logs` after
    them (the Trainer does, after starting Ray and after building the algorithm)."""
    import logging

    global _library_log
    path.parent.mkdir(parents=True, exist_ok=True)
    _library_log = logging.FileHandler(path)
    _library_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.captureWarnings(True)
    reattach_library_logs()


def reattach_library_logs() -> None:
    """Point Ray's and RLlib's loggers at the `library_logs_to` file again (no-op if never set)."""
    import logging

    if _library_log is None:
        return
    # records of a logger left without handlers (ray.init drops them, then logs) would otherwise
    # reach stderr through logging.lastResort
    logging.lastResort = _library_log
    names = {"ray", "ray.rllib", "ray.tune", "py.warnings"} | {
        n for n, lg in logging.root.manager.loggerDict.items()
        if n.startswith("ray.") and isinstance(lg, logging.Logger) and lg.handlers}
    for name in sorted(names):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.addHandler(_library_log)
        logger.propagate = False


class Stopped(KeyboardInterrupt):
    """SIGTERM (or Ctrl-C) asked the run to stop: it checkpoints and exits (`stop_on_signals`)."""


def stop_on_signals() -> None:
    """Make SIGTERM stop a run the way Ctrl-C does (raise `Stopped` in the main thread), so it
    checkpoints and exits cleanly instead of dying mid-write. Call it again after `ray.init`, which
    installs its own SIGTERM handler in the driver. A no-op outside the main thread (Ray Tune)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):  # noqa: ARG001 - signal handler signature
        raise Stopped(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, handler)


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


def save_policy_atomically(algo: Any, path: Path, secrets: tuple[str, ...] = ()) -> None:
    """RLlib writes checkpoints in place; write beside, then swap, so a crash leaves a whole one.
    The `secrets` (the env runners' query service token) are blanked out of it (`scrub_secrets`)."""
    new, old = path.with_name(path.name + ".new"), path.with_name(path.name + ".old")
    shutil.rmtree(new, ignore_errors=True)
    algo.save_to_path(str(new))
    scrub_secrets(new, secrets)
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)


def scrub_secrets(checkpoint: Path, secrets: tuple[str, ...]) -> None:
    """Blank the segment options' token (`actors.callbacks.SegmentOptions.token`) in the pickled
    configs of an RLlib checkpoint: RLlib saves each component's constructor arguments, the
    algorithm config with its env config among them, and a policy is a file people share. Restoring
    does not need it (`rlhp train --resume` builds a fresh config, `rlhp evaluate` loads the module
    alone). Raises RuntimeError if a secret is still in any file afterwards."""
    import pickle

    from ray import cloudpickle

    from actors.callbacks import ENV_CONFIG_KEY

    secrets = tuple(s for s in secrets if s)
    if not secrets:
        return

    def blank(obj: Any, depth: int = 0) -> None:
        if depth > 4:
            return
        env_config = obj.get("env_config") if isinstance(obj, dict) else getattr(obj, "env_config", None)
        if isinstance(env_config, dict) and isinstance(env_config.get(ENV_CONFIG_KEY), dict):
            env_config[ENV_CONFIG_KEY]["token"] = ""
        items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
        for item in items:
            blank(item, depth + 1)

    for f in Path(checkpoint).rglob("class_and_ctor_args.pkl"):
        raw = f.read_bytes()
        if not any(s.encode() in raw for s in secrets):
            continue
        data = pickle.loads(raw)
        blank(data)
        f.write_bytes(cloudpickle.dumps(data))  # as RLlib wrote it: configs may hold lambdas
    left = [f for f in Path(checkpoint).rglob("*") if f.is_file()
            and any(s.encode() in f.read_bytes() for s in secrets)]
    if left:
        raise RuntimeError(f"a token is still in the policy checkpoint: {', '.join(map(str, left))}")


def policy_dir(run_dir: Path) -> Path | None:
    """The newest complete policy checkpoint of a run (see `save_policy_atomically`)."""
    for name in ("policy", "policy.old"):
        if (Path(run_dir) / name / "rllib_checkpoint.json").exists():
            return Path(run_dir) / name
    return None


def token_dir(run_dir: Path) -> Path:
    """Where a run keeps the plain tokens it created for itself (mode 0600 files)."""
    return Path(run_dir) / TOKEN_DIR
