"""Configuration of the reward model (the ensemble of reward predictors r̂(o, a)).

Defaults follow Christiano et al. 2017 (§2.2.3, appendix A); `RewardConfig.for_space` picks the
Atari or MuJoCo variant from the observation space, `RewardConfig.smoke()` is a tiny preset for tests.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from rlhp.types import Space


@dataclass(frozen=True)
class RewardConfig:
    """Hyper-parameters of the ensemble, its training and its buffers."""

    members: int = 3
    """Number of ensemble members (independently initialised predictors, each on its own bootstrap)."""

    hidden: tuple[int, ...] = (64, 64)
    """Hidden layer widths of the MLP used for vector observations (the paper: two layers of 64)."""

    normalize_inputs: bool = False
    """Standardise each observation feature (MLP only) by its mean and std over the labelled
    segments, refreshed at every training round and saved with the members. Raw CartPole features
    differ ~20× in scale once the pole falls (angular velocity vs angle), and the MLP then learns
    the angle slowly: on 60 random-policy labels the per-step corr(r̂, r) is 0.12 raw vs 0.23
    standardised (docs/label_efficiency.md). Off by default until the MuJoCo table is measured with it; on in `classic`."""

    use_actions: bool = True
    """Give the action a_t to the predictor, r̂(o_t, a_t) as in the paper; False predicts r̂(o_t).

    A reward that the action enters directly is one the policy can raise by the action alone, with
    no change of state: a small spurious action term (fitted from a few hundred labels of a random
    policy's uniformly random actions) is the easiest thing for PPO to exploit, and on CartPole it
    drove the policy to push one way at every step until the pole fell (docs/label_efficiency.md)."""

    action_term: str = "joint"
    """How the action enters the MLP: "joint" feeds [o, a] to one network (the paper); "additive"
    predicts r̂(o, a) = f(o) + g(a) with a separate network g of the action alone, the shape of every
    MuJoCo control cost. Reacher's joint model explains its labels by joint speeds instead of the
    action's cost and ranks a still arm far below a swinging one (docs/label_efficiency.md). Only
    for vector observations (the CNN ignores it); ignored without `use_actions`."""

    cnn_filters: int = 16
    """Filters in each of the four conv layers of the Atari CNN."""

    cnn_fc: int = 64
    """Width of the fully connected layer after the convolutions (action one-hot joins here)."""

    dropout: float = 0.5
    """Dropout probability after each conv layer of the CNN (the MLP has none)."""

    leaky_slope: float = 0.01
    """Negative slope of the leaky ReLUs."""

    lr: float = 3e-4
    """Adam learning rate of every member."""

    batch_size: int = 32
    """Comparisons per training step and member."""

    max_comparisons: int = 3000
    """Bounded buffer: only the most recent N comparisons are kept (the paper's Atari setting)."""

    random_answer_prob: float = 0.1
    """ε of the labeler noise model: P = (1-ε)·σ(Δ) + ε/2 (the labeler answers at random with prob. ε)."""

    validation: str = "oob"
    """How each member is validated (the losses that adapt its L2, and the reported val metrics).

    - ``"oob"`` (default): out of bag. Every comparison is trained on by the ensemble; member m
      trains on its Poisson(1) bootstrap and is validated on the comparisons its bootstrap left out
      (weight 0: a fraction e^-1 = 1/e of them in expectation, the paper's held-out share). No label
      is spent on validation only, which matters when labels are few (≤ 200 on CartPole: the paper's
      shared split would never train on ~74 of them).
    - ``"split"``: the paper's shared split: `val_fraction` of the comparisons (a stable hash of the
      id) are never trained on by any member."""

    val_fraction: float = 1.0 / math.e
    """Fraction of comparisons held out for validation with ``validation="split"`` (chosen by a
    stable hash of the comparison id)."""

    l2_init: float = 1e-4
    """Initial L2 coefficient (penalty on the sum of squared weights, added to the loss)."""

    l2_adapt: float = 1.2
    """Factor by which L2 grows (val > 1.5×train loss) or shrinks (val < 1.1×train loss) each round."""

    l2_min: float = 1e-8
    """Lower bound of the adaptive L2 coefficient."""

    l2_max: float = 1.0
    """Upper bound of the adaptive L2 coefficient."""

    target_std: float = 1.0
    """Std of each member's normalised output (1.0 for MuJoCo; use 0.05 for Atari, see `for_space`)."""

    norm_transitions: int = 5000
    """Normalisation (zero mean, `target_std`) is computed on this many of the most recent labelled
    transitions at every publish."""

    steps_per_round: int = 100
    """Training steps between two publishes (one step updates every member once)."""

    eval_comparisons: int = 512
    """At most this many train / validation comparisons are used to measure losses after a round."""

    max_rounds_without_new_data: int = 50
    """Background training pauses after this many consecutive rounds without new comparisons and
    resumes when comparisons arrive (keeps versions from churning); 0 means never pause."""

    train_duty_cycle: float = 1.0
    """Share of wall time the background trainer may train (0 < x ≤ 1): after a round that took t
    seconds it rests t·(1−x)/x. 1 trains non-stop, as a reward service on its own GPU or cores
    should; `rlhp train` embeds the service next to the learner and uses 0.25 on CPU-only machines,
    where a non-stop trainer takes a whole core from the learner (see docs/benchmarks.md, Pipeline)."""

    idle_sleep_s: float = 0.05
    """How long the background loop waits when there is nothing to train on."""

    max_score_batch: int = 1_000_000
    """Largest number of transitions accepted by one score / disagreement call."""

    max_pairs: int = 100_000
    """Largest number of pairs accepted by one disagreement call."""

    max_segment_length: int = 10_000
    """Longest segment (in transitions) accepted."""

    seen_ids_capacity: int = 100_000
    """Comparison ids remembered for idempotency (the most recent ones, including evicted ones)."""

    mlp_chunk: int = 4096
    """Transitions per forward pass when scoring with the MLP."""

    cnn_chunk: int = 128
    """Transitions per forward pass when scoring with the CNN."""

    seed: int = 0
    """Seed of member initialisation, dropout and minibatch sampling."""

    device: str = "cpu"
    """Torch device of the ensemble ("cpu", "cuda", "cuda:1", ...)."""

    def __post_init__(self) -> None:
        problems = []
        if self.members < 1:
            problems.append("members must be >= 1")
        if not self.hidden or any(int(h) <= 0 for h in self.hidden):
            problems.append("hidden must be a non-empty tuple of positive widths")
        if not 0.0 <= self.dropout < 1.0:
            problems.append("dropout must lie in [0, 1)")
        if self.lr <= 0 or self.batch_size < 1:
            problems.append("lr must be > 0 and batch_size >= 1")
        if self.max_comparisons < 1:
            problems.append("max_comparisons must be >= 1")
        if not 0.0 <= self.random_answer_prob < 1.0:
            problems.append("random_answer_prob must lie in [0, 1)")
        if self.action_term not in ("joint", "additive"):
            problems.append(f"action_term must be 'joint' or 'additive', not {self.action_term!r}")
        if self.validation not in ("oob", "split"):
            problems.append(f"validation must be 'oob' or 'split', not {self.validation!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            problems.append("val_fraction must lie in [0, 1)")
        if self.l2_adapt < 1.0 or not 0 <= self.l2_min <= self.l2_init <= self.l2_max:
            problems.append("need l2_adapt >= 1 and l2_min <= l2_init <= l2_max")
        if not 0.0 < self.train_duty_cycle <= 1.0:
            problems.append("train_duty_cycle must lie in (0, 1]")
        if self.target_std <= 0:
            problems.append("target_std must be > 0")
        if self.norm_transitions < 1 or self.steps_per_round < 1 or self.eval_comparisons < 1:
            problems.append("norm_transitions, steps_per_round and eval_comparisons must be >= 1")
        if self.seen_ids_capacity < self.max_comparisons:
            problems.append("seen_ids_capacity must be >= max_comparisons")
        if min(self.max_score_batch, self.max_pairs, self.max_segment_length, self.mlp_chunk,
               self.cnn_chunk) < 1:
            problems.append("size limits and chunk sizes must be >= 1")
        if problems:
            raise ValueError("invalid RewardConfig: " + "; ".join(problems))
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))

    # ---- presets -------------------------------------------------------------------------------

    @classmethod
    def for_space(cls, space: Space, **overrides: Any) -> "RewardConfig":
        """The paper's setting for this space: Atari (images) normalise to std 0.05, MuJoCo to 1."""
        base: dict[str, Any] = {"target_std": 0.05 if space.is_image else 1.0}
        base.update(overrides)
        return cls(**base)

    @classmethod
    def smoke(cls, **overrides: Any) -> "RewardConfig":
        """Tiny and fast: for tests and `--smoke` runs."""
        base: dict[str, Any] = dict(
            members=2, hidden=(32, 32), cnn_filters=8, cnn_fc=32, batch_size=16,
            max_comparisons=500, norm_transitions=500, steps_per_round=20, eval_comparisons=128,
            mlp_chunk=1024, cnn_chunk=128, seen_ids_capacity=5000,
        )
        base.update(overrides)
        return cls(**base)

    # ---- plain-data round trip (checkpoints, experiment configs) --------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RewardConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown RewardConfig field(s): {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> "RewardConfig":
        return dataclasses.replace(self, **changes)


__all__ = ["RewardConfig"]
