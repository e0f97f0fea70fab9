"""Query selection: which pairs of stored segments become queries, and when.

Each pass, per experiment, tops the queue up to what the label schedule wants (at most
`queue_target` pending): candidate pairs of equal-length segments not queried before are drawn at
random from the newest `candidate_pool` segments, and — with `selection="disagreement"`, after the
initial batch — the `oversampling`× candidates are ranked by the reward ensemble's disagreement and
the most uncertain enqueued (paper §2.2). Selection falls back to random pairs while the reward
model does not answer. This logic is measured by the label-efficiency benchmarks: change it only
with new measurements.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from typing import Any, Callable

import numpy as np

from reward_service.types import SegmentData

from .config import QueryConfig
from .routing import Routes
from .schedule import Schedule
from .store import Store

log = logging.getLogger("rlhp.query")


class Selector:
    """The selection passes of one service; `loop` is its thread."""

    def __init__(self, store: Store, config: QueryConfig, schedule: Schedule, routes: Routes,
                 clock: Callable[[], float], seed: int | None = None) -> None:
        self.store = store
        self.config = config
        self.schedule = schedule
        self.routes = routes
        self.clock = clock
        self._rng = random.Random(seed)
        self._ids = self._id_source(seed)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._warned_fallback = False
        self.fallbacks = 0  # passes that fell back to random selection (metrics and tests)

    def _id_source(self, seed: int | None) -> random.Random | None:
        """Query ids: from the seed (the reward model's bootstrap of a label is a hash of its id, so
        seeded ids keep a seeded run reproducible), continued after the queries the store already
        has (a resumed run never draws an id twice); None: random ids (uuid4)."""
        if seed is None:
            return None
        with self.store.read() as c:
            n = Store.count_queries(c)
        return random.Random(f"rlhp-query-ids/{seed}/{n}")

    def new_id(self) -> str:
        return uuid.uuid4().hex if self._ids is None else f"{self._ids.getrandbits(128):032x}"

    def wake(self) -> None:
        """Run the next pass now (new segments, progress or labels)."""
        self._wake.set()

    def loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.select_once()
            except Exception:  # noqa: BLE001
                log.exception("selection pass failed")
            self._wake.wait(self.config.selection_interval)
            self._wake.clear()

    def select_once(self) -> int:
        """One selection pass over every experiment; returns the number of queries enqueued."""
        with self._lock:
            self.expire_leases()
            with self.store.read() as c:
                exps = Store.experiments(c)
            total = 0
            for exp in exps:
                try:
                    total += self._select_experiment(exp)
                except Exception:  # noqa: BLE001 — one experiment's trouble never stops the others
                    log.exception("query selection failed for %s", exp)
            return total

    def expire_leases(self) -> int:
        now = self.clock()
        # a read probe of the expiry index first: no write transaction (and no wait for the
        # write lock) on the many passes where no lease is due
        if not self.store.lease_due(now):
            return 0
        with self.store.write() as c:
            return Store.expire_leases(c, now)

    def _select_experiment(self, exp: str) -> int:
        cfg = self.config
        with self.store.read() as c:
            s = self.schedule.position(c, exp)
            pending = s["queued"] + s["leased"]
            needed = min(cfg.queue_target, s["wanted"] - s["labels"]) - pending
            if needed <= 0:
                return 0
            initial = s["labels"] + pending < self.schedule.config_for(s["budget"]).initial
            pool = Store.candidate_pool(c, exp, cfg.candidate_pool)
            taken = Store.queried_pairs(c, exp)
        # The initial batch shows the random policy; afterwards queries show the current policy
        # (paper §2.2). Random-policy segments stay out of later queries once the policy has
        # enough of its own: they are older and out of the policy's distribution, so the ensemble
        # disagrees most on them, and on a task whose random play fails early (CartPole) two of them
        # tie ("both fell": EQUAL), which spent most of the budget on answers about nothing.
        rand = [r for r in pool if r["random_policy"]]
        mine = [r for r in pool if not r["random_policy"]]
        if initial and len(rand) >= 2:
            pool = rand
        elif not initial and len(mine) >= cfg.min_policy_segments:
            pool = mine
        backend = self.routes.backend(exp) if cfg.selection == "disagreement" and not initial else None
        use_model = backend is not None
        n_cand = needed * (cfg.oversampling if use_model else 1)
        cands = self.draw_pairs(pool, n_cand, taken)
        if not cands:
            return 0
        version, scores = 0, None
        if use_model and len(cands) > needed:
            try:
                scores, version = self.disagreement(exp, cands, backend)
            except Exception as e:  # noqa: BLE001 — fall back to random selection
                self.fallbacks += 1
                if not self._warned_fallback:
                    self._warned_fallback = True
                    log.warning("reward model disagreement failed (%s: %s); selecting queries at random "
                                "until it answers again", type(e).__name__, e)
        if scores is not None:
            self._warned_fallback = False
            order = np.argsort(-scores, kind="stable")[:needed]
            chosen = [(cands[i], float(scores[i])) for i in order]
        else:
            chosen = [(p, None) for p in cands[:needed]]
        now = self.clock()
        added = 0
        with self.store.write() as c:
            for k, (pair, dis) in enumerate(chosen):
                if Store.count_present(c, exp, pair) != 2:
                    continue  # evicted meanwhile
                Store.insert_query(c, self.new_id(), exp, pair, version, dis, now, now + k * 1e-6, initial)
                added += 1
        return added

    def draw_pairs(self, pool: list, n: int, taken: set) -> list[tuple[str, str]]:
        """Up to `n` distinct pairs of distinct segments of equal length, not queried before."""
        groups: dict[int, list[str]] = {}
        for r in pool:
            groups.setdefault(int(r["length"]), []).append(r["id"])
        groups = {k: v for k, v in groups.items() if len(v) >= 2}
        if not groups:
            return []
        keys = list(groups)
        weights = [len(groups[k]) * (len(groups[k]) - 1) for k in keys]
        out: list[tuple[str, str]] = []
        seen = set(taken)
        for _ in range(20 * n + 20):
            if len(out) >= n:
                break
            ids = groups[self._rng.choices(keys, weights)[0]]
            a, b = self._rng.sample(ids, 2)
            if (a, b) in seen or (b, a) in seen:
                continue
            seen.add((a, b))
            out.append((a, b))
        return out

    def disagreement(self, exp: str, pairs: list[tuple[str, str]], backend: Any = None
                     ) -> tuple[np.ndarray, int]:
        """The ensemble's disagreement on each pair (chunked by `disagreement_chunk_bytes`) and the
        reward model version that answered."""
        backend = backend if backend is not None else self.routes.backend(exp)

        records = self.store.load_segments(exp, [i for p in pairs for i in p])
        scores = np.zeros(len(pairs), dtype=np.float64)
        version = 0
        start = 0
        while start < len(pairs):
            # grow the chunk until its segments reach the byte limit (at least one pair)
            ids: dict[str, None] = {}
            size, end = 0, start
            while end < len(pairs):
                new = [i for i in pairs[end] if i not in ids]
                extra = sum(records[i].observations.nbytes + records[i].actions.nbytes for i in new)
                if end > start and size + extra > self.config.disagreement_chunk_bytes:
                    break
                ids.update(dict.fromkeys(new))
                size += extra
                end += 1
            segs = [SegmentData(i, records[i].observations, records[i].actions) for i in ids]
            std, _, version = backend.disagreement(segs, pairs[start:end])
            std = np.asarray(std, dtype=np.float64).reshape(-1)
            if std.shape[0] != end - start:
                raise RuntimeError(f"reward model answered {std.shape[0]} disagreements for {end - start} pairs")
            scores[start:end] = np.nan_to_num(std, nan=0.0)
            start = end
        return scores, int(version)
