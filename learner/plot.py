"""`rlhp plot runs/<name> [runs/<other> ...] [-o curves.png]`: learning curves from metrics.csv."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from learner.metrics import read_csv

PANELS = (
    ("true_return", "true episode return (evaluation only)"),
    ("predicted_return", "predicted return (learned reward)"),
    ("segment_corr", "corr(predicted, true) segment returns"),
    ("labels", "labels"),
)


def plot_runs(run_dirs: list[str], out: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for run in run_dirs:
        rows = read_csv(run)
        x = [r["env_steps"] for r in rows]
        for ax, (key, _) in zip(axes.flat, PANELS):
            y = [r.get(key, math.nan) for r in rows]
            ax.plot(x, y, label=Path(run).name)
    for ax, (_, title) in zip(axes.flat, PANELS):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rlhp plot", description=__doc__)
    ap.add_argument("runs", nargs="+", help="run directories written by `rlhp train`")
    ap.add_argument("-o", "--out", default=None, help="PNG path (default: <first run>/curves.png)")
    args = ap.parse_args(argv)
    try:
        out = plot_runs(args.runs, args.out or Path(args.runs[0]) / "curves.png")
    except FileNotFoundError as e:
        print(f"rlhp plot: {e}")
        return 2
    print(f"wrote {out}")
    return 0
