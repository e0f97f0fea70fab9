"""Learning from preferences, measured: reliability over seeds and label efficiency against true-reward PPO.

    python benchmarks/label_efficiency.py --task cartpole --seeds 10           # the reliability sweep (~20 min)
    python benchmarks/label_efficiency.py --tasks hopper,halfcheetah,reacher   # the paper's MuJoCo table (hours)
    python benchmarks/label_efficiency.py --tasks hopper --labels 700 --teacher beta=1 --name beta1
    python benchmarks/label_efficiency.py --tasks hopper --write-doc           # also update docs/label_efficiency.md
Not run in CI (CI keeps one seed of the CartPole sweep: `tests/learner/test_train.py`).

**cartpole** (`rlhp/FixedCartPole-v0`, the `classic` preset as it is: ≤ 200 labels, 40k env steps): a row
per seed: the greedy policy's true return (mean of 5 episodes, of 200; a seed passes at ≥ 160), labels, the
share of EQUAL answers, the final reward model's corr(predicted, true) over the policy's and over
random-policy segments, and wall time.

**MuJoCo tasks** (`*-v5`, the `mujoco` preset): per task, PPO on the true reward (`true`) against rlhp with
each label budget of `--labels` (synthetic teacher, 25% of the budget from random-policy segments up
front), same PPO settings and env-step budget. A run's score: the mean true return of its last evaluations
(10%, ≥ 3; an evaluation = the training episodes that ended in an iteration), as a % of the true-reward
arm's gain at the same steps (and, with `--arms true-std` run, of the stronger of it and PPO on the true
reward standardised as the learned one is). Curves (mean and range over seeds): `<out>/<task>.png`; every
row: `<out>/results.json`, saved as each run ends: a later invocation with the same `--out` skips the runs
that are there, so a sweep can stop and go on. Run it alone on the machine, one at a time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from pipeline import ray_init, true_curve, true_reward_config  # noqa: E402
from actors.envs import default_random_action_scales  # noqa: E402

CARTPOLE = "rlhp/FixedCartPole-v0"
CARTPOLE_PASS = 160.0
MUJOCO = {"hopper": "Hopper-v5", "halfcheetah": "HalfCheetah-v5", "walker2d": "Walker2d-v5",
          "swimmer": "Swimmer-v5", "reacher": "Reacher-v5", "idp": "InvertedDoublePendulum-v5",
          "ant": "Ant-v5"}
DEFAULT_STEPS = {"hopper": 1_000_000, "halfcheetah": 1_000_000, "walker2d": 1_000_000,
                 "swimmer": 1_000_000, "reacher": 300_000, "idp": 300_000, "ant": 1_000_000}
DOC = ROOT / "docs" / "label_efficiency.md"
STD_ARM = "true-std"
"""PPO on the env reward standardised as rlhp's learned reward is (zero mean, std 1): the reference
that leaves the reward's scale out of the comparison."""
PRESET_VARIANT = "mix2"  # the arms of tasks with the preset's mixed random action scales (actors.envs)


# --------------------------------------------------------------------------------------------
# One run of each kind


def _trainer_run(cfg: Any, run_dir: Path, tag: str, quiet: bool) -> tuple[list[dict], float]:
    from learner import configs
    from learner.train import Trainer

    run_dir.mkdir(parents=True, exist_ok=True)
    configs.save(cfg, run_dir / "config.yaml")
    rows: list[dict] = []
    t0 = time.time()

    def on_iteration(row: dict) -> None:
        rows.append({k: (float(v) if isinstance(v, (int, float)) else v) for k, v in row.items()})

    out = (lambda s: None) if quiet else (lambda s: print(f"  [{tag}] {s}", flush=True))
    trainer = Trainer(cfg, run_dir, out=out, on_iteration=on_iteration)
    try:
        trainer.run()
    finally:
        trainer.close()
    return rows, time.time() - t0


