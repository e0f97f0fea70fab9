"""Many games at once: `rlhp train --env ALE/Pong-v5 --env ALE/Breakout-v5 ...`.

One experiment per game, each with its own policy (RLlib PPO) and its own reward model, all sharing
ONE query service and ONE labeler pool:

    runs/<group>/                      --name, or multi-<game>-<game>...
        multi.json                     the games of this group (what `--resume runs/<group>` reads)
        labels.sqlite                  the shared query service (embedded; or --query-address)
        tokens/                        the group's own tokens (producers, teachers), kept on resume
        <game>/                        an ordinary run directory per game (config.yaml, policy/,
                                       reward/, metrics.csv, state.json) plus train.log
        tune/                          Ray Tune's own bookkeeping

Placement and fault handling are Ray Tune's: one trial per game (`tune.grid_search` over the games),
each trial a function that runs a `learner.train.Trainer` whose reward service is embedded in the
trial process and which talks to the shared query service with a producer token of its own game.
The trial reports each iteration with `tune.report`. When a trial's process dies, Tune restarts it
(`FailureConfig(max_failures)`), and the new Trainer resumes from the game's run directory (its last
checkpoint); it reports its new reward-service address, so the query service re-sends that game's
labels there. The other games go on meanwhile.

Labelers: synthetic teacher threads in this driver answer every game (or humans: `rlhp label` with
the token printed at the start). A table of all games is printed every few seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import numbers
import os
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable


from learner import configs, experiment
from learner.experiment import ExperimentConfig
from learner.labelers import run_token, start_labelers
from learner.runs import TrainError, init_local_ray, token_dir
from learner.train import Trainer

log = logging.getLogger("rlhp.multi")

MULTI_FILE = "multi.json"
FAULT_MARKER = ".fault_injected"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class GroupExperiment:
    """One experiment of a many-games group: a game with its own policy and reward model."""

    name: str  # the experiment name in the shared query service
    cfg: ExperimentConfig
    run_dir: Path


def wanted(args: argparse.Namespace) -> bool:
    """Whether `rlhp train` was asked for many games (several --env, or --resume of a group)."""
    envs = args.env or []
    if isinstance(envs, str):
        envs = [envs]
    return len(envs) > 1 or bool(args.resume and (Path(args.resume) / MULTI_FILE).exists())


def unique_names(env_ids: list[str]) -> list[str]:
    """Experiment names from env ids; a game given twice gets -2, -3, ... (its own experiment)."""
    names: list[str] = []
    for env_id in env_ids:
        base = experiment.default_name(env_id)
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}-{k}"
        names.append(name)
    return names


def plan(args: argparse.Namespace) -> tuple[Path, list[GroupExperiment]]:
    """The group directory and its games: fresh from --env ..., or read back for --resume GROUP."""
    if args.resume:
        group = Path(args.resume)
        meta = json.loads((group / MULTI_FILE).read_text())
        experiments = []
        for entry in meta["experiments"]:
            run_dir = group / entry["name"]
            cfg = experiment.load(str(run_dir / "config.yaml"))
            if args.steps:
                cfg = configs.apply(cfg, {"run": {"max_env_steps": args.steps},
                                          "query": {"total_env_steps": float(args.steps)}})
                configs.save(cfg, run_dir / "config.yaml")
            experiments.append(GroupExperiment(entry["name"], cfg, run_dir.resolve()))
        return group.resolve(), experiments
    envs = list(args.env)
    names = unique_names(envs)
    runs_dir = Path(args.runs_dir or "runs")
    group = runs_dir / (args.name or ("multi-" + "-".join(names))[:80])
    if (group / MULTI_FILE).exists():
        raise TrainError(f"{group} holds an earlier many-games run: resume it with --resume {group}, "
                         "or pick another --name")
    sets = list(args.set)
    if args.labels is not None:
        sets.append(f"query.label_budget={args.labels}")
    experiments = []
    device = experiment.device_changes(getattr(args, "device", None) or "auto")
    if device.get("rl", {}).get("num_gpus_per_learner"):  # the games share the GPU: each learner asks for 1/N
        device["rl"]["num_gpus_per_learner"] = 1.0 / len(envs)
    for i, (env_id, name) in enumerate(zip(envs, names)):
        cfg = experiment.resolve(env_id, args.preset, args.config, sets, name=name, runs_dir=str(group),
                                 max_env_steps=args.steps, labelers=args.labelers)
        if device:
            cfg = configs.apply(cfg, device)
        if getattr(args, "goal", None):
            cfg = configs.apply(cfg, {"env": {"goal_text": args.goal}})
        # one seed per game, so that two copies of a game are two different experiments
        cfg = replace(cfg, run=replace(cfg.run, seed=(args.seed if args.seed is not None else cfg.run.seed) + i))
        if cfg.query.initial > cfg.query.label_budget:
            cfg = replace(cfg, query=replace(cfg.query, initial_labels=cfg.query.label_budget))
        experiments.append(GroupExperiment(name, cfg, (group / name).resolve()))
    for g in experiments:
        g.run_dir.mkdir(parents=True, exist_ok=True)
        configs.save(g.cfg, g.run_dir / "config.yaml")
    (group / MULTI_FILE).write_text(json.dumps(
        {"experiments": [{"name": g.name, "env_id": g.cfg.env.env_id} for g in experiments],
         "created": time.time()}, indent=2))
    return group.resolve(), experiments


# ---- one trial: one game ------------------------------------------------------------------------


class GroupTrainer(Trainer):
    """A `Trainer` inside a Tune trial: its own reward service, the shared query service, and no
    labelers of its own (the driver's pool answers every game)."""

    def start_labelers(self) -> None:
        self.say("labelers: the shared pool of the many-games driver")


def _trial(config: dict, shared: dict) -> None:
    """The Tune function trainable of one game (runs in the trial's Ray worker process)."""
    from ray import tune

    name = config["experiment"]
    run_dir = Path(shared["run_dirs"][name])
    cfg = experiment.load(str(run_dir / "config.yaml"))
    if shared.get("node_host"):  # a multi-node cluster: the query service must reach this node
        import ray.util

        # the cluster's private network: the per-game services must be reachable from the other nodes
        cfg = replace(cfg, run=replace(cfg.run, host=ray.util.get_node_ip_address(), insecure=True))
    resume = (run_dir / "state.json").exists()
    logf = open(run_dir / "train.log", "a", buffering=1)

    def say(line: str) -> None:
        logf.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    fault = shared.get("fault") or {}

    def on_iteration(row: dict) -> None:
        tune.report({k: float(v) for k, v in row.items() if isinstance(v, numbers.Real)})
        if fault.get("experiment") == name and row["iteration"] >= int(fault.get("after_iteration", 1)):
            # Fault injection (tests, drills): the process dies once, after a checkpoint exists.
            marker = run_dir / FAULT_MARKER
            if not marker.exists() and (run_dir / "state.json").exists():
                marker.write_text(json.dumps({"iteration": row["iteration"], "env_steps": row["env_steps"]}))
                say(f"fault injection: the process of {name} exits now (iteration {row['iteration']})")
                logf.flush()
                os._exit(3)

    say(f"trial of {name} starting ({'resuming' if resume else 'fresh'}) in pid {os.getpid()}")
    trainer = GroupTrainer(cfg, run_dir, resume=resume, query_address=shared["query_address"],
                          query_token=shared["tokens"][name], out=say, on_iteration=on_iteration)
    import torch

    torch.set_num_threads(1)  # the trial holds one CPU for its learner and reward model (see _resources)
    try:
        summary = trainer.run()
        say(f"done: {summary['iterations']} iterations, {summary['env_steps']:,} env steps")
    except BaseException as e:
        say(f"failed: {type(e).__name__}: {e}")
        raise
    finally:
        trainer.close()
        logf.close()


def _resources(experiments: dict[str, GroupExperiment]) -> Callable[[dict], Any]:
    """Per-trial placement group: the trial's process (learner, reward model) plus its env runners
    and remote learners; the learner's GPU share (`rl.num_gpus_per_learner`) goes where it runs."""
    from ray import tune

    def request(config: dict) -> Any:
        rl = experiments[config["experiment"]].cfg.rl
        gpu = {"GPU": rl.num_gpus_per_learner} if rl.num_gpus_per_learner else {}
        trial = {"CPU": 1, **(gpu if rl.num_learners == 0 else {})}
        return tune.PlacementGroupFactory([trial] + [{"CPU": 1}] * rl.num_env_runners
                                          + [{"CPU": 1, **gpu}] * rl.num_learners)

    return request


# ---- the driver ---------------------------------------------------------------------------------


def _status_callback(states: dict) -> Any:
    from ray import tune

    class Status(tune.Callback):
        """Trial states for the live table (driver side)."""

        def _set(self, trial: Any, state: str) -> None:
            states[trial.config.get("experiment", trial.trial_id)] = (state, int(trial.num_failures))

        def on_trial_start(self, iteration, trials, trial, **info):
            self._set(trial, "running")

        def on_trial_recover(self, iteration, trials, trial, **info):
            self._set(trial, "restarting")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._set(trial, "FAILED")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._set(trial, "done")

    return Status()


class MultiRunner:
    """Runs `experiments` (one per game) at once on the Ray cluster with one shared query service and labeler pool."""

    def __init__(self, experiments: list[GroupExperiment], group_dir: Path, *, query_address: str | None = None,
                 query_token: str | None = None, ray_address: str | None = None, max_failures: int = 3,
                 table_every: float = 5.0, out: Callable[[str], None] | None = None,
                 fault: dict | None = None) -> None:
        if not experiments:
            raise TrainError("no games to run")
        self.experiments = {g.name: g for g in experiments}
        self.group_dir = Path(group_dir).resolve()
        self.query_address = query_address
        self.query_token = query_token or ""
        self.ray_address = ray_address
        self.max_failures = max_failures
        self.table_every = table_every
        self.say = out or (lambda s: print(s, flush=True))
        self.fault = fault
        self.first = experiments[0].cfg
        self.qcore = None
        self.query_server = None
        self.labeler_token = ""
        self.states: dict[str, tuple[str, int]] = {g.name: ("pending", 0) for g in experiments}
        self.corr: dict[str, float] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._owns_ray = False
        self._last_corr = 0.0

    # -- services and labelers ----------------------------------------------------------------
    def _host(self) -> str:
        host = self.first.run.host
        if host not in LOOPBACK and not self.first.run.insecure:
            raise TrainError(f"run.host={host} is reachable from other machines and the embedded query service "
                             "has no TLS: keep 127.0.0.1 and tunnel to it (deploy/README.md), or add --set "
                             "run.insecure=true on a network you trust")
        if self.ray_address and self.ray_address != "local" and host in LOOPBACK:
            import ray.util

            return ray.util.get_node_ip_address()  # trials on other nodes must reach the service
        return host

    def start_query_service(self) -> dict[str, str]:
        """The shared query service (embedded unless --query-address); producer tokens per game."""
        names = list(self.experiments)
        if self.query_address:
            if not self.query_token:
                raise TrainError("--query-address needs --query-token (a producer token allowed for every "
                                 "game: rlhp token create --role producer)")
            return {n: self.query_token for n in names}
        from query_service.core import QueryService
        from query_service.server import serve
        from reward_service.client import RewardClient

        # The default config of the service; each game's learner reports its own label budget.
        self.qcore = QueryService(self.group_dir, self.first.query, reward=None, seed=self.first.run.seed,
                                  reward_factory=RewardClient)
        self.qcore.start()
        self.query_server = serve(self.qcore, host=self._host(), port=self.first.run.query_port)
        self.query_address = self.query_server.address
        self.say(f"query service at {self.query_address} (shared by {len(names)} games), "
                 f"labels in {self.group_dir / 'labels.sqlite'}")
        return {n: run_token(self.qcore, token_dir(self.group_dir), f"actors-{n}", "producer", [n])
                for n in names}

    def start_labelers(self) -> None:
        names = list(self.experiments)
        self.labeler_token, threads = start_labelers(
            self.qcore, self.query_address, names, self.first.run.labelers, self.first.teacher,
            self.first.run.seed, self._stop, self.say, token_dir=token_dir(self.group_dir))
        self._threads.extend(threads)
        if threads:
            self.say(f"labelers: {len(threads)} synthetic teacher(s) answering all games")

    # -- the live table -----------------------------------------------------------------------
    def _segment_corr(self, name: str, n: int = 32) -> float:
        """corr(predicted, true) segment returns over the game's recent segments, scored by its own
        reward service (only with the embedded query service: it holds the segments)."""
        from learner.diagnostics import segment_metrics

        backend = self.qcore.reward_for(name) if self.qcore is not None else None
        if backend is None or not self.qcore.reward_address(name):
            return math.nan
        return segment_metrics(self.qcore, name, backend, n=n)["policy_corr"]

    def refresh_corr(self) -> dict[str, float]:
        """Score every game's recent segments now (`corr` of the table; NaN where unknown)."""
        self._last_corr = time.time()
        for name in self.experiments:
            try:
                self.corr[name] = self._segment_corr(name)
            except Exception:  # noqa: BLE001 — a game's reward service may be restarting
                self.corr[name] = math.nan
        return dict(self.corr)

    def table(self) -> str:
        """The live table; the correlations are refreshed at most every max(10 s, table_every)."""
        from learner.status import run_table

        if self.qcore is not None and time.time() - self._last_corr > max(10.0, self.table_every):
            self.refresh_corr()
        lines = [run_table([g.run_dir for g in self.experiments.values()]), ""]
        parts = []
        for name in self.experiments:
            state, failures = self.states.get(name, ("pending", 0))
            part = f"{name}: {state}" + (f" ({failures} restart{'s' * (failures != 1)})" if failures else "")
            c = self.corr.get(name, math.nan)
            if not math.isnan(c):
                part += f", corr {c:.2f} (query service, recent segments)"
            parts.append(part)
        lines.append("games: " + "; ".join(parts))
        return "\n".join(lines)

    def _table_loop(self) -> None:
        while not self._stop.wait(self.table_every):
            try:
                text = self.table()
            except Exception as e:  # noqa: BLE001
                text = f"(table unavailable: {type(e).__name__}: {e})"
            if sys.stdout.isatty():
                text = "\033[2J\033[H" + text
            self.say(text)

    # -- run ----------------------------------------------------------------------------------
    def start_ray(self) -> None:
        import ray

        if ray.is_initialized():
            return
        need = sum(1 + g.cfg.rl.num_env_runners + g.cfg.rl.num_learners for g in self.experiments.values())
        if self.ray_address:
            ray.init(address=self.ray_address, log_to_driver=False)
        else:
            # every game at once, even on a small machine (the cores are shared, not reserved)
            init_local_ray(include_dashboard=False, _node_ip_address="127.0.0.1",
                           num_cpus=max(os.cpu_count() or 2, need), log_to_driver=False,
                           configure_logging=True, logging_level=logging.WARNING)
        self._owns_ray = True

    def run(self) -> dict[str, dict]:
        """Train every game; returns {game: {env_steps, iteration, error}}."""
        from ray import tune

        self.start_ray()
        tokens = self.start_query_service()
        self.start_labelers()
        shared = dict(run_dirs={n: str(g.run_dir) for n, g in self.experiments.items()},
                      query_address=self.query_address, tokens=tokens, fault=self.fault,
                      node_host=bool(self.ray_address and self.ray_address != "local"))
        trainable = tune.with_resources(tune.with_parameters(_trial, shared=shared), _resources(self.experiments))
        tuner = tune.Tuner(
            trainable,
            param_space={"experiment": tune.grid_search(list(self.experiments))},
            tune_config=tune.TuneConfig(max_concurrent_trials=len(self.experiments), reuse_actors=False),
            run_config=tune.RunConfig(
                name=time.strftime("tune-%Y%m%d-%H%M%S"), storage_path=str(self.group_dir / "tune"),
                failure_config=tune.FailureConfig(max_failures=self.max_failures),
                callbacks=[_status_callback(self.states)], verbose=0))
        self.say(f"training {len(self.experiments)} games at once: " + ", ".join(
            f"{n} ({g.cfg.env.env_id})" for n, g in self.experiments.items())
                 + f"; logs in {self.group_dir}/<game>/train.log")
        th = threading.Thread(target=self._table_loop, name="table", daemon=True)
        th.start()
        self._threads.append(th)
        results = tuner.fit()
        errors = {}
        for r in results:
            if r.config and r.error is not None:
                errors[r.config["experiment"]] = f"{type(r.error).__name__}: {r.error}"
        summary = {}
        for name, g in self.experiments.items():
            state_path = g.run_dir / "state.json"
            state = json.loads(state_path.read_text()) if state_path.exists() else {}
            summary[name] = dict(env_steps=int(state.get("env_steps", 0)), iteration=int(state.get("iteration", 0)),
                                 error=errors.get(name, ""), restarts=self.states.get(name, ("", 0))[1],
                                 run_dir=str(g.run_dir))
        try:
            self.say(self.table())
        except Exception:  # noqa: BLE001
            pass
        return summary

    def close(self) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(timeout=5)
        if self.query_server is not None:
            self.query_server.stop(0.5)
        if self.qcore is not None:
            self.qcore.close()
        if self._owns_ray:
            import ray

            ray.shutdown()


def main_from_args(args: argparse.Namespace) -> int:
    """`rlhp train` with several --env (or --resume of a many-games group)."""
    if args.reward_address:
        print("rlhp train: --reward-address cannot be shared by several games (each trains its own "
              "reward model)", file=sys.stderr)
        return 2
    try:
        group, experiments = plan(args)
    except (TrainError, configs.ConfigError, ValueError, OSError, KeyError) as e:
        print(f"rlhp train: {e}", file=sys.stderr)
        return 2
    runner = MultiRunner(experiments, group, query_address=args.query_address, query_token=args.query_token,
                         ray_address=args.address)
    try:
        summary = runner.run()
    except TrainError as e:
        print(f"rlhp train: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: every game resumes from its last checkpoint (rlhp train --resume {group})",
              file=sys.stderr)
        return 130
    finally:
        runner.close()
    failed = {n: s for n, s in summary.items() if s["error"]}
    for name, s in summary.items():
        print(f"{name}: {s['iteration']} iterations, {s['env_steps']:,} env steps"
              + (f", {s['restarts']} restart(s)" if s["restarts"] else "")
              + (f" — FAILED: {s['error']}" if s["error"] else ""))
    print(f"group directory {group} (continue with rlhp train --resume {group})")
    return 1 if failed else 0
