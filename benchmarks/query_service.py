"""Benchmark of the query service as labelers see it.

    MUJOCO_GL=osmesa python benchmarks/query_service.py            # everything (~1–2 min)
    python benchmarks/query_service.py --only roundtrips --seconds 5 --labelers 1,8,32

(a) label round trips/s (lease → submit through the gRPC client, synthetic answers) with N
    concurrent labelers (threads, each its own client and token), against a real server on loopback
    with SQLite in a temporary run directory and the selection thread running;
(b) time from lease to playable clip (both sides of a query fetched through GetClip), Atari
    (25 frames 210×160, synthetic) and MuJoCo (Hopper-v5 qpos/qvel, 60 steps), cold (rendered and
    encoded) and cached;
(c) time from an answer to the next clip playing in headless Chromium (`rlhp label` page,
    `window.rlhpTimings`), median over N answers, after the next pair had been preloaded.

Targets: ≥ 200 round trips/s with 8 labelers; next clip ≤ 100 ms after an answer.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "osmesa")
if os.environ["MUJOCO_GL"] == "osmesa":
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from query_service.config import QueryConfig  # noqa: E402
from query_service.core import QueryService  # noqa: E402
from query_service.server import serve  # noqa: E402
from query_service.testing import synthetic_atari_frames  # noqa: E402
from query_service.types import SegmentRecord  # noqa: E402
from rlhp.types import Preference  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--autoplay-policy=no-user-gesture-required"]


# ----------------------------------------------------------------------------- synthetic segments

def atari_segments(experiment: str, n: int, t: int = 25, start: int = 0, tiny: bool = False) -> list[SegmentRecord]:
    out = []
    for i in range(start, start + n):
        frames = np.zeros((t, 8, 8, 3), np.uint8) if tiny else synthetic_atari_frames(i, t)
        out.append(SegmentRecord(
            id=f"{experiment}-{i:05d}", experiment=experiment, env_id="ALE/Pong-v5",
            observations=np.zeros((t, 8), np.float32), actions=np.zeros(t, np.int64),
            true_rewards=np.random.default_rng(i).normal(size=t).astype(np.float32), frames=frames,
            fps=15.0, random_policy=True))
    return out


def hopper_segments(experiment: str, n: int, t: int = 60, start: int = 0) -> list[SegmentRecord]:
    import mujoco

    from query_service.clips import _load_model

    model, _ = _load_model("Hopper-v5")
    data = mujoco.MjData(model)
    out = []
    for i in range(start, start + n):
        rng = np.random.default_rng(i)
        mujoco.mj_resetData(model, data)
        data.qpos[:] = model.qpos0 + rng.uniform(-5e-3, 5e-3, model.nq)
        data.qpos[1] = 1.25
        qpos, qvel = [], []
        for _ in range(t):
            data.ctrl[:] = rng.uniform(-1, 1, model.nu)
            mujoco.mj_step(model, data, nstep=4)  # Hopper-v5: frame_skip 4
            qpos.append(data.qpos.copy())
            qvel.append(data.qvel.copy())
        out.append(SegmentRecord(
            id=f"{experiment}-{i:05d}", experiment=experiment, env_id="Hopper-v5",
            observations=np.zeros((t, 11), np.float32), actions=np.zeros((t, 3), np.float32),
            true_rewards=np.zeros(t, np.float32), qpos=np.array(qpos), qvel=np.array(qvel),
            fps=1.0 / (4 * model.opt.timestep), random_policy=True))
    return out


class Service:
    """Core + gRPC server on loopback with SQLite under a temporary directory."""

    def __init__(self, config: QueryConfig, start: bool = True) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="rlhp-bench-")
        self.core = QueryService(Path(self.tmp.name) / "run", config, seed=0)
        if start:
            self.core.start()
        self.server = serve(self.core, "127.0.0.1", 0)
        self.producer = self.core.create_token("producer", "producer")

    def close(self) -> None:
        self.server.stop(0)
        self.core.close()
        self.tmp.cleanup()


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


# ----------------------------------------------------------------------------- (a) round trips

def bench_roundtrips(labelers: int, seconds: float, queue: int = 64) -> dict:
    from query_service.client import QueryClient

    cfg = QueryConfig.smoke(selection="random", label_budget=10**6, initial_labels=10**6,
                            queue_target=queue, max_segments=4000, candidate_pool=400,
                            lease_seconds=60.0, selection_interval=0.02)
    svc = Service(cfg, start=False)
    try:
        svc.core.add_segments(svc.producer, atari_segments("rt", 200, tiny=True))
        svc.core.report_progress(svc.producer, "rt", 0)
        enq = 0
        while enq < queue:
            n = svc.core.select_once()
            if n == 0:
                break
            enq += n
        svc.core.start()  # selection keeps the queue filled, as in a run
        tokens = [svc.core.create_token(f"labeler{i}", "labeler") for i in range(labelers)]
        clients = [QueryClient(svc.server.address, tok) for tok in tokens]
        for c in clients:  # open channels outside the timed window
            c.stats()
        lat: list[list[float]] = [[] for _ in range(labelers)]
        empty = [0] * labelers
        errors: list[str] = []
        barrier = threading.Barrier(labelers + 1)
        stop_at = [0.0]

        def run(i: int) -> None:
            c = clients[i]
            barrier.wait()
            while time.perf_counter() < stop_at[0]:
                t0 = time.perf_counter()
                try:
                    lease = c.lease()
                    if not lease.available:
                        empty[i] += 1
                        time.sleep(0.001)
                        continue
                    c.submit(lease.query.id, Preference.LEFT if (i + len(lat[i])) % 2 else Preference.RIGHT, 1.0)
                except Exception as e:  # noqa: BLE001
                    errors.append(f"{type(e).__name__}: {e}")
                    continue
                lat[i].append(time.perf_counter() - t0)

        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(labelers)]
        for t in threads:
            t.start()
        stop_at[0] = time.perf_counter() + seconds
        t_start = time.perf_counter()
        barrier.wait()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t_start
        allat = [x for xs in lat for x in xs]
        for c in clients:
            c.close()
        return {"labelers": labelers, "round_trips": len(allat), "seconds": elapsed,
                "per_second": len(allat) / elapsed, "p50_ms": pct(allat, 50) * 1e3,
                "p99_ms": pct(allat, 99) * 1e3, "empty_leases": sum(empty), "errors": len(errors),
                "first_error": errors[0] if errors else ""}
    finally:
        svc.close()


# ----------------------------------------------------------------------------- (b) clip latency

def bench_clips(repeats: int) -> list[dict]:
    from query_service.client import QueryClient

    cfg = QueryConfig.smoke(selection="random", label_budget=1000, initial_labels=1000, queue_target=64)
    svc = Service(cfg, start=False)
    rows = []
    try:
        kinds = {"atari": atari_segments("atari", 2 * repeats + 2),
                 "hopper": hopper_segments("hopper", 2 * repeats + 2)}
        for exp, segs in kinds.items():
            svc.core.add_segments(svc.producer, segs)
            svc.core.report_progress(svc.producer, exp, 0)
        svc.core.select_once()
        client = QueryClient(svc.server.address, svc.core.create_token("alice", "labeler"))
        client.stats()
        for exp, segs in kinds.items():
            cold, warm, lease_ms, sizes = [], [], [], []
            seen: set[str] = set()
            while len(cold) < repeats:
                t0 = time.perf_counter()
                lease = client.lease([exp])
                t1 = time.perf_counter()
                assert lease.available, lease.waiting_for
                q = lease.query
                if q.left_id in seen or q.right_id in seen:  # only never-rendered segments count as cold
                    client.submit(q.id, Preference.EQUAL)
                    continue
                seen |= {q.left_id, q.right_id}
                data = [client.get_clip(q.id, side) for side in (Preference.LEFT, Preference.RIGHT)]
                t2 = time.perf_counter()
                for side in (Preference.LEFT, Preference.RIGHT):
                    client.get_clip(q.id, side)
                t3 = time.perf_counter()
                lease_ms.append((t1 - t0) * 1e3)
                cold.append((t2 - t0) * 1e3)
                warm.append((t3 - t2) * 1e3)
                sizes.append(sum(len(b) for _, b in data) / 2)
                client.submit(q.id, Preference.LEFT)
            rows.append({"kind": exp, "steps": int(segs[0].observations.shape[0]), "lease_ms": statistics.median(lease_ms),
                         "cold_ms": statistics.median(cold), "cached_ms": statistics.median(warm),
                         "clip_kib": statistics.median(sizes) / 1024, "n": len(cold)})
        client.close()
        return rows
    finally:
        svc.close()


# ----------------------------------------------------------------------------- (c) browser

def bench_browser(answers: int) -> list[dict]:
    from playwright.sync_api import sync_playwright

    from query_service.web.app import make_server

    cfg = QueryConfig.smoke(selection="random", label_budget=1000, initial_labels=1000, queue_target=8)
    svc = Service(cfg)
    rows = []
    hidden_ready = """() => { const vs = [...document.querySelectorAll('.pair.preload video')];
        return !!window.rlhpState.preloaded && vs.every(v => v.readyState >= 3); }"""
    active_ready = """() => { const vs = [...document.querySelectorAll('.pair.active video')];
        return vs.length === 2 && vs.every(v => v.readyState >= 2 && !v.paused); }"""
    try:
        kinds = {"atari": atari_segments("atari", 2 * answers + 6),
                 "hopper": hopper_segments("hopper", 2 * answers + 6)}
        for exp, segs in kinds.items():
            svc.core.add_segments(svc.producer, segs)
            svc.core.report_progress(svc.producer, exp, 0)
        svc.core.select_once()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            for exp in kinds:
                token = svc.core.create_token(f"human-{exp}", "labeler", [exp])
                httpd = make_server(svc.server.address, token, "127.0.0.1", 0)
                threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
                page = browser.new_page(viewport={"width": 1200, "height": 860})
                page.goto(httpd.url)
                page.wait_for_function(active_ready, timeout=60_000)
                for i in range(answers):
                    page.wait_for_function(hidden_ready, timeout=60_000)
                    page.wait_for_timeout(300)  # a (very fast) human watches the clips
                    page.keyboard.press(["ArrowLeft", "ArrowRight", "ArrowUp"][i % 3])
                    page.wait_for_function(
                        f"() => window.rlhpTimings.length >= {i + 1} && window.rlhpTimings[{i}].ms !== null",
                        timeout=30_000)
                t = page.evaluate("window.rlhpTimings")
                ms = [r["ms"] for r in t]
                playing = [r["playing_ms"] for r in t if r["playing_ms"] is not None]
                rows.append({"kind": exp, "answers": len(ms), "median_ms": statistics.median(ms),
                             "max_ms": max(ms), "playing_event_median_ms": statistics.median(playing) if playing else None,
                             "preloaded": sum(bool(r["preloaded"]) for r in t)})
                page.close()
                httpd.shutdown_and_close()
            browser.close()
        return rows
    finally:
        svc.close()


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("roundtrips", "clips", "browser"), action="append",
                    help="run only these parts (repeatable)")
    ap.add_argument("--labelers", default="1,8,32", help="concurrent labelers for the round-trip part")
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of each round-trip run")
    ap.add_argument("--queue", type=int, default=64,
                    help="queries kept enqueued (QueryConfig.queue_target) during the round-trip part")
    ap.add_argument("--repeats", type=int, default=3, help="queries per clip kind in the clip-latency part")
    ap.add_argument("--answers", type=int, default=10, help="answers per clip kind in the browser part")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    parts = set(args.only or ("roundtrips", "clips", "browser"))
    results: dict = {"cpus": os.cpu_count(), "load_before": os.getloadavg()[0]}

    if "roundtrips" in parts:
        results["roundtrips"] = []
        print("\n(a) label round trips (lease → submit over gRPC, loopback, SQLite)")
        print(f"{'labelers':>8} {'round trips/s':>14} {'p50 ms':>8} {'p99 ms':>8} {'n':>7} {'empty':>6} {'errors':>6}")
        for n in [int(x) for x in args.labelers.split(",") if x]:
            r = bench_roundtrips(n, args.seconds, args.queue)
            results["roundtrips"].append(r)
            print(f"{n:>8} {r['per_second']:>14.0f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
                  f"{r['round_trips']:>7} {r['empty_leases']:>6} {r['errors']:>6}", flush=True)
            if r["first_error"]:
                print("   first error:", r["first_error"])
    if "clips" in parts:
        print("\n(b) lease → playable clip (both sides through GetClip)")
        print(f"{'clip':>8} {'steps':>6} {'lease ms':>9} {'cold ms':>9} {'cached ms':>10} {'KiB/clip':>9}")
        results["clips"] = bench_clips(args.repeats)
        for r in results["clips"]:
            print(f"{r['kind']:>8} {r['steps']:>6} {r['lease_ms']:>9.1f} {r['cold_ms']:>9.0f} "
                  f"{r['cached_ms']:>10.1f} {r['clip_kib']:>9.0f}", flush=True)
    if "browser" in parts:
        if not os.path.exists(CHROMIUM):
            print(f"\n(c) skipped: {CHROMIUM} is missing")
        else:
            print("\n(c) answer → next clip playing in Chromium (rlhp label page, preloaded next pair)")
            print(f"{'clip':>8} {'answers':>8} {'median ms':>10} {'max ms':>8} {'playing-event ms':>17}")
            results["browser"] = bench_browser(args.answers)
            for r in results["browser"]:
                pe = r["playing_event_median_ms"]
                print(f"{r['kind']:>8} {r['answers']:>8} {r['median_ms']:>10.1f} {r['max_ms']:>8.1f} "
                      f"{(f'{pe:.1f}' if pe is not None else '-'):>17}", flush=True)
    results["load_after"] = os.getloadavg()[0]
    print(f"\nload average before/after: {results['load_before']:.2f} / {results['load_after']:.2f} "
          f"on {results['cpus']} CPUs")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
