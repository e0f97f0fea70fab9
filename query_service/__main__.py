"""`python -m query_service` / `rlhp query-service`: run the query service over gRPC.

    rlhp query-service --run-dir runs/hopper --port 50052 --reward-address 127.0.0.1:50051

State (segments, queries, leases, labels, tokens, schedule position) lives in
`<run-dir>/labels.sqlite`; restarting with the same --run-dir resumes leases and forwarding.
A producer token for the actors is kept in `<run-dir>/producer.token` (created when missing).
The bound address is written to `<run-dir>/query_service.address` once listening.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from rlhp.signals import StopFlag
from rlhp.types import Unavailable

from .config import QueryConfig
from .tokens import kept_token

log = logging.getLogger("rlhp.query")

PRODUCER_TOKEN_FILE = "producer.token"
ADDRESS_FILE = "query_service.address"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rlhp query-service",
        description="Run the query service: segments in from the actors, queries out to labelers, "
                    "labels stored durably (SQLite) and forwarded to the reward service.",
        epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True, help="run directory (labels.sqlite, clips/, tokens)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=50052, help="port; 0 picks a free one (default 50052)")
    p.add_argument("--reward-address", metavar="HOST:PORT",
                   help="reward service for query selection (disagreement) and label forwarding; "
                        "without it queries are selected at random and labels are only stored")
    p.add_argument("--reward-ca", metavar="PEM",
                   help="the CA certificate of a reward service that serves TLS (every --reward-address, and "
                        "the addresses learners report)")
    p.add_argument("--reward-token-file", metavar="PATH",
                   help="the reward service's shared token (default: $RLHP_REWARD_TOKEN, if set)")
    p.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate (needs --tls-key)")
    p.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --host without TLS: tokens and labels then cross the network in "
                        "clear text (use it only on a network you trust, or tunnel instead)")
    p.add_argument("--preset", choices=["mujoco", "atari", "smoke"], default="mujoco",
                   help="label schedule preset (default mujoco: 25%% of the budget up front, N0=2e6)")
    p.add_argument("--label-budget", type=int, help="labels per experiment over the run")
    p.add_argument("--initial-labels", type=int, help="labels of the initial (random-policy) batch")
    p.add_argument("--schedule-n0", type=float, help="N0 of the label-rate decay N0/(T+N0), env steps")
    p.add_argument("--total-env-steps", type=float, help="planned env steps (derives the label rate)")
    p.add_argument("--selection", choices=["disagreement", "random"], help="query selection")
    p.add_argument("--lease-seconds", type=float, help="default lease length")
    p.add_argument("--max-segments", type=int, help="segments kept per experiment")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def make_config(args: argparse.Namespace) -> QueryConfig:
    overrides = {k: v for k, v in dict(
        initial_labels=args.initial_labels, schedule_n0=args.schedule_n0, total_env_steps=args.total_env_steps,
        selection=args.selection, lease_seconds=args.lease_seconds, max_segments=args.max_segments).items()
        if v is not None}
    if args.preset == "smoke":
        cfg = QueryConfig.smoke()
        if args.label_budget is not None:
            cfg = cfg.with_(label_budget=args.label_budget)
    elif args.preset == "atari":
        cfg = QueryConfig.atari(args.label_budget) if args.label_budget is not None else QueryConfig.atari()
    else:
        cfg = QueryConfig.mujoco(args.label_budget) if args.label_budget is not None else QueryConfig.mujoco()
    if overrides.get("lease_seconds", 0) > cfg.max_lease_seconds:
        overrides["max_lease_seconds"] = overrides["lease_seconds"]
    return cfg.with_(**overrides)


def producer_token(core, run_dir: Path) -> str:
    """The actors' token: read from `<run_dir>/producer.token`, created (mode 0600) when missing or
    stale — under a free name, so a stale file never invalidates a token someone else holds."""
    return kept_token(core, run_dir / PRODUCER_TOKEN_FILE, "producer", "producer")


def _reward_factory(ca: str | None, token_file: str | None) -> Any:
    """address -> RewardClient with the reward service's CA and shared token (None: $RLHP_REWARD_TOKEN)."""
    import functools

    from reward_service.client import RewardClient

    root_cert = Path(ca).read_bytes() if ca else None
    token = None
    if token_file:
        token = Path(token_file).read_text().strip()
        if not token:
            raise ValueError(f"--reward-token-file {token_file} is empty")
    return functools.partial(RewardClient, root_cert=root_cert, token=token)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from rlhp.rpc import limit_malloc_arenas

    limit_malloc_arenas(2)  # a long-running service: keep freed memory from piling up per thread
    if bool(args.tls_cert) != bool(args.tls_key):
        print("rlhp query-service: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    from rlhp.rpc import is_loopback

    if not is_loopback(args.host) and not args.tls_cert:
        if not args.insecure:
            print(f"rlhp query-service: --host {args.host} is reachable from other machines: serve TLS "
                  "(--tls-cert, --tls-key), or pass --insecure on a network you trust (tokens would cross "
                  "it in clear text)", file=sys.stderr)
            return 2
        log.warning("listening on %s without TLS (--insecure): tokens and labels cross the network in clear "
                    "text", args.host)
    try:
        config = make_config(args)
    except ValueError as e:
        print(f"rlhp query-service: {e}", file=sys.stderr)
        return 2
    try:
        reward_factory = _reward_factory(args.reward_ca, args.reward_token_file)
    except (OSError, ValueError) as e:
        print(f"rlhp query-service: {e}", file=sys.stderr)
        return 2

    from .core import QueryService
    from .server import serve

    run_dir = Path(args.run_dir)
    reward = reward_factory(args.reward_address) if args.reward_address else None
    try:
        core = QueryService(run_dir, config, reward=reward, reward_factory=reward_factory)
        producer_token(core, run_dir)
    except (Unavailable, OSError) as e:  # a read-only or full run directory
        print(f"rlhp query-service: {e}", file=sys.stderr)
        return 1
    try:
        server = serve(core, args.host, args.port, (args.tls_cert, args.tls_key) if args.tls_cert else None)
    except OSError as e:
        print(f"rlhp query-service: {e}", file=sys.stderr)
        core.close()
        return 1
    core.start()
    (run_dir / ADDRESS_FILE).write_text(server.address + "\n")
    stop = StopFlag()  # not threading.Event: its set() can deadlock in a signal handler
    stop.set_on_signals()
    log.info("query service listening on %s (run dir %s, reward %s); producer token in %s",
             server.address, run_dir, args.reward_address or "none", run_dir / PRODUCER_TOKEN_FILE)
    print(f"query service listening on {server.address}", flush=True)
    while not stop.wait(1.0):
        pass
    log.info("%s: shutting down", stop.reason)
    server.stop(2.0)
    core.close()
    log.info("query service stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
