"""Bad input, fuzzed: random and mutated requests for every RPC of both services, over gRPC.

    python benchmarks/fuzz.py                                  # 10,000 cases per service (docs/reliability.md)
    python benchmarks/fuzz.py --service query --cases 2000 --seed 3
    python benchmarks/fuzz.py --cases 10000 --json fuzz.json --write-doc

Each service runs as `python -m reward_service` / `python -m query_service` in its own process.
Every case is one call with a deadline: random bytes (1 in 10), a valid request mutated field by
field (`fuzzing/mutate.py`: dropped fields, negative or huge shapes and numbers, NaN, wrong dtypes,
unknown ids, 1 MB strings, multiplied repeated fields), or a mutated request whose bytes were then
damaged; ScoreStream gets streams of such chunks; query service calls carry valid tokens of every
role, none, or bad ones. After the random cases come the oversized ones (a 70 MB request, a stream
of 200 chunks of 2,000 transitions, 3,000 segments in one call).

A case fails when the service answers UNKNOWN or INTERNAL, hangs past the deadline, or dies. Every
`--check-every` cases a valid request must still succeed. Memory: the service's RSS after a warm-up
of 200 cases, at the end, and its peak. Prints a table of status codes per service and RPC.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(HERE))  # after the packages: benchmarks/query_service.py must not shadow query_service

from fuzzing.mutate import Mutator  # noqa: E402
from fuzzing.targets import TARGETS  # noqa: E402

DOC = ROOT / "docs" / "reliability.md"
FAILING = ("UNKNOWN", "INTERNAL", "DEADLINE_EXCEEDED", "DEAD")


def _call(ch: grpc.Channel, path: str, stream: bool, payload: Any, metadata: tuple, timeout: float) -> str:
    """The status name of one call ("OK" when it succeeds)."""
    try:
        if stream:
            chunks = payload if isinstance(payload, list) else [payload]
            for _ in ch.stream_stream(path)(iter(chunks), timeout=timeout, metadata=metadata):
                pass
        else:
            ch.unary_unary(path)(payload, timeout=timeout, metadata=metadata)
        return "OK"
    except grpc.RpcError as e:
        return e.code().name
    except ValueError as e:  # the client refused to send it (e.g. a header it considers illegal)
        return f"CLIENT_REFUSED({type(e).__name__})"


def run(service: str, cases: int, seed: int = 0, workdir: Path | None = None, check_every: int = 200,
        timeout: float = 30.0, progress: Any = None) -> dict:
    """Fuzz one service; returns the report (see `table`)."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix=f"rlhp_fuzz_{service}_"))
    rng = np.random.default_rng(seed)
    target = TARGETS[service](workdir, seed).start()
    mutator = Mutator(rng)
    counts: Counter = Counter()
    by_method: dict[str, Counter] = {m.name: Counter() for m in target.methods}
    bad: list[dict] = []
    unhealthy = 0
    rss = {"start": target.rss_mb()}
    t0 = time.time()
    ch = target.channel()
    try:
        for i in range(cases):
            m = target.methods[int(rng.integers(0, len(target.methods)))]
            seed_msg = m.seeds[int(rng.integers(0, len(m.seeds)))]
            if m.stream:
                payload: Any = [mutator.request(seed_msg) for _ in range(int(rng.integers(1, 6)))]
            else:
                payload = mutator.request(seed_msg)
            code = _call(ch, m.path, m.stream, payload, target.metadata(), timeout)
            if code == "UNAVAILABLE" and not target.alive():
                code = "DEAD"
            counts[code] += 1
            by_method[m.name][code] += 1
            if code in FAILING and len(bad) < 20:
                size = sum(map(len, payload)) if isinstance(payload, list) else len(payload)
                bad.append({"case": i, "method": m.name, "status": code, "request_bytes": size})
            if code == "DEAD":
                break
            if i == 199:
                rss["warm"] = target.rss_mb()
            if (i + 1) % max(1, cases // 4) == 0:
                rss[f"at {i + 1}"] = target.rss_mb()
            if (i + 1) % check_every == 0:
                try:
                    unhealthy += not target.healthy(ch)
                except grpc.RpcError:
                    unhealthy += 1
                if progress:
                    progress(f"{service}: {i + 1}/{cases} cases, {dict(counts)}")
        oversized: Counter = Counter()
        for path, stream, payload in (target.oversized() if target.alive() else []):
            code = _call(ch, path, stream, payload, target.metadata() if service == "reward" else
                         (("authorization", f"Bearer {target.tokens['producer']}"),), 120.0)
            oversized[f"{path.rsplit('/', 1)[-1]}: {code}"] += 1
            if code in FAILING:
                bad.append({"case": "oversized", "method": path, "status": code})
        try:
            healthy_end = target.alive() and target.healthy(ch)
        except grpc.RpcError:
            healthy_end = False
        rss.update(end=target.rss_mb(), peak=target.peak_mb())
    finally:
        ch.close()
        log = target.stop()
    return {"service": service, "cases": int(sum(counts.values())), "seed": seed, "seconds": time.time() - t0,
            "counts": dict(counts), "by_method": {k: dict(v) for k, v in by_method.items()},
            "oversized": dict(oversized), "bad": bad, "unhealthy_checks": unhealthy,
            "healthy_at_end": bool(healthy_end), "rss_mb": rss,
            "tracebacks_in_log": log.count("Traceback"), "workdir": str(workdir)}


def failures(report: dict) -> int:
    return sum(n for code, n in report["counts"].items() if code in FAILING) + sum(
        1 for b in report["bad"] if b["case"] == "oversized")


def table(reports: list[dict]) -> str:
    codes = sorted({c for r in reports for m in r["by_method"].values() for c in m})
    head = "| service | RPC | cases | " + " | ".join(codes) + " |"
    lines = [head, "|---|---|" + "---:|" * (len(codes) + 1)]
    for r in reports:
        for name, c in r["by_method"].items():
            lines.append(f"| {r['service']} | {name} | {sum(c.values())} | "
                         + " | ".join(str(c.get(k, 0)) for k in codes) + " |")
        lines.append(f"| **{r['service']}** | **all** | **{r['cases']}** | "
                     + " | ".join(f"**{r['counts'].get(k, 0)}**" for k in codes) + " |")
    lines.append("")
    lines.append("| service | cases | UNKNOWN/INTERNAL/hung/dead | valid request afterwards | failed health checks | "
                 "RSS, MB: after 200 cases → at ¼, ½, ¾ of them → end (peak) | oversized | seconds |")
    lines.append("|---|---:|---:|:-:|---:|---|---|---:|")
    for r in reports:
        rss = r["rss_mb"]
        trace = " → ".join(f"{v:.0f}" for k, v in rss.items() if k.startswith("at "))
        over = ", ".join(f"{k} ×{v}" if v > 1 else k for k, v in r["oversized"].items())
        lines.append(f"| {r['service']} | {r['cases']} | {failures(r)} | {'yes' if r['healthy_at_end'] else 'NO'} | "
                     f"{r['unhealthy_checks']} | {rss.get('warm', rss['start']):.0f} → {trace} → {rss['end']:.0f} "
                     f"({rss['peak']:.0f}) | {over} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--service", choices=["reward", "query", "both"], default="both")
    p.add_argument("--cases", type=int, default=10_000, help="cases per service (default 10,000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check-every", type=int, default=200, help="a valid request every N cases (default 200)")
    p.add_argument("--json", help="write the reports here")
    p.add_argument("--write-doc", action="store_true", help=f"put the table into {DOC.relative_to(ROOT)}")
    args = p.parse_args(argv)
    services = ["reward", "query"] if args.service == "both" else [args.service]
    reports = [run(s, args.cases, args.seed, check_every=args.check_every,
                   progress=lambda line: print(line, flush=True)) for s in services]
    text = table(reports)
    print(text)
    for r in reports:
        for b in r["bad"]:
            print(f"FAILED {r['service']}: {b}")
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=1))
    if args.write_doc:
        body = DOC.read_text()
        begin, end = "<!-- fuzz:begin -->", "<!-- fuzz:end -->"
        stamp = time.strftime("%Y-%m-%d")
        new = f"{begin}\n{text}\n\nMeasured {stamp}: `python benchmarks/fuzz.py --cases {args.cases} --seed {args.seed}`.\n{end}"
        body = body[:body.index(begin)] + new + body[body.index(end) + len(end):]
        DOC.write_text(body)
    return 1 if any(failures(r) or not r["healthy_at_end"] for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
