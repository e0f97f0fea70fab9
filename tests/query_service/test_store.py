"""The SQLite label store: WAL + synchronous=FULL, hashed tokens, blobs, several connections."""

from __future__ import annotations

import numpy as np
import pytest

from query_service.store import DB_NAME, Store, TokenExists, pack, unpack
from query_service.types import SegmentRecord


def test_wal_and_full_sync(tmp_path):
    s = Store(tmp_path)
    c = s.conn()
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert c.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"segments", "queries", "leases", "labels", "labelers", "progress", "meta"} <= tables
    assert (tmp_path / DB_NAME).exists()
    s.close()


def test_tokens_are_stored_hashed_never_replaced_silently_and_can_be_rotated_and_revoked(tmp_path):
    s = Store(tmp_path)
    tok = s.create_token("alice", "labeler", ["Pong", " Breakout "])
    row = s.labeler_for(tok)
    assert row["name"] == "alice" and row["experiments"] == "Pong,Breakout" and not row["revoked"]
    s.close()
    assert tok.encode() not in (tmp_path / DB_NAME).read_bytes()
    s = Store(tmp_path)  # the salt persists: the token still works after a restart
    assert s.labeler_for(tok)["name"] == "alice"
    with pytest.raises(TokenExists, match="alice"):  # creating never invalidates a token someone holds
        s.create_token("alice", "teacher")
    assert s.labeler_for(tok)["role"] == "labeler"
    new = s.create_token("alice", "teacher", replace=True)  # an explicit rotation
    assert s.labeler_for(tok) is None and s.labeler_for(new)["role"] == "teacher"
    assert s.revoke_token("alice") and not s.revoke_token("bob")
    assert s.labeler_for(new)["revoked"] == 1
    with pytest.raises(ValueError):
        s.create_token("x", "root")
    with pytest.raises(ValueError):
        s.create_token("", "labeler")
    assert [r["name"] for r in s.list_labelers()] == ["alice"]
    s.close()


def test_pack_roundtrip_and_segment_rows(tmp_path):
    rng = np.random.default_rng(0)
    rec = SegmentRecord(id="a", experiment="e", env_id="Hopper-v5",
                        observations=rng.normal(size=(5, 3)).astype(np.float32),
                        actions=np.arange(5, dtype=np.int64), true_rewards=np.ones(5, np.float32),
                        qpos=rng.normal(size=(5, 7)), qvel=rng.normal(size=(5, 6)), env_step=9, fps=12.5,
                        random_policy=True)
    assert unpack(pack(x=np.eye(2), y=None)).keys() == {"x"}
    s = Store(tmp_path)
    with s.write() as c:
        c.execute("INSERT INTO segments (id, experiment, env_id, length, env_step, fps, random_policy, created, "
                  "data, media) VALUES (?,?,?,?,?,?,?,?,?,?)", Store.segment_row(rec, 1.0))
    got = s.load_segments("e", ["a", "missing"], media=True)["a"]
    for name in ("observations", "actions", "true_rewards", "qpos", "qvel"):
        np.testing.assert_array_equal(getattr(got, name), getattr(rec, name))
        assert getattr(got, name).dtype == getattr(rec, name).dtype
    assert got.frames is None and (got.env_step, got.fps, got.random_policy) == (9, 12.5, True)
    assert s.load_segments("e", ["a"])["a"].qpos is None  # media only on request
    s.close()


def test_write_is_atomic_and_visible_to_another_connection(tmp_path):
    a, b = Store(tmp_path), Store(tmp_path)  # two processes' worth of connections
    with pytest.raises(RuntimeError):
        with a.write() as c:
            c.execute("INSERT INTO meta (key, value) VALUES ('x', '1')")
            raise RuntimeError("boom")
    assert b.conn().execute("SELECT COUNT(*) FROM meta WHERE key='x'").fetchone()[0] == 0
    with a.write() as c:
        c.execute("INSERT INTO meta (key, value) VALUES ('x', '2')")
    assert b.conn().execute("SELECT value FROM meta WHERE key='x'").fetchone()[0] == "2"
    a.close()
    b.close()


def test_writers_of_one_process_take_turns_without_busy_waits(tmp_path):
    import threading
    import time

    a, b = Store(tmp_path), Store(tmp_path)
    assert a._write_lock is b._write_lock  # one lock per database file in a process
    with a.write() as c:
        c.execute("CREATE TABLE n (i INTEGER)")
    waits: list[float] = []
    errors: list[BaseException] = []

    def work(s: Store, k: int) -> None:
        try:
            for i in range(50):
                t0 = time.perf_counter()
                with s.write() as c:
                    c.execute("INSERT INTO n (i) VALUES (?)", (k * 1000 + i,))
                waits.append(time.perf_counter() - t0)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(a if k % 2 else b, k)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert a.conn().execute("SELECT COUNT(*) FROM n").fetchone()[0] == 400
    a.close()
    b.close()


def test_a_database_of_an_older_version_gets_the_new_columns_and_keeps_its_rows(tmp_path):
    import sqlite3

    # progress and labels as version 1 wrote them (no goal columns)
    with sqlite3.connect(tmp_path / DB_NAME) as c:
        c.execute("CREATE TABLE progress (experiment TEXT PRIMARY KEY, env_id TEXT NOT NULL DEFAULT '', "
                  "env_steps INTEGER NOT NULL DEFAULT 0, label_budget INTEGER NOT NULL, obs_shape TEXT NOT NULL "
                  "DEFAULT '', act_shape TEXT NOT NULL DEFAULT '', updated REAL NOT NULL)")
        c.execute("CREATE TABLE labels (query_id TEXT PRIMARY KEY, experiment TEXT NOT NULL, left_id TEXT NOT NULL, "
                  "right_id TEXT NOT NULL, answer INTEGER NOT NULL, labeler TEXT NOT NULL, seconds REAL NOT NULL, "
                  "created REAL NOT NULL, model_version INTEGER NOT NULL, forwarded INTEGER NOT NULL DEFAULT 0)")
        c.execute("INSERT INTO progress VALUES ('Hop', 'Hopper-v5', 500, 700, '', '', 1.0)")
        c.execute("INSERT INTO labels VALUES ('q1', 'Hop', 'a', 'b', 1, 'alice', 2.0, 1.0, 3, 1)")
    s = Store(tmp_path)
    with s.read() as c:
        assert Store.experiment_goal(c, "Hop") == ""
        assert tuple(c.execute("SELECT answer, labeler, goal FROM labels").fetchone()) == (1, "alice", "")
    with s.write() as c:
        Store.report_progress(c, "Hop", "", 600, 700, 2.0, set_budget=False, goal="hop")
    s.close()
    s = Store(tmp_path)  # opening it again adds nothing twice
    with s.read() as c:
        assert Store.experiment_goal(c, "Hop") == "hop"
        assert Store.experiment_counts(c, "Hop")["env_steps"] == 600
    s.close()
