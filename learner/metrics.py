"""Per-iteration metrics of a run: a live progress line, `metrics.csv` and TensorBoard events
under the run directory. Columns are fixed up front (a CSV whose header changes is useless)."""

from __future__ import annotations

import csv
import math
import numbers
import sys
from pathlib import Path
from typing import Mapping

COLUMNS = (
    "iteration", "time_s", "env_steps", "steps_per_s", "true_return", "predicted_return",
    "segment_corr", "labels", "labels_wanted", "label_rate", "queries_pending",
    "reward_version", "reward_val_accuracy", "reward_val_loss",
    "segments_sent", "segments_dropped", "policy_corr", "step_corr", "reward_fallback",
)


class MetricsWriter:
    def __init__(self, run_dir: str | Path, resume: bool = False, tensorboard: bool = True,
                 stream=sys.stdout) -> None:
        self.path = Path(run_dir) / "metrics.csv"
        self.stream = stream
        new = not (resume and self.path.exists())
        if not new:
            _upgrade_header(self.path)
        self._file = open(self.path, "w" if new else "a", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            self._csv.writeheader()
        self._tb = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except Exception:  # noqa: BLE001 — TensorBoard is optional; the CSV is the record
                self._tb = None

    def write(self, row: Mapping[str, float]) -> None:
        self._csv.writerow({k: row.get(k, "") for k in COLUMNS})
        self._file.flush()
        if self._tb is not None:
            step = int(row.get("env_steps", 0))
            for k, v in row.items():
                if k in COLUMNS and isinstance(v, numbers.Real) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self.stream is not None:
            print(progress_line(row), file=self.stream, flush=True)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _upgrade_header(path: Path) -> None:
    """A run resumed by a version whose COLUMNS changed: rewrite its CSV with today's header (old
    rows get empty cells for new columns and lose dropped ones, e.g. `disagreement`, which was
    never filled), so appended rows line up with the header."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
        f.seek(0)
        header = next(csv.reader(f), [])
    if tuple(header) == COLUMNS:
        return
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in COLUMNS})
    tmp.replace(path)


def _fmt(v, spec: str) -> str:
    if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return format(v, spec)


def progress_line(row: Mapping[str, float]) -> str:
    return (
        f"[it {int(row.get('iteration', 0)):>4}] steps {int(row.get('env_steps', 0)):>9,} "
        f"({_fmt(row.get('steps_per_s'), '.0f')}/s) | true return {_fmt(row.get('true_return'), '.1f')} "
        f"| pred {_fmt(row.get('predicted_return'), '.2f')} corr {_fmt(row.get('segment_corr'), '.2f')} (policy {_fmt(row.get('policy_corr'), '.2f')}) "
        f"| labels {int(row.get('labels', 0))}/{int(row.get('labels_wanted', 0))} "
        f"pending {int(row.get('queries_pending', 0))} | rm v{int(row.get('reward_version', 0))} "
        f"acc {_fmt(row.get('reward_val_accuracy'), '.2f')}"
        + (" | reward service unreachable: scored with the learner's copy of that version"
           if row.get("reward_fallback") else "")
    )


def read_csv(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a run directory of `rlhp train`?")
    with open(path, newline="") as f:
        rows = []
        for r in csv.DictReader(f):
            rows.append({k: (float(v) if v not in ("", None) else math.nan) for k, v in r.items()})
        return rows

