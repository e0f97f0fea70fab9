"""`rlhp train`: train an agent from preferences only.

One command runs the whole loop of `docs/architecture.md` on one machine: a local Ray cluster, the reward
service and the query service on loopback ports (SQLite under `runs/<name>/`), the synthetic teacher
(or humans through `rlhp label`), and RLlib PPO whose rewards are replaced by the learned reward.

The schedule (paper §2.2): random-policy segments → initial comparisons → reward-model pretraining
→ RL on the learned reward, reporting env steps to the query service whose label schedule decays
∝ N₀/(T+N₀). The run stops at its step budget. Everything needed to resume lives in the run
directory: `config.yaml`, `policy/` (RLlib checkpoint), `reward/reward_model.pt`,
`labels.sqlite` (labels, queries, schedule position), `tokens/` and `state.json`
(`learner/runs.py`).

Several `--env` (or `--resume` of a many-games group) run `learner.multi.MultiRunner`; one runs
`learner.train.Trainer`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from dataclasses import replace
from pathlib import Path

from learner import configs, experiment, multi
from learner.experiment import ExperimentConfig
from learner.presets import PRESETS
from learner.runs import Stopped, TrainError, library_logs_to
from learner.train import Trainer
from rlhp.types import Unavailable


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rlhp train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__,
        epilog="examples:\n"
               "  rlhp train --env ALE/Pong-v5                     # synthetic teacher, all on this machine\n"
               "  rlhp train --env Hopper-v5 --labelers human      # prints the labeling command and waits\n"
               "  rlhp train --env rlhp/FixedCartPole-v0 --preset smoke\n"
               "  rlhp train --resume runs/pong-v5                 # continue where it stopped\n")
    p.add_argument("--env", action="append",
                   help="gymnasium id, e.g. ALE/Pong-v5, Hopper-v5, rlhp/FixedCartPole-v0; give several "
                        "(--env A --env B) to train one experiment per game at once (learner/multi.py)")
    p.add_argument("--preset", choices=PRESETS,
                   help="settings preset (default: from the env: atari, mujoco or classic)")
    p.add_argument("--config", help="YAML/TOML file overriding any config field")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override one field, e.g. --set reward.members=5 --set rl.num_env_runners=4")
    p.add_argument("--name", help="run name (directory under --runs-dir); default from the env id")
    p.add_argument("--runs-dir", default=None, help="where run directories go (default: runs)")
    p.add_argument("--steps", type=int, help="env-step budget (run.max_env_steps)")
    p.add_argument("--labels", type=int, help="label budget (query.label_budget)")
    p.add_argument("--labelers", choices=("synthetic", "human"), help="who answers queries")
    p.add_argument("--seed", type=int)
    p.add_argument("--goal", metavar="TEXT",
                   help="the task in words, shown to labelers above the clips (env.goal_text; default per "
                        "env family, e.g. Pong: \"win points ...\", Hopper: \"move forward fast without falling\")")
    p.add_argument("--device",
                   help="where the policy learner and the reward model compute: auto (the default for a new run: "
                        "cuda when torch sees a GPU, else cpu), cpu, cuda, cuda:N (the reward model's GPU; RLlib "
                        "places the learner); a resumed run keeps its saved device unless this is given")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--address", help="join an existing Ray cluster (e.g. auto) instead of a local one")
    p.add_argument("--reward-address", help="use a running reward service (HOST:PORT)")
    p.add_argument("--query-address", help="use a running query service (HOST:PORT)")
    p.add_argument("--query-token", help="producer token for --query-address")
    return p


def config_from_args(args: argparse.Namespace) -> tuple[ExperimentConfig, Path, bool]:
    cfg, run_dir, resume = _config_from_args(args)
    device = getattr(args, "device", None)
    at_default = cfg.reward.device == "cpu" and not cfg.rl.num_gpus_per_learner
    if device is None and (resume or not at_default):
        return cfg, run_dir, resume  # a resumed run, or one whose config chose a device, keeps it
    changes = experiment.device_changes(device or "auto")
    return (configs.apply(cfg, changes) if changes else cfg), run_dir, resume


def _config_from_args(args: argparse.Namespace) -> tuple[ExperimentConfig, Path, bool]:
    if args.resume:
        run_dir = Path(args.resume)
        saved = run_dir / "config.yaml"
        if not saved.exists():
            raise TrainError(f"{run_dir} is not a run directory (no config.yaml)")
        cfg = experiment.load(str(saved))
        if args.steps:
            cfg = configs.apply(cfg, {"run": {"max_env_steps": args.steps},
                                      "query": {"total_env_steps": float(args.steps)}})
        if args.goal:
            cfg = configs.apply(cfg, {"env": {"goal_text": args.goal}})
        return cfg, run_dir, True
    if not args.env:
        raise TrainError("give --env (e.g. --env ALE/Pong-v5) or --resume RUN_DIR")
    sets = list(args.set)
    if args.labels is not None:
        sets.append(f"query.label_budget={args.labels}")
    env = args.env[0] if isinstance(args.env, list) else args.env
    cfg = experiment.resolve(env, args.preset, args.config, sets, name=args.name,
                             runs_dir=args.runs_dir, max_env_steps=args.steps,
                             labelers=args.labelers, seed=args.seed)
    if args.goal:
        cfg = configs.apply(cfg, {"env": {"goal_text": args.goal}})
    if cfg.query.initial > cfg.query.label_budget:
        cfg = replace(cfg, query=replace(cfg.query, initial_labels=cfg.query.label_budget))
    run_dir = Path(cfg.run.runs_dir) / cfg.experiment
    if (run_dir / "state.json").exists():
        raise TrainError(f"{run_dir} holds an earlier run: resume it with --resume {run_dir}, "
                         "or pick another --name")
    return cfg, run_dir, False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if multi.wanted(args):  # several --env, or --resume of a many-games run
        return multi.main_from_args(args)
    try:
        cfg, run_dir, resume = config_from_args(args)
    except (TrainError, configs.ConfigError, ValueError) as e:
        print(f"rlhp train: {e}", file=sys.stderr)
        return 2
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        configs.save(cfg, run_dir / "config.yaml")
        import ray.rllib  # noqa: F401 - Ray and RLlib set up their stderr loggers on import; re-route them

        library_logs_to(run_dir / "logs" / "driver.log")
    except OSError as e:  # a read-only or full disk
        print(f"rlhp train: cannot write the run directory {run_dir}: {e.strerror or e}", file=sys.stderr)
        return 2
    trainer = Trainer(cfg, run_dir, resume=resume, ray_address=args.address,
                      reward_address=args.reward_address, query_address=args.query_address,
                      query_token=args.query_token)
    try:
        summary = trainer.run()
    except TrainError as e:
        print(f"rlhp train: {e}", file=sys.stderr)
        return 1
    except (Unavailable, OSError) as e:  # the disk filled up or turned read-only during the run
        print(f"rlhp train: {e}; stopped at iteration {trainer.iteration} (the last checkpoint is kept: "
              f"continue with --resume {run_dir} once the run directory is writable)", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (learner.runs.Stopped)
        why = "stopped by SIGTERM" if isinstance(e, Stopped) else "interrupted"
        print(f"{why}: writing a checkpoint", file=sys.stderr)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the checkpoint short
        trainer.checkpoint()
        print(f"checkpoint written at iteration {trainer.iteration}, {trainer.env_steps:,} env steps; "
              f"continue with: rlhp train --resume {run_dir}", file=sys.stderr)
        return 143 if isinstance(e, Stopped) else 130
    finally:
        trainer.close()
    print(f"done: {summary['iterations']} iterations, {summary['env_steps']:,} env steps; "
          f"run directory {summary['run_dir']} (rlhp plot {summary['run_dir']}; "
          f"rlhp evaluate {summary['run_dir']})")
    return 0
