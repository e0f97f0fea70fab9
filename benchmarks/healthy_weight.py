"""PPO on the env's own reward with its healthy bonus re-weighted, scored with the bonus at 1.

    python benchmarks/healthy_weight.py --weight 0.3 --seeds 6 --steps 150000 --out /tmp/hw.json

Why: rlhp's learned reward pays Hopper's healthy bonus at 0.1–0.5 of its true weight
(`learner.diagnostics.part_weights`; the labels rarely differ in it). This asks what that alone does
to PPO: the `mujoco` preset's PPO (the same settings as `label_efficiency.py`'s true arm) trains on
the env reward with ``healthy_reward=W``, and each episode is scored with the bonus at its default
of 1 (the trained return + (1 − W) × healthy steps), so the column compares with the true arm of
`docs/label_efficiency.md`. For envs with a ``healthy_reward`` option (Hopper, Walker2d, Ant).
Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path


def run(task: str, weight: float, seed: int, steps: int, quiet: bool) -> dict:
    import pipeline  # noqa: F401  (first: it puts the project before benchmarks/ on sys.path)
    from ray.rllib.callbacks.callbacks import RLlibCallback

    import learner.algo  # noqa: F401  (imports the query_service package before label_efficiency
    import label_efficiency as le  # puts benchmarks/, with its query_service.py, first on sys.path)

    class HealthySteps(RLlibCallback):
        def on_episode_step(self, *, episode, **kwargs):
            info = episode.get_infos(-1)
            if isinstance(info, dict) and float(info.get("reward_survive", 0.0)) > 0:
                episode.custom_data["healthy"] = episode.custom_data.get("healthy", 0) + 1

        def on_episode_end(self, *, episode, metrics_logger=None, **kwargs):
            metrics_logger.log_value("healthy_steps", float(episode.custom_data.get("healthy", 0)),
                                     reduce="mean", window=100)

    config = le.true_config(task, steps, seed, Path("/tmp"), f"{task}-healthy{weight}-s{seed}",
                            [f"env.env_opts.healthy_reward={weight}"])
    config.callbacks(HealthySteps)
    algo = config.build_algo()
    rows, total, t0 = [], 0, time.time()
    try:
        while total < steps:
            result = algo.train()["env_runners"]
            total += int(result.get("num_env_steps_sampled", 0) or 0)
            trained = float(result.get("episode_return_mean", math.nan))
            healthy = float(result.get("healthy_steps", math.nan))
            rows.append(dict(env_steps=total, trained_return=trained, healthy_steps=healthy,
                             true_return=trained + (1.0 - weight) * healthy))
            if not quiet and len(rows) % 10 == 0:
                print(f"  [{task} healthy×{weight} seed {seed}] {total:,} steps, {time.time() - t0:.0f} s, "
                      f"return (bonus 1) {rows[-1]['true_return']:.1f}", flush=True)
    finally:
        algo.stop()
    return dict(task=task, arm=f"true-healthy{weight:g}", seed=seed, steps=total, wall_s=time.time() - t0, rows=rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="hopper", choices=["hopper", "walker2d", "ant"])
    p.add_argument("--weight", type=float, default=0.3,
                   help="healthy bonus while training, in (0, 10] (default 0.3; the env's is 1; at 0 the env "
                        "would no longer say which steps are healthy)")
    p.add_argument("--seeds", type=int, default=6)
    p.add_argument("--seed0", type=int, default=1)
    p.add_argument("--steps", type=int, default=150_000)
    p.add_argument("--out", required=True, help="JSON file of the runs (rows as label_efficiency.py writes them)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if not 0.0 < args.weight <= 10.0 or args.steps < 1 or args.seeds < 1:
        p.error("--weight must be in (0, 10], --steps and --seeds ≥ 1")

    from pipeline import ray_init  # first: it puts the project before benchmarks/ on sys.path
    import torch

    import learner.algo  # noqa: F401  (imports the query_service package before label_efficiency
    from label_efficiency import final  # puts benchmarks/, with its query_service.py, first on sys.path)

    torch.set_num_threads(1)
    ray_init()
    runs = []
    print(f"| task | healthy bonus in training | seed | final return, bonus 1 | healthy steps / episode | wall s |\n"
          f"|---|---:|---:|---:|---:|---:|")
    for seed in range(args.seed0, args.seed0 + args.seeds):
        r = run(args.task, args.weight, seed, args.steps, args.quiet)
        runs.append(r)
        Path(args.out).write_text(json.dumps(runs))
        healthy = [x["healthy_steps"] for x in r["rows"] if math.isfinite(x["healthy_steps"])]
        print(f"| {args.task} | {args.weight:g} | {seed} | {final(r['rows']):.1f} | "
              f"{healthy[-1] if healthy else math.nan:.0f} | {r['wall_s']:.0f} |", flush=True)
    finals = [final(r["rows"]) for r in runs]
    print(f"\nmean final return (bonus 1) over {len(finals)} seeds: {sum(finals) / len(finals):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
