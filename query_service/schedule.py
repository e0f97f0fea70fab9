"""The label schedule of each experiment, and the words that say what a labeler waits for.

An experiment wants `QueryConfig.labels_wanted(T)` labels after T env steps (its own label budget
scales the service's schedule); `Schedule.position` says where it stands (labels given, queries
queued and leased, segments stored), which selection and `QueryService.lease` act on.
"""

from __future__ import annotations

import math
import sqlite3
from typing import Any
from dataclasses import replace

from .config import QueryConfig
from .store import Store


def plural(n: int, word: str) -> str:
    if n == 1:
        return f"1 {word}"
    return f"{n:,} {word[:-1] + 'ies' if word.endswith('y') else word + 's'}"


class Schedule:
    """The schedules of the experiments under one `QueryConfig` (one per label budget)."""

    def __init__(self, config: QueryConfig) -> None:
        self.config = config
        self._by_budget: dict[int, QueryConfig] = {}

    def config_for(self, budget: int) -> QueryConfig:
        """The schedule of an experiment whose budget is `budget`: the service's, with that budget
        (so its initial batch is min(initial_labels, budget) and its rate spends it by the horizon)."""
        if budget == self.config.label_budget:
            return self.config
        cfg = self._by_budget.get(budget)
        if cfg is None:
            cfg = self._by_budget[budget] = replace(self.config, label_budget=budget)
        return cfg

    def labels_wanted(self, env_steps: float, label_budget: int | None = None) -> int:
        return self.config_for(self.config.label_budget if label_budget is None
                               else label_budget).labels_wanted(env_steps)

    def position(self, c: sqlite3.Connection, experiment: str) -> dict[str, Any]:
        """env_steps, budget, labels, queued, leased, wanted, segments, env_id and goal of `experiment`."""
        s = Store.experiment_counts(c, experiment)
        budget = self.config.label_budget if s["label_budget"] is None else s["label_budget"]
        return dict(env_steps=s["env_steps"], budget=budget, labels=s["labels"], queued=s["queued"],
                    leased=s["leased"], wanted=self.config_for(budget).labels_wanted(s["env_steps"]),
                    segments=s["segments"], env_id=s["env_id"], goal=s["goal"])

    def why_waiting(self, c: sqlite3.Connection, scope: list[str] | None) -> str:
        """Why no query of `scope` (None: every experiment) can be leased now, in words."""
        exps = scope if scope is not None else Store.experiments(c)
        if not exps:
            return "waiting for the agent to produce clips (no experiment has sent segments yet)"
        reasons = []
        for e in exps:
            s = self.position(c, e)
            labels, budget, wanted, steps = s["labels"], s["budget"], s["wanted"], s["env_steps"]
            pending = s["queued"] + s["leased"]
            if s["segments"] < 2:
                reasons.append(f"waiting for the agent to produce clips ({plural(s['segments'], 'segment')} "
                               f"so far for {e})")
            elif labels >= budget:
                reasons.append(f"label budget reached for {e} ({labels:,} of {budget:,} labels)")
            elif not s["queued"] and s["leased"] >= min(self.config.queue_target, wanted - labels) > 0:
                reasons.append(f"all {plural(s['leased'], 'pending query')} of {e} are leased by other labelers "
                               f"(they return to the queue if not answered in time)")
            elif labels + pending >= wanted:
                t_next = self.config_for(budget).env_steps_for(labels + pending + 1)
                if t_next is None:
                    reasons.append(f"label budget for {e} is fully queued ({labels:,} labels, {pending} pending)")
                else:
                    more = max(1, math.ceil(t_next - steps))
                    reasons.append(f"label schedule satisfied for {e} ({labels:,} labels given, {wanted:,} wanted "
                                   f"at {steps:,} env steps): next query after {more:,} more env steps")
            else:
                reasons.append(f"selecting the next queries for {e} ({wanted - labels - pending:,} more wanted; "
                               f"{plural(s['segments'], 'segment')} stored)")
        return "; ".join(reasons)
