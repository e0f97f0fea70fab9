"""True return against wall-clock seconds for runs of `label_efficiency.py` (how presets are chosen).

    python benchmarks/label_efficiency.py --tasks hopper --arms true --seeds 2 --steps 100000 --out /tmp/old
    python benchmarks/label_efficiency.py --tasks hopper --arms true --seeds 2 --steps 250000 --out /tmp/new \\
        --set rl.num_envs_per_env_runner=8 --set rl.overrides.minibatch_size=256 --name v8mb256
    python benchmarks/preset_curves.py /tmp/old/results.json /tmp/new/results.json --png docs/benchmarks/hopper_presets.png

Prints, per arm and seed, the true return (mean of the last 3 reported values) reached after 60, 120, …
seconds and after 50k, 100k, … env steps, and draws both curves (return vs wall seconds, return vs
env steps). The true-reward arm's iterations in which no episode ended report no return (NaN) and
are skipped; the rlhp arms' rows (from `metrics.csv`) repeat the last mean there instead.

`--run ENV_ID` makes such a curve for any env (Atari too): RLlib on the true reward with the setup
`rlhp train --env ENV_ID` uses (`--set rl.…` changes it), for `--seconds` of wall clock, appended
to the results file given:

    python benchmarks/preset_curves.py --run ALE/Pong-v5 --seconds 1200 --arm ppo-preset pong.json
    python benchmarks/preset_curves.py --run ALE/Pong-v5 --seconds 1200 --arm appo-16 pong.json \\
        --set rl.algo=appo --set rl.num_envs_per_env_runner=16
    python benchmarks/preset_curves.py pong.json --times 300,600,900,1200 --steps 100000,300000,900000
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def reached(rows: list[dict], key: str, x: float) -> float:
    """The return reached by `x` (seconds or env steps); NaN where the run stopped before."""
    if not rows or rows[-1][key] < 0.98 * x:
        return math.nan
    done = [r["true_return"] for r in rows if r[key] <= x and math.isfinite(r["true_return"])][-3:]
    return sum(done) / len(done) if done else math.nan


def true_run(env_id: str, seconds: float, arm: str, sets: list[str], seed: int) -> dict:
    """One true-reward run of `seconds` (see the module docstring), as a `label_efficiency.py` row."""
    import time

    import torch
    from pipeline import ray_init, setup_for, true_curve, true_reward_config  # first: it puts the project
    from learner.algo import build_algo_config  # before benchmarks/ on sys.path (query_service.py)

    torch.set_num_threads(1)
    ray_init()
    algo = true_reward_config(build_algo_config(env_id, "127.0.0.1:1", seed=seed, **setup_for(env_id, sets))).build_algo()
    t0 = time.time()
    try:
        rows = true_curve(algo, seconds=seconds, label=f"{env_id} {arm}")
    finally:
        algo.stop()
    return dict(task=env_id, arm=arm, seed=seed, steps=rows[-1]["env_steps"] if rows else 0, sets=sets,
                wall_s=time.time() - t0, rows=rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="results.json files of label_efficiency.py (with --run: the file "
                   "the run is appended to)")
    p.add_argument("--run", metavar="ENV_ID", help="first train on the true reward and append the run to RESULTS")
    p.add_argument("--seconds", type=float, default=600.0, help="wall-clock budget of --run (default 600)")
    p.add_argument("--arm", default="true", help="the run's arm name (--run)")
    p.add_argument("--set", action="append", default=[], metavar="rl.FIELD=VALUE", help="setup change (--run)")
    p.add_argument("--seed", type=int, default=1, help="seed of --run (default 1)")
    p.add_argument("--times", default="60,120,180,240,300", help="seconds to report")
    p.add_argument("--steps", default="50000,100000,150000,250000", help="env steps to report")
    p.add_argument("--png", help="write the figure here")
    args = p.parse_args(argv)
    if args.run:
        if len(args.results) != 1:
            p.error("--run takes one results file")
        path = Path(args.results[0])
        done = json.loads(path.read_text()) if path.exists() else []
        done.append(true_run(args.run, args.seconds, args.arm, args.set, args.seed))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(done))
    times = [float(t) for t in args.times.split(",")]
    steps = [int(s) for s in args.steps.split(",")]
    runs = [run for path in args.results for run in json.loads(Path(path).read_text())]
    head = ["arm", "seed", "wall s"] + [f"{t:.0f} s" for t in times] + [f"{s // 1000}k steps" for s in steps]
    print("| " + " | ".join(head) + " |\n|---|---|" + "---:|" * (1 + len(times) + len(steps)))
    for run in runs:
        cells = [run["arm"], str(run["seed"]), f"{run['wall_s']:.0f}"]
        cells += [f"{reached(run['rows'], 'time_s', t):.0f}" for t in times]
        cells += [f"{reached(run['rows'], 'env_steps', s):.0f}" for s in steps]
        print("| " + " | ".join(cells) + " |")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        colours: dict[str, str] = {}
        for run in runs:
            rows = [r for r in run["rows"] if math.isfinite(r["true_return"])]
            colour = colours.setdefault(run["arm"], f"C{len(colours)}")
            label = f"{run['arm']} seed {run['seed']}"
            axes[0].plot([r["time_s"] for r in rows], [r["true_return"] for r in rows], color=colour, label=label)
            axes[1].plot([r["env_steps"] for r in rows], [r["true_return"] for r in rows], color=colour, label=label)
        for ax, xlabel in zip(axes, ("wall-clock seconds", "env steps")):
            ax.set_xlabel(xlabel)
            ax.set_ylabel("true return (training episodes)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.png, dpi=80)
        print(f"figure: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
