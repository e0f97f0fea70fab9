"""`rlhp labelers`: how good each labeler is, and whose labels train the reward model (works on
`<run-dir>/labels.sqlite` directly, with or without the service running).

    rlhp labelers list    --run-dir runs/pong        # labels, median s/label, gold accuracy, agreement
    rlhp labelers exclude --run-dir runs/pong --name mallory
    rlhp labelers include --run-dir runs/pong --name mallory

Excluding keeps a labeler's labels in the database but stops forwarding them, and the running query
service withdraws those the reward model already has (it trains on the rest from its next round);
including sends them again. Gold queries and repeats are turned on with the query service's
`gold_rate` / `agreement_rate` (`rlhp train --set query.gold_rate=0.1`); `min_gold_accuracy`
excludes automatically.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from rlhp.types import NotFound, Unavailable

from .quality import Quality
from .store import DB_NAME, Store


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlhp labelers", description="Labeler quality, and whose labels are used.",
                                epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="every labeler's numbers")
    ls.add_argument("--run-dir", required=True)
    for name, text in (("exclude", "stop using NAME's labels (kept in the database; reversible)"),
                       ("include", "use NAME's labels again")):
        c = sub.add_parser(name, help=text)
        c.add_argument("--run-dir", required=True)
        c.add_argument("--name", required=True)
    return p


def _pct(num: int, den: int) -> str:
    return f"{100 * num / den:.0f}% ({num}/{den})" if den else "–"


def table(rows: list) -> str:
    head = f"{'labeler':<20} {'labels':>7} {'median s':>9} {'gold right':>15} {'agreement':>15}  status"
    lines = [head, "-" * len(head)]
    for q in rows:
        median = f"{q.median_seconds:.1f}" if q.labels and not math.isnan(q.median_seconds) else "–"
        lines.append(f"{q.name:<20} {q.labels:>7} {median:>9} {_pct(q.gold_correct, q.gold_answered):>15} "
                     f"{_pct(q.agreed, q.agreement_checks):>15}  {'EXCLUDED' if q.excluded else 'used'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    if not (run_dir / DB_NAME).exists():
        print(f"rlhp labelers: no label database in {run_dir} (expected {run_dir / DB_NAME})", file=sys.stderr)
        return 1
    try:
        store = Store(run_dir)
    except Unavailable as e:
        print(f"rlhp labelers: {e}", file=sys.stderr)
        return 1
    try:
        if args.command == "list":
            with store.read() as c:
                rows = Quality.labelers(c)
            print(table(rows) if rows else "no labels yet")
            return 0
        with store.write() as c:
            n = (Store.exclude_labeler if args.command == "exclude" else Store.include_labeler)(c, args.name)
        if args.command == "exclude":
            print(f"excluded {args.name!r}: {n} label(s) withheld from the reward model (kept in the database; "
                  f"rlhp labelers include --run-dir {run_dir} --name {args.name} undoes it)")
        else:
            print(f"included {args.name!r} again: {n} label(s) will be sent to the reward model")
        return 0
    except NotFound as e:
        print(f"rlhp labelers: {e}", file=sys.stderr)
        return 1
    except Unavailable as e:
        print(f"rlhp labelers: {e}", file=sys.stderr)
        return 1
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
