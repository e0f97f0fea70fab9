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

from rlhp.types import NotFound, Preference

from .config import QueryConfig

log = logging.getLogger("rlhp.query")

WITHHELD, WITHDRAW = 3, 4  # `labels.forwarded` of an excluded labeler: kept back / to take back
_DECISIVE = (int(Preference.LEFT), int(Preference.RIGHT), int(Preference.EQUAL))
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
    """The rules above over one store's connection (inside the caller's transaction)."""

    def __init__(self, config: QueryConfig, seed: int | None = None) -> None:
        self.config = config
        self.rng = random.Random(seed)

    # ---- gold ------------------------------------------------------------------------------
    def gold_for(self, c: sqlite3.Connection, labeler: str, scope: list[str] | None, now: float
                 ) -> sqlite3.Row | None:
        """Maybe (at `gold_rate`) a new gold query for `labeler`, leased to nobody yet; None otherwise."""
        if self.config.gold_rate <= 0 or self.rng.random() >= self.config.gold_rate:
            return None
        where, args = ("", []) if scope is None else (
            f" AND l.experiment IN ({','.join('?' * len(scope))})", list(scope))
        decisive = ",".join(map(str, _DECISIVE))
        shown = ("NOT EXISTS (SELECT 1 FROM checks g WHERE g.of_query=src.qid AND g.kind='gold' AND "
                 "g.for_labeler=?)")
        candidates = c.execute(
            f"SELECT * FROM (SELECT l.query_id AS qid, l.answer AS answer, l.labeler AS source FROM labels l "
            f"JOIN labelers r ON r.name=l.labeler WHERE r.role='teacher' AND l.answer IN ({decisive}){where} "
            f"UNION SELECT l.query_id, l.answer, l.labeler FROM checks k JOIN labels l ON l.query_id=k.of_query "
            f"WHERE k.kind='repeat' AND k.answer=k.expected AND l.answer IN ({decisive}){where} AND k.labeler!=? "
            f"AND NOT EXISTS (SELECT 1 FROM labelers x WHERE x.name IN (k.labeler, k.expected_by) AND x.excluded=1)"
            f") src WHERE src.source!=? AND {shown} LIMIT 500",
            (*args, *args, labeler, labeler, labeler)).fetchall()
        if not candidates:
            return None
        pick = candidates[self.rng.randrange(len(candidates))]
        original = c.execute("SELECT * FROM queries WHERE id=?", (pick["qid"],)).fetchone()
        return self._check_query(c, original, "gold", int(pick["answer"]), pick["source"], labeler, now)

    # ---- agreement -------------------------------------------------------------------------
    def after_label(self, c: sqlite3.Connection, query: sqlite3.Row, labeler: str, role: str, answer: int,
                    now: float) -> None:
        """A human's new label: maybe (at `agreement_rate`) queue a repeat of it for someone else."""
        if (role != "labeler" or answer not in _DECISIVE or self.config.agreement_rate <= 0
                or self.rng.random() >= self.config.agreement_rate):
            return
        self._check_query(c, query, "repeat", answer, labeler, "", now)

    def _check_query(self, c: sqlite3.Connection, query: sqlite3.Row, kind: str, expected: int, expected_by: str,
                     for_labeler: str, now: float) -> sqlite3.Row:
        """A queued query showing `query`'s pair (sides swapped half of the time) that checks `expected`."""
        left, right = query["left_id"], query["right_id"]
        if self.rng.random() < 0.5:
            left, right, expected = right, left, _SWAP.get(expected, expected)
        qid = uuid.uuid4().hex
        c.execute("INSERT INTO queries (id, experiment, left_id, right_id, model_version, disagreement, state, "
                  "created, order_key, initial, check_of) VALUES (?, ?, ?, ?, ?, NULL, 'queued', ?, ?, 0, ?)",
                  (qid, query["experiment"], left, right, query["model_version"], now, now, query["id"]))
        c.execute("INSERT INTO checks (query_id, of_query, kind, expected, expected_by, for_labeler, created) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?)", (qid, query["id"], kind, expected, expected_by, for_labeler, now))
        return c.execute("SELECT * FROM queries WHERE id=?", (qid,)).fetchone()

    # ---- answers to checks -----------------------------------------------------------------
    @staticmethod
    def answer_of(c: sqlite3.Connection, query_id: str) -> sqlite3.Row | None:
        """(labeler, answer) of an answered check, None while unanswered."""
        row = c.execute("SELECT labeler, answer FROM checks WHERE query_id=? AND answer IS NOT NULL",
                        (query_id,)).fetchone()
        return row

    def record(self, c: sqlite3.Connection, query: sqlite3.Row, labeler: str, answer: int, seconds: float,
               now: float) -> None:
        """Store a labeler's answer to a check; exclude them if their gold accuracy fell too low."""
        c.execute("UPDATE checks SET labeler=?, answer=?, seconds=?, answered=? WHERE query_id=?",
                  (labeler, answer, seconds, now, query["id"]))
        c.execute("UPDATE queries SET state='answered', lease_owner=NULL, lease_expires=NULL WHERE id=?",
                  (query["id"],))
        cfg = self.config
        if cfg.min_gold_accuracy <= 0:
            return
        n, right = c.execute("SELECT COUNT(*), COALESCE(SUM(answer=expected), 0) FROM checks WHERE kind='gold' "
                             "AND labeler=? AND answer IS NOT NULL", (labeler,)).fetchone()
        if (n >= cfg.min_gold_answers and right / n < cfg.min_gold_accuracy and not self.is_excluded(c, labeler)
                and not self._exempt(c, labeler)):
            self.exclude(c, labeler)
            log.warning("labeler %r excluded: gold accuracy %.0f%% (%d of %d) is below %.0f%%; their labels are "
                        "withheld from the reward model (rlhp labelers include %s undoes it)", labeler,
                        100 * right / n, right, n, 100 * cfg.min_gold_accuracy, labeler)

    @staticmethod
    def count_answered(c: sqlite3.Connection, labeler: str) -> int:
        return c.execute("SELECT COUNT(*) FROM checks WHERE labeler=? AND answer IS NOT NULL",
                         (labeler,)).fetchone()[0]

    # ---- exclusion -------------------------------------------------------------------------
    @staticmethod
    def is_excluded(c: sqlite3.Connection, labeler: str) -> bool:
        row = c.execute("SELECT excluded FROM labelers WHERE name=?", (labeler,)).fetchone()
        return bool(row and row["excluded"] == 1)

    @staticmethod
    def _exempt(c: sqlite3.Connection, labeler: str) -> bool:
        row = c.execute("SELECT excluded FROM labelers WHERE name=?", (labeler,)).fetchone()
        return bool(row and row["excluded"] == -1)

    @staticmethod
    def exclude(c: sqlite3.Connection, labeler: str) -> int:
        """Withhold `labeler`'s labels (those forwarded are to be withdrawn); returns how many."""
        if c.execute("UPDATE labelers SET excluded=1 WHERE name=?", (labeler,)).rowcount == 0:
            raise NotFound(f"no labeler named {labeler!r}")
        n = c.execute("UPDATE labels SET forwarded=? WHERE labeler=? AND forwarded=0", (WITHHELD, labeler)).rowcount
        return n + c.execute("UPDATE labels SET forwarded=? WHERE labeler=? AND forwarded=1",
                             (WITHDRAW, labeler)).rowcount

    @staticmethod
    def include(c: sqlite3.Connection, labeler: str) -> int:
        """Undo `exclude`: withheld labels are sent (again); returns how many labels that concerns."""
        # -1: used, and exempt from automatic exclusion (someone decided so by hand)
        if c.execute("UPDATE labelers SET excluded=-1 WHERE name=?", (labeler,)).rowcount == 0:
            raise NotFound(f"no labeler named {labeler!r}")
        n = c.execute("UPDATE labels SET forwarded=0 WHERE labeler=? AND forwarded=?", (labeler, WITHHELD)).rowcount
        return n + c.execute("UPDATE labels SET forwarded=1 WHERE labeler=? AND forwarded=?",
                             (labeler, WITHDRAW)).rowcount

    @staticmethod
    def to_withdraw(c: sqlite3.Connection, experiment: str, n: int) -> list[str]:
        return [r[0] for r in c.execute("SELECT query_id FROM labels WHERE experiment=? AND forwarded=? LIMIT ?",
                                        (experiment, WITHDRAW, n))]

    @staticmethod
    def withdrawn(c: sqlite3.Connection, ids: list[str]) -> None:
        """The reward model gave these back: withheld now; one whose labeler was included again
        meanwhile (4 → 1) is gone from the model, so it is sent again (0)."""
        c.executemany("UPDATE labels SET forwarded=? WHERE query_id=? AND forwarded=?",
                      [(WITHHELD, i, WITHDRAW) for i in ids])
        c.executemany("UPDATE labels SET forwarded=0 WHERE query_id=? AND forwarded=1", [(i,) for i in ids])

    @staticmethod
    def withdraw_again(c: sqlite3.Connection, experiment: str) -> int:
        """A reward model restored from a checkpoint may hold withheld labels again: take them back."""
        return c.execute("UPDATE labels SET forwarded=? WHERE experiment=? AND forwarded=?",
                         (WITHDRAW, experiment, WITHHELD)).rowcount

    @staticmethod
    def withhold_excluded(c: sqlite3.Connection) -> int:
        """Labels waiting to be sent whose labeler is excluded (e.g. just imported): withheld."""
        return c.execute("UPDATE labels SET forwarded=? WHERE forwarded=0 AND labeler IN "
                         "(SELECT name FROM labelers WHERE excluded=1)", (WITHHELD,)).rowcount

    # ---- numbers ---------------------------------------------------------------------------
    @staticmethod
    def labelers(c: sqlite3.Connection) -> list[LabelerQuality]:
        """Every labeler who answered anything (or was excluded), by name."""
        seconds: dict[str, list[float]] = {}
        for name, secs in c.execute("SELECT labeler, seconds FROM labels"):
            seconds.setdefault(name, []).append(float(secs or 0.0))
        gold = {r[0]: (r[1], r[2]) for r in c.execute(
            "SELECT labeler, COUNT(*), SUM(answer=expected) FROM checks WHERE kind='gold' AND answer IS NOT NULL "
            "GROUP BY labeler")}
        agree: dict[str, list[int]] = {}
        for answerer, first, same in c.execute("SELECT labeler, expected_by, answer=expected FROM checks "
                                               "WHERE kind='repeat' AND answer IS NOT NULL"):
            for who in (answerer, first):
                agree.setdefault(who, []).append(int(same))
        excluded = {r[0] for r in c.execute("SELECT name FROM labelers WHERE excluded=1")}
        names = sorted(set(seconds) | set(gold) | set(agree) | excluded)
        return [LabelerQuality(n, len(seconds.get(n, [])), statistics.median(seconds[n]) if n in seconds else 0.0,
                               int(gold.get(n, (0, 0))[0]), int(gold.get(n, (0, 0))[1] or 0),
                               len(agree.get(n, [])), sum(agree.get(n, [])), n in excluded) for n in names]


def describe(q: Any) -> str:
    """One labeler's numbers in words, e.g. for `rlhp status`."""
    gold = f"gold {q.gold_correct}/{q.gold_answered}" if q.gold_answered else "gold –"
    agree = f"agree {q.agreed}/{q.agreement_checks}" if q.agreement_checks else "agree –"
    return (f"{q.name}: {q.labels} labels, median {q.median_seconds:.1f} s, {gold}, {agree}"
            + (" (EXCLUDED)" if q.excluded else ""))
