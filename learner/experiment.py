"""The experiment config: frozen dataclasses composed into one `ExperimentConfig`, saved as
`config.yaml` in the run directory. Presets (`smoke`, `classic`, `mujoco`, `atari`) give the
paper's settings per domain; a YAML/TOML file and `--set field=value` override any field."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from actors.envs import default_random_action_scales, is_atari
from actors.goals import default_goal_text, load_goal
from learner.presets import PRESETS, RL_SETTINGS, preset_for
from learner import configs
from query_service.config import QueryConfig
from reward_service.config import RewardConfig


@dataclass(frozen=True)
class EnvConfig:
    env_id: str = "rlhp/FixedCartPole-v0"
    """gymnasium id: `ALE/<Game>-v5`, a MuJoCo `*-v5`, classic control, or `rlhp/FixedCartPole-v0`."""
    segment_length: int = 0
    """Steps per segment (clip); 0 picks the paper's default (25 Atari, ~1.5 s MuJoCo)."""
    segment_fraction: float = 0.1
    """Share of the sampled non-overlapping windows streamed to the query service as candidates."""
    env_opts: dict = field(default_factory=dict)
    """Extra keyword options for `actors.envs.make_env` (e.g. `terminal_on_life_loss`)."""
    goal_text: str = ""
    """The task in words, shown to labelers above the clips and stored with every label
    (`rlhp train --goal`); "" takes the goal function's `description` when `teacher.goal` is set,
    else the env family's default (`actors.goals.default_goal_text`)."""


@dataclass(frozen=True)
class RLConfig:
    algo: str = "ppo"
    """`ppo` (default) or `appo` (many-worker Atari)."""
    num_env_runners: int = 0
    """Remote RLlib env runners (Ray actors); 0 samples in the driver process."""
    num_envs_per_env_runner: int = 1
    """Vectorised envs per env runner."""
    num_learners: int = 0
    """Remote learners; 0 trains in the driver process."""
    num_gpus_per_learner: float = 0.0
    """GPUs of each learner (of the driver's learner with 0 remote ones); `rlhp train --device cuda` sets 1."""
    overrides: dict = field(default_factory=dict)
    """RLlib settings passed through as they are (`lr`, `train_batch_size_per_learner`, ...)."""


@dataclass(frozen=True)
class TeacherConfig:
    """The synthetic labeler (B-Pref knobs): used when `run.labelers` is `synthetic`."""

    beta: float = math.inf
    """Boltzmann rationality: P(left) = σ(β·ΔR); inf answers deterministically."""
    mistake_prob: float = 0.0
    """Probability of flipping the answer."""
    skip_threshold: float = -math.inf
    """Skip (can't tell) when both segment returns are below this; any finite value (negative
    too) works, -inf never skips."""
    equal_threshold: float = 0.0
    """Answer EQUAL when |ΔR| is at most this."""
    gamma: float = 1.0
    """Myopic discount: later steps weigh more (γ < 1)."""
    labelers: int = 1
    """Synthetic labelers answering in parallel."""
    goal: str = ""
    """Judge by this goal instead of the env reward: ``package.module:function`` (per-step
    ``goal(obs, action, next_obs, info)``, see `actors.goals`; e.g. ``actors.goals:hopper_backflip``).
    It becomes the "true reward" of the teacher, `rlhp evaluate` and the metrics."""


