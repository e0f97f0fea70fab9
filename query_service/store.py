"""The rows of the query service: every SQL statement it runs is a named method of `Store` (the
statements of labeler quality control are in `check_rows.py`, a part of `Store`).

Segments (arrays as compressed npz blobs), queries, leases, labels, labeler tokens (salted hashes only)
and the schedule position of every experiment, in the tables of `database.py`. Methods taking a
connection `c` run inside the caller's `read()`/`write()` transaction, so one rule's statements
commit together. No gRPC here; the rules live in `core.py` and the modules it composes (`auth`,
`intake`, `schedule`, `selection`, `leases`, `routing`, `forwarding`).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
from typing import Any

import numpy as np

from rlhp.types import Preference

from . import intake
from .check_rows import CheckRows
from .database import DB_NAME, Database, pack, unpack
from .types import SegmentRecord

__all__ = ["DB_NAME", "ROLES", "Store", "TokenExists", "pack", "unpack"]

ROLES = ("labeler", "teacher", "producer", "admin")


class TokenExists(ValueError):
    """A labeler of that name already has a token (replacing it needs `replace=True`)."""


class Store(Database, CheckRows):
    """The named statements of the query service over `<run_dir>/labels.sqlite` (those of quality
    control are in `check_rows.py`)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        super().__init__(run_dir)
        with self.write() as c:
            row = c.execute("SELECT value FROM meta WHERE key='token_salt'").fetchone()
            if row is None:
                c.execute("INSERT INTO meta (key, value) VALUES ('token_salt', ?)", (secrets.token_hex(16),))
        self._salt = self.conn().execute("SELECT value FROM meta WHERE key='token_salt'").fetchone()[0]

    # -- tokens --------------------------------------------------------------------------------
    def token_hash(self, token: str) -> str:
        return hashlib.sha256(f"{self._salt}:{token}".encode()).hexdigest()

    def create_token(self, name: str, role: str, experiments: str | list[str] | tuple[str, ...] = "",
                     now: float = 0.0, replace: bool = False) -> str:
        """Create the token of `name`; returns the plain token (stored only hashed).

        A name that already has a token raises `TokenExists`: creating a token never silently
        invalidates another. `replace=True` gives `name` a new token (the old one stops working;
        a revoked name becomes active again) — an explicit rotation, e.g. `rlhp token create --replace`.
        """
        if not name or not name.strip() or len(name) > 100:
            raise ValueError("a labeler name must be 1–100 characters")
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        exps = experiments if isinstance(experiments, str) else ",".join(experiments)
        exps = ",".join(e.strip() for e in exps.split(",") if e.strip())
        token = secrets.token_urlsafe(24)
        with self.write() as c:
            if not replace and c.execute("SELECT 1 FROM labelers WHERE name=?", (name.strip(),)).fetchone():
                raise TokenExists(f"a labeler named {name.strip()!r} already has a token (revoke it, pick "
                                  "another name, or replace it on purpose)")
            c.execute(
                "INSERT INTO labelers (name, token_hash, role, experiments, revoked, created) "
                "VALUES (?, ?, ?, ?, 0, ?) ON CONFLICT (name) DO UPDATE SET token_hash=excluded.token_hash, "
                "role=excluded.role, experiments=excluded.experiments, revoked=0, created=excluded.created",
                (name.strip(), self.token_hash(token), role, exps, now))
        return token

    def revoke_token(self, name: str) -> bool:
        with self.write() as c:
            return c.execute("UPDATE labelers SET revoked=1 WHERE name=?", (name,)).rowcount > 0

    def labeler_for(self, token: str) -> sqlite3.Row | None:
        if not token:
            return None
        return self.conn().execute("SELECT * FROM labelers WHERE token_hash=?",
                                   (self.token_hash(token),)).fetchone()

    def list_labelers(self) -> list[sqlite3.Row]:
        return self.conn().execute(
            "SELECT l.name, l.role, l.experiments, l.revoked, l.created, "
            "(SELECT COUNT(*) FROM labels WHERE labeler=l.name) AS answered "
            "FROM labelers l ORDER BY l.name").fetchall()

    # -- segments ------------------------------------------------------------------------------
    @staticmethod
    def segment_row(rec: SegmentRecord, now: float) -> tuple:
        data = pack(observations=rec.observations, actions=rec.actions, true_rewards=rec.true_rewards)
        has_media = any(a is not None for a in (rec.frames, rec.qpos, rec.qvel))
        media = pack(frames=rec.frames, qpos=rec.qpos, qvel=rec.qvel) if has_media else None
        return (rec.id, rec.experiment, rec.env_id, int(rec.observations.shape[0]), int(rec.env_step),
                float(rec.fps), int(bool(rec.random_policy)), now, data, media)

    @staticmethod
    def record_from_row(row: sqlite3.Row, media: bool = True) -> SegmentRecord:
        d = unpack(row["data"])
        m = unpack(row["media"]) if media and "media" in row.keys() else {}
        return SegmentRecord(
            id=row["id"], experiment=row["experiment"], env_id=row["env_id"],
            observations=d["observations"], actions=d["actions"], true_rewards=d["true_rewards"],
            frames=m.get("frames"), qpos=m.get("qpos"), qvel=m.get("qvel"),
            env_step=int(row["env_step"]), fps=float(row["fps"]), random_policy=bool(row["random_policy"]))

    def load_segments(self, experiment: str, ids: list[str], media: bool = False) -> dict[str, SegmentRecord]:
        cols = "id, experiment, env_id, env_step, fps, random_policy, data" + (", media" if media else "")
        out: dict[str, SegmentRecord] = {}
        c = self.conn()
        unique = list(dict.fromkeys(ids))
        for i in range(0, len(unique), 500):
            chunk = unique[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for row in c.execute(f"SELECT {cols} FROM segments WHERE experiment=? AND id IN ({marks})",
                                 (experiment, *chunk)):
                out[row["id"]] = self.record_from_row(row, media=media)
        return out

    def recent_segment_ids(self, experiment: str, n: int, policy_only: bool = False) -> list[str]:
        """Ids of the `n` newest segments of `experiment` (only the policy's own with `policy_only`)."""
        where = " AND random_policy=0" if policy_only else ""
        return [r[0] for r in self.conn().execute(
            f"SELECT id FROM segments WHERE experiment=?{where} ORDER BY seq DESC LIMIT ?", (experiment, int(n)))]

    def load_rewards(self, experiment: str, ids: list[str]) -> dict[str, np.ndarray]:
        """True rewards of the given segments (only that array is decompressed)."""
        out: dict[str, np.ndarray] = {}
        c = self.conn()
        unique = list(dict.fromkeys(ids))
        for i in range(0, len(unique), 500):
            chunk = unique[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for row in c.execute(f"SELECT id, data FROM segments WHERE experiment=? AND id IN ({marks})",
                                 (experiment, *chunk)):
                out[row["id"]] = unpack(row["data"], ("true_rewards",))["true_rewards"]
        return out

    # -- meta ----------------------------------------------------------------------------------
    def meta_with_prefix(self, prefix: str) -> dict[str, str]:
        """The `meta` entries whose key starts with `prefix`, keyed by the rest of the key."""
        with self.read() as c:
            return {r[0][len(prefix):]: r[1] for r in c.execute(
                "SELECT key, value FROM meta WHERE key LIKE ?", (prefix + "%",))}

    @staticmethod
    def set_meta(c: sqlite3.Connection, key: str, value: str) -> None:
        c.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                  "value=excluded.value", (key, value))

    # -- progress (one row per experiment: env steps, budget, per-step shapes) ------------------
    @staticmethod
    def experiments(c: sqlite3.Connection) -> list[str]:
        """Every experiment that sent segments or progress, by name."""
        return [r[0] for r in c.execute("SELECT experiment FROM progress ORDER BY experiment")]

    @staticmethod
    def progress_shapes(c: sqlite3.Connection, experiment: str) -> sqlite3.Row | None:
        """(obs_shape, act_shape) stored for `experiment`; None before its first segments or progress."""
        return c.execute("SELECT obs_shape, act_shape FROM progress WHERE experiment=?", (experiment,)).fetchone()

    @staticmethod
    def insert_progress(c: sqlite3.Connection, experiment: str, env_id: str, label_budget: int, obs_shape: str,
                        act_shape: str, now: float) -> None:
        c.execute("INSERT INTO progress (experiment, env_id, env_steps, label_budget, obs_shape, "
                  "act_shape, updated) VALUES (?, ?, 0, ?, ?, ?, ?)",
                  (experiment, env_id, label_budget, obs_shape, act_shape, now))

    @classmethod
    def agree_shapes(cls, c: sqlite3.Connection, shapes: dict[str, tuple[str, str, str]], label_budget: int,
                     now: float) -> None:
        """Record the per-step shapes of `shapes` (experiment -> (env_id, obs key, action key), from
        `intake.batch_shapes`) for experiments that have none yet; `intake.check_shapes` refuses a
        batch whose shapes differ from those stored."""
        for exp, (env_id, obs_key, act_key) in shapes.items():
            row = cls.progress_shapes(c, exp)
            intake.check_shapes(exp, row, obs_key, act_key)
            if row is None:
                cls.insert_progress(c, exp, env_id, label_budget, obs_key, act_key, now)
            elif not row["obs_shape"]:
                cls.set_progress_shapes(c, exp, env_id, obs_key, act_key)

    @staticmethod
    def set_progress_shapes(c: sqlite3.Connection, experiment: str, env_id: str, obs_shape: str,
                            act_shape: str) -> None:
        c.execute("UPDATE progress SET env_id=?, obs_shape=?, act_shape=? WHERE experiment=?",
                  (env_id, obs_shape, act_shape, experiment))

    @staticmethod
    def report_progress(c: sqlite3.Connection, experiment: str, env_id: str, env_steps: int, label_budget: int,
                        now: float, set_budget: bool, goal: str = "") -> None:
        """Create or move on `experiment`'s progress: env steps only grow; the budget is replaced
        when `set_budget`, the env id and goal when given."""
        c.execute("INSERT INTO progress (experiment, env_id, env_steps, label_budget, updated, goal) "
                  "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (experiment) DO UPDATE SET "
                  "env_steps=MAX(env_steps, excluded.env_steps), updated=excluded.updated"
                  + (", label_budget=excluded.label_budget" if set_budget else "")
                  + (", env_id=excluded.env_id" if env_id else "")
                  + (", goal=excluded.goal" if goal else ""),
                  (experiment, env_id, env_steps, label_budget, now, goal))

    @staticmethod
    def experiment_goal(c: sqlite3.Connection, experiment: str) -> str:
        row = c.execute("SELECT goal FROM progress WHERE experiment=?", (experiment,)).fetchone()
        return row["goal"] if row else ""

    @staticmethod
    def experiment_counts(c: sqlite3.Connection, experiment: str) -> dict[str, Any]:
        """Where `experiment` stands: env_steps, label_budget (None without a progress row), env_id,
        and the counts of its labels, queued and leased queries, and segments."""
        prog = c.execute("SELECT env_steps, label_budget, env_id, goal FROM progress WHERE experiment=?",
                         (experiment,)).fetchone()
        # withheld labels (an excluded labeler's, `quality.py`) do not count: the schedule asks for others
        labels = c.execute("SELECT COUNT(*) FROM labels WHERE experiment=? AND forwarded NOT IN (3, 4)",
                           (experiment,)).fetchone()[0]
        counts = dict(c.execute("SELECT state, COUNT(*) FROM queries WHERE experiment=? AND state!='answered' "
                                "AND check_of='' GROUP BY state", (experiment,)).fetchall())
        segments = c.execute("SELECT COUNT(*) FROM segments WHERE experiment=?", (experiment,)).fetchone()[0]
        return dict(env_steps=int(prog["env_steps"]) if prog else 0,
                    label_budget=int(prog["label_budget"]) if prog else None,
                    env_id=prog["env_id"] if prog else "", goal=prog["goal"] if prog else "", labels=labels, queued=counts.get("queued", 0),
                    leased=counts.get("leased", 0), segments=segments)

    # -- segment rows --------------------------------------------------------------------------
    @staticmethod
    def insert_segment(c: sqlite3.Connection, row: tuple) -> int:
        """Insert one `segment_row`; 1 when stored, 0 when the experiment has that id already."""
        return c.execute("INSERT OR IGNORE INTO segments (id, experiment, env_id, length, env_step, fps, "
                         "random_policy, created, data, media) VALUES (?,?,?,?,?,?,?,?,?,?)", row).rowcount

    @staticmethod
    def count_segments(c: sqlite3.Connection, experiment: str) -> int:
        return c.execute("SELECT COUNT(*) FROM segments WHERE experiment=?", (experiment,)).fetchone()[0]

    @staticmethod
    def evict_unqueried(c: sqlite3.Connection, experiment: str, n: int) -> int:
        """Delete the `n` oldest segments of `experiment` that no query shows; returns how many went."""
        return c.execute(
            "DELETE FROM segments WHERE seq IN (SELECT s.seq FROM segments s WHERE s.experiment=? "
            "AND NOT EXISTS (SELECT 1 FROM queries q WHERE q.experiment=s.experiment AND "
            "(q.left_id=s.id OR q.right_id=s.id)) ORDER BY s.seq ASC LIMIT ?)", (experiment, n)).rowcount

    @staticmethod
    def candidate_pool(c: sqlite3.Connection, experiment: str, n: int) -> list[sqlite3.Row]:
        """(id, length, random_policy) of the `n` newest segments of `experiment`, newest first."""
        return c.execute("SELECT id, length, random_policy FROM segments WHERE experiment=? "
                         "ORDER BY seq DESC LIMIT ?", (experiment, n)).fetchall()

    @staticmethod
    def count_present(c: sqlite3.Connection, experiment: str, ids: tuple[str, str]) -> int:
        """How many of the two segments `ids` of `experiment` are stored."""
        return c.execute("SELECT COUNT(*) FROM segments WHERE experiment=? AND id IN (?, ?)",
                         (experiment, *ids)).fetchone()[0]

    @staticmethod
    def segment_columns(c: sqlite3.Connection, experiment: str, ids: tuple[str, str]) -> dict[str, sqlite3.Row]:
        """(id, env_id, fps, length) of the two segments `ids`, by id: columns only, no arrays."""
        return {r["id"]: r for r in c.execute(
            "SELECT id, env_id, fps, length FROM segments WHERE experiment=? AND id IN (?, ?)", (experiment, *ids))}

    # -- queries and leases --------------------------------------------------------------------
    @staticmethod
    def queried_pairs(c: sqlite3.Connection, experiment: str) -> set[tuple[str, str]]:
        """(left_id, right_id) of every query `experiment` ever had."""
        return {(r[0], r[1]) for r in c.execute("SELECT left_id, right_id FROM queries WHERE experiment=?",
                                                (experiment,))}

    @staticmethod
    def count_queries(c: sqlite3.Connection) -> int:
        """Queries of every experiment, ever."""
        return c.execute("SELECT COUNT(*) FROM queries").fetchone()[0]

    @staticmethod
    def insert_query(c: sqlite3.Connection, query_id: str, experiment: str, pair: tuple[str, str],
                     model_version: int, disagreement: float | None, now: float, order_key: float,
                     initial: bool) -> None:
        c.execute("INSERT INTO queries (id, experiment, left_id, right_id, model_version, disagreement, "
                  "state, created, order_key, initial) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
                  (query_id, experiment, *pair, int(model_version), disagreement, now, order_key, int(initial)))

    @staticmethod
    def query(c: sqlite3.Connection, query_id: str) -> sqlite3.Row | None:
        return c.execute("SELECT * FROM queries WHERE id=?", (query_id,)).fetchone()

    def lease_due(self, now: float) -> bool:
        """Whether some lease has lapsed by `now`: a read probe of the expiry index (no transaction)."""
        return self.conn().execute("SELECT 1 FROM queries WHERE state='leased' AND lease_expires <= ? "
                                   "LIMIT 1", (now,)).fetchone() is not None

    @staticmethod
    def expire_leases(c: sqlite3.Connection, now: float) -> int:
        """Return queries whose lease has lapsed to the queue (inside the caller's write transaction).

        Cheap when nothing is due: the partial index `queries_lease_expiry` (leased queries only, by
        expiry) turns this into one index probe instead of a scan of every query ever asked."""
        return c.execute("UPDATE queries SET state='queued', lease_owner=NULL, lease_expires=NULL "
                         "WHERE state='leased' AND lease_expires <= ?", (now,)).rowcount

    @staticmethod
    def _scope_sql(experiments: list[str] | None) -> tuple[str, list[str]]:
        if experiments is None:
            return "", []
        return f" AND q.experiment IN ({','.join('?' * len(experiments))})", list(experiments)

    @classmethod
    def next_queued(cls, c: sqlite3.Connection, experiments: list[str] | None, labeler: str,
                    checks: bool = False) -> sqlite3.Row | None:
        """The queued query (of `experiments`; None: any) to lease next: by queue order (`order_key`,
        then higher disagreement first), those `labeler` skipped (released) last. Two probes along
        the `queries_queued` / `queries_state` indexes instead of ranking every queued query by a
        subquery. Quality checks (`quality.py`) only with `checks`, and never one of `labeler`'s own
        answers or a gold query made for someone else."""
        where, args = cls._scope_sql(experiments)
        if checks:
            where += (" AND (q.check_of='' OR NOT EXISTS (SELECT 1 FROM checks k WHERE k.query_id=q.id AND "
                      "(k.expected_by=? OR (k.kind='gold' AND k.for_labeler!=?))))")
            args = [*args, labeler, labeler]
        else:
            where += " AND q.check_of=''"
        base = "SELECT q.* FROM queries q WHERE q.state='queued'" + where
        order = " ORDER BY q.order_key, q.disagreement DESC LIMIT 1"
        row = c.execute(base + " AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.query_id=q.id AND "
                        "l.labeler=? AND l.released=1)" + order, (*args, labeler)).fetchone()
        if row is None:  # every queued query was skipped by this labeler: offer those again
            row = c.execute(base + order, args).fetchone()
        return row

    @classmethod
    def count_queued(cls, c: sqlite3.Connection, experiments: list[str] | None) -> int:
        where, args = cls._scope_sql(experiments)
        return c.execute("SELECT COUNT(*) FROM queries q WHERE q.state='queued' AND q.check_of=''" + where,
                         args).fetchone()[0]

    @staticmethod
    def count_live_leases(c: sqlite3.Connection, experiment: str, now: float) -> int:
        return c.execute("SELECT COUNT(*) FROM queries WHERE experiment=? AND state='leased' AND check_of='' AND "
                         "lease_expires > ?", (experiment, now)).fetchone()[0]

    @staticmethod
    def grant_lease(c: sqlite3.Connection, query_id: str, labeler: str, now: float, expires: float) -> None:
        c.execute("UPDATE queries SET state='leased', lease_owner=?, lease_expires=? WHERE id=?",
                  (labeler, expires, query_id))
        c.execute("INSERT INTO leases (query_id, labeler, granted, expires) VALUES (?, ?, ?, ?)",
                  (query_id, labeler, now, expires))

    @staticmethod
    def ever_leased(c: sqlite3.Connection, query_id: str, labeler: str) -> bool:
        return c.execute("SELECT 1 FROM leases WHERE query_id=? AND labeler=? LIMIT 1",
                         (query_id, labeler)).fetchone() is not None

    @staticmethod
    def requeue(c: sqlite3.Connection, query_id: str, order_key: float) -> None:
        """A leased query back to the queue, at `order_key`."""
        c.execute("UPDATE queries SET state='queued', lease_owner=NULL, lease_expires=NULL, order_key=? "
                  "WHERE id=?", (order_key, query_id))

    @staticmethod
    def mark_released(c: sqlite3.Connection, query_id: str, labeler: str) -> None:
        """Note that `labeler` gave `query_id` back (it is offered to them last)."""
        c.execute("UPDATE leases SET released=1 WHERE query_id=? AND labeler=?", (query_id, labeler))

    # -- labels --------------------------------------------------------------------------------
    @staticmethod
    def label(c: sqlite3.Connection, query_id: str) -> sqlite3.Row | None:
        """(labeler, answer) of the label of `query_id`, None while unanswered."""
        return c.execute("SELECT labeler, answer FROM labels WHERE query_id=?", (query_id,)).fetchone()

    @staticmethod
    def insert_label(c: sqlite3.Connection, query: sqlite3.Row, answer: int, labeler: str, seconds: float,
                     now: float, forwarded: int = 0) -> None:
        """Store the label of `query` (a `queries` row) with the goal its labeler was shown, and mark
        the query answered. `forwarded`: its forwarding state (an excluded labeler's: withheld)."""
        c.execute("INSERT INTO labels (query_id, experiment, left_id, right_id, answer, labeler, seconds, "
                  "created, model_version, goal, forwarded) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, "
                  "COALESCE((SELECT goal FROM progress WHERE experiment=?), ''), ?)",
                  (query["id"], query["experiment"], query["left_id"], query["right_id"], answer, labeler,
                   seconds, now, query["model_version"], query["experiment"], forwarded))
        c.execute("UPDATE queries SET state='answered', lease_owner=NULL, lease_expires=NULL WHERE id=?",
                  (query["id"],))

    @staticmethod
    def insert_imported_label(c: sqlite3.Connection, lab: dict) -> None:
        """A label read from a label set (`labelsets`): its query row, answered, and the label itself,
        not yet forwarded."""
        c.execute("INSERT INTO queries (id, experiment, left_id, right_id, model_version, disagreement, state, "
                  "created, order_key, initial) VALUES (?, ?, ?, ?, ?, NULL, 'answered', ?, ?, 0)",
                  (lab["query_id"], lab["experiment"], lab["left_id"], lab["right_id"], lab["model_version"],
                   lab["created"], lab["created"]))
        c.execute("INSERT INTO labels (query_id, experiment, left_id, right_id, answer, labeler, seconds, created, "
                  "model_version, goal) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (lab["query_id"], lab["experiment"], lab["left_id"], lab["right_id"], lab["answer"],
                   lab["labeler"], lab["seconds"], lab["created"], lab["model_version"], lab["goal"]))

    @staticmethod
    def labels_for_export(c: sqlite3.Connection, experiments: list[str]) -> list[sqlite3.Row]:
        """Every label of `experiments` (all when empty), oldest first, with its experiment's env id."""
        where, args = ("WHERE l.experiment IN (%s)" % ",".join("?" * len(experiments)), experiments) \
            if experiments else ("", [])
        return c.execute("SELECT l.*, p.env_id FROM labels l LEFT JOIN progress p ON p.experiment=l.experiment "
                         f"{where} ORDER BY l.created, l.query_id", args).fetchall()

    @staticmethod
    def segment_rows(c: sqlite3.Connection, experiment: str, ids: list[str], media: bool) -> list[sqlite3.Row]:
        """The stored rows (blobs still compressed) of `experiment`'s segments among `ids`."""
        cols = "id, experiment, env_id, length, env_step, fps, random_policy, data" + (", media" if media else "")
        unique = list(dict.fromkeys(ids))
        out: list[sqlite3.Row] = []
        for i in range(0, len(unique), 500):
            chunk = unique[i:i + 500]
            out += c.execute(f"SELECT {cols} FROM segments WHERE experiment=? AND id IN "
                             f"({','.join('?' * len(chunk))})", (experiment, *chunk)).fetchall()
        return out

    @staticmethod
    def count_answered(c: sqlite3.Connection, labeler: str) -> int:
        return c.execute("SELECT COUNT(*) FROM labels WHERE labeler=?", (labeler,)).fetchone()[0]

    @staticmethod
    def labeler_stats(c: sqlite3.Connection) -> list[tuple[str, int, float | None]]:
        """(labeler, labels, mean seconds) of everyone who answered, by name."""
        return [tuple(r) for r in c.execute(
            "SELECT labeler, COUNT(*), AVG(seconds) FROM labels GROUP BY labeler ORDER BY labeler")]

    # -- forwarding state of labels (0 waiting, 1 forwarded, 2 never: its segments are gone) ------
    @staticmethod
    def count_forwarded(c: sqlite3.Connection, experiment: str) -> int:
        return c.execute("SELECT COUNT(*) FROM labels WHERE experiment=? AND forwarded IN (1, 2)",
                         (experiment,)).fetchone()[0]

    @staticmethod
    def count_forwarded_trainable(c: sqlite3.Connection, experiment: str) -> int:
        """Labels of `experiment` sent to its reward model that it keeps (not INCOMPARABLE)."""
        return c.execute("SELECT COUNT(*) FROM labels WHERE experiment=? AND forwarded=1 AND answer!=?",
                         (experiment, int(Preference.INCOMPARABLE))).fetchone()[0]

    def unforwarded_experiments(self) -> list[str]:
        """Experiments with labels to send (0), or to withdraw from their reward model (4, `quality.py`)."""
        return [r[0] for r in self.conn().execute("SELECT DISTINCT experiment FROM labels WHERE forwarded IN (0, 4)")]

    def unforwarded_labels(self, experiment: str, n: int) -> list[sqlite3.Row]:
        """(query_id, experiment, left_id, right_id, answer) of the `n` oldest unforwarded labels."""
        return self.conn().execute(
            "SELECT query_id, experiment, left_id, right_id, answer FROM labels WHERE forwarded=0 AND "
            "experiment=? ORDER BY created LIMIT ?", (experiment, n)).fetchall()

    def count_unforwarded(self) -> int:
        return self.conn().execute("SELECT COUNT(*) FROM labels WHERE forwarded IN (0, 4)").fetchone()[0]

    @staticmethod
    def set_forwarded(c: sqlite3.Connection, query_ids: list[str], state: int) -> None:
        """Labels that were waiting (0) are now `state` (sent, or lost). One withheld meanwhile (its
        labeler was excluded while it was being sent: 3) is to be taken back from the reward model (4)."""
        for qid in query_ids:
            c.execute("UPDATE labels SET forwarded=? WHERE query_id=? AND forwarded=0", (state, qid))
            if state == 1:
                c.execute("UPDATE labels SET forwarded=4 WHERE query_id=? AND forwarded=3", (qid,))

    @staticmethod
    def unmark_forwarded(c: sqlite3.Connection, experiment: str | None = None) -> int:
        """Mark the forwarded labels (of `experiment`; None: all) unforwarded; returns how many."""
        if experiment is None:
            return c.execute("UPDATE labels SET forwarded=0 WHERE forwarded=1").rowcount
        return c.execute("UPDATE labels SET forwarded=0 WHERE forwarded=1 AND experiment=?",
                         (experiment,)).rowcount
