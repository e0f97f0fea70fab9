"""What Atari reward-model pretraining costs on this machine (issue 8: "pretraining at the paper's
schedule, 500 labels, in <= 2 min on this CPU, or say what it costs and why").

The `atari` preset's ensemble (3 CNN members, batch 16 comparisons of 25-step segments of 4x84x84
uint8 frames) on 500 comparisons of random frames (the cost does not depend on the pixels). Per
torch thread count it prints the seconds per training step alone, and the two costs of every round
of `RewardModel.train` on top of its steps: measuring each member's train/held-out loss (which
adapts its L2) and the output normalisation.

    python benchmarks/atari_pretrain.py                 # threads 1 and 2, ~3 min
    python benchmarks/atari_pretrain.py --threads 1 --steps 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from reward_service.config import RewardConfig
from reward_service.core import RewardModel
from reward_service.types import ComparisonData, SegmentData
from rlhp.types import Preference, Space

SPACE = Space((4, 84, 84), "uint8", "discrete", 6, ())
LABELS, SEGMENT, BATCH, MEMBERS = 500, 25, 16, 3
PAPER_EPOCHS = 200  # the paper pretrains on the first 500 labels for 200 epochs


def build(seed: int = 0) -> RewardModel:
    rng = np.random.default_rng(seed)
    model = RewardModel(SPACE, RewardConfig.for_space(SPACE, batch_size=BATCH, members=MEMBERS))
    segs = [SegmentData(f"s{i}", rng.integers(0, 255, (SEGMENT, *SPACE.obs_shape), dtype=np.uint8),
                        rng.integers(0, 6, SEGMENT)) for i in range(2 * LABELS)]
    comps = [ComparisonData(f"c{k}", f"s{2 * k}", f"s{2 * k + 1}",
                            Preference.LEFT if rng.random() < 0.5 else Preference.RIGHT) for k in range(LABELS)]
    model.add_comparisons(segs, comps)
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", default="1,2", help="torch thread counts to measure (default 1,2)")
    p.add_argument("--steps", type=int, default=5, help="training steps timed per thread count")
    args = p.parse_args()
    model = build()
    ens = model._ensemble  # the training side, timed without the round around it
    records, segs, pool = model._buffer.training_view()
    train = [r for r in records if not r.val]
    frames = MEMBERS * BATCH * 2 * SEGMENT
    paper_steps = PAPER_EPOCHS * LABELS / BATCH
    print(f"{LABELS} comparisons, {MEMBERS} CNN members, batch {BATCH} x 2 segments x {SEGMENT} frames "
          f"= {frames} frames forward+backward per step")
    print("| torch threads | s per step | frames/s | measure s per round | normalise s per round "
          f"| paper's {paper_steps:,.0f} steps | steps in 2 min (epochs) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        ens.sgd(train, segs, 1, None)  # warm-up
        t = time.perf_counter()
        ens.sgd(train, segs, args.steps, None)
        step = (time.perf_counter() - t) / args.steps
        t = time.perf_counter()
        ens.measure(train, [], segs)
        measure = time.perf_counter() - t
        t = time.perf_counter()
        ens.normalisation(pool)
        norm = time.perf_counter() - t
        in_2min = 120 / step
        print(f"| {threads} | {step:.2f} | {frames / step:,.0f} | {measure:.1f} | {norm:.1f} | "
              f"{paper_steps * step / 3600:.1f} h | {in_2min:.0f} ({in_2min * BATCH / LABELS:.1f}) |", flush=True)


if __name__ == "__main__":
    main()
