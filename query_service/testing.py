"""Small synthetic data and fixtures for tests and benchmarks, shipped with the package (like SB3's test envs)."""

from __future__ import annotations

import numpy as np


def synthetic_atari_frames(seed: int, t: int = 25) -> np.ndarray:
    """Atari-like frames: a flat playfield with a paddle and a ball that move (compresses like Atari)."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((t, 210, 160, 3), np.uint8)
    frames[:] = rng.integers(0, 120, 3, dtype=np.uint8)
    frames[:, 24:34, :] = (236, 236, 236)  # top wall
    bx, by, vx, vy = *rng.integers(20, 140, 2), *rng.choice([-4, -3, 3, 4], 2)
    py = int(rng.integers(40, 160))
    for i in range(t):
        bx, by = bx + vx, by + vy
        if not 4 <= bx <= 150:
            vx = -vx
        if not 40 <= by <= 200:
            vy = -vy
        py = int(np.clip(py + rng.integers(-6, 7), 40, 180))
        frames[i, max(by, 0):by + 4, max(bx, 0):bx + 2] = (236, 236, 236)
        frames[i, py:py + 16, 140:144] = (92, 186, 92)
    return frames


class FakeClock:
    """A clock that stands still until a test moves it (`clock.t += 60`)."""

    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def segment_records(n: int, exp: str = "Hop", length: int = 10, start: int = 0, obs_dim: int = 4,
                    random_policy: bool = False, rng: np.random.Generator | None = None, center: float = 0.0,
                    prefix: str = "s") -> list:
    """`n` Hopper-like `SegmentRecord`s with ids `<prefix><i>` for i in start..start+n-1: normal
    observations around `center`, one action dimension, normal true rewards, env_step = i."""
    from .types import SegmentRecord

    rng = rng or np.random.default_rng(start)
    return [SegmentRecord(
        id=f"{prefix}{i}", experiment=exp, env_id="Hopper-v5",
        observations=(center + rng.normal(size=(length, obs_dim))).astype(np.float32),
        actions=rng.normal(size=(length, 1)).astype(np.float32),
        true_rewards=rng.normal(size=length).astype(np.float32), env_step=i, fps=20.0,
        random_policy=random_policy) for i in range(start, start + n)]


def open_experiment(svc, n: int = 20, env_steps: int = 10**9, **kw) -> tuple[str, str]:
    """Tokens `actors` (producer) and `alice` (labeler) on a `QueryService`, `n` segments of
    experiment Hop added and its progress reported; returns (producer token, labeler token)."""
    prod = svc.create_token("actors", "producer")
    alice = svc.create_token("alice", "labeler")
    svc.add_segments(prod, segment_records(n, **kw))
    svc.report_progress(prod, "Hop", env_steps)
    return prod, alice
