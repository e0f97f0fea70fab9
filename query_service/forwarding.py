"""Forwarding of labels to the reward models: at least once, per experiment, with backoff.

Each experiment's unforwarded labels (oldest first, `forward_batch` at a time) become comparisons
of its two segments and go to that experiment's reward backend (`routing.Routes`); they are marked
forwarded after the call succeeds. A crash between the call and the mark re-sends them, which the
reward service counts as duplicates (idempotent by query id). The forwarding thread retries an
experiment whose reward service fails with its own exponential backoff, so one game's unreachable
reward service never delays another's labels.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from rlhp.types import Preference

from reward_service.types import ComparisonData, SegmentData

from .config import QueryConfig
from .routing import Routes
from .store import Store

log = logging.getLogger("rlhp.query")

FORWARDED, LOST = 1, 2  # `labels.forwarded`: sent (0: waiting), or never (its segments are gone)


class Forwarder:
    """The label forwarding of one service; `loop` is its thread."""

    def __init__(self, store: Store, config: QueryConfig, routes: Routes) -> None:
        self.store = store
        self.config = config
        self.routes = routes
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._backoff: dict[str, tuple[float, float]] = {}  # experiment -> (delay, retry at)
        # counters (metrics and tests)
        self.failures = 0
        self.forwarded = 0
        self.duplicates = 0  # labels the reward model had already (at-least-once re-sends)
        self.last_error = ""
        self._withdraw_warned = False

    def wake(self) -> None:
        """Forward now (a new label, or an experiment moved to another reward service)."""
        self._wake.set()

    def reset_backoff(self, experiment: str) -> None:
        """Retry `experiment` at once (it moved to another reward service)."""
        self._backoff.pop(experiment, None)

    def forward_once(self) -> int:
        """Send up to `forward_batch` unforwarded labels per experiment to that experiment's reward
        model; mark them after success.

        Every experiment is tried; when one's reward model cannot be reached the others are still
        forwarded, then the first error is raised. Labels of an experiment without a reward backend
        (no address, no default) wait.
        """
        sent, failed = self._pass()
        if failed:
            raise failed[0][1]
        return sent

    def _pass(self, due: Callable[[str], bool] | None = None) -> tuple[int, list[tuple[str, Exception]]]:
        with self._lock:
            exps = self.store.unforwarded_experiments()
            sent = 0
            failed: list[tuple[str, Exception]] = []
            for exp in exps:
                if due is not None and not due(exp):
                    continue
                try:
                    address, backend = self.routes.route(exp)
                    if backend is None:
                        continue
                    sent += self._forward_experiment(exp, backend, address)
                except Exception as e:  # noqa: BLE001 — one reward service down never stops the others
                    failed.append((exp, e))
            self.forwarded += sent
            return sent, failed

    def _forward_experiment(self, exp: str, backend: Any, address: str = "") -> int:
        withdrawn = self._withdraw(exp, backend)
        group = self.store.unforwarded_labels(exp, self.config.forward_batch)
        if not group:
            return withdrawn
        records = self.store.load_segments(exp, [i for r in group for i in (r["left_id"], r["right_id"])])
        ok = [r for r in group if r["left_id"] in records and r["right_id"] in records]
        ok_ids = {r["query_id"] for r in ok}
        lost = [r["query_id"] for r in group if r["query_id"] not in ok_ids]
        if ok:
            ids = dict.fromkeys(i for r in ok for i in (r["left_id"], r["right_id"]))
            segs = [SegmentData(i, records[i].observations, records[i].actions) for i in ids]
            comps = [ComparisonData(r["query_id"], r["left_id"], r["right_id"], Preference(r["answer"]))
                     for r in ok]
            res = backend.add_comparisons(segs, comps)
            self.duplicates += int(getattr(res, "duplicates", 0) or 0)
        with self.store.write() as c:
            if self.routes.address(exp) != address:
                return 0  # the experiment moved to another reward service meanwhile: send them there
            Store.set_forwarded(c, [r["query_id"] for r in ok], FORWARDED)
            Store.set_forwarded(c, lost, LOST)  # segments gone (cannot happen in normal operation): never retried
        if lost:
            log.error("%d label(s) of %s reference missing segments and cannot be forwarded", len(lost), exp)
        return withdrawn + len(ok)

    def _withdraw(self, exp: str, backend: Any) -> int:
        """Take the labels of excluded labelers back from `exp`'s reward model (`quality.py`)."""
        with self.store.read() as c:
            ids = Store.to_withdraw(c, exp, 1000)
        if not ids:
            return 0
        try:
            removed = backend.remove_comparisons(ids)
        except Exception as e:  # noqa: BLE001 — e.g. a reward service too old to know the call
            if not self._withdraw_warned:
                self._withdraw_warned = True
                log.warning("%s: cannot withdraw the labels of excluded labelers from its reward model (%s: %s); "
                            "new labels are still forwarded, and the withdrawal is tried again", exp,
                            type(e).__name__, e)
            return 0
        with self.store.write() as c:
            Store.withdrawn(c, ids)
        log.info("%s: withdrew %d label(s) of excluded labelers from its reward model (%d were there)",
                 exp, len(ids), removed)
        return len(ids)

    def reforward(self, experiment: str | None = None) -> int:
        """Mark labels unforwarded so they are sent again (e.g. a reward service restarted without its
        checkpoint). Harmless for one that kept them: it counts them as duplicates."""
        with self.store.write() as c:
            return Store.unmark_forwarded(c, experiment)

    def unforwarded(self) -> int:
        return self.store.count_unforwarded()

    def check_reward_models(self, due: Callable[[str], bool] | None = None) -> int:
        """Re-send the labels of every experiment whose reward model has seen fewer comparisons than
        were forwarded to it: it restarted from an older checkpoint (or none), and the labels since
        are gone from it (and withheld ones it may hold again are taken back). Experiments in
        forwarding backoff (`due` false) are skipped. Returns the number of labels to send again."""
        with self.store.read() as c:
            exps = Store.experiments(c)
        resent = 0
        for exp in exps:
            if due is not None and not due(exp):
                continue
            try:
                address, backend = self.routes.route(exp)
                if backend is None:
                    continue
                with self.store.read() as c:
                    sent = Store.count_forwarded_trainable(c, exp)
                if not sent:
                    continue
                seen = int(backend.stats().comparisons_seen)
            except Exception:  # noqa: BLE001 — unreachable now: forwarding's backoff deals with it
                continue
            if seen < sent:
                n = self.reforward(exp)
                with self.store.write() as c:
                    Store.withdraw_again(c, exp)
                resent += n
                log.warning("the reward model of %s%s has seen %d labels of the %d forwarded to it (restarted "
                            "from an older checkpoint?): sending its %d labels again", exp,
                            f" at {address}" if address else "", seen, sent, n)
                self.wake()
        return resent

    def loop(self, stop: threading.Event) -> None:
        """Forward continuously; an experiment whose reward service fails is retried with its own
        exponential backoff, so one game's unreachable reward service never delays another's labels."""
        interval = self.config.forward_interval

        def due(exp: str) -> bool:
            entry = self._backoff.get(exp)
            return entry is None or entry[1] <= time.monotonic()

        checked = time.monotonic()
        while not stop.is_set():
            every = self.config.reward_check_interval
            if every > 0 and time.monotonic() - checked >= every:
                checked = time.monotonic()
                try:
                    self.check_reward_models(due)
                except Exception:  # noqa: BLE001 — e.g. the database is busy: next time
                    log.exception("checking the reward models failed")
            try:
                sent, failed = self._pass(due)
            except Exception as e:  # noqa: BLE001 — e.g. the database is busy: retry
                sent, failed = 0, [("", e)]
            now = time.monotonic()
            for exp, e in failed:
                self.failures += 1
                self.last_error = f"{exp + ': ' if exp else ''}{type(e).__name__}: {e}"
                delay = self._backoff.get(exp, (interval / 2, 0.0))[0] * 2
                delay = min(self.config.forward_max_backoff, max(interval, delay))
                if delay == interval:
                    log.warning("forwarding labels to the reward model failed (%s); retrying with backoff",
                                self.last_error)
                self._backoff[exp] = (delay, now + delay)
            failed_exps = {exp for exp, _ in failed}
            for exp in [e for e in list(self._backoff) if e not in failed_exps and due(e)]:
                self._backoff.pop(exp, None)  # tried again (or nothing left to send): healthy
            if "" in failed_exps:
                stop.wait(self._backoff[""][0])
                continue
            if sent:
                continue  # more may be waiting
            waits = [at - now for _, at in list(self._backoff.values())]
            self._wake.wait(max(0.0, min([interval] + waits)))
            self._wake.clear()
