"""SIGKILL the query service while 8 labelers answer (real processes, real SQLite): every label a
labeler saw acknowledged is in the database after the restart, none twice, and the labelers carry on
once the service is back. Each labeler behaves as `rlhp label` does: it keeps an answer it could
not deliver and sends it again (a repeat of a stored answer is acknowledged as DUPLICATE)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from query_service.client import QueryClient
from query_service.core import QueryService
from query_service.testing import segment_records
from rlhp.types import Preference

ROOT = Path(__file__).resolve().parents[2]
LABELERS = 8


def _start(run_dir: Path, port: int) -> subprocess.Popen:
    (run_dir / "query_service.address").unlink(missing_ok=True)
    log = run_dir.parent / "query_service.log"  # a file, not a pipe nobody reads while it runs
    proc = subprocess.Popen(
        [sys.executable, "-m", "query_service", "--run-dir", str(run_dir), "--port", str(port), "--preset", "smoke",
         "--selection", "random", "--label-budget", "1000", "--initial-labels", "1000", "--log-level", "WARNING"],
        cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=open(log, "a"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not (run_dir / "query_service.address").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the query service did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return proc


class Labeler(threading.Thread):
    """Leases and answers until stopped; `acked` holds (query id, answer) the service acknowledged."""

    def __init__(self, name: str, address: str, token: str, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.labeler, self.stop = name, stop
        self.client = QueryClient(address, token, timeout=5)
        self.acked: list[tuple[str, int]] = []
        self.failed_calls = 0
        self.rng = np.random.default_rng(abs(hash(name)) % 2**32)

    def _until_done(self, call):
        while not self.stop.is_set():
            try:
                return call()
            except (ConnectionError, TimeoutError):  # the service is down: try again, keep the answer
                self.failed_calls += 1
                time.sleep(0.1)
        return None

    def run(self) -> None:
        while not self.stop.is_set():
            lease = self._until_done(lambda: self.client.lease(lease_seconds=600))
            if lease is None or not lease.available:
                time.sleep(0.05)
                continue
            answer = Preference(int(self.rng.integers(1, 4)))
            qid = lease.query.id
            result = self._until_done(lambda: self.client.submit(qid, answer, seconds=0.1))
            if result is not None and result.status in ("ACCEPTED", "DUPLICATE"):
                self.acked.append((qid, int(answer)))


def test_sigkill_while_8_labelers_answer_loses_and_duplicates_nothing(tmp_path, free_port):
    run_dir = tmp_path / "run"
    with QueryService(run_dir) as core:
        producer = core.create_token("actors", "producer")
        tokens = {f"lab{i}": core.create_token(f"lab{i}", "labeler") for i in range(LABELERS)}
    port = free_port
    address = f"127.0.0.1:{port}"
    proc = _start(run_dir, port)
    stop = threading.Event()
    labelers = []
    try:
        with QueryClient(address, producer, timeout=30) as prod:
            prod.add_segments(segment_records(400, exp="Hop", random_policy=True))
            prod.report_progress("Hop", 0)
        labelers = [Labeler(name, address, token, stop) for name, token in tokens.items()]
        for lab in labelers:
            lab.start()

        def acked() -> int:
            return sum(len(lab.acked) for lab in labelers)

        deadline = time.monotonic() + 120
        while acked() < 80 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # mid-stream: answers in flight, leases held
        proc.wait(timeout=30)
        at_kill = acked()
        assert at_kill >= 80
        # Labelers meet a dead service for a while. With a 1 s pause no labeler saw a failed call in
        # 1 run of 4 (the channel retries a call up to 5 times, rlhp.rpc, and a quick restart can
        # answer it); 3 s is well past those retries: 8 runs of 8 saw failures.
        time.sleep(3.0)
        proc = _start(run_dir, port)
        deadline = time.monotonic() + 120
        while acked() < at_kill + 80 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        for lab in labelers:
            lab.join(timeout=30)
    finally:
        stop.set()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert acked() >= at_kill + 80, "the labelers did not carry on after the restart"
    assert sum(lab.failed_calls for lab in labelers) > 0  # they did meet the dead service
    want = {(qid, lab.labeler, answer) for lab in labelers for qid, answer in lab.acked}
    assert len(want) == acked()  # no labeler saw one query acknowledged twice
    with sqlite3.connect(run_dir / "labels.sqlite") as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = c.execute("SELECT query_id, labeler, answer FROM labels").fetchall()
        states = dict(c.execute("SELECT state, COUNT(*) FROM queries GROUP BY state").fetchall())
    assert len(rows) == len(set(r[0] for r in rows))  # one label per query
    assert set(rows) == want  # acknowledged == stored: 0 lost, 0 extra
    assert states.get("answered", 0) == len(rows)
