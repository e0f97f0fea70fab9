"""`Trainer`: one run of `rlhp train` (its command line is `learner/train_cli.py`).

It runs the whole loop of `docs/architecture.md` on one machine: a local Ray cluster, the reward
service and the query service on loopback ports (SQLite under `runs/<name>/`), the synthetic teacher
(or humans through `rlhp label`), and RLlib PPO whose rewards are replaced by the learned reward.

The schedule (paper §2.2): random-policy segments → initial comparisons → reward-model pretraining
→ RL on the learned reward, reporting env steps to the query service whose label schedule decays
∝ N₀/(T+N₀). The run stops at its step budget. Everything needed to resume lives in the run
directory (`learner.runs`): `config.yaml`, `policy/` (RLlib checkpoint), `reward/reward_model.pt`,
`labels.sqlite` (labels, queries, schedule position), `tokens/` (the run's own tokens) and
`state.json`.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from learner.experiment import ExperimentConfig
from learner.labelers import run_token, start_labelers
from learner.metrics import MetricsWriter
from learner.runs import (TrainError, as_count, init_local_ray, policy_dir, read_state, reattach_library_logs,
                         result_at, save_policy_atomically, stop_on_signals, token_dir, write_state)

log = logging.getLogger("rlhp.train")


class Trainer:
    """Owns the services, the labelers and the RLlib algorithm of one run."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, *, resume: bool = False,
                 ray_address: str | None = None, reward_address: str | None = None,
                 query_address: str | None = None, query_token: str | None = None,
                 out: Callable[[str], None] | None = None,
                 teacher_factory: Callable[[int], Any] | None = None,
                 on_iteration: Callable[[dict], None] | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.ray_address = ray_address
        self.reward_address = reward_address
        self.query_address = query_address
        self.producer_token = query_token or ""
        self._out = out or (lambda s: print(s, flush=True))
        self._last_say = time.time()
        self.experiment = cfg.experiment
        self.model = None  # in-process RewardModel (embedded reward service)
        self.reward_server = None
        self.qcore = None  # in-process QueryService (embedded query service)
        self.query_server = None
        self.algo = None
        self.iteration = 0
        self.env_steps = 0
        self.step_offset = 0
        self.labeler_token = ""
        self._stop = threading.Event()
        self._teachers: list[threading.Thread] = []
        self._owns_ray = False
        self.teacher_factory = teacher_factory  # i -> SyntheticTeacher (tests, custom teachers)
        # lockstep (`RunConfig.lockstep`): only where this driver owns every part of the label loop
        self.lockstep = (cfg.run.lockstep and cfg.run.labelers == "synthetic" and reward_address is None
                         and query_address is None)
        self.on_iteration = on_iteration  # called with each metrics row, after its checkpoint (Tune)
        import torch

        # The driver hosts the learner, the reward model and both services: oversubscribing the
        # cores with torch's intra-op threads slows all of them down.
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))

    def say(self, line: str) -> None:
        self._last_say = time.time()
        self._out(line)

    # ---- set-up ---------------------------------------------------------------------------

    def _space(self):
        from actors.envs import make_env
        from rlhp.types import Space

        env = make_env(self.cfg.env.env_id, **self.cfg.env_options)
        try:
            return Space.from_gym(env.observation_space, env.action_space)
        finally:
            env.close()

    def start_services(self) -> None:
        from query_service.core import QueryService
        from query_service.server import serve as serve_query
        from reward_service.client import TOKEN_ENV as REWARD_TOKEN_ENV, RewardClient
        from reward_service.core import RewardModel
        from reward_service.server import serve as serve_reward

        host, run = self.cfg.run.host, self.cfg.run
        from rlhp.rpc import is_loopback

        if not is_loopback(host) and not run.insecure:
            raise TrainError(f"run.host={host} is reachable from other machines and the embedded services have "
                             "no TLS: keep 127.0.0.1 and tunnel to it (deploy/README.md), or add --set "
                             "run.insecure=true on a network you trust")
        reward_backend: Any
        if self.reward_address is None:
            ckpt = self.run_dir / "reward" / "reward_model.pt"
            if self.resume and ckpt.exists():
                self.model = RewardModel.load(str(ckpt), device=self.cfg.reward.device)
                self.say(f"reward model restored from {ckpt} (version {self.model.stats().model_version})")
            else:
                space = self._space()
                rcfg = replace(self.cfg.reward, seed=self.cfg.run.seed)
                if rcfg.device == "cpu" and rcfg.train_duty_cycle == 1.0:
                    # Embedded next to the learner on the same CPUs: train in the gaps.
                    rcfg = replace(rcfg, train_duty_cycle=0.25)
                self.model = RewardModel(space, rcfg, checkpoint_dir=str(self.run_dir / "reward"))
            # $RLHP_REWARD_TOKEN, when set, guards the embedded reward service too; its clients
            # (the learner connector, a query service elsewhere) read the same variable
            self.reward_server = serve_reward(self.model, host=host, port=run.reward_port,
                                              token=os.environ.get(REWARD_TOKEN_ENV) or None)
            self.reward_address = self.reward_server.address
            reward_backend = self.model
        else:
            reward_backend = RewardClient(self.reward_address)
        if self.query_address is None:
            self.qcore = QueryService(self.run_dir, self.cfg.query, reward=reward_backend,
                                      reward_factory=RewardClient, seed=self.cfg.run.seed)
            if not self.lockstep:  # lockstep: the driver selects and forwards itself (`sync_labels`)
                self.qcore.start()
            self.query_server = serve_query(self.qcore, host=host, port=run.query_port)
            self.query_address = self.query_server.address
            self.producer_token = self._create_token(f"actors-{self.experiment}", "producer")
        elif not self.producer_token:
            raise TrainError("--query-address needs --query-token (a producer token: "
                             "rlhp token create --role producer)")
        if self.qcore is None:  # a shared query service: tell it where this run's reward model is
            from query_service.client import QueryClient

            with QueryClient(self.query_address, self.producer_token) as client:
                self.report_progress(client)
        self.say(f"reward service at {self.reward_address}, query service at {self.query_address}, "
                 f"run directory {self.run_dir}")

    def report_progress(self, client: Any) -> Any:
        """Env steps and the goal in words to the query service; a shared one (many games) also learns
        this run's reward service address, env id and label budget, so it routes this experiment's
        labels here."""
        if self.qcore is not None:
            return client.report_progress(self.experiment, self.env_steps, goal=self.cfg.goal_text)
        return client.report_progress(self.experiment, self.env_steps, reward_address=self.reward_address or "",
                                      env_id=self.cfg.env.env_id, label_budget=self.cfg.query.label_budget,
                                      goal=self.cfg.goal_text)

    def _create_token(self, name: str, role: str) -> str:
        """A token of this run, kept in its run directory: a resumed run reuses it."""
        assert self.qcore is not None
        return run_token(self.qcore, token_dir(self.run_dir), name, role, [self.experiment])

    def start_labelers(self) -> None:
        self.labeler_token, self._teachers = start_labelers(
            self.qcore, self.query_address, [self.experiment], self.cfg.run.labelers, self.cfg.teacher,
            self.cfg.run.seed, self._stop, self.say, self.teacher_factory, token_dir=token_dir(self.run_dir))

    # ---- the initial phase: random-policy segments, initial labels, pretraining ------------

    def collect_random_segments(self) -> int:
        from actors.envs import default_segment_length, make_env, random_actions
        from actors.segments import SegmentCutter
        from query_service.client import QueryClient

        q = self.cfg.query
        want = self.cfg.run.initial_segments or max(20, 2 * q.initial)
        length = self.cfg.env.segment_length or default_segment_length(self.cfg.env.env_id)
        env = make_env(self.cfg.env.env_id, **self.cfg.env_options)
        space = env.action_space
        low = getattr(space, "low", None)
        high = getattr(space, "high", None)
        cutter = SegmentCutter(length, self.experiment, self.cfg.env.env_id, fraction=1.0,
                               rng=self.cfg.run.seed, fps=float(getattr(env, "fps", 30.0)),
                               action_low=low, action_high=high, random_policy=True)
        try:
            sample = random_actions(space, self.cfg.run.random_action_scales)
        except ValueError as e:
            env.close()
            raise TrainError(f"run.random_action_scales: {e}") from None
        space.seed(self.cfg.run.seed)
        client = QueryClient(self.query_address, self.producer_token)
        sent, episode, longest = 0, 0, 0
        t0 = time.time()
        try:
            while sent < want:
                obs, info = env.reset(seed=self.cfg.run.seed + episode)
                track = cutter.start(obs, info)
                done, steps = False, 0
                batch = []
                while not done and sent + len(batch) < want:
                    action = sample(episode)
                    obs, _, term, trunc, info = env.step(action)
                    steps += 1
                    rec = track.step(action, obs, info)
                    if rec is not None:
                        batch.append(rec)
                    done = term or trunc
                if batch:
                    client.add_segments(batch)
                    sent += len(batch)
                episode += 1
                longest = max(longest, steps)
                if episode >= (200 if sent == 0 else max(200, 20 * want)) and sent < want:
                    # Segments never span two episodes: a task whose random episodes end sooner
                    # (InvertedDoublePendulum: 4-16 steps against 1.5 s = 30) would otherwise loop forever.
                    raise TrainError(
                        f"{episode} random-policy episodes gave {sent} of the {want} segments of {length} steps "
                        f"wanted: the episodes end too soon (the longest had {longest} steps) and a segment "
                        f"never spans two episodes. Use shorter segments (--set env.segment_length=N, N ≤ "
                        f"{longest}) or fewer random segments (--set run.initial_segments=N).")
        finally:
            env.close()
            client.close()
        self.say(f"collected {sent} random-policy segments of {length} steps "
                 f"({episode} episodes, {time.time() - t0:.1f} s)")
        return sent

    def wait_for_initial_labels(self) -> None:
        from query_service.client import QueryClient

        need = self.cfg.query.initial
        if need <= 0:
            return
        if self.lockstep:
            t0 = time.time()
            self.sync_labels()
            self.say(f"initial labels: {need} in {time.time() - t0:.1f} s")
            return
        client = QueryClient(self.query_address, self.producer_token)
        t0 = time.time()
        last = -1
        timeout = self.cfg.run.initial_label_timeout_s
        try:
            while True:
                p = self.report_progress(client)
                have = p.labels
                if have >= need:
                    break
                if have != last or time.time() - t0 > 30 and int(time.time() - t0) % 30 == 0:
                    where = (f"label at: rlhp label --server {self.query_address} --token "
                             f"{self.labeler_token}" if self.labeler_token else "synthetic teacher")
                    self.say(f"waiting for the initial labels: {have}/{need} so far "
                             f"({p.queries_pending} queries waiting; {where})")
                    last = have
                if timeout and time.time() - t0 > timeout:
                    raise TrainError(f"only {have} of {need} initial labels after {timeout:.0f} s; "
                                     "is anyone labeling?")
                time.sleep(0.2)
        finally:
            client.close()
        self.say(f"initial labels: {need} in {time.time() - t0:.1f} s")

    def sync_labels(self) -> int:
        """Lockstep: the labels the schedule wants at the reported env steps (`learner.lockstep`)."""
        from learner import lockstep
        from query_service.local import LocalClient

        assert self.qcore is not None
        self.report_progress(LocalClient(self.qcore, self.producer_token))
        return lockstep.sync_labels(self.qcore, self.experiment, self._teachers)

    def pretrain(self) -> None:
        if self.model is None:
            return
        # Forwarding is asynchronous: make sure the initial labels reached the reward model.
        deadline = time.time() + 60
        if self.qcore is not None:
            from learner.lockstep import forward_all

            forward_all(self.qcore, strict=self.lockstep)
        while (self.qcore is None and self.model.stats().comparisons_seen < self.cfg.query.initial
               and time.time() < deadline):  # a shared query service forwards on its own
            time.sleep(0.1)
        steps = self.cfg.run.pretrain_steps
        if steps > 0:
            t0, done = time.time(), 0
            chunk = max(1, min(steps, 5))
            self.say(f"pretraining the reward model: {steps} steps on "
                     f"{self.model.stats().comparisons} comparisons ({self.model.stats().architecture})")
            while done < steps:  # in rounds, with a progress line each ~10 s
                n = min(chunk, steps - done)
                self.model.train(n)
                done += n
                if done < steps and time.time() - self._last_say > 10:
                    self.say(f"pretraining the reward model: {done}/{steps} steps "
                             f"({time.time() - t0:.0f} s)")
            s = self.model.stats()
            self.say(f"reward model pretrained: {steps} steps on {s.comparisons} comparisons in "
                     f"{time.time() - t0:.1f} s (version {s.model_version}, val accuracy "
                     f"{s.val_accuracy:.2f})")

    # ---- RL -------------------------------------------------------------------------------

    def start_ray(self) -> None:
        import ray

        if ray.is_initialized():
            return
        try:
            if self.ray_address:
                ray.init(address=self.ray_address, log_to_driver=False, configure_logging=False)
            else:
                init_local_ray(include_dashboard=False, _node_ip_address="127.0.0.1",
                               num_cpus=max(2, self.cfg.rl.num_env_runners + 1), log_to_driver=False,
                               configure_logging=False)  # the loggers stay as the caller set them (a file)
        except (RuntimeError, ConnectionError, TimeoutError) as e:
            where = f"the Ray cluster at {self.ray_address}" if self.ray_address else "a local Ray instance"
            raise TrainError(f"could not start {where}: {e} (a loaded machine can time out here: "
                             f"run again, with --resume {self.run_dir} if the run had started)") from e
        self._owns_ray = True

    def build_algo(self) -> None:
        from learner.algo import build_algo_config

        rl = self.cfg.rl
        config = build_algo_config(
            self.cfg.env.env_id, self.reward_address, algo=rl.algo,
            num_env_runners=rl.num_env_runners, num_envs_per_env_runner=rl.num_envs_per_env_runner,
            num_learners=rl.num_learners, env_opts=self.cfg.env_options,
            experiment=self.experiment, segment_length=self.cfg.env.segment_length or None,
            segment_fraction=self.cfg.env.segment_fraction, query_address=self.query_address,
            query_token=self.producer_token, seed=self.cfg.run.seed,
            segment_flush_s=30.0 if self.lockstep else 0.0,
            evaluation_interval=self.cfg.run.eval_every or None,
            **{**({"num_gpus_per_learner": rl.num_gpus_per_learner} if rl.num_gpus_per_learner else {}),
               **dict(rl.overrides)})
        self.algo = config.build_algo()
        policy = policy_dir(self.run_dir)
        if self.resume and policy is not None:
            self.algo.restore_from_path(str(policy))
            self.say(f"policy restored from {policy}")

    def _segment_metrics(self) -> dict[str, float]:
        """Predicted return and the reward-fit correlations over recent segments of this run
        (`learner.diagnostics.segment_metrics`)."""
        from learner.diagnostics import segment_metrics

        if self.qcore is None or self.model is None:
            return dict(predicted_return=math.nan, segment_corr=math.nan, policy_corr=math.nan,
                        step_corr=math.nan)
        return segment_metrics(self.qcore, self.experiment, self.model)

    def _row(self, result: dict, dt: float, steps_before: int) -> dict:
        from learner.reward_connector import reward_fallback, reward_version
        from query_service.client import QueryClient

        client = QueryClient(self.query_address, self.producer_token)
        try:
            p = self.report_progress(client)
        finally:
            client.close()
        stats = self.model.stats() if self.model is not None else None
        fit = self._segment_metrics()
        true_ret = result_at(result, "env_runners", "true_episode_return")
        ev = result_at(result, "evaluation", "env_runners", "true_episode_return")
        if not (isinstance(ev, float) and math.isnan(ev)):
            true_ret = ev
        if isinstance(true_ret, float) and math.isnan(true_ret):  # no episode ended (long ones, many envs):
            true_ret = self._true_return  # the mean of the last episodes is the one reported before
        self._true_return = true_ret
        rows_labels = p.labels
        row = dict(
            iteration=self.iteration, time_s=round(time.time() - self._t0, 1), env_steps=self.env_steps,
            steps_per_s=(self.env_steps - steps_before) / max(dt, 1e-9), true_return=true_ret,
            predicted_return=fit["predicted_return"], segment_corr=fit["segment_corr"],
            policy_corr=fit["policy_corr"], step_corr=fit["step_corr"], labels=rows_labels, labels_wanted=p.labels_wanted,
            label_rate=(rows_labels - self._labels_before) / max(1, self.env_steps - steps_before),
            queries_pending=p.queries_pending,
            # embedded: the model itself; a reward service elsewhere: the version the learner
            # connector scored this iteration's batch with
            reward_version=stats.model_version if stats else reward_version(result),
            reward_val_accuracy=stats.val_accuracy if stats else math.nan,
            reward_val_loss=stats.val_loss if stats else math.nan,
            segments_sent=result_at(result, "env_runners", "segments_sent", default=0),
            segments_dropped=result_at(result, "env_runners", "segments_dropped", default=0),
            reward_fallback=int(reward_fallback(result)),
        )
        self._labels_before = rows_labels
        return row

    def checkpoint(self) -> None:
        if self.algo is not None:
            save_policy_atomically(self.algo, self.run_dir / "policy", secrets=(self.producer_token,))
        if self.model is not None:
            self.model.checkpoint()
        write_state(self.run_dir, self.iteration, self.env_steps, self.experiment)

    def run(self) -> dict:
        from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED

        self._t0 = time.time()
        stop_on_signals()
        state = read_state(self.run_dir) if self.resume else None
        if state is not None:
            self.iteration, self.env_steps = int(state["iteration"]), int(state["env_steps"])
            self.say(f"resuming at iteration {self.iteration}, {self.env_steps:,} env steps")
        self.start_services()
        self.start_labelers()
        if not self.resume or self.env_steps == 0:
            if not self.resume:
                self.collect_random_segments()
            self.wait_for_initial_labels()
            self.pretrain()
        sync_steps = self.cfg.run.reward_steps_per_iteration
        if self.cfg.run.lockstep and not self.lockstep:
            self.say("run.lockstep needs synthetic labelers and the embedded reward and query services: "
                     "labels come in the background instead")
        if self.model is not None and sync_steps <= 0:
            self.model.start()
        elif self.model is None and sync_steps > 0:
            self.say("run.reward_steps_per_iteration applies to the embedded reward model only: the "
                     f"reward service at {self.reward_address} trains on its own")
        self.start_ray()
        stop_on_signals()  # again: ray.init replaced the SIGTERM handler
        reattach_library_logs()  # and dropped the handlers of Ray's loggers
        self.build_algo()
        reattach_library_logs()
        metrics = MetricsWriter(self.run_dir, resume=self.resume, stream=None)
        self._labels_before, self._true_return = 0, math.nan
        start_steps = self.env_steps
        try:
            while self.env_steps < self.cfg.run.max_env_steps:
                t = time.time()
                before = self.env_steps
                result = self.algo.train()
                self.iteration += 1
                sampled = as_count(result_at(result, "env_runners", NUM_ENV_STEPS_SAMPLED, default=0))
                if sampled == 0 and self.cfg.rl.algo == "appo" and self.env_steps == 0:
                    # APPO asks remote env runners for samples and trains on those that came back
                    self.say(f"iteration {self.iteration}: waiting for the env runners' first samples")
                elif sampled == 0:  # e.g. the only env runner died during sample(); RLlib restarts it
                    self.say(f"iteration {self.iteration}: no env steps came back (an env runner was lost; "
                             "RLlib starts a new one)")
                self.env_steps += sampled
                if self.lockstep:
                    self.sync_labels()  # the labels the schedule wants at these env steps
                if self.model is not None and sync_steps > 0:
                    self.model.train(sync_steps)
                row = self._row(result, time.time() - t, before)
                metrics.write(row)
                self.say(_progress(row))
                if self.iteration % max(1, self.cfg.run.checkpoint_every) == 0:
                    self.checkpoint()
                if self.on_iteration is not None:
                    self.on_iteration(row)
            self.checkpoint()
        finally:
            metrics.close()
        return {"iterations": self.iteration, "env_steps": self.env_steps,
                "steps_this_session": self.env_steps - start_steps, "run_dir": str(self.run_dir)}

    def close(self) -> None:
        self._stop.set()
        for th in self._teachers:
            th.join(timeout=5)
        if self.algo is not None:
            try:
                self.algo.stop()
            except Exception:  # noqa: BLE001
                pass
        if self.model is not None:
            self.model.stop()
        if self.query_server is not None:
            self.query_server.stop(0.5)
        if self.qcore is not None:
            self.qcore.close()
        if self.reward_server is not None:
            self.reward_server.stop(0.5)
        if self._owns_ray:
            import ray

            ray.shutdown()


def _progress(row: dict) -> str:
    from learner.metrics import progress_line

    return progress_line(row)
