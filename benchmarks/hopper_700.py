"""Hopper-v5 from 700 synthetic labels vs PPO on the true reward (the paper's Fig. 1 setting).

    python benchmarks/hopper_700.py                        # 1M env steps, 700 labels, 3 seeds each (long!)
    python benchmarks/hopper_700.py --steps 4000 --seeds 1 --labels 40   # proves the code path (~minutes)
    python benchmarks/hopper_700.py --write-doc            # also put the table into docs/benchmarks.md

Not run in CI. For each seed:

- **rlhp**: `learner.train.Trainer` with the `mujoco` preset of `rlhp train` (embedded reward and query
  services, synthetic teacher answering from the true reward, 25% of the labels from random-policy
  segments up front, reward-model pretraining, then RLlib PPO on the learned reward, labels decaying
  ∝ N₀/(T+N₀)); `--labels` sets the budget (initial batch = budget // 4, as in the paper).
- **true**: the same `build_ppo_config(...)` (same PPO settings, model, env runners, seed) turned into
  plain PPO on the environment reward by `benchmarks.pipeline.true_reward_config`.

Both report the true return of their training episodes (mean over the last 100; Hopper episodes are
1000 steps long, `terminate_when_unhealthy=False` as everywhere in rlhp). Output under `--out`
(default `docs/hopper_700/`): `curves.png` (mean ± min/max over seeds vs env steps), `curves.json`
(every row), `table.md`. With `--write-doc` the table replaces the block between the markers
``<!-- hopper_700:begin -->`` / ``<!-- hopper_700:end -->`` in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from pipeline import ray_init, true_reward_config  # noqa: E402

ENV_ID = "Hopper-v5"
BEGIN, END = "<!-- hopper_700:begin -->", "<!-- hopper_700:end -->"


def experiment_config(steps: int, labels: int, seed: int, runs_dir: Path):
    from learner import configs, experiment

    cfg = experiment.resolve(ENV_ID, "mujoco", name=f"hopper700-s{seed}", runs_dir=str(runs_dir),
                             max_env_steps=steps, seed=seed)
    return configs.apply(cfg, {"query": {"label_budget": int(labels), "initial_labels": max(1, labels // 4)},
                               "run": {"checkpoint_every": 10**9}})


def run_rlhp(steps: int, labels: int, seed: int, runs_dir: Path) -> list[dict]:
    from learner.train import Trainer

    cfg = experiment_config(steps, labels, seed, runs_dir)
    run_dir = runs_dir / cfg.experiment
    run_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    t0 = time.time()

    def on_iteration(row: dict) -> None:
        rows.append(dict(env_steps=int(row["env_steps"]), true_return=float(row["true_return"]),
                         labels=int(row["labels"]), time_s=time.time() - t0,
                         steps_per_s=float(row["steps_per_s"]), segment_corr=float(row["segment_corr"])))

    trainer = Trainer(cfg, run_dir, out=lambda s: print(f"  [rlhp seed {seed}] {s}", flush=True),
                      on_iteration=on_iteration)
    try:
        trainer.run()
    finally:
        trainer.close()
    return rows


def run_true(steps: int, seed: int, runs_dir: Path) -> list[dict]:
    from learner.algo import build_ppo_config

    cfg = experiment_config(steps, 4, seed, runs_dir)
    rl = cfg.rl
    learned = build_ppo_config(ENV_ID, "127.0.0.1:1", algo=rl.algo, num_env_runners=rl.num_env_runners,
                               num_envs_per_env_runner=rl.num_envs_per_env_runner, num_learners=rl.num_learners,
                               env_opts=dict(cfg.env.env_opts), seed=seed, **dict(rl.overrides))
    algo = true_reward_config(learned).build_algo()
    rows: list[dict] = []
    t0 = time.time()
    total = 0
    try:
        while total < steps:
            t = time.time()
            result = algo.train()
            n = int(result["env_runners"].get("num_env_steps_sampled", 0) or 0)
            total += n
            ret = float(result["env_runners"].get("episode_return_mean", math.nan))
            rows.append(dict(env_steps=total, true_return=ret, labels=0, time_s=time.time() - t0,
                             steps_per_s=n / max(time.time() - t, 1e-9)))
            print(f"  [true seed {seed}] {total:,} steps, true return {ret:.1f}, "
                  f"{rows[-1]['steps_per_s']:.0f} steps/s", flush=True)
    finally:
        algo.stop()
    return rows


def _final(rows: list[dict], frac: float = 0.1) -> float:
    """Mean true return over the last `frac` of the run's iterations (at least one)."""
    vals = [r["true_return"] for r in rows if not math.isnan(r["true_return"])]
    if not vals:
        return math.nan
    k = max(1, int(len(vals) * frac))
    return sum(vals[-k:]) / k


