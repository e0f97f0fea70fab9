"""`rlhp status [RUN_DIR ...] [--runs-dir runs] [--query HOST:PORT --token T] [--watch SECONDS]`

A table of experiments: env steps, steps/s, labels, true return, predicted-vs-true correlation and
reward-model version — from each run directory's `metrics.csv` (the last row), and/or live from a
query service's Stats (segments, queries, labels per experiment).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from learner.metrics import read_csv


def _f(v, spec: str) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def run_table(run_dirs: list[Path]) -> str:
    head = f"{'run':<28} {'iter':>5} {'env steps':>11} {'steps/s':>8} {'labels':>9} {'true ret':>9} {'corr':>6} {'rm v':>6}"
    lines = [head, "-" * len(head)]
    for d in run_dirs:
        try:
            rows = read_csv(d)
        except FileNotFoundError:
            lines.append(f"{d.name:<28} (no metrics yet)")
            continue
        if not rows:
            lines.append(f"{d.name:<28} (starting)")
            continue
        r = rows[-1]
        labels = f"{_f(r['labels'], '.0f')}/{_f(r['labels_wanted'], '.0f')}"
        lines.append(f"{d.name:<28} {_f(r['iteration'], '.0f'):>5} {_f(r['env_steps'], ',.0f'):>11} "
                     f"{_f(r['steps_per_s'], '.0f'):>8} {labels:>9} {_f(r['true_return'], '.1f'):>9} "
                     f"{_f(r['segment_corr'], '.2f'):>6} {_f(r['reward_version'], '.0f'):>6}")
    return "\n".join(lines)


def service_table(address: str, token: str, root_cert: bytes | None = None) -> str:
    from query_service.client import QueryClient

    with QueryClient(address, token, root_cert=root_cert) as client:
        stats = client.stats()
    head = f"{'experiment':<24} {'env':<20} {'env steps':>11} {'segments':>9} {'pending':>8} {'leased':>7} {'labels':>13}"
    lines = [head, "-" * len(head)]
    for e in stats.experiments:
        lines.append(f"{e.experiment:<24} {e.env_id:<20} {e.env_steps:>11,} {e.segments:>9} "
                     f"{e.queries_pending:>8} {e.queries_leased:>7} {e.labels:>6}/{e.label_budget:<6}")
    if stats.labelers:
        from query_service.quality import LabelerQuality
        from query_service.quality_cli import table

        lines.append("")
        lines.append(table([LabelerQuality(x.name, x.answered, x.median_seconds, x.gold_answered, x.gold_correct,
                                           x.agreement_checks, x.agreed, x.excluded) for x in stats.labelers]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rlhp status", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", help="run directories (default: every run under --runs-dir)")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--query", help="also show a query service's live stats (HOST:PORT)")
    ap.add_argument("--token", default="", help="token for --query")
    ap.add_argument("--tls-ca", metavar="PEM",
                    help="CA certificate of a --query service that serves TLS (default: $RLHP_QUERY_CA, if set)")
    ap.add_argument("--watch", type=float, default=0, help="refresh every N seconds until Ctrl-C")
    args = ap.parse_args(argv)
    dirs = [Path(r) for r in args.runs] or sorted(p.parent for p in Path(args.runs_dir).glob("*/config.yaml"))
    try:
        root_cert = Path(args.tls_ca).read_bytes() if args.tls_ca else None
    except OSError as e:
        print(f"rlhp status: cannot read --tls-ca {args.tls_ca}: {e.strerror}", file=sys.stderr)
        return 2
    if not dirs and not args.query:
        print(f"rlhp status: no runs under {args.runs_dir}/ (start one with rlhp train)", file=sys.stderr)
        return 2
    try:
        while True:
            out = []
            if dirs:
                out.append(run_table(dirs))
            if args.query:
                try:
                    out.append(service_table(args.query, args.token, root_cert))
                except Exception as e:  # noqa: BLE001 — say it, keep watching
                    out.append(f"query service {args.query}: {type(e).__name__}: {e}")
            if args.watch:
                print("\033[2J\033[H", end="")
            print("\n\n".join(out), flush=True)
            if not args.watch:
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
