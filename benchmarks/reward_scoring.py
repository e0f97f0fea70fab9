"""Reward scoring throughput: in-process `RewardModel.score` vs `RewardClient.score` over gRPC.

    python benchmarks/reward_scoring.py            # full run (a few minutes on one core)
    python benchmarks/reward_scoring.py --quick    # a short run

Two ensembles (3 members, default configs): the MLP for Hopper (obs 11 float32, box:3 actions) and
the Atari CNN (4x84x84 uint8 frames, discrete:6). The gRPC server runs in this process on loopback
(127.0.0.1, a free port); the client is the one the learner uses (unary Score for small batches,
ScoreStream in <= 4 MiB chunks for large ones). Each cell is the median over repeats of
transitions/second (wall clock); in-process and gRPC measurements are interleaved so that load from
other processes hits both alike. Two more ratios: best-of-repeats (wall), and by CPU time of this
process (all threads), which other processes on a shared machine disturb least. `--threads` (default 1) mirrors one CPU core per service.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np
import torch

from rlhp.types import Space
from reward_service.client import RewardClient
from reward_service.config import RewardConfig
from reward_service.core import RewardModel
from reward_service.server import serve

MODELS = {
    "mlp": ("Hopper MLP", "11/box:3"),
    "cnn": ("Atari CNN", "4x84x84:uint8/discrete:6"),
}


def batch(space: Space, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if space.obs_dtype == "uint8":
        obs = rng.integers(0, 256, size=(n, *space.obs_shape), dtype=np.uint8)
    else:
        obs = rng.normal(size=(n, *space.obs_shape)).astype(np.float32)
    if space.action_kind == "discrete":
        act = rng.integers(0, space.action_n, size=n).astype(np.int64)
    else:
        act = rng.uniform(-1, 1, size=(n, *space.act_shape)).astype(np.float32)
    return obs, act


def rate(fn, obs, act, min_seconds: float) -> tuple[float, float]:
    """(wall-clock, CPU) transitions per second of `fn(obs, act)`, called until `min_seconds` passed.

    CPU time is this process's (all threads: client, gRPC and server workers), so it counts the
    work a call costs whatever other processes do to the wall clock."""
    calls = 0
    start, cpu = time.perf_counter(), time.process_time()
    while True:
        fn(obs, act)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            used = max(time.process_time() - cpu, 1e-9)
            return calls * len(obs) / elapsed, calls * len(obs) / used


def measure(name: str, space: Space, batches: list[int], repeats: int, min_seconds: float,
            members: int, chunk_rows: int | None, device: str = "cpu") -> list[dict]:
    overrides = {"members": members, "device": device}
    if chunk_rows:  # the same forward-pass size in-process and per streamed chunk
        overrides.update(mlp_chunk=chunk_rows, cnn_chunk=chunk_rows)
    model = RewardModel(space, RewardConfig.for_space(space, **overrides))
    server = serve(model, port=0)
    client = RewardClient(server.address, timeout=300, chunk_transitions=chunk_rows)
    rows = []
    try:
        for n in batches:
            obs, act = batch(space, n)
            for fn in (model.score, client.score):  # warm-up (and a correctness check)
                fn(obs, act)
            a, _ = model.score(obs, act)
            b, _ = client.score(obs, act)
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
            local, remote = [], []
            for _ in range(repeats):
                local.append(rate(model.score, obs, act, min_seconds))
                remote.append(rate(client.score, obs, act, min_seconds))
            row = {"model": name, "batch": n,
                   "local": statistics.median(w for w, _ in local), "grpc": statistics.median(w for w, _ in remote),
                   "local_best": max(w for w, _ in local), "grpc_best": max(w for w, _ in remote),
                   "local_cpu": statistics.median(c for _, c in local),
                   "grpc_cpu": statistics.median(c for _, c in remote)}
            row["ratio"] = row["grpc"] / row["local"]
            row["ratio_best"] = row["grpc_best"] / row["local_best"]
            row["ratio_cpu"] = row["grpc_cpu"] / row["local_cpu"]
            rows.append(row)
            print(f"  {name:<11} {n:>6}  {row['local']:>12,.0f}  {row['grpc']:>12,.0f}  {row['ratio']:5.2f}"
                  f"  (best {row['ratio_best']:.2f}, cpu {row['ratio_cpu']:.2f})", file=sys.stderr, flush=True)
    finally:
        client.close()
        server.stop(0)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | batch | in-process tr/s | gRPC tr/s | ratio | ratio (best of repeats) "
             "| ratio (CPU time) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['local']:,.0f} | {r['grpc']:,.0f} | {r['ratio']:.2f} "
                     f"| {r['ratio_best']:.2f} | {r['ratio_cpu']:.2f} |")
    return "\n".join(lines)


def machine() -> str:
    load = os.getloadavg()
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
            f"torch {torch.__version__} ({torch.get_num_threads()} thread(s)), numpy {np.__version__}, "
            f"python {platform.python_version()}; load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats, shorter measurements")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--repeats", type=int, help="repeats per cell (default 5; --quick: 3)")
    p.add_argument("--seconds", type=float, help="minimum seconds per measurement (default 1.0; --quick: 0.3)")
    p.add_argument("--members", type=int, default=3, help="ensemble members (default 3)")
    p.add_argument("--device", default="cpu", help="torch device of the ensemble: cpu (default), cuda, cuda:N")
    p.add_argument("--models", default="mlp,cnn", help="comma-separated subset of: mlp, cnn")
    p.add_argument("--chunk-rows", type=int,
                   help="transitions per forward pass in the core AND per streamed chunk of the client "
                        "(default: the core's mlp_chunk/cnn_chunk and the client's 4 MiB chunks)")
    p.add_argument("--mlp-batches", default="32,256,1024,4096")
    p.add_argument("--cnn-batches", default="32,256,1024")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 5)
    seconds = args.seconds or (0.3 if args.quick else 1.0)
    print(f"# {machine()}", file=sys.stderr)
    print(f"  {'model':<11} {'batch':>6}  {'in-process':>12}  {'gRPC':>12}  ratio", file=sys.stderr)
    rows = []
    for key in args.models.split(","):
        name, spec = MODELS[key.strip()]
        sizes = [int(s) for s in getattr(args, f"{key.strip()}_batches").split(",")]
        rows += measure(name, Space.parse(spec), sizes, repeats, seconds, args.members, args.chunk_rows, args.device)
    print(table(rows))
    print(f"\n{machine()}; device {args.device}; {repeats} repeats x >= {seconds:g} s per cell; tr/s and ratio: medians")
    return 0


if __name__ == "__main__":
    sys.exit(main())
