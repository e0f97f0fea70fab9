"""Quality control of labelers: gold queries, agreement, and excluding a labeler's labels.

- **Gold**: a pair whose answer is known — a teacher token's label, or a pair two labelers in good
  standing agreed on — is shown again, as a query of its own with a new id (sides swapped half of the
  time), to a human labeler (role `labeler`) at `QueryConfig.gold_rate` of their leases. It looks like
  any query; its answer is scored against the known one and never becomes a label.
- **Agreement**: at `QueryConfig.agreement_rate`, a human's answered query is queued again as a
  *repeat* for any other human; both are credited with whether they agreed.
- Checks live in the `checks` table and in `queries` with `check_of` set; the label schedule, the
  selection and forwarding never count them.
- **Exclusion**: an excluded labeler's labels stay in the database but are not forwarded, and those
  the reward model has are withdrawn from it (`labels.forwarded`: 3 withheld, 4 to be withdrawn);
  `include` undoes it (the labels are sent again). With `QueryConfig.min_gold_accuracy` > 0 a
  labeler whose gold accuracy falls below it after `min_gold_answers` gold answers is excluded
  automatically, unless an operator included them by hand (`labelers.excluded` -1). Withheld labels
  do not count for the label schedule, which asks for others instead. `rlhp labelers` (`quality_cli.py`) lists, excludes and includes.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import statistics
import uuid
from dataclasses import dataclass
from typing import Any

from rlhp.types import Preference

from .check_rows import DECISIVE, WITHDRAW, WITHHELD
from .config import QueryConfig
from .store import Store

__all__ = ["WITHDRAW", "WITHHELD", "LabelerQuality", "Quality", "describe"]

log = logging.getLogger("rlhp.query")

_SWAP = {int(Preference.LEFT): int(Preference.RIGHT), int(Preference.RIGHT): int(Preference.LEFT)}


@dataclass(frozen=True)
class LabelerQuality:
    """One labeler's numbers (`rlhp status --query`, `rlhp labelers list`, the labeling page)."""

    name: str
    labels: int
    median_seconds: float
    gold_answered: int
    gold_correct: int
    agreement_checks: int
    agreed: int
    excluded: bool

    @property
    def gold_accuracy(self) -> float:
        return self.gold_correct / self.gold_answered if self.gold_answered else float("nan")

    @property
    def agreement(self) -> float:
        return self.agreed / self.agreement_checks if self.agreement_checks else float("nan")


class Quality:
    """The rules above over one store's connection (inside the caller's transaction); the statements
    are `Store`'s (`check_rows.py`)."""

    def __init__(self, config: QueryConfig, seed: int | None = None) -> None:
        self.config = config
        self.rng = random.Random(seed)

    # ---- gold ------------------------------------------------------------------------------
    def gold_for(self, c: sqlite3.Connection, labeler: str, scope: list[str] | None, now: float
                 ) -> sqlite3.Row | None:
        """Maybe (at `gold_rate`) a new gold query for `labeler`, leased to nobody yet; None otherwise."""
        if self.config.gold_rate <= 0 or self.rng.random() >= self.config.gold_rate:
            return None
        candidates = Store.gold_candidates(c, labeler, scope)
        if not candidates:
            return None
        pick = candidates[self.rng.randrange(len(candidates))]
        original = Store.query(c, pick["qid"])
        return self._check_query(c, original, "gold", int(pick["answer"]), pick["source"], labeler, now)

    # ---- agreement -------------------------------------------------------------------------
    def after_label(self, c: sqlite3.Connection, query: sqlite3.Row, labeler: str, role: str, answer: int,
                    now: float) -> None:
        """A human's new label: maybe (at `agreement_rate`) queue a repeat of it for someone else."""
        if (role != "labeler" or answer not in DECISIVE or self.config.agreement_rate <= 0
                or self.rng.random() >= self.config.agreement_rate):
            return
        self._check_query(c, query, "repeat", answer, labeler, "", now)

    def _check_query(self, c: sqlite3.Connection, query: sqlite3.Row, kind: str, expected: int, expected_by: str,
                     for_labeler: str, now: float) -> sqlite3.Row:
        """A queued query showing `query`'s pair (sides swapped half of the time) that checks `expected`."""
        left, right = query["left_id"], query["right_id"]
        if self.rng.random() < 0.5:
            left, right, expected = right, left, _SWAP.get(expected, expected)
        return Store.insert_check(c, uuid.uuid4().hex, query, (left, right), kind, expected, expected_by,
                                  for_labeler, now)

    # ---- answers to checks -----------------------------------------------------------------
    def record(self, c: sqlite3.Connection, query: sqlite3.Row, labeler: str, answer: int, seconds: float,
               now: float) -> None:
        """Store a labeler's answer to a check; exclude them if their gold accuracy fell too low."""
        Store.answer_check(c, query["id"], labeler, answer, seconds, now)
        cfg = self.config
        if cfg.min_gold_accuracy <= 0:
            return
        n, right = Store.gold_score(c, labeler)
        # exclusion 0: neither excluded already nor included by hand (-1, exempt)
        if n >= cfg.min_gold_answers and right / n < cfg.min_gold_accuracy and Store.exclusion(c, labeler) == 0:
            Store.exclude_labeler(c, labeler)
            log.warning("labeler %r excluded: gold accuracy %.0f%% (%d of %d) is below %.0f%%; their labels are "
                        "withheld from the reward model (rlhp labelers include %s undoes it)", labeler,
                        100 * right / n, right, n, 100 * cfg.min_gold_accuracy, labeler)

    # ---- numbers ---------------------------------------------------------------------------
    @staticmethod
    def labelers(c: sqlite3.Connection) -> list[LabelerQuality]:
        """Every labeler who answered anything (or was excluded), by name."""
        seconds: dict[str, list[float]] = {}
        for name, secs in Store.label_seconds(c):
            seconds.setdefault(name, []).append(secs)
        gold = Store.gold_by_labeler(c)
        agree: dict[str, list[int]] = {}
        for answerer, first, same in Store.repeat_outcomes(c):
            for who in (answerer, first):
                agree.setdefault(who, []).append(same)
        excluded = Store.excluded_labelers(c)
        names = sorted(set(seconds) | set(gold) | set(agree) | excluded)
        return [LabelerQuality(n, len(seconds.get(n, [])), statistics.median(seconds[n]) if n in seconds else 0.0,
                               gold.get(n, (0, 0))[0], gold.get(n, (0, 0))[1],
                               len(agree.get(n, [])), sum(agree.get(n, [])), n in excluded) for n in names]


def describe(q: Any) -> str:
    """One labeler's numbers in words, e.g. for `rlhp status`."""
    gold = f"gold {q.gold_correct}/{q.gold_answered}" if q.gold_answered else "gold –"
    agree = f"agree {q.agreed}/{q.agreement_checks}" if q.agreement_checks else "agree –"
    return (f"{q.name}: {q.labels} labels, median {q.median_seconds:.1f} s, {gold}, {agree}"
            + (" (EXCLUDED)" if q.excluded else ""))
