"""`rlhp token`: create, list or revoke labeler tokens of a run (works on `<run-dir>/labels.sqlite`
directly, with or without the service running).

    rlhp token create --run-dir runs/pong --name alice [--role labeler] [--experiments pong,breakout]
    rlhp token create --run-dir runs/pong --name alice --replace     # rotate: the old token stops working
    rlhp token list   --run-dir runs/pong
    rlhp token revoke --run-dir runs/pong --name alice
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .store import DB_NAME, ROLES, Store


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlhp token", description="Manage labeler tokens of a run.",
                                epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create", help="create a token (or --replace one); it is printed once")
    c.add_argument("--run-dir", required=True)
    c.add_argument("--name", required=True, help="labeler name (shown in stats)")
    c.add_argument("--role", default="labeler", choices=ROLES,
                   help="labeler (human), teacher (synthetic, sees true rewards), producer (actors), admin")
    c.add_argument("--experiments", default="", help="comma-separated experiments allowed (default: all)")
    c.add_argument("--replace", action="store_true",
                   help="give NAME a new token even if it has one (its old token stops working)")
    c.add_argument("--server", default=None, metavar="HOST:PORT",
                   help="address labelers use (default: read <run-dir>/query_service.address, else "
                        "127.0.0.1:50052)")
    ls = sub.add_parser("list", help="list labelers (never their tokens)")
    ls.add_argument("--run-dir", required=True)
    r = sub.add_parser("revoke", help="revoke a labeler's token")
    r.add_argument("--run-dir", required=True)
    r.add_argument("--name", required=True)
    return p


def _server(run_dir: Path, given: str | None) -> str:
    if given:
        return given
    f = run_dir / "query_service.address"
    if f.exists() and f.read_text().strip():
        return f.read_text().strip()
    return "127.0.0.1:50052"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    if args.command != "create" and not (run_dir / DB_NAME).exists():
        print(f"rlhp token: no label database in {run_dir} (expected {run_dir / DB_NAME})", file=sys.stderr)
        return 1
    store = Store(run_dir)
    try:
        if args.command == "create":
            try:
                token = store.create_token(args.name, args.role, args.experiments, now=time.time(),
                                           replace=args.replace)
            except ValueError as e:
                print(f"rlhp token: {e}", file=sys.stderr)
                return 2
            server = _server(run_dir, args.server)
            scope = args.experiments or "all experiments"
            print(f"token for {args.name!r} ({args.role}, {scope}) — shown only once, keep it secret:")
            print(f"  {token}")
            if args.role == "teacher":
                print(f"synthetic labeler:\n  rlhp teacher --server {server} --token {token}")
            elif args.role == "labeler":
                print(f"label in your browser:\n  rlhp label --server {server} --token {token}")
            return 0
        if args.command == "list":
            rows = store.list_labelers()
            if not rows:
                print("no labelers yet (rlhp token create --run-dir DIR --name NAME)")
                return 0
            print(f"{'name':<20} {'role':<9} {'answered':>8}  {'status':<8} experiments")
            for r in rows:
                status = "revoked" if r["revoked"] else "active"
                print(f"{r['name']:<20} {r['role']:<9} {r['answered']:>8}  {status:<8} {r['experiments'] or 'all'}")
            return 0
        if args.command == "revoke":
            if not store.revoke_token(args.name):
                print(f"rlhp token: no labeler named {args.name!r}", file=sys.stderr)
                return 1
            print(f"revoked the token of {args.name!r}")
            return 0
    finally:
        store.close()
    return 2


if __name__ == "__main__":
    sys.exit(main())
