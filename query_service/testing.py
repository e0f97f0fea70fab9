"""Small synthetic data for tests and benchmarks, shipped with the package (like SB3's test envs)."""

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
