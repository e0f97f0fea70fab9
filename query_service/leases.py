"""Leases and labels: a labeler leases a query, watches its clips, answers or gives it back.

Rules (`docs/architecture.md`, contracts): a label is committed (one write transaction) before
`submit` returns; submitting is idempotent per query and labels are final; an expired lease returns
the query to the queue, and a late answer is still accepted when nobody else answered first; a
released (skipped) query goes to the end of the queue and is offered to its skipper last.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable

from rlhp.types import FailedPrecondition, NotFound, Preference

from . import intake
from .auth import Auth, Caller
from .config import QueryConfig
from .quality import WITHHELD, Quality
from .schedule import Schedule
from .store import Store
from .types import Lease, QueryData, SubmitResult


class Leases:
    """The labelers' side of one store. Callers are authenticated already (`auth.Auth`)."""

    def __init__(self, store: Store, config: QueryConfig, schedule: Schedule, clock: Callable[[], float],
                 quality: Quality | None = None) -> None:
        self.store = store
        self.config = config
        self.schedule = schedule
        self.clock = clock
        self.quality = quality or Quality(config)

    @staticmethod
    def answered(c: sqlite3.Connection, labeler: str) -> int:
        """Everything `labeler` answered, quality checks included (they must look like any query)."""
        return Store.count_answered(c, labeler) + Store.count_checks_answered(c, labeler)

    @staticmethod
    def query(c: sqlite3.Connection, caller: Caller, query_id: Any) -> sqlite3.Row:
        """The `queries` row of `query_id`, which `caller` may label (NotFound, Unauthenticated)."""
        row = Store.query(c, intake.query_id(query_id))
        if row is None:
            raise NotFound(f"no query with id {query_id!r}")
        Auth.check(caller, row["experiment"], "label experiment")
        return row

    def lease(self, caller: Caller, scope: list[str] | None, lease_seconds: float = 0) -> Lease:
        """Lease the next query of `scope` (None: any), or say what the run waits for."""
        seconds = intake.lease_seconds(lease_seconds)
        seconds = min(seconds or self.config.lease_seconds, self.config.max_lease_seconds)
        now = self.clock()
        with self.store.write() as c:
            Store.expire_leases(c, now)
            human = caller.role == "labeler"
            row = Store.next_queued(c, scope, caller.name, checks=human)
            if human and row is not None:  # gold among the queries there are (an idle page's polls get none)
                row = self.quality.gold_for(c, caller.name, scope, now) or row
            if row is not None:
                expires = now + seconds
                Store.grant_lease(c, row["id"], caller.name, now, expires)
        with self.store.read() as c:
            pending = Store.count_queued(c, scope)
            answered = self.answered(c, caller.name)
            if row is None:
                return Lease(False, None, self.schedule.why_waiting(c, scope), pending, answered)
            exp, ids = row["experiment"], (row["left_id"], row["right_id"])
            # columns only: the compressed arrays stay untouched (teachers get just the true rewards)
            meta = Store.segment_columns(c, exp, ids)
            goal = Store.experiment_goal(c, exp)
        if len(meta) != 2:  # cannot happen: queried segments are never evicted
            raise FailedPrecondition(f"the segments of query {row['id']} are gone")
        left = meta[ids[0]]
        rewards = self.store.load_rewards(exp, list(ids)) if caller.role == "teacher" else {}
        q = QueryData(id=row["id"], experiment=exp, env_id=left["env_id"], left_id=ids[0], right_id=ids[1],
                      lease_expires=expires, model_version=int(row["model_version"]), fps=float(left["fps"]),
                      length=int(left["length"]), left_rewards=rewards.get(ids[0]),
                      right_rewards=rewards.get(ids[1]), goal=goal)
        return Lease(True, q, "", pending, answered)

    def submit(self, caller: Caller, query_id: str, answer: Preference | int | str, seconds: float = 0.0
               ) -> SubmitResult:
        """Store a label durably (committed before returning). Idempotent per query."""
        pref = intake.answer(answer)
        secs = intake.answer_seconds(seconds)
        now = self.clock()
        with self.store.write() as c:
            q = self.query(c, caller, query_id)
            check = bool(q["check_of"])
            label = Store.check_answer(c, q["id"]) if check else Store.label(c, q["id"])
            if label is not None:
                answered = self.answered(c, caller.name)
                if label["labeler"] == caller.name and label["answer"] == int(pref):
                    return SubmitResult("DUPLICATE", "you already gave this answer; nothing new stored", answered)
                if label["labeler"] == caller.name:
                    return SubmitResult("ALREADY_ANSWERED", f"you already answered "
                                        f"{Preference(label['answer']).name}; labels are final", answered)
                return SubmitResult("ALREADY_ANSWERED", "another labeler answered this query first; "
                                    "nothing new stored", answered)
            if not Store.ever_leased(c, q["id"], caller.name):
                raise FailedPrecondition(f"query {q['id']} was not leased to {caller.name!r}; lease it first")
            if check:  # a gold query or a repeat: scored, never learned from
                self.quality.record(c, q, caller.name, int(pref), min(secs, 1e7), now)
            else:
                Store.insert_label(c, q, int(pref), caller.name, min(secs, 1e7), now,
                                   forwarded=WITHHELD if Store.exclusion(c, caller.name) == 1 else 0)
                self.quality.after_label(c, q, caller.name, caller.role, int(pref), now)
            late = q["state"] != "leased" or q["lease_owner"] != caller.name
            answered = self.answered(c, caller.name)
        msg = "stored" + (" (after your lease had expired; nobody else had answered)" if late else "")
        return SubmitResult("ACCEPTED", msg, answered)

    def release(self, caller: Caller, query_id: str) -> None:
        """Give a leased query back unanswered (a skip); it returns to the end of the queue."""
        now = self.clock()
        with self.store.write() as c:
            q = self.query(c, caller, query_id)
            if q["state"] == "answered":
                return
            if q["state"] == "leased" and q["lease_owner"] == caller.name:
                Store.requeue(c, q["id"], now)
                Store.mark_released(c, q["id"], caller.name)
                return
            if Store.ever_leased(c, q["id"], caller.name):
                Store.mark_released(c, q["id"], caller.name)
                return  # the lease had already lapsed: nothing to give back
            raise FailedPrecondition(f"query {q['id']} is not leased to {caller.name!r}")

    def clip_segment(self, caller: Caller, query_id: str, side: Preference) -> tuple[str, str, str]:
        """(experiment, segment id, query id) of one side of a query whose clip `caller` may see: the
        holder of a live lease, a labeler who leased it once it is answered, and admins."""
        now = self.clock()
        with self.store.read() as c:
            q = self.query(c, caller, query_id)
            live = q["state"] == "leased" and q["lease_owner"] == caller.name and q["lease_expires"] > now
            ok = live or caller.role == "admin" or (q["state"] == "answered" and Store.ever_leased(
                c, q["id"], caller.name))
        if not ok:
            raise FailedPrecondition(f"query {q['id']} is not leased to {caller.name!r} (or the lease expired); "
                                     "lease it first")
        return q["experiment"], (q["left_id"] if side == Preference.LEFT else q["right_id"]), q["id"]
