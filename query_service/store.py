"""Durable state of the query service: one SQLite database (WAL) under the run directory.

`<run_dir>/labels.sqlite` holds segments (arrays as compressed npz blobs), queries, leases, labels,
labeler tokens (salted hashes only) and the schedule position of every experiment. Every write is
one `BEGIN IMMEDIATE` transaction committed with `synchronous=FULL`, so a label is on disk before
the call that stored it returns. Writers of one process (the service's threads) queue on an
in-process lock per database file before they begin, so they never collide inside SQLite, whose busy
handler would put the loser to sleep for up to 100 ms a retry; writers of other processes (e.g.
`rlhp token` while the service runs) still serialise on the database lock (busy timeout 30 s).

No gRPC here; `core.py` holds the rules, this module holds the rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import secrets
import sqlite3
import threading
import weakref
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .types import SegmentRecord

DB_NAME = "labels.sqlite"
ROLES = ("labeler", "teacher", "producer", "admin")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS segments (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    experiment TEXT NOT NULL,
    env_id TEXT NOT NULL,
    length INTEGER NOT NULL,
    env_step INTEGER NOT NULL,
    fps REAL NOT NULL,
    random_policy INTEGER NOT NULL,
    created REAL NOT NULL,
    data BLOB NOT NULL,     -- npz: observations, actions, true_rewards
    media BLOB,             -- npz: frames, qpos, qvel (those given)
    UNIQUE (experiment, id)
);
CREATE TABLE IF NOT EXISTS queries (
    id TEXT PRIMARY KEY,
    experiment TEXT NOT NULL,
    left_id TEXT NOT NULL,
    right_id TEXT NOT NULL,
    model_version INTEGER NOT NULL,
    disagreement REAL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'leased', 'answered')),
    lease_owner TEXT,
    lease_expires REAL,
    created REAL NOT NULL,
    order_key REAL NOT NULL,
    initial INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS queries_state ON queries (experiment, state, order_key);
CREATE INDEX IF NOT EXISTS queries_queued ON queries (order_key) WHERE state='queued';
CREATE INDEX IF NOT EXISTS queries_lease_expiry ON queries (lease_expires) WHERE state='leased';
CREATE INDEX IF NOT EXISTS queries_left ON queries (experiment, left_id);
CREATE INDEX IF NOT EXISTS queries_right ON queries (experiment, right_id);
CREATE TABLE IF NOT EXISTS leases (
    query_id TEXT NOT NULL,
    labeler TEXT NOT NULL,
    granted REAL NOT NULL,
    expires REAL NOT NULL,
    released INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS leases_query ON leases (query_id, labeler);
CREATE TABLE IF NOT EXISTS labels (
    query_id TEXT PRIMARY KEY,
    experiment TEXT NOT NULL,
    left_id TEXT NOT NULL,
    right_id TEXT NOT NULL,
    answer INTEGER NOT NULL,
    labeler TEXT NOT NULL,
    seconds REAL NOT NULL,
    created REAL NOT NULL,
    model_version INTEGER NOT NULL,
    forwarded INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS labels_forwarded ON labels (forwarded, created);
CREATE INDEX IF NOT EXISTS labels_labeler ON labels (labeler);
CREATE TABLE IF NOT EXISTS labelers (
    name TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    experiments TEXT NOT NULL DEFAULT '',
    revoked INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS progress (
    experiment TEXT PRIMARY KEY,
    env_id TEXT NOT NULL DEFAULT '',
    env_steps INTEGER NOT NULL DEFAULT 0,
    label_budget INTEGER NOT NULL,
    obs_shape TEXT NOT NULL DEFAULT '',
    act_shape TEXT NOT NULL DEFAULT '',
    updated REAL NOT NULL
);
"""


def pack(**arrays: np.ndarray | None) -> bytes:
    """Arrays (None ones skipped) as one compressed npz blob."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: v for k, v in arrays.items() if v is not None})
    return buf.getvalue()


def unpack(blob: bytes | None, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The arrays of a `pack` blob; only those named in `keys` (others stay compressed) when given."""
    if not blob:
        return {}
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return {k: z[k] for k in z.files if keys is None or k in keys}


_WRITE_LOCKS: "weakref.WeakValueDictionary[str, Any]" = weakref.WeakValueDictionary()
_WRITE_LOCKS_GUARD = threading.Lock()


def _write_lock(path: Path) -> Any:
    """One lock per database file and process, shared by every `Store` of that file."""
    key = os.path.realpath(path)
    with _WRITE_LOCKS_GUARD:
        lock = _WRITE_LOCKS.get(key)
        if lock is None:
            lock = _WRITE_LOCKS[key] = threading.RLock()
        return lock


class Store:
    """Thread-safe access to `<run_dir>/labels.sqlite` (one connection per thread)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / DB_NAME
        self._write_lock = _write_lock(self.path)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        conn = self.conn()
        conn.executescript(_SCHEMA)
        with self.write() as c:
            row = c.execute("SELECT value FROM meta WHERE key='token_salt'").fetchone()
            if row is None:
                c.execute("INSERT INTO meta (key, value) VALUES ('token_salt', ?)", (secrets.token_hex(16),))
        self._salt = conn.execute("SELECT value FROM meta WHERE key='token_salt'").fetchone()[0]

    # -- connections ---------------------------------------------------------------------------
    def conn(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError("the label store is closed")
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.path, isolation_level=None, timeout=30.0, check_same_thread=False)
            c.row_factory = sqlite3.Row
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=FULL")
            c.execute("PRAGMA busy_timeout=30000")
            c.execute("PRAGMA foreign_keys=ON")
            self._local.conn = c
            with self._conns_lock:
                self._conns.append(c)
        return c

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (`BEGIN IMMEDIATE` … `COMMIT`); rolled back on any error.

        Held under the process-wide write lock of this database: the threads of a process take
        turns here (no busy-handler sleeps); other processes still wait on SQLite's own lock."""
        c = self.conn()
        with self._write_lock:
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several reads."""
        c = self.conn()
        c.execute("BEGIN")
        try:
            yield c
        finally:
            c.execute("COMMIT")

    def close(self) -> None:
        self._closed = True
        with self._conns_lock:
            for c in self._conns:
                with contextlib.suppress(sqlite3.Error):
                    c.close()
            self._conns.clear()

    # -- tokens --------------------------------------------------------------------------------
    def token_hash(self, token: str) -> str:
        return hashlib.sha256(f"{self._salt}:{token}".encode()).hexdigest()

    def create_token(self, name: str, role: str, experiments: str | list[str] | tuple[str, ...] = "",
                     now: float = 0.0) -> str:
        """Create (or replace) the token of `name`; returns the plain token (stored only hashed)."""
        if not name or not name.strip() or len(name) > 100:
            raise ValueError("a labeler name must be 1–100 characters")
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        exps = experiments if isinstance(experiments, str) else ",".join(experiments)
        exps = ",".join(e.strip() for e in exps.split(",") if e.strip())
        token = secrets.token_urlsafe(24)
        with self.write() as c:
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
