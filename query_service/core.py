"""The query service core: one facade over the segment store, query selection, label schedule,
leases, labels and forwarding (each in its own module, see `QueryService`).

Free of gRPC and Ray: `server.py` decodes requests, calls these methods and maps the exceptions of
`rlhp.types` to status codes; `client.py` offers the same methods (minus the token) over gRPC.

    svc = QueryService(run_dir, QueryConfig.mujoco(), reward=RewardClient("127.0.0.1:50051"),
                       reward_factory=RewardClient)   # how to reach a reward service by address
    token = svc.create_token("alice", "labeler")
    svc.start()                       # selection + lease sweeping + forwarding threads
    lease = svc.lease(token)          # a query, or `waiting_for` in words
    svc.submit(token, lease.query.id, Preference.LEFT, seconds=4.2)   # durable before it returns

Many experiments (one per game) may share one service, each with its own reward model: a learner
reports its reward service's address with its progress (`report_progress(..., reward_address=...)`);
the address is kept in the database (`meta`, key `reward_address:<experiment>`), and selection
(disagreement) and forwarding of that experiment go to it, through the backend that
`reward_factory(address)` makes (a `RewardBackend`; `reward_service.client.RewardClient` in the
servers — the core itself builds no gRPC client; without a factory, addresses are refused).
Experiments without an address use the `reward` backend given here (None: their labels wait,
unforwarded, until an address is known).

Rules (`docs/architecture.md`, contracts): a label is committed (SQLite WAL, synchronous=FULL, one
transaction) before `submit` returns; submitting is idempotent per query; an expired lease returns the query to the
queue; a late answer is still accepted when nobody else answered first; every request is validated.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from rlhp.types import FailedPrecondition, NotFound, Preference

from reward_service.types import RewardBackend

from . import intake
from .auth import LABELING_ROLES, PRODUCER_ROLES, Auth, Caller
from .config import QueryConfig
from .forwarding import Forwarder
from .leases import Leases
from .quality import Quality
from .routing import RewardFactory, Routes
from .schedule import Schedule
from .selection import Selector
from .store import ROLES, Store
from .types import (AddSegmentsResult, ExperimentStats, LabelerStats, Lease, Progress, QueryStats,
                    SegmentRecord, SubmitResult)

log = logging.getLogger("rlhp.query")


class QueryService:
    """See the module docstring. Thread-safe; state lives in `<run_dir>/labels.sqlite`.

    A facade over one concept per module: `auth` (tokens, roles, experiment access), `intake`
    (request validation), `schedule` (labels wanted, "waiting for"), `selection` (queries),
    `leases` (leases and labels), `routing` (experiment -> reward backend), `forwarding` (labels ->
    reward models), `store` (the rows)."""

    def __init__(self, run_dir: str | Path, config: QueryConfig | None = None,
                 reward: RewardBackend | None = None, clock: Callable[[], float] = time.time,
                 seed: int | None = None, reward_factory: RewardFactory | None = None) -> None:
        self._config = config or QueryConfig()
        self.run_dir = Path(run_dir)
        self.store = Store(self.run_dir)
        self._clock = clock
        # `reward`: the default backend (experiments that reported no reward address); address ->
        # backend made by `reward_factory` on first use (None: addresses are refused)
        self._routes = Routes(self.store, reward, reward_factory)
        self._auth = Auth(self.store, self.clock)
        self._schedule = Schedule(self.config)
        self._selector = Selector(self.store, self.config, self._schedule, self._routes, self.clock, seed)
        self._quality = Quality(self.config, seed)
        self._leases = Leases(self.store, self.config, self._schedule, self.clock, self._quality)
        self._forwarder = Forwarder(self.store, self.config, self._routes)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._renderer: Any = None
        self._renderer_lock = threading.Lock()

    # ------------------------------------------------------------------------------ shared settings
    @property
    def config(self) -> QueryConfig:
        return self._config

    @config.setter
    def config(self, config: QueryConfig) -> None:
        self._config = self._schedule.config = self._selector.config = config
        self._leases.config = self._forwarder.config = self._quality.config = config

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self._clock = self._auth.clock = self._selector.clock = self._leases.clock = clock

    # ------------------------------------------------------------------------------ counters
    @property
    def reward(self) -> RewardBackend | None:
        """The default reward backend (experiments that reported no reward address)."""
        return self._routes.default

    @reward.setter
    def reward(self, backend: RewardBackend | None) -> None:
        self._routes.default = backend

    @property
    def selection_fallbacks(self) -> int:
        """Selection passes that fell back to random pairs (the reward model did not answer)."""
        return self._selector.fallbacks

    @property
    def forwarded(self) -> int:
        return self._forwarder.forwarded

    @property
    def forward_failures(self) -> int:
        return self._forwarder.failures

    @property
    def forward_duplicates(self) -> int:
        """Labels the reward model had already (at-least-once re-sends)."""
        return self._forwarder.duplicates

    @property
    def last_forward_error(self) -> str:
        return self._forwarder.last_error

    # ------------------------------------------------------------------------------ lifecycle
    def start(self) -> "QueryService":
        if self._threads:
            return self
        self._stop.clear()
        for target, name in ((self._selector.loop, "query-select"), (self._forwarder.loop, "query-forward")):
            t = threading.Thread(target=target, args=(self._stop,), name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._selector.wake()
        self._forwarder.wake()
        for t in self._threads:
            t.join(timeout=30)
        self._threads.clear()

    def close(self) -> None:
        self.stop()
        self._routes.close()
        if self._renderer is not None and hasattr(self._renderer, "close"):
            try:
                self._renderer.close()
            except Exception:  # noqa: BLE001
                pass
        self.store.close()

    def __enter__(self) -> "QueryService":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ routing
    def reward_address(self, experiment: str) -> str:
        """The reward service address `experiment` reported ("" when none: the default backend)."""
        return self._routes.address(experiment)

    def reward_for(self, experiment: str) -> Any:
        """The reward backend of `experiment`: its own service if it reported one, else the default."""
        return self._routes.backend(experiment)

    # ------------------------------------------------------------------------------ tokens
    def create_token(self, name: str, role: str = "labeler", experiments: Sequence[str] | str = (),
                     replace: bool = False) -> str:
        """Create `name`'s token; the plain token is returned once, only its hash is kept.

        FailedPrecondition when `name` already has one (never replaced silently; `replace=True`
        rotates it on purpose)."""
        return self._auth.create_token(name, role, experiments, replace)

    def revoke_token(self, name: str) -> None:
        self._auth.revoke_token(name)

    def authenticate(self, token: str | None, roles: Sequence[str] = ROLES) -> Caller:
        """The caller behind `token`; Unauthenticated when missing, unknown, revoked or of another role."""
        return self._auth.authenticate(token, roles)

    # ------------------------------------------------------------------------------ producers
    def add_segments(self, token: str, records: Sequence[SegmentRecord]) -> AddSegmentsResult:
        """Store candidate segments (all or nothing); evicts the oldest unqueried ones beyond the bound."""
        caller = self._auth.authenticate(token, PRODUCER_ROLES)
        if not isinstance(records, (list, tuple)):
            records = list(records)
        if not records:
            return AddSegmentsResult(0, 0, 0, 0)
        clean = [intake.validate_record(r, i, self.config.max_segment_steps) for i, r in enumerate(records)]
        for r in clean:
            Auth.check(caller, r.experiment, "add segments to experiment")
        shapes = intake.batch_shapes(clean)  # shape agreement inside the batch
        now = self.clock()
        rows = [Store.segment_row(r, now) for r in clean]  # compress outside the lock
        accepted = duplicates = dropped = 0
        stored = 0
        with self.store.write() as c:
            Store.agree_shapes(c, shapes, self.config.label_budget, now)  # ... and with what is stored
            for row in rows:
                n = Store.insert_segment(c, row)
                accepted += n
                duplicates += 1 - n
            for exp in shapes:
                excess = Store.count_segments(c, exp) - self.config.max_segments
                if excess > 0:
                    dropped += Store.evict_unqueried(c, exp, excess)
                stored += Store.count_segments(c, exp)
        self._selector.wake()
        return AddSegmentsResult(accepted, duplicates, dropped, stored)

    def report_progress(self, token: str, experiment: str, env_steps: int, reward_address: str = "",
                        env_id: str = "", label_budget: int = 0, goal: str = "") -> Progress:
        """Record env steps T (kept monotone); returns where the label schedule stands.

        `reward_address` (HOST:PORT) routes this experiment's selection and forwarding to its own
        reward service ("" keeps the one known). A new address (the learner restarted elsewhere)
        re-sends the experiment's labels there: a reward model restored from an older checkpoint gets
        those it missed, the others count as duplicates. `label_budget` > 0 replaces the service's
        default budget for this experiment (its schedule is the default one scaled to that budget);
        `env_id` names the game for labelers; `goal` ("" keeps the one known) is the task in words,
        shown to labelers above the clips and stored with each label.
        """
        caller = self._auth.authenticate(token, PRODUCER_ROLES)
        experiment = intake.experiment_name(experiment)
        Auth.check(caller, experiment, "report progress for")
        steps, budget = intake.progress_numbers(env_steps, label_budget)
        address = intake.address(reward_address)
        if address and self._routes.factory is None:
            raise FailedPrecondition("this query service cannot reach reward services by address (it was "
                                     "started without a reward_factory); its own reward model is used")
        env_id = intake.text(env_id, "env_id")
        goal = intake.text(goal, "goal")
        with self.store.write() as c:
            Store.report_progress(c, experiment, env_id, steps, budget or self.config.label_budget, self.clock(),
                                  set_budget=bool(budget), goal=goal)
            old = self._routes.address(experiment)
            moved = bool(address) and address != old
            if moved:
                resent = Store.unmark_forwarded(c, experiment) if old else 0
                self._routes.move(c, experiment, address)  # under the write lock: forwarding sees it
        if moved:
            self._forwarder.reset_backoff(experiment)
            if old:
                log.info("%s: reward service moved from %s to %s; re-sending its %d forwarded label(s)",
                         experiment, old, address, resent)
                self._routes.drop(old)
            self._forwarder.wake()
        self._selector.wake()
        return self.progress(experiment)

    def progress(self, experiment: str) -> Progress:
        """Where `experiment`'s label schedule stands, read only. In-process only (the learner's
        lockstep); over the service, `report_progress` answers it."""
        with self.store.read() as c:
            s = self._schedule.position(c, experiment)
        return Progress(labels=s["labels"], labels_wanted=s["wanted"], queries_pending=s["queued"] + s["leased"],
                        label_budget=s["budget"])

    def labels_wanted(self, env_steps: float, label_budget: int | None = None) -> int:
        return self._schedule.labels_wanted(env_steps, label_budget)

    # ------------------------------------------------------------------------------ selection
    def select_once(self) -> int:
        """One selection pass over every experiment; returns the number of queries enqueued."""
        return self._selector.select_once()

    # ------------------------------------------------------------------------------ labelers
    def lease(self, token: str, experiments: Sequence[str] = (), lease_seconds: float = 0) -> Lease:
        """Lease the next query of the given (or allowed) experiments, or say what the run waits for."""
        caller = self._auth.authenticate(token, LABELING_ROLES)
        lease = self._leases.lease(caller, Auth.scope(caller, experiments), lease_seconds)
        if not lease.available:
            self._selector.wake()
        return lease

    def submit(self, token: str, query_id: str, answer: Preference | int | str, seconds: float = 0.0
               ) -> SubmitResult:
        """Store a label durably (committed before returning). Idempotent per query."""
        caller = self._auth.authenticate(token, LABELING_ROLES)
        result = self._leases.submit(caller, query_id, answer, seconds)
        if result.status == "ACCEPTED":
            self._forwarder.wake()
            self._selector.wake()
        return result

    def release(self, token: str, query_id: str) -> None:
        """Give a leased query back unanswered (a skip); it returns to the end of the queue."""
        self._leases.release(self._auth.authenticate(token, LABELING_ROLES), query_id)

    def get_clip(self, token: str, query_id: str, side: Preference | int | str, fmt: str = "mp4"
                 ) -> tuple[str, bytes]:
        """(mime type, video bytes) of one side of a query: for the holder of a live lease, for a
        labeler who leased it once it is answered, and for admins."""
        caller = self._auth.authenticate(token, LABELING_ROLES)
        pside = intake.side(side)
        fmt = intake.clip_format(fmt)
        exp, seg_id, qid = self._leases.clip_segment(caller, query_id, pside)
        # the cache is keyed by segment id: make it unique across experiments
        key = f"{exp}/{seg_id}"
        try:
            renderer = self._clip_renderer()
        except FailedPrecondition:
            renderer = None  # reported below, after the segment's existence (as before)
        if renderer is not None:
            hit = renderer.cached(key, fmt)
            if hit is not None:  # rendered before: no need to load and decompress frames/qpos/qvel
                return hit
        rec = self.store.load_segments(exp, [seg_id], media=True).get(seg_id)
        if rec is None:
            raise NotFound(f"segment {seg_id!r} of query {qid} is gone")
        if renderer is None:
            renderer = self._clip_renderer()
        return renderer.render(replace(rec, id=key), fmt)

    def _clip_renderer(self) -> Any:
        with self._renderer_lock:
            if self._renderer is None:
                try:
                    from .clips import ClipRenderer
                except ImportError as e:
                    raise FailedPrecondition(f"clip rendering is not available on this server ({e})") from None
                self._renderer = ClipRenderer(self.run_dir / "clips")
            return self._renderer

    # ------------------------------------------------------------------------------ segments (in-process readers)
    def recent_segment_ids(self, experiment: str, n: int = 100, policy_only: bool = False) -> list[str]:
        """Ids of the `n` newest segments of `experiment`, newest first (the policy's own only with
        `policy_only`). In-process only (the learner's metrics); not part of the gRPC API."""
        return self.store.recent_segment_ids(experiment, n, policy_only)

    def load_segments(self, experiment: str, ids: Sequence[str]) -> dict[str, SegmentRecord]:
        """The stored segments of `experiment` among `ids` (without frames/qpos/qvel), by id."""
        return self.store.load_segments(experiment, list(ids))

    # ------------------------------------------------------------------------------ stats
    def stats(self, token: str | None = None) -> QueryStats:
        """Where every experiment stands, and the labelers' counts.

        Over the service (`token` a string, "" when none was sent) the caller must authenticate:
        it sees the experiments its token allows, and all labelers if it is a producer or an admin,
        else only itself. `None` is the in-process owner of the core (the learner), who sees all."""
        caller = None if token is None else self._auth.authenticate(token)
        now = self.clock()
        exps = []
        with self.store.read() as c:
            for e in Store.experiments(c):
                if caller is not None and not caller.may(e):
                    continue
                s = self._schedule.position(c, e)
                live = Store.count_live_leases(c, e, now)
                exps.append(ExperimentStats(
                    experiment=e, env_id=s["env_id"], segments=s["segments"],
                    queries_pending=s["queued"] + s["leased"] - live, queries_leased=live, labels=s["labels"],
                    labels_wanted=s["wanted"], label_budget=s["budget"], env_steps=s["env_steps"],
                    labels_forwarded=Store.count_forwarded(c, e), goal=s["goal"]))
            mean = {name: float(secs or 0.0) for name, _, secs in Store.labeler_stats(c)}
            labelers = tuple(LabelerStats(q.name, q.labels, mean.get(q.name, 0.0), q.median_seconds, q.gold_answered,
                                          q.gold_correct, q.agreement_checks, q.agreed, q.excluded)
                             for q in Quality.labelers(c)
                             if caller is None or caller.role in PRODUCER_ROLES or q.name == caller.name)
        return QueryStats(tuple(exps), labelers)

    # ------------------------------------------------------------------------------ quality
    def exclude_labeler(self, name: str) -> int:
        """Withhold `name`'s labels from the reward models (withdrawing those they have); returns how
        many labels that concerns. `include_labeler` undoes it. In-process (and `rlhp labelers`)."""
        with self.store.write() as c:
            n = Store.exclude_labeler(c, name)
        self._forwarder.wake()
        return n

    def include_labeler(self, name: str) -> int:
        with self.store.write() as c:
            n = Store.include_labeler(c, name)
        self._forwarder.wake()
        return n

    # ------------------------------------------------------------------------------ forwarding
    def forward_once(self) -> int:
        """Send up to `forward_batch` unforwarded labels per experiment to that experiment's reward
        model; mark them after success.

        At-least-once: a crash between the call and the mark re-sends them, which the reward service
        counts as duplicates (idempotent by query id). Every experiment is tried; when one's reward
        model cannot be reached the others are still forwarded, then the first error is raised.
        Labels of an experiment without a reward backend (no address, no default) wait.
        """
        return self._forwarder.forward_once()

    def reforward(self, experiment: str | None = None) -> int:
        """Mark labels unforwarded so they are sent again (e.g. a reward service restarted without its
        checkpoint). Harmless for one that kept them: it counts them as duplicates."""
        return self._forwarder.reforward(experiment)

    def unforwarded(self) -> int:
        return self._forwarder.unforwarded()


__all__ = ["QueryService", "Caller", "ROLES", "RewardFactory"]