def answer_counts(run_dir: Path) -> dict[str, int]:
    from rlhp.types import Preference

    with sqlite3.connect(run_dir / "labels.sqlite") as c:
        counts = dict(c.execute("SELECT answer, COUNT(*) FROM labels GROUP BY answer").fetchall())
    return {Preference(k).name.lower(): int(v) for k, v in counts.items()}


def cartpole_run(seed: int, runs_dir: Path, quiet: bool, sets: list[str] | None = None) -> dict:
    from learner import experiment
    from learner.diagnostics import reward_fit
    from learner.evaluate import evaluate

    cfg = experiment.resolve(CARTPOLE, "classic", runs_dir=str(runs_dir), name=f"cartpole-s{seed}", seed=seed,
                             sets=sets or None)
    run_dir = runs_dir / cfg.experiment
    rows, wall = _trainer_run(cfg, run_dir, f"cartpole seed {seed}", quiet)
    returns = evaluate(run_dir, episodes=5)
    answers = answer_counts(run_dir)
    fit = reward_fit(run_dir, episodes=4)
    return dict(task="cartpole", arm="rlhp", seed=seed, greedy_return=float(sum(returns) / len(returns)),
                returns=returns, labels=sum(answers.values()), answers=answers, wall_s=wall,
                env_steps=int(rows[-1]["env_steps"]) if rows else 0, fit=fit, rows=rows)


