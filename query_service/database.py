"""The SQLite file of the query service: its schema, connections and transactions.

`<run_dir>/labels.sqlite` (WAL). Every write is one `BEGIN IMMEDIATE` transaction committed with
`synchronous=FULL`, so a row is on disk before the call that wrote it returns. Writers of one process
(the service's threads) queue on an in-process lock per database file before they begin, so they never
collide inside SQLite, whose busy handler would put the loser to sleep for up to 100 ms a retry;
writers of other processes (e.g. `rlhp token` while the service runs) still serialise on the database
lock (busy timeout 30 s). A write the disk refuses (full, read-only) is rolled back and raised as
`rlhp.types.Unavailable` (UNAVAILABLE to clients, who try again). The named statements over these
tables are `store.Store`.
"""

from __future__ import annotations

import contextlib
import io
import os
import sqlite3
import threading
import weakref
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from rlhp.types import Unavailable

DB_NAME = "labels.sqlite"

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
    forwarded INTEGER NOT NULL DEFAULT 0,
    goal TEXT NOT NULL DEFAULT ''  -- the task in words, as the labeler was shown it
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
CREATE TABLE IF NOT EXISTS checks (
    query_id TEXT PRIMARY KEY,     -- the check query a labeler is shown (a `queries` row whose check_of is set)
    of_query TEXT NOT NULL,        -- the query whose answer it checks
    kind TEXT NOT NULL CHECK (kind IN ('gold', 'repeat')),
    expected INTEGER NOT NULL,     -- gold: the known answer; repeat: the first labeler's (both as shown)
    expected_by TEXT NOT NULL,     -- who gave the expected answer
    for_labeler TEXT NOT NULL DEFAULT '',  -- gold: the labeler it was made for
    labeler TEXT NOT NULL DEFAULT '',      -- who answered it ('' until answered)
    answer INTEGER,
    seconds REAL,
    created REAL NOT NULL,
    answered REAL
);
CREATE INDEX IF NOT EXISTS checks_labeler ON checks (labeler);
CREATE INDEX IF NOT EXISTS checks_of ON checks (of_query);
CREATE TABLE IF NOT EXISTS progress (
    experiment TEXT PRIMARY KEY,
    env_id TEXT NOT NULL DEFAULT '',
    env_steps INTEGER NOT NULL DEFAULT 0,
    label_budget INTEGER NOT NULL,
    obs_shape TEXT NOT NULL DEFAULT '',
    act_shape TEXT NOT NULL DEFAULT '',
    updated REAL NOT NULL,
    goal TEXT NOT NULL DEFAULT ''
);
"""

# Columns added after a table's first release: (table, column, declaration). A database written by
# an older version gets them on open (`ALTER TABLE ... ADD COLUMN`); its rows take the default.
_ADDED_COLUMNS = (
    ("progress", "goal", "TEXT NOT NULL DEFAULT ''"),
    ("labels", "goal", "TEXT NOT NULL DEFAULT ''"),
    ("queries", "check_of", "TEXT NOT NULL DEFAULT ''"),  # set: a quality check (`quality.py`), not a query to learn from
    ("labelers", "excluded", "INTEGER NOT NULL DEFAULT 0"),  # 1: their labels are not forwarded
)


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


# sqlite3.OperationalError messages that mean the disk, not the request: full, read-only, failing
_STORAGE_ERRORS = ("database or disk is full", "readonly database", "disk i/o error", "unable to open database file")


def _unwritable(directory: Path) -> str:
    """Why nothing can be written in `directory` (", the run directory is not writable: Read-only
    file system"), or "" when it can."""
    import tempfile

    if not directory.is_dir():
        return ""
    try:
        with tempfile.TemporaryFile(dir=directory):
            return ""
    except OSError as e:
        return f" (the run directory is not writable: {e.strerror})"


def _reason(e: BaseException) -> str:
    return f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.strerror else str(e)


_WRITE_LOCKS: "weakref.WeakValueDictionary[str, Any]" = weakref.WeakValueDictionary()
_WRITE_LOCKS_GUARD = threading.Lock()


def _write_lock(path: Path) -> Any:
    """One lock per database file and process, shared by every `Database` (and `Store`) of that file."""
    key = os.path.realpath(path)
    with _WRITE_LOCKS_GUARD:
        lock = _WRITE_LOCKS.get(key)
        if lock is None:
            lock = _WRITE_LOCKS[key] = threading.RLock()
        return lock


class Database:
    """Thread-safe access to `<run_dir>/labels.sqlite` (one connection per thread), schema applied."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        self._write_lock = _write_lock(self.path)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.conn().executescript(_SCHEMA)
            self._add_columns()
        except (OSError, sqlite3.Error) as e:
            self.close()
            raise Unavailable(f"cannot open the label store {self.path}: {_reason(e)}"
                              f"{_unwritable(self.run_dir)}") from None

    def _unavailable(self, e: BaseException) -> Unavailable | None:
        """The error to raise for a write the disk refused (full, read-only, failing); None for others."""
        text = str(e).lower()
        if isinstance(e, sqlite3.OperationalError) and any(k in text for k in _STORAGE_ERRORS):
            return Unavailable(f"the label store {self.path} cannot be written: {e} (nothing was stored; "
                               "free disk space or make the run directory writable, then try again)")
        return None

    def _add_columns(self) -> None:
        """Bring a database of an older version up to the schema (columns only ever get added)."""
        with self.write() as c:
            for table, column, decl in _ADDED_COLUMNS:
                have = {row["name"] for row in c.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    c.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

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
            try:
                c.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                raise self._unavailable(e) or e from None
            try:
                yield c
                c.execute("COMMIT")
            except BaseException as e:
                if c.in_transaction:
                    try:
                        c.execute("ROLLBACK")
                    except sqlite3.Error:  # the connection is unusable now: this thread opens a new one
                        with contextlib.suppress(sqlite3.Error):
                            c.close()
                        self._local.conn = None
                unavailable = self._unavailable(e)
                if unavailable is not None:
                    raise unavailable from None
                raise

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
