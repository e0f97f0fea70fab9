"""`ray stop` for one test cluster only: `python scoped_ray_stop.py MARKER [MARKER ...]`.

Plain `ray stop` kills every Ray process of the user on the machine — on a shared test machine
that includes other people's clusters. The cluster test's nodes define a shell function `ray`
that sends `ray stop` here instead (so `ray up`'s and `ray down`'s own `ray stop` stay scoped),
and the test's teardown calls it too. It ends the processes whose command line contains one of
the markers (the cluster's `--temp-dir`, the jobs' runs directory), by process id: SIGTERM, then
SIGKILL after a grace period. It never touches itself or its ancestors.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) from /proc/PID/stat, None if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def _ancestors(pid: int) -> set[int]:
    seen = {pid}
    while True:
        st = _stat(pid)
        if st is None or st[1] <= 1 or st[1] in seen:
            return seen
        pid = st[1]
        seen.add(pid)


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def matching(markers: list[str]) -> list[int]:
    skip = _ancestors(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(m in cmdline for m in markers):
            found.append(int(entry.name))
    return found


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop(markers: list[str], grace: float = 10.0) -> int:
    markers = [m for m in markers if len(m) >= 8]  # never a short, broad pattern
    if not markers:
        raise SystemExit("scoped_ray_stop: give markers of at least 8 characters")
    pids = matching(markers)
    _signal(pids, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    _signal([p for p in pids if _alive(p)], signal.SIGKILL)
    return len(pids)


if __name__ == "__main__":
    n = stop(sys.argv[1:])
    print(f"scoped ray stop: ended {n} processes of this cluster")