def plot(curves: dict[str, list[list[dict]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, color in (("true", "tab:gray"), ("rlhp", "tab:blue")):
        runs = [r for r in curves.get(name, []) if r]
        if not runs:
            continue
        grid = np.linspace(0, min(r[-1]["env_steps"] for r in runs), 100)
        ys = []
        for r in runs:
            x = np.array([row["env_steps"] for row in r], dtype=float)
            y = np.array([row["true_return"] for row in r], dtype=float)
            ok = ~np.isnan(y)
            ys.append(np.interp(grid, x[ok], y[ok], left=np.nan) if ok.any() else np.full_like(grid, np.nan))
        ys = np.array(ys)
        label = "PPO, true reward" if name == "true" else "rlhp, learned reward"
        ax.plot(grid, np.nanmean(ys, 0), color=color, label=f"{label} ({len(runs)} seeds)")
        if len(runs) > 1:
            ax.fill_between(grid, np.nanmin(ys, 0), np.nanmax(ys, 0), color=color, alpha=0.2)
    ax.set_xlabel("env steps")
    ax.set_ylabel("true episode return (training episodes)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(curves: dict[str, list[list[dict]]], args: argparse.Namespace, wall: dict[str, list[float]]) -> str:
    lines = [f"Hopper-v5, {args.steps:,} env steps, {args.labels} synthetic labels, seeds "
             f"{', '.join(str(args.seed0 + i) for i in range(args.seeds))}; true return of training episodes "
             "(mean of the last 10% of iterations).", "",
             "| run | seed | env steps | final true return | labels | wall s | env steps/s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name in ("rlhp", "true"):
        for i, rows in enumerate(curves.get(name, [])):
            if not rows:
                continue
            w = wall[name][i]
            lines.append(f"| {name} | {args.seed0 + i} | {rows[-1]['env_steps']:,} | {_final(rows):.1f} | "
                         f"{rows[-1]['labels'] if name == 'rlhp' else '–'} | {w:.0f} | "
                         f"{rows[-1]['env_steps'] / max(w, 1e-9):.0f} |")
    return "\n".join(lines)


def write_doc(text: str, doc: Path) -> None:
    body = doc.read_text()
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in body and END in body:
        body = body[:body.index(BEGIN)] + block + body[body.index(END) + len(END):]
    else:
        body = body.rstrip() + "\n\n" + block + "\n"
    doc.write_text(body)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1_000_000, help="env steps per run (default 1,000,000)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per config (default 3)")
    p.add_argument("--seed0", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--labels", type=int, default=700, help="label budget of the rlhp runs (default 700)")
    p.add_argument("--only", choices=["rlhp", "true"], help="run only one of the two configs")
    p.add_argument("--out", default=str(ROOT / "docs" / "hopper_700"), help="output folder")
    p.add_argument("--runs-dir", help="run directories of the rlhp runs (default: a temporary folder)")
    p.add_argument("--write-doc", action="store_true", help="put the table into docs/benchmarks.md")
    args = p.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = Path(args.runs_dir) if args.runs_dir else Path(tempfile.mkdtemp(prefix="rlhp_hopper700_"))
    import ray

    ray_init(2)
    curves: dict[str, list[list[dict]]] = {"rlhp": [], "true": []}
    wall: dict[str, list[float]] = {"rlhp": [], "true": []}
    try:
        for i in range(args.seeds):
            seed = args.seed0 + i
            for name in ("rlhp", "true"):
                if args.only and args.only != name:
                    continue
                t0 = time.time()
                rows = run_rlhp(args.steps, args.labels, seed, runs_dir) if name == "rlhp" else \
                    run_true(args.steps, seed, runs_dir)
                curves[name].append(rows)
                wall[name].append(time.time() - t0)
                (out / "curves.json").write_text(json.dumps(dict(args=vars(args), curves=curves, wall=wall)))
    finally:
        ray.shutdown()
        if not args.runs_dir:
            shutil.rmtree(runs_dir, ignore_errors=True)
    title = f"Hopper-v5: {args.labels} synthetic labels vs true reward"
    plot(curves, out / "curves.png", title)
    text = table(curves, args, wall)
    text += f"\n\n![learning curves]({os.path.relpath(out / 'curves.png', ROOT / 'docs')})"
    (out / "table.md").write_text(text + "\n")
    print(text)
    if args.write_doc:
        write_doc(text, ROOT / "docs" / "benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