@dataclass(frozen=True)
class RunConfig:
    name: str = ""
    """Run name: the directory `runs_dir/name` (default: derived from the env id)."""
    runs_dir: str = "runs"
    """Where run directories live."""
    max_env_steps: int = 1_000_000
    """Stop after this many env steps."""
    labelers: str = "synthetic"
    """`synthetic` (the teacher answers from true rewards) or `human` (wait for `rlhp label`)."""
    seed: int = 0
    """Seed of RLlib, the reward ensemble and the teacher."""
    checkpoint_every: int = 5
    """Write policy, reward model and run state every N iterations (and at the end)."""
    initial_segments: int = 0
    """Random-policy segments collected before RL starts (0: enough for the initial labels)."""
    random_action_scales: tuple[float, ...] = ()
    """Action scales of that random policy (continuous actions): random episode i acts uniformly
    in the action box stretched about its centre by `scales[i % len(scales)]` and clipped to it
    (0.1: small actions; 2: half of them at the box's edge); empty: the box. Mixed scales (e.g.
    0.1,0.3,1,2) let the first comparisons show what large actions cost, which Reacher and Ant
    need: their control cost differs little between segments of one scale (docs/label_efficiency.md)."""
    pretrain_steps: int = 500
    """Reward-model training steps on the initial labels before RL starts."""
    reward_steps_per_iteration: int = 0
    """Reward-model training steps the driver runs after every policy iteration, instead of training
    in a background thread (embedded reward model only). The model then gets the same training per
    env step on any machine under any load; in the background it gets what the CPUs leave over.
    0: background training."""
    lockstep: bool = False
    """Labels in step with the policy, for synthetic labelers and the embedded services: after each
    policy iteration the driver waits until that iteration's segments are stored, selects the
    queries the label schedule wants, waits until the teacher has answered them, forwards the labels
    and then runs `reward_steps_per_iteration`. No part of the loop then depends on thread timing or
    machine load, and a run is reproducible for its seed (query ids, pairs, bootstraps, labels,
    RLlib). False: selection, labels and forwarding run in the background, as they must with humans
    (a labeler never blocks training); `rlhp train` says so and runs that way when lockstep cannot
    apply (human labelers, a query or reward service elsewhere)."""
    host: str = "127.0.0.1"
    """Where the embedded services bind (loopback by default). They have no TLS: another address
    needs `insecure` (or tunnel to loopback, deploy/README.md)."""
    insecure: bool = False
    """Allow a non-loopback `host` for the embedded services, whose traffic (tokens, segments,
    labels) then crosses the network in clear text: only on a network you trust."""
    reward_port: int = 0
    """Embedded reward service port (0: a free one)."""
    query_port: int = 0
    """Embedded query service port (0: a free one)."""
    initial_label_timeout_s: float = 0.0
    """Give up waiting for the initial labels after this long (0: wait as long as it takes)."""
    eval_every: int = 0
    """Run an evaluation (true return, greedy policy) every N iterations; 0: only training episodes."""


@dataclass(frozen=True)
class ExperimentConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def experiment(self) -> str:
        return self.run.name or default_name(self.env.env_id)

    @property
    def goal_text(self) -> str:
        """What labelers are told the goal is (see `EnvConfig.goal_text`)."""
        if self.env.goal_text.strip():
            return self.env.goal_text.strip()
        if self.teacher.goal:
            described = getattr(load_goal(self.teacher.goal), "description", "")
            if described:
                return str(described)
        return default_goal_text(self.env.env_id)

    @property
    def env_options(self) -> dict:
        """Keyword options of `actors.envs.make_env` for this experiment (env options + goal)."""
        opts = dict(self.env.env_opts)
        if self.teacher.goal:
            opts["goal"] = self.teacher.goal
        return opts


def default_name(env_id: str) -> str:
    return env_id.replace("ALE/", "").replace("rlhp/", "").replace("/", "-").lower()


