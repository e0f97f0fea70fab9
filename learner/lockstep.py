"""Lockstep (`RunConfig.lockstep`): labels in step with the policy, in the driver's own thread.

After each policy iteration the driver selects the queries the label schedule wants at the reported
env steps, waits until the synthetic teacher (a thread answering through the gRPC labeler API, as
anyone outside would) has answered every one, and forwards the labels to the embedded reward model.
Nothing of it depends on thread timing or machine load, so a run is reproducible for its seed.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Sequence

from learner.runs import TrainError

PATIENCE_S = 300.0
"""How long the driver waits for the synthetic teacher's next label before it gives up."""


def sync_labels(qcore: Any, experiment: str, teachers: Sequence[threading.Thread]) -> int:
    """Select, wait for every answer, forward (see the module docstring); returns the new labels.
    The caller has reported the env steps (the schedule counts from them)."""
    before = qcore.progress(experiment).labels
    while True:
        qcore.select_once()
        p = qcore.progress(experiment)
        if p.queries_pending == 0:
            break  # the schedule is met, or no candidate pair is left
        last, since = p.labels, time.monotonic()
        while p.queries_pending > 0:
            if not any(t.is_alive() for t in teachers):
                raise TrainError("the synthetic teacher stopped (see logs/driver.log); "
                                 f"{p.queries_pending} queries are unanswered")
            if time.monotonic() - since > PATIENCE_S:  # alive but stuck (e.g. a full disk)
                raise TrainError(f"the synthetic teacher answered nothing for {PATIENCE_S:.0f} s "
                                 f"({p.queries_pending} queries unanswered; see logs/driver.log)")
            time.sleep(0.005)
            p = qcore.progress(experiment)
            if p.labels != last:
                last, since = p.labels, time.monotonic()
    forward_all(qcore, strict=True)
    return p.labels - before


def forward_all(qcore: Any, strict: bool = False, timeout: float = 60.0) -> None:
    """Forward every stored label to the reward model now (forwarding is otherwise asynchronous).
    `strict`: a pass that forwards nothing is an error (lockstep must not go on without them)."""
    deadline = time.time() + timeout
    while qcore.unforwarded() > 0 and time.time() < deadline:
        before = qcore.unforwarded()
        qcore.forward_once()
        if strict and qcore.unforwarded() >= before:
            raise TrainError(f"{before} labels could not be forwarded to the reward model")
