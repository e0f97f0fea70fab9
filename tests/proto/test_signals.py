"""`rlhp.signals.StopFlag`: safe to set from a signal handler that interrupts its own wait()."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from rlhp.signals import StopFlag

# A trace function runs in the waiting thread between lines, as a signal handler may. It calls
# set() from inside wait(), at the n-th line that wait()'s own code runs (n = 1, 2, ...).
_REENTER = textwrap.dedent("""
    import sys, threading
    from rlhp.signals import StopFlag
    kind, n = sys.argv[1], int(sys.argv[2])
    flag = threading.Event() if kind == "event" else StopFlag()
    where = "threading.py" if kind == "event" else "signals.py"
    seen = []

    def trace(frame, event, arg):
        if frame.f_code.co_filename.endswith(where) and frame.f_code.co_name == "wait":
            def line(frame, event, arg):
                if event == "line":
                    seen.append(frame.f_lineno)
                    if len(seen) == n:
                        flag.set()
                return line
            return line
        return None

    sys.settrace(trace)
    ok = flag.wait(2.0)
    sys.settrace(None)
    print("returned", ok, len(seen) >= n, flush=True)
""")


def _reenter(kind: str, n: int) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run([sys.executable, "-c", _REENTER, kind, str(n)], capture_output=True,
                              text=True, timeout=10, env={**os.environ})
    except subprocess.TimeoutExpired:
        return None


@pytest.mark.parametrize("n", [1, 2, 3])
def test_set_from_inside_wait_returns_at_once(n):
    r = _reenter("flag", n)
    assert r is not None, f"StopFlag.set() called at line {n} of wait() deadlocked"
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["returned", "True", "True"]


def test_the_same_reentry_deadlocks_threading_event():
    # Why StopFlag exists: set() at the second line of Event.wait(), inside `with self._cond`,
    # waits forever on the lock its own thread holds. The services' handlers did this before.
    assert _reenter("event", 1).stdout.split() == ["returned", "True", "True"]
    assert _reenter("event", 2) is None


def test_wait_times_out_and_wakes_every_waiter():
    flag = StopFlag()
    t0 = time.monotonic()
    assert flag.wait(0.05) is False and time.monotonic() - t0 >= 0.04
    woke = []
    threads = [threading.Thread(target=lambda: woke.append(flag.wait(10))) for _ in range(3)]
    for t in threads:
        t.start()
    flag.set("test")
    flag.set("second")
    for t in threads:
        t.join(5)
    assert woke == [True, True, True]
    assert flag.is_set() and flag.wait(0) and flag.reason == "test"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_handler_sets_the_flag_and_names_the_signal(sig):
    flag = StopFlag()
    previous = flag.set_on_signals()
    try:
        os.kill(os.getpid(), sig)
        assert flag.wait(5)
        assert flag.reason == sig.name
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
