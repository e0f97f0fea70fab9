"""A full disk and a read-only run directory (a real, small tmpfs mounted for the test; root only):
the query service answers UNAVAILABLE with the reason instead of INTERNAL, stores nothing half, keeps
every label it acknowledged, and works again once there is room; the commands say what is wrong
instead of printing a traceback."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from query_service.client import QueryClient
from query_service.core import QueryService
from query_service.server import serve
from query_service.testing import segment_records
from rlhp.types import Preference, Unavailable

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs; `remount(options)` changes its size or makes it read-only."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs for the disk-full test (CI runs as root): {r.stderr}")
        pytest.skip(f"mounting a tmpfs needs root: {r.stderr.strip()}")

    def remount(options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(mnt)], check=True)

    yield mnt, remount
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(prod: QueryClient, start: int) -> tuple[int, Exception]:
    """Add segments until the service refuses; returns (segments stored, the error)."""
    n = 0
    for i in range(10_000):
        try:
            prod.add_segments(segment_records(10, exp="Hop", length=50, start=start + 10 * i,
                                              random_policy=True, rng=np.random.default_rng(i)))
            n += 10
        except Exception as e:  # noqa: BLE001 — what the client raises is the point of the test
            return n, e
    raise AssertionError("the disk never filled up")


def test_disk_full_then_read_only_then_writable_again(small_disk):
    mnt, remount = small_disk
    run_dir = mnt / "run"
    core = QueryService(run_dir)
    server = serve(core, "127.0.0.1", 0)
    try:
        producer = core.create_token("actors", "producer")
        alice = core.create_token("alice", "labeler")
        prod, lab = QueryClient(server.address, producer, timeout=30), QueryClient(server.address, alice, timeout=30)
        prod.add_segments(segment_records(6, exp="Hop", random_policy=True))
        prod.report_progress("Hop", 0)
        core.select_once()
        acked = []
        for _ in range(2):
            q = lab.lease().query
            assert lab.submit(q.id, Preference.LEFT).status == "ACCEPTED"
            acked.append(q.id)

        stored, err = _fill(prod, start=100)
        assert isinstance(err, Unavailable) and isinstance(err, ConnectionError), repr(err)
        assert "cannot be written" in str(err) and "disk is full" in str(err) and "nothing was stored" in str(err)
        assert lab.stats().experiments[0].labels == 2  # reads go on
        with closing(sqlite3.connect(run_dir / "labels.sqlite")) as c:
            assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert {r[0] for r in c.execute("SELECT query_id FROM labels")} == set(acked)

        remount("size=64m")  # room again: the same service takes writes, no restart
        q = lab.lease().query
        assert lab.submit(q.id, Preference.RIGHT).status == "ACCEPTED"
        acked.append(q.id)

        prod.close()
        lab.close()
    finally:
        server.stop(0)
        core.close()
    remount("ro")  # the run directory becomes read-only: opening the store says so
    with pytest.raises(Unavailable, match="(?i)cannot open the label store .*read-?only"):
        QueryService(run_dir)
    remount("rw")
    with QueryService(run_dir) as again:  # and nothing was lost or damaged on the way
        assert again.stats().experiments[0].labels == len(acked)
    with closing(sqlite3.connect(run_dir / "labels.sqlite")) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert {r[0] for r in c.execute("SELECT query_id FROM labels")} == set(acked)


def test_commands_on_a_read_only_run_directory_say_so(small_disk, tmp_path):
    mnt, remount = small_disk
    remount("ro")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for args in (["-m", "query_service", "--run-dir", str(mnt / "run"), "--port", "0"],
                 ["-m", "learner.cli", "train", "--env", "rlhp/FixedCartPole-v0", "--preset", "smoke",
                  "--runs-dir", str(mnt)]):
        r = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode in (1, 2), (args, r.stdout[-2000:], r.stderr[-2000:])
        assert "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]
        assert "read-only" in (r.stderr + r.stdout).lower() or "readonly" in (r.stderr + r.stdout).lower(), r.stderr
