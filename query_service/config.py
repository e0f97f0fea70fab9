"""Configuration of the query service: selection, leases, storage bounds and the label schedule.

The label schedule (Christiano et al. 2017, §2.2 and appendix A):

- First an *initial batch* of ``initial_labels`` comparisons, drawn from segments of the random
  policy (25% of the budget on MuJoCo, 500 on Atari), wanted at once at T = 0.
- Afterwards the label *rate* decays as N₀ / (T + N₀) in env steps T:

      d(labels)/dT = r₀ · N₀ / (T + N₀)

  which integrates to

      labels_wanted(T) = min(B, L₀ + ⌊r₀ · N₀ · ln(1 + T / N₀)⌋)

  with B = ``label_budget``, L₀ = ``initial_labels``, N₀ = ``schedule_n0`` and r₀ = ``label_rate``
  (labels per env step at T = 0). When ``label_rate`` is 0 it is derived so that the whole budget is
  reached at ``total_env_steps``:  r₀ = (B − L₀) / (N₀ · ln(1 + T_total / N₀)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class QueryConfig:
    oversampling: int = 10
    """Candidate pairs drawn per query enqueued; the most uncertain `1/oversampling` are kept."""

    selection: str = "disagreement"
    """"disagreement" (ensemble std of P[left ≻ right]) or "random"."""

    lease_seconds: float = 120.0
    """Default time a labeler holds a query before it returns to the queue."""

    max_lease_seconds: float = 3600.0
    """Upper bound on a lease a labeler may ask for."""

    max_segments: int = 2000
    """Segments kept per experiment (memory and disk bound). The oldest segments that no query
    references are dropped first; segments of queries are kept as long as their labels."""

    candidate_pool: int = 500
    """Candidate pairs are drawn from the most recent `candidate_pool` segments of an experiment."""

    min_policy_segments: int = 20
    """After the initial batch, candidates come only from the policy's own segments once the
    candidate pool holds at least this many of them (until then random-policy segments are used
    too)."""

    label_budget: int = 700
    """Total labels wanted per experiment over the whole run (B)."""

    initial_labels: int = 175
    """Labels of the initial batch (L₀), drawn from random-policy segments (paper: 25% of the
    budget on MuJoCo, 500 on Atari)."""

    schedule_n0: float = 2e6
    """N₀ of the decay N₀/(T+N₀) of the label rate, in env steps (paper: 2·10⁶ MuJoCo, 5·10⁶ Atari)."""

    label_rate: float = 0.0
    """r₀: labels per env step at T = 0 after the initial batch; 0 derives it from
    `total_env_steps` so the budget is spent exactly at the end of training."""

    total_env_steps: float = 1e7
    """Planned env steps of the run; only used to derive r₀ when `label_rate` is 0."""

    queue_target: int = 8
    """Queries kept enqueued ahead of the labelers (never more than the schedule still wants)."""

    selection_interval: float = 1.0
    """Seconds between selection passes of the background thread (it also wakes on demand)."""

    forward_batch: int = 64
    """Labels sent to the reward service per AddComparisons call."""

    forward_interval: float = 0.5
    """Seconds between forwarding passes when nothing failed."""

    forward_max_backoff: float = 30.0
    """Longest wait between forwarding retries after failures (doubling from `forward_interval`)."""

    reward_check_interval: float = 10.0
    """Seconds between checks that each reward model still has every label forwarded to it (one that
    restarted from an older checkpoint has fewer: its labels are sent again); 0: never check."""

    disagreement_chunk_bytes: int = 24 * 1024 * 1024
    """Largest segment payload sent in one Disagreement call; larger candidate sets are chunked."""

    max_segment_steps: int = 10_000
    """Longest segment accepted (steps)."""

    gold_rate: float = 0.0
    """Share of a human labeler's leases that are gold queries: a pair with a known answer (a teacher
    token's label, or one two labelers agreed on), shown like any query, scored, never learned from
    (`quality.py`). 0: none."""

    agreement_rate: float = 0.0
    """Share of a human's labels whose pair is queued again for another human (agreement). 0: none."""

    min_gold_accuracy: float = 0.0
    """Exclude a labeler automatically when their gold accuracy is below this after
    `min_gold_answers` gold answers (their labels stay stored, are not forwarded, and are withdrawn
    from the reward model; `rlhp labelers include NAME` undoes it). 0: never."""

    min_gold_answers: int = 10
    """Gold answers a labeler gives before `min_gold_accuracy` can exclude them."""

    def __post_init__(self) -> None:
        if self.selection not in ("disagreement", "random"):
            raise ValueError(f"selection must be 'disagreement' or 'random', not {self.selection!r}")
        if self.oversampling < 1:
            raise ValueError("oversampling must be ≥ 1")
        if self.lease_seconds <= 0 or self.max_lease_seconds < self.lease_seconds:
            raise ValueError("need 0 < lease_seconds ≤ max_lease_seconds")
        if self.max_segments < 2:
            raise ValueError("max_segments must be ≥ 2 (a query needs two segments)")
        if self.label_budget < 0 or not 0 <= self.initial_labels:
            raise ValueError("label_budget and initial_labels must be ≥ 0")
        if self.schedule_n0 <= 0 or self.total_env_steps <= 0 or self.label_rate < 0:
            raise ValueError("schedule_n0 and total_env_steps must be > 0 and label_rate ≥ 0")
        if self.min_policy_segments < 2:
            raise ValueError("min_policy_segments must be ≥ 2 (a query needs two segments)")
        if self.queue_target < 1 or self.forward_batch < 1:
            raise ValueError("queue_target and forward_batch must be ≥ 1")
        if not (0 <= self.gold_rate <= 1 and 0 <= self.agreement_rate <= 1 and 0 <= self.min_gold_accuracy <= 1):
            raise ValueError("gold_rate, agreement_rate and min_gold_accuracy must lie in [0, 1]")
        if self.min_gold_answers < 1:
            raise ValueError("min_gold_answers must be ≥ 1")

    # -- presets -------------------------------------------------------------------------------
    @classmethod
    def mujoco(cls, label_budget: int = 700, **kw) -> "QueryConfig":
        """Paper's MuJoCo schedule: 25% of the budget up front, N₀ = 2·10⁶."""
        return cls(label_budget=label_budget, initial_labels=label_budget // 4, schedule_n0=2e6, **kw)

    @classmethod
    def atari(cls, label_budget: int = 5500, **kw) -> "QueryConfig":
        """Paper's Atari schedule: 500 labels up front, N₀ = 5·10⁶."""
        return cls(label_budget=label_budget, initial_labels=min(500, label_budget),
                   schedule_n0=5e6, **kw)

    @classmethod
    def smoke(cls, **kw) -> "QueryConfig":
        """Tiny, fast settings for tests."""
        base = dict(label_budget=40, initial_labels=10, schedule_n0=1000.0, total_env_steps=10_000.0,
                    max_segments=200, candidate_pool=100, queue_target=4, selection_interval=0.05,
                    forward_interval=0.05, forward_max_backoff=0.5, lease_seconds=30.0)
        base.update(kw)
        return cls(**base)

    def with_(self, **kw) -> "QueryConfig":
        return replace(self, **kw)

    # -- schedule ------------------------------------------------------------------------------
    @property
    def initial(self) -> int:
        return min(self.initial_labels, self.label_budget)

    @property
    def rate(self) -> float:
        """r₀ in labels per env step."""
        if self.label_rate > 0:
            return self.label_rate
        rest = self.label_budget - self.initial
        return rest / (self.schedule_n0 * math.log1p(self.total_env_steps / self.schedule_n0))

    def labels_wanted(self, env_steps: float, label_budget: int | None = None) -> int:
        """min(B, L₀ + ⌊r₀ · N₀ · ln(1 + T / N₀)⌋) — see the module docstring."""
        budget = self.label_budget if label_budget is None else label_budget
        t = max(0.0, float(env_steps))
        later = self.rate * self.schedule_n0 * math.log1p(t / self.schedule_n0)
        return int(min(budget, self.initial + math.floor(later + 1e-9)))

    def env_steps_for(self, labels: int, label_budget: int | None = None) -> float | None:
        """The smallest T with labels_wanted(T) ≥ labels (None: never, the budget is smaller)."""
        budget = self.label_budget if label_budget is None else label_budget
        if labels > budget:
            return None
        if labels <= self.initial:
            return 0.0
        if self.rate <= 0:
            return None
        return self.schedule_n0 * math.expm1((labels - self.initial) / (self.rate * self.schedule_n0))
