"""How well the learned reward matches the true one, where it matters: on the current policy.

A correlation over "recent segments" mixes segments of very different kinds (a random policy's
falls, the policy's own behaviour) and can be 0.99 while the model ranks the policy's own
behaviour wrongly, which is exactly what the policy then exploits. So we report three numbers:

- ``segment_corr``: corr(predicted, true) of segment returns over recent segments of any kind;
- ``policy_corr``: the same over the current policy's segments only (what RL optimises);
- ``step_corr``: per-step corr(r̂(o_t, a_t), r_t) over the transitions of those policy segments.

`segment_metrics` computes them from the query service's segments (asked through its methods
`recent_segment_ids` and `load_segments`, never its tables; one batched `score` call);
`reward_fit` rolls out a finished run's saved policy and a random policy and compares per step
(benchmarks, post-mortems), and, where the env reports its reward's terms (gymnasium MuJoCo's
``reward_forward``, ``reward_survive``, ``reward_ctrl``, ...), how much of each term the learned
reward pays (`part_weights`): a correlation of 0.95 can hide a term the model barely learned.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from rlhp.types import model_actions


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when it is undefined (fewer than 3 points or a constant side)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 3 or np.std(a) < 1e-12 or np.std(b) < 1e-12:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def segment_metrics(segments: Any, experiment: str, backend: Any, n: int = 100) -> dict[str, float]:
    """Mean predicted segment return and the three correlations of the module docstring over the
    `n` most recent segments (and the `n` most recent policy segments) of an experiment.

    `segments` is the query service core (`query_service.core.QueryService`); `backend` scores."""
    nan = dict(predicted_return=math.nan, segment_corr=math.nan, policy_corr=math.nan, step_corr=math.nan)
    recent = segments.recent_segment_ids(experiment, n, policy_only=False)
    policy = segments.recent_segment_ids(experiment, n, policy_only=True)
    ids = list(dict.fromkeys(recent + policy))
    segs = segments.load_segments(experiment, ids)
    ids = [i for i in ids if i in segs]
    if not ids:
        return nan
    rewards, _ = backend.score(np.concatenate([segs[i].observations for i in ids]),
                               np.concatenate([segs[i].actions for i in ids]))
    rewards = np.asarray(rewards, dtype=np.float64)
    per_step: dict[str, np.ndarray] = {}
    start = 0
    for i in ids:
        k = len(segs[i].observations)
        per_step[i] = rewards[start:start + k]
        start += k

    def corr(which: list[str]) -> float:
        which = [i for i in which if i in per_step]
        return pearson(np.array([per_step[i].sum() for i in which]),
                       np.array([float(np.sum(segs[i].true_rewards)) for i in which]))

    recent = [i for i in recent if i in per_step]
    policy = [i for i in policy if i in per_step]
    step_pred = np.concatenate([per_step[i] for i in policy]) if policy else np.zeros(0)
    step_true = (np.concatenate([np.asarray(segs[i].true_rewards, dtype=np.float64) for i in policy])
                 if policy else np.zeros(0))
    return dict(predicted_return=float(np.mean([per_step[i].sum() for i in recent])) if recent else math.nan,
                segment_corr=corr(recent), policy_corr=corr(policy), step_corr=pearson(step_pred, step_true))


def part_weights(pred: np.ndarray, parts: dict[str, np.ndarray], true: np.ndarray) -> dict[str, float]:
    """Least-squares weights w_k of r̂ ≈ Σ_k w_k·part_k + c over the same transitions, divided by
    the slope s of r̂ ≈ s·r + c', so a model that pays every term of the true reward alike
    (r = Σ_k part_k) gets 1.0 for each (``weight_<term>``); a term that varies little (a small
    control cost) gets a poorly determined weight. Empty when the terms do not add up to the true
    reward (an env whose info holds other ``reward_*`` entries), cannot be told apart (a constant
    term, two terms that move together) or hold a NaN/inf: a diagnostic never fails a run."""
    pred = np.asarray(pred, dtype=np.float64)
    names = sorted(parts)
    if not names or len(pred) < len(names) + 2:
        return {}
    X = np.column_stack([np.asarray(parts[k], dtype=np.float64) for k in names])
    true = np.asarray(true, dtype=np.float64)
    if X.shape[0] != len(pred) or true.shape != pred.shape:
        return {}
    if not (np.isfinite(X).all() and np.isfinite(true).all() and np.isfinite(pred).all()):
        return {}
    if np.max(np.abs(X.sum(axis=1) - true)) > 1e-4 * max(1.0, float(np.max(np.abs(true)))):
        return {}
    if np.any(X.std(axis=0) < 1e-9) or true.std() < 1e-9:
        return {}
    A = np.column_stack([X, np.ones(len(X))])
    try:
        coef, _, rank, _ = np.linalg.lstsq(A, pred, rcond=None)
        scale = float(np.polyfit(true, pred, 1)[0])
    except np.linalg.LinAlgError:
        return {}
    if rank < A.shape[1] or not math.isfinite(scale) or abs(scale) < 1e-12:
        return {}
    return {f"weight_{k.removeprefix('reward_')}": float(c / scale) for k, c in zip(names, coef[:-1])}


def reward_fit(run_dir: str | Path, episodes: int = 4, seed: int = 777) -> dict[str, float]:
    """Roll out the run's saved greedy policy and a uniformly random policy, score every
    transition with the saved reward model, and compare with the true reward: per-step corr over
    the policy's transitions (``step_corr``), segment-return corr over the policy's segments
    (``policy_corr``) and over the random policy's (``random_corr``), the mean true/predicted
    return per segment of each, and `part_weights` over both policies' transitions together."""
    from actors.envs import default_segment_length, make_env
    from learner import experiment
    from learner.evaluate import greedy_action, load_module
    from reward_service.core import RewardModel

    run_dir = Path(run_dir)
    cfg = experiment.load(str(run_dir / "config.yaml"))
    model = RewardModel.load(str(run_dir / "reward" / "reward_model.pt"))
    module = load_module(run_dir)
    length = cfg.env.segment_length or default_segment_length(cfg.env.env_id)
    env = make_env(cfg.env.env_id, **cfg.env_options)
    env.action_space.seed(seed)
    out: dict[str, float] = {}
    pooled: list[tuple[np.ndarray, np.ndarray, list[dict]]] = []  # (pred, true, terms) per policy
    try:
        for name in ("policy", "random"):
            obs_l, act_l, rew_l, seg_pred, seg_true, starts = [], [], [], [], [], []
            terms: list[dict] = []
            for ep in range(episodes):
                obs, _ = env.reset(seed=seed + ep)
                done = False
                o_ep, a_ep, r_ep = [], [], []
                while not done:
                    a = greedy_action(module, obs, env.action_space) if name == "policy" else env.action_space.sample()
                    nxt, _, term, trunc, info = env.step(a)
                    o_ep.append(np.asarray(obs, dtype=np.float32))
                    a_ep.append(a)
                    r_ep.append(float(info["true_reward"]))
                    terms.append({k: float(v) for k, v in info.items() if k.startswith("reward_")
                                  and isinstance(v, (int, float, np.number)) and not isinstance(v, bool)})
                    obs, done = nxt, term or trunc
                starts += [len(obs_l) + s for s in range(0, len(o_ep) - length + 1, length)]
                obs_l += o_ep
                act_l += a_ep
                rew_l += r_ep
            o = np.stack(obs_l)
            a = model_actions(np.asarray(act_l), getattr(env.action_space, "low", None),
                              getattr(env.action_space, "high", None))
            pred, _ = model.score(o, a)
            true = np.asarray(rew_l)
            for s in starts:  # non-overlapping windows within each episode, as the actors cut them
                seg_pred.append(float(pred[s:s + length].sum()))
                seg_true.append(float(true[s:s + length].sum()))
            out[f"{name}_corr"] = pearson(np.array(seg_pred), np.array(seg_true))
            out[f"{name}_true_per_segment"] = float(np.mean(seg_true)) if seg_true else math.nan
            out[f"{name}_pred_per_segment"] = float(np.mean(seg_pred)) if seg_pred else math.nan
            if name == "policy":
                out["step_corr"] = pearson(pred, true)
            pooled.append((np.asarray(pred), true, terms))
    finally:
        env.close()
    terms = [t for _, _, ts in pooled for t in ts]
    keys = set(terms[0]) if terms else set()
    if keys and all(set(t) == keys for t in terms):
        out.update(part_weights(np.concatenate([p for p, _, _ in pooled]),
                                {k: np.array([t[k] for t in terms]) for k in keys},
                                np.concatenate([t for _, t, _ in pooled])))
    return out
