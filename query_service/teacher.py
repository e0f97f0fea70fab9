"""`rlhp teacher`: a synthetic labeler that answers queries from the true rewards.

`SyntheticTeacher` follows the simulated teachers of B-Pref (Lee et al. 2021):

- returns: R = Σ_t r_t for *skip* and *equal*; the *choice* uses the myopic return
  Σ_t γ^(T-1-t) r_t, which weights later steps more (γ = 1: plain sum);
- skip: max(R_left, R_right) < skip_threshold → INCOMPARABLE (neither segment shows the goal);
  any finite threshold works, negative ones too (rewards may be negative); −inf (the default)
  never skips;
- equal: |R_left − R_right| < equal_threshold → EQUAL;
- Boltzmann choice: P(LEFT) = σ(β · (R^γ_left − R^γ_right)); β = ∞ is the deterministic, rational
  teacher (an exact tie answers EQUAL);
- mistake: the LEFT/RIGHT answer is flipped with probability mistake_prob.

`run_teacher` leases → answers → submits through the query service's gRPC API (a teacher-role
token: only those see true rewards), exactly as a human labeler's client does.

    rlhp teacher --server 127.0.0.1:50052 --token TOKEN [--beta inf] [--mistake-prob 0.1]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import threading
import time
from typing import Any, Sequence

import numpy as np

from rlhp.signals import StopFlag
from rlhp.types import FailedPrecondition, PermissionDenied, Preference

log = logging.getLogger("rlhp.teacher")


class SyntheticTeacher:
    def __init__(self, beta: float = math.inf, mistake_prob: float = 0.0, skip_threshold: float = -math.inf,
                 equal_threshold: float = 0.0, gamma: float = 1.0, seed: int | None = None) -> None:
        if not beta > 0:
            raise ValueError("beta must be > 0 (math.inf: deterministic)")
        if not 0.0 <= mistake_prob <= 1.0:
            raise ValueError("mistake_prob must lie in [0, 1]")
        if not 0.0 < gamma <= 1.0:
            raise ValueError("gamma must lie in (0, 1]")
        if equal_threshold < 0:
            raise ValueError("equal_threshold must be ≥ 0")
        if math.isnan(skip_threshold) or skip_threshold == math.inf:
            raise ValueError("skip_threshold must be a number or -inf (never skip), not NaN or +inf")
        self.beta = float(beta)
        self.mistake_prob = float(mistake_prob)
        self.skip_threshold = float(skip_threshold)
        self.equal_threshold = float(equal_threshold)
        self.gamma = float(gamma)
        self.rng = np.random.default_rng(seed)

    def _myopic(self, r: np.ndarray) -> float:
        if self.gamma == 1.0:
            return float(r.sum())
        weights = self.gamma ** np.arange(len(r) - 1, -1, -1, dtype=np.float64)  # γ^(T-1-t)
        return float((weights * r).sum())

    def answer(self, left_rewards: np.ndarray, right_rewards: np.ndarray) -> Preference:
        left = np.asarray(left_rewards, dtype=np.float64).reshape(-1)
        right = np.asarray(right_rewards, dtype=np.float64).reshape(-1)
        r_left, r_right = float(left.sum()), float(right.sum())
        if max(r_left, r_right) < self.skip_threshold:
            return Preference.INCOMPARABLE
        if abs(r_left - r_right) < self.equal_threshold:
            return Preference.EQUAL
        delta = self._myopic(left) - self._myopic(right)
        if math.isinf(self.beta):
            if delta == 0:
                return Preference.EQUAL
            choice = Preference.LEFT if delta > 0 else Preference.RIGHT
        else:
            p_left = 1.0 / (1.0 + math.exp(-max(-700.0, min(700.0, self.beta * delta))))
            choice = Preference.LEFT if self.rng.random() < p_left else Preference.RIGHT
        if self.mistake_prob and self.rng.random() < self.mistake_prob:
            choice = Preference.RIGHT if choice == Preference.LEFT else Preference.LEFT
        return choice


def run_teacher(client: Any, teacher: SyntheticTeacher, stop_event: threading.Event | StopFlag,
                max_labels: int | None = None, experiments: Sequence[str] = (), poll_seconds: float = 0.2,
                on_wait: Any = None) -> int:
    """Lease → answer → submit until `stop_event` is set or `max_labels` labels were accepted.

    Returns the number of labels accepted. Sleeps `poll_seconds` when nothing is available (and
    calls `on_wait(waiting_for)` if given); transient connection errors are retried.
    """
    accepted = 0
    last_wait = ""
    failures = 0
    while not stop_event.is_set() and (max_labels is None or accepted < max_labels):
        try:
            lease = client.lease(experiments)
            failures = 0
        except (PermissionError, FailedPrecondition):  # Unauthenticated or PermissionDenied: say so, stop
            raise
        except Exception as e:  # noqa: BLE001 — the service may be restarting
            failures += 1
            if failures == 1:
                log.warning("lease failed (%s: %s); retrying", type(e).__name__, e)
            stop_event.wait(min(5.0, poll_seconds * 2 ** min(failures, 5)))
            continue
        if not lease.available:
            if lease.waiting_for != last_wait:
                last_wait = lease.waiting_for
                log.info("waiting: %s", lease.waiting_for)
                if on_wait is not None:
                    on_wait(lease.waiting_for)
            stop_event.wait(poll_seconds)
            continue
        q = lease.query
        if q.left_rewards is None or q.right_rewards is None:
            try:
                client.release(q.id)  # give it back for someone who can answer it
            except Exception:  # noqa: BLE001 — the lease expires anyway
                pass
            raise PermissionDenied("this token does not see true rewards; a synthetic teacher needs a "
                                  "teacher-role token (rlhp token create --role teacher)")
        t0 = time.perf_counter()
        pref = teacher.answer(q.left_rewards, q.right_rewards)
        try:
            res = client.submit(q.id, pref, seconds=time.perf_counter() - t0)
        except PermissionError:
            raise
        except Exception as e:  # noqa: BLE001 — the lease will expire and the query come back
            log.warning("submit failed (%s: %s)", type(e).__name__, e)
            stop_event.wait(poll_seconds)
            continue
        if res.status == "ACCEPTED":
            accepted += 1
    return accepted


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlhp teacher", description="Run a synthetic labeler (B-Pref teacher) "
                                "that answers queries from the true rewards over the query service's API.",
                                epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default="127.0.0.1:50052", help="query service HOST:PORT")
    p.add_argument("--token", default=os.environ.get("RLHP_TOKEN"),
                   help="teacher-role token (default: $RLHP_TOKEN)")
    p.add_argument("--token-file", help="read the token from this file")
    p.add_argument("--tls-ca", "--root-cert", dest="root_cert", metavar="PEM",
                   help="the CA certificate of a query service that serves TLS (default: $RLHP_QUERY_CA, if set)")
    p.add_argument("--experiments", default="", help="comma-separated experiments (default: all allowed)")
    p.add_argument("--beta", type=float, default=math.inf, help="Boltzmann rationality β (default inf)")
    p.add_argument("--mistake-prob", type=float, default=0.0, help="probability of flipping an answer")
    p.add_argument("--skip-threshold", type=float, default=-math.inf,
                   help="answer INCOMPARABLE when both returns are below this (default -inf: never)")
    p.add_argument("--equal-threshold", type=float, default=0.0, help="answer EQUAL when |ΔR| is below this")
    p.add_argument("--gamma", type=float, default=1.0, help="myopic discount (later steps weigh more)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-labels", type=int, default=None, help="stop after this many accepted labels")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = args.token
    if args.token_file:
        token = open(args.token_file).read().strip()
    if not token:
        print("rlhp teacher: a teacher token is needed (--token, --token-file or $RLHP_TOKEN; "
              "create one with `rlhp token create --role teacher`)", file=sys.stderr)
        return 2
    try:
        teacher = SyntheticTeacher(args.beta, args.mistake_prob, args.skip_threshold, args.equal_threshold,
                                   args.gamma, args.seed)
    except ValueError as e:
        print(f"rlhp teacher: {e}", file=sys.stderr)
        return 2
    from .client import QueryClient

    root = open(args.root_cert, "rb").read() if args.root_cert else None
    client = QueryClient(args.server, token, root_cert=root)
    stop = StopFlag()  # not threading.Event: its set() can deadlock in a signal handler
    stop.set_on_signals()
    exps = [e for e in args.experiments.split(",") if e]
    try:
        n = run_teacher(client, teacher, stop, args.max_labels, exps)
    except PermissionError as e:  # Unauthenticated or PermissionDenied
        print(f"rlhp teacher: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(f"teacher gave {n} labels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
