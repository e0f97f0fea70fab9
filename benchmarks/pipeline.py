"""Pipeline throughput: RLlib PPO (or APPO) on the LEARNED reward (gRPC) vs the same on the TRUE reward.

    python benchmarks/pipeline.py                          # Hopper-v5 and ALE/Pong-v5, 4 iterations each
    python benchmarks/pipeline.py --envs hopper --iterations 6
    python benchmarks/pipeline.py --quick                  # 2 measured iterations per config
    python benchmarks/pipeline.py --envs hopper --quick --set rl.num_envs_per_env_runner=8 \
        --set rl.overrides.minibatch_size=256              # another RLlib setup than the preset's
    python benchmarks/pipeline.py --envs pong --quick --set rl.algo=appo                   # APPO

The RLlib setup is the one `rlhp train` uses for the env (its default preset's `rl` section).

Both configs come from the same `learner.algo.build_algo_config(...)` call, so PPO settings, model,
batch size, env runners and seeds are identical. They differ only in what the pipeline adds:

- **learned**: `actors.envs.RLlibEnv` (reward 0.0 to RLlib, true reward in the info),
  `SegmentCallbacks` cutting segments and streaming the default fraction (0.1) to a query service
  running as its own process (`python -m query_service`), and `LearnedRewardConnector` calling a
  reward service in its own process (`python -m reward_service --no-train`, untrained weights:
  scoring cost does not depend on the weights) once per train batch over gRPC.
- **true**: `TrueRewardEnv` (`make_env(id).env`, i.e. without `TrueRewardToInfo`, without the
  physics-state / RGB-frame info entries that only the segment cutter needs), RLlib's default
  callbacks, no learner connector — plain RLlib PPO.

The two algorithms live in one process and their iterations are interleaved (true, learned, true,
…), so load from other processes on a shared machine hits both alike. One warm-up iteration each,
then `--iterations` measured ones. Per iteration we time (with wrappers around the calls in
`PPO.training_step`, because RLlib's own `result["timers"]` are EMAs): env-runner sampling
(`synchronous_parallel_sample`), learner update (`LearnerGroup.update`, which includes the learner
connector and hence the `score` call), weight sync; plus the reward connector's own
`learned_reward_score_s` (`result["learners"]["__all_modules__"]`) and the segment counters
(`result["env_runners"]["segments_sent"/"segments_dropped"]`).

With `rl.algo=appo` the env runners sample asynchronously (an iteration lasts RLlib's minimum of
10 s): the true config runs all its iterations, then the learned one, because an algorithm's remote
runner would otherwise sample during the other's iteration and be counted in its next one. The
sampling column is then 0 (APPO does not call `synchronous_parallel_sample`); "trained steps/s" is
what the learner consumed.

Physical limits, measured in the same run: the preprocessed env alone (one process, the preset's
number of envs, random actions) and the env plus the policy's forward pass (the true algo's
RLModule, one batched `forward_inference` per step), env steps/s.

The query service is started without `--reward-address`, so its selection thread picks queries at
random instead of asking the reward service for CNN/MLP disagreement (that work is on the labeling
path, not on the sampling path; pass `--query-disagreement` to include it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gymnasium as gym

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(HERE))  # after the project: benchmarks/query_service.py must not hide the package
from env_limits import physical_limits  # noqa: E402

ENVS = {"hopper": "Hopper-v5", "pong": "ALE/Pong-v5"}



def setup_for(env_id: str, sets: list[str] | None = None) -> dict[str, Any]:
    """The RLlib setup `rlhp train --env ENV_ID` uses (its default preset's `rl` section), with
    `--set rl.FIELD=VALUE` / `rl.overrides.KEY=VALUE` changes: algo, env runners, envs per runner,
    learners and the RLlib overrides (batch, minibatch, epochs, ...)."""
    from learner import experiment

    rl = experiment.resolve(env_id, None, sets=list(sets or [])).rl
    return dict(algo=rl.algo, num_env_runners=rl.num_env_runners, num_envs_per_env_runner=rl.num_envs_per_env_runner,
                num_learners=rl.num_learners, **dict(rl.overrides))


# --------------------------------------------------------------------------------------------
# The true-reward env and config


class TrueRewardEnv(gym.Wrapper):
    """`make_env(id, **opts).env`: the same env stack without `TrueRewardToInfo` (so RLlib sees the
    environment reward) and without the info entries kept only for clips (`MujocoStateInfo`'s
    qpos/qvel, Atari's RGB frame: ``keep_rgb=False``)."""

    def __init__(self, env_config: dict | None = None):
        from actors.envs import MujocoStateInfo, TrueRewardToInfo, is_atari, make_env

        env_config = dict(env_config or {})
        env_id = str(env_config["env_id"])
        opts = dict(env_config.get("env_opts") or {})
        if is_atari(env_id):
            opts.setdefault("keep_rgb", False)
        env = make_env(env_id, **opts)
        assert isinstance(env, TrueRewardToInfo)
        inner = env.env
        if isinstance(inner, MujocoStateInfo):
            inner = inner.env
        super().__init__(inner)


def true_reward_config(config: Any, standardize: bool = False) -> Any:
    """A copy of a `build_algo_config` result that trains on the true reward: `TrueRewardEnv`, no
    segment callbacks, no learned-reward connector. Everything else (PPO settings, model, env
    runners, seed) is unchanged. `standardize`: the learner sees the env reward at the learned
    reward's scale (`learner.reward_connector.StandardizedRewardConnector`: zero mean, std 1 over
    the most recent 5,000 transitions); the episode returns reported stay the env's."""
    from ray.rllib.callbacks.callbacks import RLlibCallback

    true = config.copy(copy_frozen=False)
    env_config = {k: v for k, v in dict(true.env_config).items() if k in ("env_id", "env_opts")}
    true.environment(env=TrueRewardEnv, env_config=env_config)
    true.callbacks(RLlibCallback)
    true._learner_connector = None  # `.learners(learner_connector=None)` is ignored as "not provided"
    if standardize:
        from learner.reward_connector import StandardizedRewardBuilder

        true.learners(learner_connector=StandardizedRewardBuilder())
    return true


def true_curve(algo: Any, steps: float = math.inf, seconds: float = math.inf, label: str = "",
               quiet: bool = False) -> list[dict]:
    """Train `algo` for `steps` env steps or `seconds`; a row per iteration (true return: NaN if no episode ended)."""
    rows: list[dict] = []
    t0, total = time.time(), 0
    while total < steps and time.time() - t0 < seconds:
        t = time.time()
        result = algo.train()
        n = int(result["env_runners"].get("num_env_steps_sampled", 0) or 0)
        total += n
        ret = float(result["env_runners"].get("episode_return_mean", math.nan))
        rows.append(dict(env_steps=total, true_return=ret, labels=0, time_s=time.time() - t0,
                         steps_per_s=n / max(time.time() - t, 1e-9)))
        if not quiet and len(rows) % 10 == 0:
            print(f"  [{label}] {total:,} steps, {time.time() - t0:.0f} s, true return {ret:.1f}", flush=True)
    return rows


def ray_init(num_cpus: int = 2) -> None:
    """Local Ray on loopback; env runners can import this directory (for `TrueRewardEnv`)."""
    from learner.runs import init_local_ray

    path = os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    init_local_ray(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                   log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})


# --------------------------------------------------------------------------------------------
# Services as their own processes


class Service:
    """A child process (`python -m reward_service` / `python -m query_service`), stopped on exit."""

    def __init__(self, argv: list[str], log: Path):
        self.log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, *argv], cwd=str(ROOT), stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def wait_file(self, path: Path, timeout: float = 120.0) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if path.exists() and path.read_text().strip():
                return path.read_text().strip()
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}; see {self.log.name}")
            time.sleep(0.2)
        raise RuntimeError(f"service did not write {path} within {timeout:.0f} s; see {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def start_services(env_id: str, workdir: Path, disagreement: bool, threads: int = 1
                   ) -> tuple[list[Service], str, str, str]:
    from actors.envs import make_env
    from rlhp.types import Space

    env = make_env(env_id)
    space = Space.from_gym(env.observation_space, env.action_space).to_string()
    env.close()
    port_file = workdir / "reward.port"
    reward = Service(["-m", "reward_service", "--obs-space", space, "--port", "0", "--port-file",
                      str(port_file), "--no-train", "--threads", str(threads), "--log-level", "WARNING"],
                     workdir / "reward_service.log")
    services = [reward]
    try:
        reward_address = f"127.0.0.1:{reward.wait_file(port_file)}"
        run_dir = workdir / "query"
        run_dir.mkdir()
        argv = ["-m", "query_service", "--run-dir", str(run_dir), "--port", "0", "--log-level", "WARNING"]
        if disagreement:
            argv += ["--reward-address", reward_address]
        query = Service(argv, workdir / "query_service.log")
        services.append(query)
        query_address = query.wait_file(run_dir / "query_service.address")
        token = query.wait_file(run_dir / "producer.token")
    except Exception:
        for s in services:
            s.stop()
        raise
    return services, space, reward_address, query_address + "\t" + token