def preset(name: str | None, env_id: str) -> ExperimentConfig:
    """The experiment settings of preset `name` for `env_id` (None: the env's family,
    `learner.presets.preset_for`). Their RLlib hyper-parameters start from the family's
    `learner.presets.RL_SETTINGS`; `rl.overrides` here go on top."""
    name = name or preset_for(env_id)
    env = EnvConfig(env_id=env_id)
    if name == "smoke":
        # A few iterations on anything: tests and a first look.
        steps = 4000
        return ExperimentConfig(
            env=replace(env, segment_fraction=0.5),
            rl=RLConfig(overrides=dict(train_batch_size_per_learner=500, minibatch_size=100, num_epochs=2)),
            reward=RewardConfig.smoke(target_std=0.05 if is_atari(env_id) else 1.0),
            query=QueryConfig.smoke(total_env_steps=float(steps), label_budget=30, initial_labels=10),
            run=RunConfig(max_env_steps=steps, pretrain_steps=50, checkpoint_every=2, initial_segments=30),
        )
    if name == "classic":
        # Tested as it is: tests/learner/test_train.py and `benchmarks/label_efficiency.py --task
        # cartpole` (≤ 200 labels, 40k steps; docs/label_efficiency.md has the per-seed table).
        steps = 40_000
        return ExperimentConfig(
            env=replace(env, segment_fraction=0.25),
            # the classic family's lr and batch (RL_SETTINGS, measured there), also when
            # `--preset classic` runs an env of another family
            rl=RLConfig(overrides={k: RL_SETTINGS["classic"][k] for k in ("lr", "train_batch_size_per_learner")}),
            reward=RewardConfig(members=3, hidden=(64, 64), steps_per_round=50, use_actions=False,
                                normalize_inputs=True),
            query=QueryConfig(label_budget=200, initial_labels=60, schedule_n0=10_000.0,
                              total_env_steps=float(steps), max_segments=1000),
            # 100 reward-model steps per 1k-step PPO iteration, run by the driver: the same training
            # on any machine (in the background it got ~750 steps in a whole 40k-step run here).
            # In lockstep: reproducible for a seed, the same on a loaded CI machine as on an idle one.
            run=RunConfig(max_env_steps=steps, pretrain_steps=300, reward_steps_per_iteration=100,
                          lockstep=True),
        )
    if name == "mujoco":
        steps = 1_000_000
        return ExperimentConfig(
            env=env,
            # 8 vectorised envs in the driver: RLlib's per-step Python is the cost, not MuJoCo (0.7 ms
            # a step against 1.8 with one env); Hopper with 700 labels learned on 2 of 2 seeds and ran
            # faster than with one env (docs/benchmarks.md, "Presets by return per second")
            rl=RLConfig(num_envs_per_env_runner=8),
            reward=RewardConfig(target_std=1.0),
            query=QueryConfig.mujoco(label_budget=700, total_env_steps=float(steps)),
            # Reacher and Ant: random segments of mixed action scales (actors.envs.MIXED_ACTION_SCALES)
            run=RunConfig(max_env_steps=steps, random_action_scales=default_random_action_scales(env_id)),
        )
    if name == "atari":
        steps = 10_000_000
        return ExperimentConfig(
            env=env,
            rl=RLConfig(num_env_runners=1, num_envs_per_env_runner=4),
            reward=RewardConfig(target_std=0.05, max_comparisons=3000, batch_size=16),
            query=QueryConfig.atari(label_budget=5500, total_env_steps=float(steps)),
            # The CNN ensemble trains at ~300 frames/s on one CPU core (~8 s a step): 30 pretraining steps
            # take ~4 min on a CPU (seconds on a GPU); the ensemble keeps training in the background.
            run=RunConfig(max_env_steps=steps, pretrain_steps=30),
        )
    raise configs.ConfigError(f"unknown preset {name!r}; one of {', '.join(PRESETS)}")


def device_changes(device: str) -> dict:
    """Config changes for `rlhp train --device`: the reward model's torch device and the learner's
    GPU. "cpu" sets both to the CPU; "auto" is "cuda" when torch sees a GPU, else no change."""
    import re

    device = device.strip().lower()
    if device == "auto":
        import torch

        if not torch.cuda.is_available():
            return {}
        device = "cuda"
    if device == "cpu":
        return {"reward": {"device": "cpu"}, "rl": {"num_gpus_per_learner": 0.0}}
    if not re.fullmatch(r"cuda(:\d+)?", device):
        raise configs.ConfigError(f"--device must be auto, cpu, cuda or cuda:N, not {device!r}")
    return {"reward": {"device": device}, "rl": {"num_gpus_per_learner": 1.0}}


def resolve(env_id: str, preset_name: str | None = None, file: str | None = None,
            sets: list[str] | None = None, **run_changes: Any) -> ExperimentConfig:
    """Preset → file → `--set` overrides → explicit run fields; keeps the schedule's horizon in
    step with the run's step budget."""
    cfg = preset(preset_name, env_id)
    if file:
        cfg = configs.apply(cfg, configs.load_file(file))
    if sets:
        cfg = configs.apply(cfg, configs.parse_set(sets))
    changes = {k: v for k, v in run_changes.items() if v is not None}
    if changes:
        cfg = configs.apply(cfg, {"run": changes})
    if cfg.env.env_id != env_id and file is None and not sets:
        cfg = replace(cfg, env=replace(cfg.env, env_id=env_id))
    if cfg.query.total_env_steps != cfg.run.max_env_steps:
        cfg = replace(cfg, query=replace(cfg.query, total_env_steps=float(cfg.run.max_env_steps)))
    return cfg


def load(path: str) -> ExperimentConfig:
    """Read a saved `config.yaml` back (resume)."""
    return configs.apply(ExperimentConfig(), configs.load_file(path))