def mujoco_config(env_id: str, steps: int, labels: int, seed: int, runs_dir: Path, name: str,
                  teacher: dict[str, float], sets: list[str] | None = None):
    from learner import configs, experiment

    cfg = experiment.resolve(env_id, "mujoco", name=name, runs_dir=str(runs_dir), max_env_steps=steps, seed=seed,
                             sets=sets or None)
    return configs.apply(cfg, {"query": {"label_budget": int(labels), "initial_labels": max(1, labels // 4)},
                               "teacher": dict(teacher), "run": {"checkpoint_every": 10**9}})


def mujoco_rlhp(task: str, steps: int, labels: int, seed: int, runs_dir: Path, teacher: dict[str, float],
                quiet: bool, sets: list[str] | None = None, suffix: str = "") -> dict:
    from learner.diagnostics import reward_fit

    name = f"{task}-l{labels}{suffix}-n{steps}-s{seed}"
    cfg = mujoco_config(MUJOCO[task], steps, labels, seed, runs_dir, name, teacher, sets)
    rows, wall = _trainer_run(cfg, runs_dir / name, name, quiet)
    keep = ("env_steps", "true_return", "labels", "time_s", "steps_per_s", "segment_corr",
            "policy_corr", "step_corr", "predicted_return", "reward_val_accuracy")
    # Reacher: 50-step episodes, one segment each; 20 episodes give enough segments for a correlation
    fit = reward_fit(runs_dir / name, episodes=20 if task == "reacher" else 2)
    return dict(task=task, arm=f"rlhp-{labels}{suffix}", seed=seed, steps=steps, sets=list(sets or []), wall_s=wall, answers=answer_counts(runs_dir / name),
                fit=fit, rows=[{k: r.get(k, math.nan) for k in keep} for r in rows])


def true_config(task: str, steps: int, seed: int, runs_dir: Path, name: str, sets: list[str] | None = None,
                standardize: bool = False) -> Any:
    """RLlib's config of PPO on the env reward with the rlhp arms' settings (and their `--set`, e.g. env
    options); `standardize`: at the learned reward's scale (arm `true-std`, see `true_reward_config`)."""
    from learner.algo import build_algo_config

    rl = (cfg := mujoco_config(MUJOCO[task], steps, 4, seed, runs_dir, name, {}, sets)).rl
    return true_reward_config(build_algo_config(
        cfg.env.env_id, "127.0.0.1:1", algo=rl.algo, num_env_runners=rl.num_env_runners, num_learners=rl.num_learners,
        num_envs_per_env_runner=rl.num_envs_per_env_runner, env_opts=cfg.env_options, seed=seed, **dict(rl.overrides)),
        standardize=standardize)


def mujoco_true(task: str, steps: int, seed: int, runs_dir: Path, quiet: bool, sets: list[str] | None = None,
                suffix: str = "", standardize: bool = False) -> dict:
    """PPO on the env reward (`true_config`), as a results row."""
    algo = true_config(task, steps, seed, runs_dir, f"{task}-true{suffix}-n{steps}-s{seed}", sets, standardize).build_algo()
    t0 = time.time()
    try:
        rows = true_curve(algo, steps=steps, label=f"{task} true seed {seed}", quiet=quiet)
    finally:
        algo.stop()
    return dict(task=task, arm=f"true{suffix}", seed=seed, steps=steps, wall_s=time.time() - t0, rows=rows)


def final(rows: list[dict], frac: float = 0.1, at_least: int = 3) -> float:
    """Mean of a run's last distinct per-iteration episode means (the last `frac`, at least
    `at_least`): iterations where no episode ended (NaN in true arms, the last mean repeated in
    rlhp arms) are not evaluations, so both arms are scored on the same number of episodes."""
    returns = [math.nan] + [r["true_return"] for r in rows]
    vals = [v for p, v in itertools.pairwise(returns) if not math.isnan(v) and v != p]
    k = max(at_least, int(len(vals) * frac))
    return sum(vals[-k:]) / len(vals[-k:]) if vals else math.nan


def cartpole_table(runs: list[dict]) -> str:
    lines = ["| seed | greedy true return (of 200) | pass (≥ 160) | labels | EQUAL | corr, policy segments | "
             "corr, random segments | per-step corr | env steps | wall s |",
             "|---:|---:|:-:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(runs, key=lambda r: r["seed"]):
        f = r.get("fit") or {}
        lines.append(
            f"| {r['seed']} | {r['greedy_return']:.1f} | {'yes' if r['greedy_return'] >= CARTPOLE_PASS else 'NO'} | "
            f"{r['labels']} | {r['answers'].get('equal', 0) / max(1, r['labels']):.0%} | "
            f"{_num(f.get('policy_corr'))} | {_num(f.get('random_corr'))} | {_num(f.get('step_corr'))} | "
            f"{r['env_steps']:,} | {r['wall_s']:.0f} |")
    passed = sum(r["greedy_return"] >= CARTPOLE_PASS for r in runs)
    lines += ["", f"**{passed} of {len(runs)} seeds pass** (greedy true return ≥ {CARTPOLE_PASS:.0f}/200); "
              f"mean {sum(r['greedy_return'] for r in runs) / max(1, len(runs)):.1f}."]
    return "\n".join(lines)


def _num(v: Any, spec: str = ".2f") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _at(rows: list[dict], steps: float) -> float:
    """The true return of a curve at `steps` (linear interpolation; NaN outside it)."""
    import numpy as np

    x = np.array([r["env_steps"] for r in rows], dtype=float)
    y = np.array([r["true_return"] for r in rows], dtype=float)
    ok = ~np.isnan(y)
    if not ok.any() or steps > x[ok][-1] + 1e-9:
        return math.nan
    return float(np.interp(steps, x[ok], y[ok]))


def _is_true(arm: str) -> bool:
    return arm == "true" or arm.startswith("true-")


def _suffix(arm: str) -> str:
    """`rlhp-700-beta1` → `beta1`, `true-pen2` → `pen2`, `rlhp-700`/`true` → ``."""
    return arm[5:] if arm.startswith("true-") else (arm.split("-", 2)[2] if arm.count("-") >= 2 else "")


def _reference(arm: str, runs: list[dict]) -> str:
    """The true-reward arm an rlhp arm is scored against: `true-<suffix>` when the rlhp arm's
    suffix also changed the true arm (a `--set`, e.g. an env option), else plain `true`."""
    parts = arm.split("-", 2)  # rlhp-700[-suffix]
    if len(parts) == 3 and any(r["arm"] == f"true-{parts[2]}" for r in runs):
        return f"true-{parts[2]}"
    return "true"


def _budget(run: dict) -> int:
    """A run's env-step budget (older results without one: its last row's steps)."""
    return int(run.get("steps") or (run["rows"][-1]["env_steps"] if run["rows"] else 0))


def mujoco_table(runs: list[dict]) -> str:
    # The score of an rlhp arm: its gain over the untrained policy as a share of the true-reward
    # arm's gain, 100·(R_rlhp − R_0)/(R_true − R_0), R_0 = the true arm's first-iteration return.
    # A plain ratio R_rlhp/R_true means nothing where returns are negative (HalfCheetah, Reacher).
    lines = ["| task | arm | seeds | env steps | final true return (mean, min–max) | initial | "
             "% of true-reward PPO's gain | labels | corr, policy segments | wall s / run |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    pcts: dict[str, dict[str, float]] = {}  # arm -> task -> % of true-reward PPO
    pcts_std: dict[str, dict[str, float]] = {}  # the same against the stronger of true and true-std
    for task in sorted({r["task"] for r in runs}):
        mine = [r for r in runs if r["task"] == task]
        # one row per arm and step budget: runs of different budgets are not averaged together
        groups = sorted({(r["arm"], _budget(r)) for r in mine},
                        key=lambda g: (g[1], _suffix(g[0]), not _is_true(g[0]), g[0]))
        for arm, budget in groups:
            rr = [r for r in mine if r["arm"] == arm and _budget(r) == budget]
            # true-std is scored against plain true: what the reward's scale alone does to PPO
            ref_arm = "true" if arm == STD_ARM else _reference(arm, mine)
            true = [r for r in mine if r["arm"] == ref_arm and _budget(r) == budget]
            finals = [final(r["rows"]) for r in rr]
            steps = min(r["rows"][-1]["env_steps"] for r in rr)
            pct = "–"
            # the first iteration in which an episode ended (with 8 envs and 1,000-step episodes, the 4th)
            start = [next((x["true_return"] for x in r["rows"] if not math.isnan(x["true_return"])), math.nan)
                     for r in (rr if _is_true(arm) and arm != STD_ARM else true or rr)]
            start = [v for v in start if not math.isnan(v)]
            base = sum(start) / len(start) if start else math.nan
            value = _pct(finals, steps, true, base) if (not _is_true(arm) or arm == STD_ARM) else math.nan
            if not math.isnan(value):
                pct = f"{value:.0f}%"
                pcts.setdefault(arm, {})[task] = value
            std = [r for r in mine if r["arm"] == STD_ARM and _budget(r) == budget]
            if not _is_true(arm) and _reference(arm, mine) == "true" and std:
                # against the stronger reference of the task: the one that gained more (lower %)
                both = [v for v in (value, _pct(finals, steps, std, base)) if not math.isnan(v)]
                if both:
                    pcts_std.setdefault(arm, {})[task] = min(both)
            labels = "–" if _is_true(arm) else f"{sum(r['rows'][-1]['labels'] for r in rr) / len(rr):.0f}"
            corr = [r.get("fit", {}).get("policy_corr") for r in rr if r.get("fit")]
            corr = [c for c in corr if c is not None and not math.isnan(c)]
            lines.append(f"| {task} | {arm} | {len(rr)} | {steps:,.0f} | {sum(finals) / len(finals):.1f} "
                         f"({min(finals):.1f}–{max(finals):.1f}) | {_num(base, '.1f')} | {pct} | {labels} | "
                         f"{_num(sum(corr) / len(corr)) if corr else '–'} | "
                         f"{sum(r['wall_s'] for r in rr) / len(rr):.0f} |")
    tasks = sorted({r["task"] for r in runs})
    for arm in sorted(pcts, key=lambda a: (len(a), a)):
        got = pcts[arm]
        lines.append(f"\n**{arm}**: mean over {len(got)} of {len(tasks)} tasks "
                     f"({', '.join(sorted(got))}): **{sum(got.values()) / len(got):.0f}%** of true-reward PPO's gain"
                     f"{_robust(list(got.values()))}.")
    for arm in sorted(pcts_std, key=lambda a: (len(a), a)):
        got = pcts_std[arm]
        lines.append(f"\n**{arm}** against the stronger of `true` and `{STD_ARM}` per task: mean over "
                     f"{len(got)} tasks ({', '.join(f'{t} {v:.0f}%' for t, v in sorted(got.items()))}): "
                     f"**{sum(got.values()) / len(got):.0f}%**{_robust(list(got.values()))}.")
    return "\n".join(lines + _variant_lines(pcts, pcts_std))


def _variant_lines(pcts: dict, pcts_std: dict, variant: str = PRESET_VARIANT) -> list[str]:
    """rlhp-N as the preset runs it now: its `-variant` runs in place of the plain ones on the tasks
    whose preset has mixed random action scales (`actors.envs.MIXED_ACTION_SCALES`)."""
    lines = []
    for which, table in (("of true-reward PPO's gain", pcts),
                         (f"against the stronger of `true` and `{STD_ARM}`", pcts_std)):
        for arm in sorted(a for a in table if a.count("-") == 1 and f"{a}-{variant}" in table):
            swap = {t: v for t, v in table[f"{arm}-{variant}"].items()
                    if t in table[arm] and default_random_action_scales(MUJOCO.get(t, t))}
            if swap:
                got = {**table[arm], **swap}
                each = ", ".join(f"{t} {v:.0f}%" for t, v in sorted(got.items()))
                lines.append(f"\n**{arm} as the preset runs it now** (`-{variant}` on {', '.join(sorted(swap))}), {which}: "
                             f"mean over {len(got)} tasks ({each}): **{sum(got.values()) / len(got):.0f}%**{_robust(list(got.values()))}.")
    return lines


def _pct(finals: list[float], steps: float, true: list[dict], base: float) -> float:
    """An arm's gain over `base` as a % of the `true` runs' gain, their final-window mean taken up to
    the arm's steps (NaN without a reference or when the reference did not gain)."""
    ref = [final([x for x in t["rows"] if x["env_steps"] <= steps]) for t in true]
    ref = [v for v in ref if not math.isnan(v)]
    if not ref or math.isnan(base) or sum(ref) / len(ref) <= base:
        return math.nan
    return 100 * (sum(finals) / len(finals) - base) / (sum(ref) / len(ref) - base)


def _robust(pcts: list[float]) -> str:
    """The median over tasks and the mean with each task capped at 100%: a task where the true arm
    barely gained (a small denominator) can make the plain mean say thousands of percent."""
    if len(pcts) < 2:
        return ""
    capped = sum(min(x, 100.0) for x in pcts) / len(pcts)
    return f" (median {statistics.median(pcts):.0f}%; capped at 100% per task, {capped:.0f}%)"


def plot_task(task: str, runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.2))
    arms = sorted({r["arm"] for r in runs}, key=lambda a: (a != "true", a))
    for arm in arms:
        rr = [r["rows"] for r in runs if r["arm"] == arm and r["rows"]]
        grid = np.linspace(0, min(r[-1]["env_steps"] for r in rr), 100)
        ys = np.array([[_at(r, g) if g >= r[0]["env_steps"] else np.nan for g in grid] for r in rr])
        label = ("PPO, standardised true reward" if arm == STD_ARM else f"PPO, true reward{arm[4:]}"
                 if _is_true(arm) else f"rlhp, {arm.split('-', 1)[1]} labels")
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # grid points before a run's first iteration
            mean, low, high = np.nanmean(ys, 0), np.nanmin(ys, 0), np.nanmax(ys, 0)
        line, = ax.plot(grid, mean, label=f"{label} ({len(rr)} seeds)",
                        color="black" if arm == "true" else None)
        if len(rr) > 1:
            ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.15)
    ax.set(xlabel="env steps", ylabel="true episode return (training episodes)")
    ax.set_title(f"{MUJOCO.get(task, task)}: learned reward vs true reward")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_doc(block: str, text: str) -> None:
    begin, end = f"<!-- {block}:begin -->", f"<!-- {block}:end -->"
    body = DOC.read_text() if DOC.exists() else "# Label efficiency\n"
    new = f"{begin}\n{text}\n{end}"
    if begin in body and end in body:
        body = body[:body.index(begin)] + new + body[body.index(end) + len(end):]
    else:
        body = body.rstrip() + "\n\n" + new + "\n"
    DOC.write_text(body)


def _teacher(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in ("beta", "mistake_prob", "equal_threshold", "skip_threshold", "gamma"):
            raise SystemExit(f"--teacher {item!r}: one of beta, mistake_prob, equal_threshold, skip_threshold, gamma")
        out[key] = float(value)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", "--tasks", dest="tasks", default="cartpole",
                   help=f"comma-separated: cartpole, or MuJoCo tasks {', '.join(MUJOCO)} (default cartpole)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per arm (default: 10 cartpole, 3 MuJoCo)")
    p.add_argument("--seed0", type=int, default=1, help="first seed (default 1)")
    p.add_argument("--labels", default="350,700,1400", help="label budgets of the rlhp arms (MuJoCo)")
    p.add_argument("--steps", type=int, help="env steps per MuJoCo run (default per task, e.g. 1M Hopper)")
    p.add_argument("--arms", default="true,rlhp",
                   help="comma-separated MuJoCo arms: true, rlhp, true-std (PPO on the true reward "
                        "standardised as the learned one is: zero mean, std 1), or both (= true,rlhp; the default)")
    p.add_argument("--teacher", action="append", default=[], metavar="KEY=VALUE",
                   help="synthetic teacher knob for the rlhp arms, e.g. beta=1 or mistake_prob=0.2")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="config override for the rlhp runs (as `rlhp train --set`), e.g. reward.use_actions=true")
    p.add_argument("--name", default="", help="suffix for this invocation's rlhp arms (a non-default teacher "
                                             "or --set), e.g. beta1 → arm rlhp-700-beta1")
    p.add_argument("--out", default=str(ROOT / "docs" / "label_efficiency"), help="results folder")
    p.add_argument("--runs-dir", help="run directories (default: a temporary folder)")
    p.add_argument("--write-doc", action="store_true", help="update docs/label_efficiency.md")
    p.add_argument("--quiet", action="store_true", help="no progress lines from the runs")
    args = p.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    tasks = [t.strip().lower() for t in args.tasks.split(",") if t.strip()]
    for t in tasks:
        if t != "cartpole" and t not in MUJOCO:
            p.error(f"unknown task {t!r}; one of cartpole, {', '.join(MUJOCO)}")
    teacher = _teacher(args.teacher)
    arms = ["true", "rlhp"] if args.arms == "both" else [a.strip() for a in args.arms.split(",") if a.strip()]
    if not arms or set(arms) - {"true", "rlhp", STD_ARM}:
        p.error(f"--arms {args.arms!r}: a comma-separated list of true, rlhp, {STD_ARM} (or both)")
    if STD_ARM in arms and args.set:
        p.error(f"--arms {STD_ARM} takes no --set (its arm name would not say what changed)")
    suffix = f"-{args.name}" if args.name else ("-noisy" if teacher else "-custom" if args.set else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results: list[dict] = json.loads(results_path.read_text()) if results_path.exists() else []
    runs_dir = Path(args.runs_dir) if args.runs_dir else Path(tempfile.mkdtemp(prefix="rlhp_label_eff_"))

    def done(task: str, arm: str, seed: int, steps: int | None = None) -> bool:
        # A MuJoCo run counts only at the same step budget (a shorter earlier run is not this one).
        return any(r["task"] == task and r["arm"] == arm and r["seed"] == seed
                   and (steps is None or r.get("steps") == steps) for r in results)

    def save(run: dict) -> None:
        results.append(run)
        tmp = results_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results))
        os.replace(tmp, results_path)

    import ray

    ray_init(2)
    try:
        for task in tasks:
            seeds = range(args.seed0, args.seed0 + (args.seeds or (10 if task == "cartpole" else 3)))
            if task == "cartpole":
                for seed in seeds:
                    if done(task, "rlhp", seed):
                        continue
                    run = cartpole_run(seed, runs_dir, args.quiet, args.set)
                    save(run)
                    print(f"cartpole seed {seed}: greedy true return {run['greedy_return']:.1f}, "
                          f"{run['labels']} labels, {run['wall_s']:.0f} s", flush=True)
                continue
            steps = args.steps or DEFAULT_STEPS[task]
            for seed in seeds:
                # a --set (env options, RL settings) applies to the true-reward arm too, under its own
                # name; a teacher knob alone does not change it
                true_arm = f"true{suffix}" if args.set else "true"
                if "true" in arms and not done(task, true_arm, seed, steps):
                    save(mujoco_true(task, steps, seed, runs_dir, args.quiet, args.set,
                                     suffix if args.set else ""))
                    print(f"{task} {true_arm} seed {seed}: final {final(results[-1]['rows']):.1f}", flush=True)
                if STD_ARM in arms and not done(task, STD_ARM, seed, steps):
                    save(mujoco_true(task, steps, seed, runs_dir, args.quiet, None, "-std", standardize=True))
                    print(f"{task} {STD_ARM} seed {seed}: final {final(results[-1]['rows']):.1f}", flush=True)
                if "rlhp" not in arms:
                    continue
                sfx = suffix or (f"-{PRESET_VARIANT}" if default_random_action_scales(MUJOCO[task]) else "")
                for labels in [int(x) for x in args.labels.split(",")]:
                    arm = f"rlhp-{labels}{sfx}"
                    if done(task, arm, seed, steps):
                        continue
                    save(mujoco_rlhp(task, steps, labels, seed, runs_dir, teacher, args.quiet, args.set, sfx))
                    run = results[-1]
                    print(f"{task} {arm} seed {seed}: final {final(run['rows']):.1f}", flush=True)
    finally:
        ray.shutdown()

    cart = [r for r in results if r["task"] == "cartpole"]
    if cart:
        text = cartpole_table(cart)
        print(text)
        if args.write_doc:
            write_doc("cartpole", text)
    # runs judged by another goal (teacher.goal) have no true-reward arm to compare with
    muj = [r for r in results if r["task"] != "cartpole"
           and not any(x.startswith("teacher.goal=") for x in r.get("sets", []))]
    if muj:
        pngs = []
        for task in sorted({r["task"] for r in muj}):
            mine = [r for r in muj if r["task"] == task]
            budget = max(_budget(r) for r in mine)  # the curves of the longest budget run for the task
            mine = [r for r in mine if _budget(r) == budget]
            # one figure per arm suffix (a --set or a teacher knob), with the true arm it is scored against
            for sfx in sorted({_suffix(r["arm"]) for r in mine if r["arm"] != STD_ARM}):
                arms = {r["arm"] for r in mine if _suffix(r["arm"]) == sfx and not _is_true(r["arm"])}
                refs = {_reference(a, mine) for a in arms} or ({f"true-{sfx}"} if sfx else {"true"})
                refs |= {STD_ARM} if not sfx else set()
                group = [r for r in mine if r["arm"] in arms | refs]
                if group:
                    name = f"{task}-{sfx}" if sfx else task
                    plot_task(task, group, out / f"{name}.png")
                    pngs.append(name)
        text = mujoco_table(muj)
        text += "\n\n" + "\n".join(f"![{n}]({os.path.relpath(out / f'{n}.png', DOC.parent)})" for n in pngs)
        print(text)
        if args.write_doc:
            write_doc("mujoco", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