# --------------------------------------------------------------------------------------------
# Timing one `train()` call


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


class Timed:
    """Wraps the three calls of `PPO.training_step` to time them per iteration (wall clock, and CPU
    time of the calling thread: with ``num_learners=0`` the learner — and with ``num_env_runners=0``
    the sampling — runs in the driver's main thread, torch with one intra-op thread)."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {"sample": 0.0, "learn": 0.0, "sync": 0.0, "sample_cpu": 0.0,
                                    "learn_cpu": 0.0, "sync_cpu": 0.0}

    def wrap(self, owner: Any, name: str, key: str) -> None:
        fn = getattr(owner, name)

        def timed(*args, **kwargs):
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.t[key] += time.perf_counter() - t0
                self.t[key + "_cpu"] += time.thread_time() - c0

        setattr(owner, name, timed)

    def reset(self) -> dict[str, float]:
        out, self.t = self.t, {k: 0.0 for k in self.t}
        return out


_SAMPLE_TIMERS: dict[int, Timed] = {}


def install_sample_timer() -> None:
    """`synchronous_parallel_sample` is a module-level function of `ppo.py`: patch it once and route
    the time to the `Timed` of the env-runner group that was passed in."""
    import ray.rllib.algorithms.ppo.ppo as ppo_mod

    if getattr(ppo_mod.synchronous_parallel_sample, "_rlhp_timed", False):
        return
    original = ppo_mod.synchronous_parallel_sample

    def timed(*args, worker_set=None, **kwargs):
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return original(*args, worker_set=worker_set, **kwargs)
        finally:
            timer = _SAMPLE_TIMERS.get(id(worker_set))
            if timer is not None:
                timer.t["sample"] += time.perf_counter() - t0
                timer.t["sample_cpu"] += time.thread_time() - c0

    timed._rlhp_timed = True  # type: ignore[attr-defined]
    ppo_mod.synchronous_parallel_sample = timed


def instrument(algo: Any) -> Timed:
    install_sample_timer()
    timer = Timed()
    _SAMPLE_TIMERS[id(algo.env_runner_group)] = timer
    timer.wrap(algo.learner_group, "update", "learn")
    timer.wrap(algo.env_runner_group, "sync_weights", "sync")
    return timer


def one_iteration(algo: Any, timer: Timed, pids: dict[str, int]) -> dict:
    """One `train()`; `pids`: processes whose CPU seconds are charged to this config (driver, env
    runners, and for the learned config the two services)."""
    timer.reset()
    cpu0 = {k: proc_cpu(p) for k, p in pids.items()}
    t0 = time.perf_counter()
    result = algo.train()
    wall = time.perf_counter() - t0
    cpu = {f"cpu_{k}": proc_cpu(p) - cpu0[k] for k, p in pids.items()}
    parts = timer.reset()
    from learner.runs import result_at

    learners = result_at(result, "learners", "__all_modules__", default={}) or {}
    runners = result_at(result, "env_runners", default={}) or {}
    return dict(
        wall=wall, steps=int(runners.get("num_env_steps_sampled", 0) or 0), **parts, **cpu,
        trained=int(learners.get("num_env_steps_trained", 0) or 0),
        score=float(learners.get("learned_reward_score_s", float("nan"))),
        scored=int(learners.get("learned_reward_transitions", 0) or 0),
        sent=int(runners.get("segments_sent", 0) or 0), dropped=int(runners.get("segments_dropped", 0) or 0),
        cut=int(runners.get("segments_cut", 0) or 0),
        env_step_ms=float(runners.get("env_step_timer", float("nan"))) * 1e3,
        inference_ms=float(runners.get("rlmodule_inference_timer", float("nan"))) * 1e3,
    )


def summarize(rows: list[dict]) -> dict:
    steps = sum(r["steps"] for r in rows)
    wall = sum(r["wall"] for r in rows)
    n = len(rows)
    out = dict(iterations=n, steps=steps, wall=wall, steps_per_s=steps / wall if wall else float("nan"),
               trained_per_s=sum(r["trained"] for r in rows) / wall if wall else float("nan"),
               steps_per_s_median=statistics.median(r["steps"] / r["wall"] for r in rows))
    for k in ("wall", "sample", "learn", "sync", "score", "sample_cpu", "learn_cpu"):
        out[k + "_s"] = statistics.fmean(r[k] for r in rows)
    for k in sorted({k for r in rows for k in r if k.startswith("cpu_")}):
        out[k + "_s"] = statistics.fmean(r[k] for r in rows)
    out["cpu_total_s"] = sum(v for k, v in out.items() if k.startswith("cpu_") and k.endswith("_s"))
    out["steps_per_cpu_s"] = steps / n / out["cpu_total_s"] if out["cpu_total_s"] else float("nan")
    out["other_s"] = out["wall_s"] - out["sample_s"] - out["learn_s"] - out["sync_s"]
    last = rows[-1]
    for k in ("sent", "dropped", "cut", "scored"):
        out[k] = last[k]
    out["env_step_ms"] = last["env_step_ms"]
    return out


# --------------------------------------------------------------------------------------------


def bench_env(env_id: str, iterations: int, args: argparse.Namespace) -> dict:
    import torch

    from learner.algo import build_algo_config

    torch.set_num_threads(1)
    workdir = Path(tempfile.mkdtemp(prefix="rlhp_pipeline_"))
    services, space, reward_address, q = start_services(env_id, workdir, args.query_disagreement)
    query_address, token = q.split("\t")
    algos: dict[str, Any] = {}
    try:
        setup = setup_for(env_id, args.set)
        learned_cfg = build_algo_config(env_id, reward_address, query_address=query_address, query_token=token,
                                       experiment="bench", seed=args.seed, **setup)
        configs = {"true": true_reward_config(learned_cfg), "learned": learned_cfg}
        timers, pids = {}, {}
        for name, cfg in configs.items():
            algos[name] = cfg.build_algo()
            timers[name] = instrument(algos[name])
            runner_pids = [p for p in algos[name].env_runner_group.foreach_env_runner(
                lambda r: os.getpid(), local_env_runner=False) or [] if p != os.getpid()]
            pids[name] = {"driver": os.getpid(), **{f"runner{i}": p for i, p in enumerate(runner_pids)}}
        pids["learned"].update(reward=services[0].proc.pid, query=services[1].proc.pid)
        print(f"{env_id}: reward service {reward_address} ({space}), query service {query_address}; "
              f"setup {setup}, train batch {learned_cfg.train_batch_size_per_learner}", flush=True)
        rows: dict[str, list[dict]] = {"true": [], "learned": []}
        # PPO: interleaved (true, learned, true, ...), so other load hits both alike. APPO samples
        # asynchronously: an algo's remote runners would sample during the other's iterations and
        # its next iteration would count those steps, so each config runs all its iterations alone.
        sequential = setup["algo"] == "appo"
        order = ([(i, n) for n in ("true", "learned") for i in range(iterations + 1)] if sequential
                 else [(i, n) for i in range(iterations + 1) for n in ("true", "learned")])
        for i, name in order:
            r = one_iteration(algos[name], timers[name], pids[name])
            tag = "warm-up" if i == 0 else f"iter {i}"
            print(f"  {name:7s} {tag:8s} {r['steps']:5d} steps in {r['wall']:6.2f} s "
                  f"({r['steps'] / r['wall']:7.1f}/s, trained {r['trained'] / r['wall']:7.1f}/s) "
                  f"sample {r['sample']:.2f} learn {r['learn']:.2f} "
                  f"score {r['score']:.3f} sent {r['sent']} dropped {r['dropped']} | CPU s: "
                  + " ".join(f"{k[4:]} {v:.2f}" for k, v in r.items() if k.startswith("cpu_"))
                  + f" learn(thread) {r['learn_cpu']:.2f}", flush=True)
            if i > 0:
                rows[name].append(r)
        true_env = dict(configs["true"].env_config)
        limits = physical_limits(algos["true"].get_module(), lambda: TrueRewardEnv(true_env),
                                 setup["num_envs_per_env_runner"])
        print(f"  limits: env alone {limits['env_only_per_s']:.0f}/s, env + policy inference "
              f"{limits['env_policy_per_s']:.0f}/s (one process, {limits['num_envs']} envs)", flush=True)
        return dict(env_id=env_id, setup=setup, space=space, order="sequential" if sequential else "interleaved",
                    limits=limits,
                    train_batch=int(learned_cfg.train_batch_size_per_learner),
                    true=summarize(rows["true"]), learned=summarize(rows["learned"]),
                    raw=rows)
    finally:
        for a in algos.values():
            try:
                a.stop()
            except Exception:  # noqa: BLE001
                pass
        for s in services:
            s.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def table(results: list[dict]) -> str:
    lines = ["| env | config | env steps/s | trained steps/s | learned/true | s/iter | sampling s | learner update s "
             "| of which score s | weight sync s | other s | segments sent | dropped |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for res in results:
        t, l = res["true"], res["learned"]
        ratio = l["steps_per_s"] / t["steps_per_s"]
        for name, s in (("true", t), ("learned", l)):
            score = "–" if name == "true" else f"{s['score_s']:.3f}"
            sent = "–" if name == "true" else str(s["sent"])
            dropped = "–" if name == "true" else str(s["dropped"])
            lines.append(f"| {res['env_id']} | {name} | {s['steps_per_s']:.1f} | {s['trained_per_s']:.1f} | "
                         f"{'' if name == 'true' else f'{ratio:.2f}'} | {s['wall_s']:.2f} | {s['sample_s']:.2f} | "
                         f"{s['learn_s']:.2f} | {score} | {s['sync_s']:.3f} | {s['other_s']:.2f} | {sent} | "
                         f"{dropped} |")
    return "\n".join(lines)


def cpu_table(results: list[dict]) -> str:
    """CPU seconds per iteration by process: robust to other load on a shared machine."""
    lines = ["| env | config | driver (learner{}) CPU s | env runner CPU s | reward service CPU s "
             "| query service CPU s | total CPU s | learner update CPU s (thread) | env steps per CPU s "
             "| learned/true |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for res in results:
        t = res["true"]
        for name in ("true", "learned"):
            s = res[name]
            runners = sum(v for k, v in s.items() if k.startswith("cpu_runner"))
            has_runner = any(k.startswith("cpu_runner") for k in s)
            ratio = "" if name == "true" else f"{s['steps_per_cpu_s'] / t['steps_per_cpu_s']:.2f}"
            lines.append(
                f"| {res['env_id']} | {name} | {s['cpu_driver_s']:.2f} | "
                f"{f'{runners:.2f}' if has_runner else '(in driver)'} | "
                f"{s.get('cpu_reward_s', float('nan')):.2f} | {s.get('cpu_query_s', float('nan')):.2f} | "
                f"{s['cpu_total_s']:.2f} | {s['learn_cpu_s']:.2f} | {s['steps_per_cpu_s']:.1f} | {ratio} |")
    return "\n".join(lines).replace("{}", "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--envs", default="hopper,pong", help="comma-separated: hopper, pong (default both)")
    p.add_argument("--iterations", type=int, default=4, help="measured iterations per config (default 4)")
    p.add_argument("--quick", action="store_true", help="2 measured iterations per config")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--query-disagreement", action="store_true",
                   help="give the query service the reward address (disagreement-based selection)")
    p.add_argument("--set", action="append", default=[], metavar="rl.FIELD=VALUE",
                   help="change the preset's RLlib setup, e.g. rl.num_envs_per_env_runner=8 or "
                        "rl.overrides.minibatch_size=256 (repeatable; both configs get it)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    iterations = 2 if args.quick else args.iterations
    envs = [ENVS.get(e.strip().lower(), e.strip()) for e in args.envs.split(",") if e.strip()]
    import ray

    ray_init(2)
    load_before = os.getloadavg()
    results = []
    try:
        for env_id in envs:
            results.append(bench_env(env_id, iterations, args))
    finally:
        ray.shutdown()
    load_after = os.getloadavg()
    print()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load average "
          f"before {load_before[0]:.1f}, after {load_after[0]:.1f}; {iterations} measured iterations "
          "per config after 1 warm-up; true and learned " + ", ".join(f"{r['order']} ({r['env_id']}, "
                                                                      f"{r['setup']['algo']})" for r in results))
    print(table(results))
    print()
    print(cpu_table(results))
    print()
    print("| env | env alone (1 process) | env + policy inference | true reward, end to end | learned reward, end to end |")
    print("|---|---:|---:|---:|---:|")
    for res in results:
        lim = res["limits"]
        print(f"| {res['env_id']} | {lim['env_only_per_s']:.0f} | {lim['env_policy_per_s']:.0f} | "
              f"{res['true']['steps_per_s']:.0f} | {res['learned']['steps_per_s']:.0f} |")
    for res in results:
        ratio = res["learned"]["steps_per_s"] / res["true"]["steps_per_s"]
        print(f"{res['env_id']}: learned/true = {ratio:.2f} (median of per-iteration rates: "
              f"{res['learned']['steps_per_s_median'] / res['true']['steps_per_s_median']:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(load=[load_before, load_after], results=results), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
