"""The labeling page end to end: query service (core + gRPC on loopback, SQLite) ← `rlhp label` web app
← headless Chromium driven by Playwright. A human's key press must become a durable label."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "osmesa")
if os.environ["MUJOCO_GL"] == "osmesa":
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from query_service.testing import synthetic_atari_frames  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--autoplay-policy=no-user-gesture-required"]
SCREENSHOT = "/tmp/rlhp_label.png"

pytestmark = pytest.mark.browser

if not (os.path.exists(CHROMIUM) and shutil.which(CHROMIUM)) and not os.environ.get("CI"):
    pytest.skip(f"{CHROMIUM} is missing (install Debian's chromium; in CI this test fails instead)",
                allow_module_level=True)


def atari_segments(experiment: str, n: int, t: int = 25):
    from query_service.types import SegmentRecord

    return [SegmentRecord(
        id=f"{experiment}-seg{i:03d}", experiment=experiment, env_id="ALE/Pong-v5",
        observations=np.zeros((t, 8), np.float32), actions=np.zeros(t, np.int64),
        true_rewards=np.zeros(t, np.float32), frames=synthetic_atari_frames(i, t),
        fps=15.0, random_policy=True) for i in range(n)]


class Stack:
    """Query service (core + gRPC server) and `rlhp label` web apps, all on loopback."""

    def __init__(self, run_dir: Path, tls: dict | None = None) -> None:
        from query_service.config import QueryConfig
        from query_service.core import QueryService
        from query_service.server import serve

        self.run_dir = run_dir
        self.core = QueryService(run_dir, QueryConfig.smoke(selection="random", queue_target=4), seed=0)
        self.server = serve(self.core, "127.0.0.1", 0, tls=(tls["cert"], tls["key"]) if tls else None)
        self.root_cert = tls["cert_pem"] if tls else None
        self.webs: list = []

    def web(self, token: str, experiments: tuple[str, ...] = ()):
        from query_service.web.app import make_server

        httpd = make_server(self.server.address, token, "127.0.0.1", 0, experiments, root_cert=self.root_cert)
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        self.webs.append(httpd)
        return httpd

    def close(self) -> None:
        for httpd in self.webs:
            httpd.shutdown_and_close()
        self.server.stop(0)
        self.core.close()


@pytest.fixture()
def stack(tmp_path):
    s = Stack(tmp_path / "run")
    yield s
    s.close()


@pytest.fixture()
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


ACTIVE_READY = """() => {
  const vs = [...document.querySelectorAll('.pair.active video')];
  return vs.length === 2 && vs.every(v => v.readyState >= 2 && v.duration > 0 && !v.paused);
}"""
HIDDEN_READY = """() => {
  const vs = [...document.querySelectorAll('.pair.preload video')];
  return !!window.rlhpState.preloaded && vs.every(v => v.readyState >= 2 && v.duration > 0);
}"""
TIMES = "() => [...document.querySelectorAll('.pair.active video')].map(v => v.currentTime)"


def wait_label(db: Path, query_id: str, timeout: float = 10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with sqlite3.connect(db) as c:
            row = c.execute("SELECT answer, labeler FROM labels WHERE query_id=?", (query_id,)).fetchone()
        if row is not None:
            return row
        time.sleep(0.05)
    return None


def test_label_with_arrow_key_and_next_pair_shows(stack, browser):
    from rlhp.wire import Preference

    core = stack.core
    producer = core.create_token("actor", "producer")
    token = core.create_token("alice", "labeler")
    core.add_segments(producer, atari_segments("pong", 8))
    core.report_progress(producer, "pong", 0, goal="win points against the left paddle")
    assert core.select_once() >= 3
    web = stack.web(token)

    page = browser.new_page(viewport={"width": 1200, "height": 860})
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.goto(web.url)
    page.wait_for_function(ACTIVE_READY, timeout=20_000)
    first = page.evaluate("window.rlhpState.shown")
    assert first
    # Both clips are playing: their clocks advance.
    t0 = page.evaluate(TIMES)
    page.wait_for_function(f"() => {{ const t = ({TIMES})(); return t[0] !== {t0[0]} && t[1] !== {t0[1]}; }}",
                           timeout=5_000)
    assert "pong" in page.inner_text("#experiment")
    # The labeler is told what the goal is, above the clips.
    assert page.is_visible("#goal")
    assert page.inner_text("#goal") == "Goal: win points against the left paddle"
    # The next pair is preloaded into the hidden players before we answer.
    page.wait_for_function(HIDDEN_READY, timeout=20_000)
    nxt = page.evaluate("window.rlhpState.preloaded")
    assert nxt and nxt != first
    page.screenshot(path=SCREENSHOT)

    page.keyboard.press("ArrowLeft")
    # The label is durable in SQLite, with the answer LEFT and the right labeler.
    row = wait_label(core.run_dir / "labels.sqlite", first)
    assert row == (int(Preference.LEFT), "alice"), console
    with sqlite3.connect(core.run_dir / "labels.sqlite") as c:  # the goal it was given under
        assert c.execute("SELECT goal FROM labels WHERE query_id=?", (first,)).fetchone()[0] == \
            "win points against the left paddle"
    # The preloaded pair is now on screen and playing.
    page.wait_for_function(f"() => window.rlhpState.shown === {nxt!r}", timeout=5_000)
    page.wait_for_function(ACTIVE_READY, timeout=10_000)
    page.wait_for_function("() => window.rlhpTimings.length >= 1 && window.rlhpTimings[0].ms !== null",
                           timeout=10_000)
    timing = page.evaluate("window.rlhpTimings[0]")
    assert timing["preloaded"] is True and timing["query_id"] == nxt
    assert timing["ms"] < 2_000, timing
    page.wait_for_function("() => document.getElementById('answered').textContent === '1'", timeout=5_000)

    # A second answer with another key goes through as well (RIGHT).
    page.wait_for_function(HIDDEN_READY, timeout=20_000)
    page.keyboard.press("ArrowRight")
    assert wait_label(core.run_dir / "labels.sqlite", nxt) == (int(Preference.RIGHT), "alice")
    page.wait_for_function(ACTIVE_READY, timeout=10_000)
    # the labeler's own numbers, from the service (a labeler's token sees only its own)
    page.wait_for_function("() => document.getElementById('me').textContent.startsWith('You: 2 labels')",
                           timeout=10_000)
    assert not [m for m in console if m.startswith("error")], console
    page.close()


def test_waiting_message_when_queue_is_empty(stack, browser):
    token = stack.core.create_token("bob", "labeler", ["breakout"])  # an experiment with no segments
    web = stack.web(token)
    page = browser.new_page()
    page.goto(web.url)
    page.wait_for_function(
        "() => !document.getElementById('status').hidden && "
        "document.getElementById('status').textContent.includes('Waiting for the agent to produce clips')",
        timeout=10_000)
    detail = page.inner_text("#status")
    assert "breakout" in detail  # the service's waiting_for text says what the run waits for
    assert page.is_hidden("#buttons") and page.is_hidden("#goal")
    page.screenshot(path="/tmp/rlhp_label_waiting.png")
    # Polling picks up queries once they exist.
    producer = stack.core.create_token("actor", "producer")
    stack.core.add_segments(producer, atari_segments("breakout", 4))
    stack.core.report_progress(producer, "breakout", 0)
    stack.core.select_once()
    page.wait_for_function(ACTIVE_READY, timeout=20_000)
    page.close()


def test_service_unreachable_is_reported(tmp_path, browser):
    from query_service.web.app import make_server

    # Nothing listens on this port: the page must say so (and keep retrying), not show a traceback.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    httpd = make_server(f"127.0.0.1:{dead}", "no-token", "127.0.0.1", 0)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    try:
        page = browser.new_page()
        page.goto(httpd.url)
        page.wait_for_function(
            "() => document.getElementById('status').textContent.includes('Cannot reach the query service')",
            timeout=20_000)
        page.close()
    finally:
        httpd.shutdown_and_close()


def test_label_through_a_tls_query_service(tmp_path, browser, tls_files):
    """`rlhp label --tls-ca`: the page labels through a query service that serves TLS only."""
    from query_service.client import QueryClient
    from rlhp.wire import Preference

    stack = Stack(tmp_path / "run", tls=tls_files)
    try:
        core = stack.core
        producer = core.create_token("actor", "producer")
        token = core.create_token("alice", "labeler")
        core.add_segments(producer, atari_segments("pong", 6))
        core.report_progress(producer, "pong", 0)
        assert core.select_once() >= 2
        with QueryClient(stack.server.address, token, timeout=3) as plain:  # no CA: no connection
            with pytest.raises((ConnectionError, TimeoutError)):
                plain.lease()
        web = stack.web(token)
        page = browser.new_page()
        page.goto(web.url)
        page.wait_for_function(ACTIVE_READY, timeout=20_000)
        shown = page.evaluate("window.rlhpState.shown")
        page.keyboard.press("ArrowUp")
        assert wait_label(core.run_dir / "labels.sqlite", shown) == (int(Preference.EQUAL), "alice")
        page.close()
    finally:
        stack.close()
