"""A stop request that a signal handler may set without deadlocking.

`threading.Event.set()` is not safe in a signal handler. Python runs handlers in the main thread
between bytecodes, so one can run while that same thread is inside `Event.wait()` or
`Event.is_set()`, holding the Event's lock, which is not reentrant; `set()` then waits on it
forever. (The reward service hung this way on SIGINT under load. cpython#126434 is the same bug
in `multiprocessing.Event`.)

`StopFlag` has the part of Event's interface the services use (`set`, `is_set`, `wait`). It is
built on `queue.SimpleQueue`, whose `put()` is documented as reentrant: it may interrupt a
`get()` in the same thread.
"""
from __future__ import annotations

import queue
import signal
from typing import Iterable


class StopFlag:
    """Set once, by a signal handler or any thread; `wait()` returns once it is set."""

    def __init__(self) -> None:
        self._wakeups: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._set = False  # a plain attribute: reading and writing it takes no lock
        self.reason: str | None = None

    def set(self, reason: str | None = None) -> None:
        if reason is not None and self.reason is None:
            self.reason = reason
        self._set = True
        self._wakeups.put(None)

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """Block until set or `timeout` seconds passed; return whether it is set."""
        if self._set:
            return True
        try:
            self._wakeups.get(timeout=timeout)
        except queue.Empty:
            return self._set
        self._wakeups.put(None)  # pass the wakeup on to the next waiter
        return True

    def set_on_signals(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> dict:
        """Install handlers that set this flag (main thread only); return the previous handlers."""
        def handler(signum, frame):  # noqa: ARG001 - signal handler signature
            self.set(signal.Signals(signum).name)

        return {s: signal.signal(s, handler) for s in signals}
