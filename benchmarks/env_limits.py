"""What one core can do without RLlib's sampling machinery: the env alone and the env plus the
policy's forward pass, env steps per second (`benchmarks/pipeline.py` prints them beside its rates).
"""

from __future__ import annotations

import time
from typing import Any, Callable


def physical_limits(module: Any, make_env: Callable[[], Any], num_envs: int, steps: int = 2000) -> dict:
    """Env steps per second of one process (torch 1 thread) over `num_envs` envs from `make_env`:
    the env alone (random actions), and the env plus the policy's forward pass (`module`: an
    RLModule, one batched `forward_inference` over the envs per step, as an env runner does)."""
    import numpy as np
    import torch
    from ray.rllib.core.columns import Columns

    envs = [make_env() for _ in range(max(1, num_envs))]
    obs = [e.reset(seed=i)[0] for i, e in enumerate(envs)]
    space = envs[0].action_space
    rng = np.random.default_rng(0)

    def step_all(actions):
        for i, e in enumerate(envs):
            o, _, term, trunc, _ = e.step(actions[i])
            obs[i] = e.reset()[0] if (term or trunc) else o

    n = max(1, steps // len(envs))
    t0 = time.perf_counter()
    for _ in range(n):
        step_all([space.sample() for _ in envs])
    env_only = n * len(envs) / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    with torch.inference_mode():
        for _ in range(n):
            x = np.stack(obs)
            x = x.astype(np.float32) if x.dtype == np.float64 else x
            logits = module.forward_inference({Columns.OBS: torch.as_tensor(x)})[Columns.ACTION_DIST_INPUTS]
            logits = logits.numpy()
            if hasattr(space, "n"):  # sample from the categorical, as exploration does
                p_ = np.exp(logits - logits.max(1, keepdims=True))
                p_ /= p_.sum(1, keepdims=True)
                acts = [int(rng.choice(space.n, p=row)) for row in p_]
            else:
                mean = logits[:, : logits.shape[1] // 2]
                acts = list(np.clip(mean, space.low, space.high).astype(space.dtype))
            step_all(acts)
    with_policy = n * len(envs) / (time.perf_counter() - t0)
    for e in envs:
        e.close()
    return dict(env_only_per_s=env_only, env_policy_per_s=with_policy, num_envs=len(envs), steps=n * len(envs))
