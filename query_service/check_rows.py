"""The rows of labeler quality control, a part of `Store` (`store.py` mixes this class in).

Quality checks (gold and repeat queries, the `checks` table), a labeler's exclusion (`labelers.excluded`:
1 excluded, -1 included by hand, 0 never decided) and what exclusion does to labels
(`labels.forwarded`: `WITHHELD` kept back, `WITHDRAW` to be taken back from the reward model). The
rules that use these statements are in `quality.py`. Every method takes the caller's connection `c`
and runs inside its transaction.
"""

from __future__ import annotations

import sqlite3

from rlhp.types import NotFound, Preference

WITHHELD, WITHDRAW = 3, 4  # `labels.forwarded` of an excluded labeler: kept back / to take back
DECISIVE = (int(Preference.LEFT), int(Preference.RIGHT), int(Preference.EQUAL))


class CheckRows:
    """Named statements over `checks`, `labelers.excluded` and the exclusion states of `labels`."""

    # -- gold and repeat checks ----------------------------------------------------------------
    @staticmethod
    def gold_candidates(c: sqlite3.Connection, labeler: str, scope: list[str] | None,
                        limit: int = 500) -> list[sqlite3.Row]:
        """Answered pairs whose answer is known, not `labeler`'s own and not yet shown to them as gold:
        (qid, answer, source) of a teacher's decisive label, or of a pair two labelers in good standing
        agreed on."""
        where, args = ("", []) if scope is None else (
            f" AND l.experiment IN ({','.join('?' * len(scope))})", list(scope))
        decisive = ",".join(map(str, DECISIVE))
        shown = ("NOT EXISTS (SELECT 1 FROM checks g WHERE g.of_query=src.qid AND g.kind='gold' AND "
                 "g.for_labeler=?)")
        return c.execute(
            f"SELECT * FROM (SELECT l.query_id AS qid, l.answer AS answer, l.labeler AS source FROM labels l "
            f"JOIN labelers r ON r.name=l.labeler WHERE r.role='teacher' AND l.answer IN ({decisive}){where} "
            f"UNION SELECT l.query_id, l.answer, l.labeler FROM checks k JOIN labels l ON l.query_id=k.of_query "
            f"WHERE k.kind='repeat' AND k.answer=k.expected AND l.answer IN ({decisive}){where} AND k.labeler!=? "
            f"AND NOT EXISTS (SELECT 1 FROM labelers x WHERE x.name IN (k.labeler, k.expected_by) AND x.excluded=1)"
            f") src WHERE src.source!=? AND {shown} LIMIT ?",
            (*args, *args, labeler, labeler, labeler, int(limit))).fetchall()

    @staticmethod
    def insert_check(c: sqlite3.Connection, qid: str, of: sqlite3.Row, pair: tuple[str, str], kind: str,
                     expected: int, expected_by: str, for_labeler: str, now: float) -> sqlite3.Row:
        """Queue `qid` showing `pair` (of `of`'s segments) as a `kind` check of `of`; returns its row."""
        c.execute("INSERT INTO queries (id, experiment, left_id, right_id, model_version, disagreement, state, "
                  "created, order_key, initial, check_of) VALUES (?, ?, ?, ?, ?, NULL, 'queued', ?, ?, 0, ?)",
                  (qid, of["experiment"], pair[0], pair[1], of["model_version"], now, now, of["id"]))
        c.execute("INSERT INTO checks (query_id, of_query, kind, expected, expected_by, for_labeler, created) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?)", (qid, of["id"], kind, expected, expected_by, for_labeler, now))
        return c.execute("SELECT * FROM queries WHERE id=?", (qid,)).fetchone()

    @staticmethod
    def check_answer(c: sqlite3.Connection, query_id: str) -> sqlite3.Row | None:
        """(labeler, answer) of an answered check, None while unanswered."""
        return c.execute("SELECT labeler, answer FROM checks WHERE query_id=? AND answer IS NOT NULL",
                         (query_id,)).fetchone()

    @staticmethod
    def answer_check(c: sqlite3.Connection, query_id: str, labeler: str, answer: int, seconds: float,
                     now: float) -> None:
        """Store `labeler`'s answer to the check `query_id`; the check query is answered."""
        c.execute("UPDATE checks SET labeler=?, answer=?, seconds=?, answered=? WHERE query_id=?",
                  (labeler, answer, seconds, now, query_id))
        c.execute("UPDATE queries SET state='answered', lease_owner=NULL, lease_expires=NULL WHERE id=?",
                  (query_id,))

    @staticmethod
    def gold_score(c: sqlite3.Connection, labeler: str) -> tuple[int, int]:
        """(gold checks `labeler` answered, of which right)."""
        n, right = c.execute("SELECT COUNT(*), COALESCE(SUM(answer=expected), 0) FROM checks WHERE kind='gold' "
                             "AND labeler=? AND answer IS NOT NULL", (labeler,)).fetchone()
        return int(n), int(right)

    @staticmethod
    def count_checks_answered(c: sqlite3.Connection, labeler: str) -> int:
        return c.execute("SELECT COUNT(*) FROM checks WHERE labeler=? AND answer IS NOT NULL",
                         (labeler,)).fetchone()[0]

    @staticmethod
    def gold_by_labeler(c: sqlite3.Connection) -> dict[str, tuple[int, int]]:
        """labeler → (gold answered, right)."""
        return {r[0]: (int(r[1]), int(r[2] or 0)) for r in c.execute(
            "SELECT labeler, COUNT(*), SUM(answer=expected) FROM checks WHERE kind='gold' AND answer IS NOT NULL "
            "GROUP BY labeler")}

    @staticmethod
    def repeat_outcomes(c: sqlite3.Connection) -> list[tuple[str, str, int]]:
        """(who answered the repeat, who gave the first answer, whether they agree) per answered repeat."""
        return [(r[0], r[1], int(r[2])) for r in c.execute(
            "SELECT labeler, expected_by, answer=expected FROM checks WHERE kind='repeat' AND answer IS NOT NULL")]

    @staticmethod
    def label_seconds(c: sqlite3.Connection) -> list[tuple[str, float]]:
        """(labeler, seconds) of every label."""
        return [(r[0], float(r[1] or 0.0)) for r in c.execute("SELECT labeler, seconds FROM labels")]

    # -- exclusion -----------------------------------------------------------------------------
    @staticmethod
    def exclusion(c: sqlite3.Connection, labeler: str) -> int:
        """`labelers.excluded` of `labeler`: 1 excluded, -1 included by hand, 0 otherwise (or unknown)."""
        row = c.execute("SELECT excluded FROM labelers WHERE name=?", (labeler,)).fetchone()
        return int(row["excluded"]) if row else 0

    @staticmethod
    def excluded_labelers(c: sqlite3.Connection) -> set[str]:
        return {r[0] for r in c.execute("SELECT name FROM labelers WHERE excluded=1")}

    @staticmethod
    def _mark(c: sqlite3.Connection, labeler: str, excluded: int, moves: tuple[tuple[int, int], ...]) -> int:
        """Set `labelers.excluded` and move `labeler`'s labels between forwarding states
        (`moves`: (from, to) pairs); returns how many labels moved."""
        if c.execute("UPDATE labelers SET excluded=? WHERE name=?", (excluded, labeler)).rowcount == 0:
            raise NotFound(f"no labeler named {labeler!r}")
        return sum(c.execute("UPDATE labels SET forwarded=? WHERE labeler=? AND forwarded=?", (to, labeler, old)
                             ).rowcount for old, to in moves)

    @classmethod
    def exclude_labeler(cls, c: sqlite3.Connection, labeler: str) -> int:
        """Withhold `labeler`'s labels (those forwarded are to be withdrawn); returns how many."""
        return cls._mark(c, labeler, 1, ((0, WITHHELD), (1, WITHDRAW)))

    @classmethod
    def include_labeler(cls, c: sqlite3.Connection, labeler: str) -> int:
        """Undo `exclude_labeler`: withheld labels are sent (again); returns how many labels that concerns.
        The labeler is marked -1: exempt from automatic exclusion (someone decided so by hand)."""
        return cls._mark(c, labeler, -1, ((WITHHELD, 0), (WITHDRAW, 1)))

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
