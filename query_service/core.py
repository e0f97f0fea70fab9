"""The query service core: segment store, query selection, label schedule, leases, labels, forwarding.

Free of gRPC and Ray: `server.py` decodes requests, calls these methods and maps the exceptions of
`rlhp.wire` to status codes; `client.py` offers the same methods (minus the token) over gRPC.

    svc = QueryService(run_dir, QueryConfig.mujoco(), reward=RewardClient("127.0.0.1:50051"))
    token = svc.create_token("alice", "labeler")
    svc.start()                       # selection + lease sweeping + forwarding threads
    lease = svc.lease(token)          # a query, or `waiting_for` in words
    svc.submit(token, lease.query.id, Preference.LEFT, seconds=4.2)   # durable before it returns

Many experiments (one per game) may share one service, each with its own reward model: a learner
reports its reward service's address with its progress (`report_progress(..., reward_address=...)`);
the address is kept in the database (`meta`, key `reward_address:<experiment>`), and selection
(disagreement) and forwarding of that experiment go to it. Experiments without an address use the
`reward` backend given here (None: their labels wait, unforwarded, until an address is known).

Rules (DESIGN.md §3): a label is committed (SQLite WAL, synchronous=FULL, one transaction) before
`submit` returns; submitting is idempotent per query; an expired lease returns the query to the
queue; a late answer is still accepted when nobody else answered first; every request is validated.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from rlhp.wire import FailedPrecondition, InvalidRequest, NotFound, Preference, Unauthenticated

from .config import QueryConfig
from .store import ROLES, Store
from .types import (AddSegmentsResult, ExperimentStats, LabelerStats, Lease, Progress, QueryData,
                    QueryStats, SegmentRecord, SubmitResult)

log = logging.getLogger("rlhp.query")

LABELING_ROLES = ("labeler", "teacher", "admin")
ROUTE_KEY = "reward_address:"  # meta key prefix: the reward service address of one experiment
MAX_LABEL_BUDGET = 10_000_000
PRODUCER_ROLES = ("producer", "admin")
MAX_ID_CHARS = 200


@dataclass(frozen=True)
class Caller:
    name: str
    role: str
    experiments: frozenset[str] | None  # None: every experiment

    def may(self, experiment: str) -> bool:
        return self.experiments is None or experiment in self.experiments


def _plural(n: int, word: str) -> str:
    if n == 1:
        return f"1 {word}"
    return f"{n:,} {word[:-1] + 'ies' if word.endswith('y') else word + 's'}"


class QueryService:
    """See the module docstring. Thread-safe; state lives in `<run_dir>/labels.sqlite`."""

    def __init__(self, run_dir: str | Path, config: QueryConfig | None = None, reward: Any = None,
                 clock: Callable[[], float] = time.time, seed: int | None = None,
                 reward_factory: Callable[[str], Any] | None = None) -> None:
        self.config = config or QueryConfig()
        self.run_dir = Path(run_dir)
        self.store = Store(self.run_dir)
        self.reward = reward  # default backend: experiments that reported no reward address
        # address -> backend (default: a `reward_service.client.RewardClient`, created on first use)
        self._reward_factory = reward_factory or _reward_client
        self._routes_lock = threading.Lock()
        with self.store.read() as c:
            self._routes: dict[str, str] = {r[0][len(ROUTE_KEY):]: r[1] for r in c.execute(
                "SELECT key, value FROM meta WHERE key LIKE ?", (ROUTE_KEY + "%",))}
        self._backends: dict[str, Any] = {}
        self._schedules: dict[int, QueryConfig] = {}
        self._forward_backoff: dict[str, tuple[float, float]] = {}  # experiment -> (delay, retry at)
        self.clock = clock
        self._rng = random.Random(seed)
        self._select_lock = threading.Lock()
        self._forward_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake_select = threading.Event()
        self._wake_forward = threading.Event()
        self._threads: list[threading.Thread] = []
        self._renderer: Any = None
        self._renderer_lock = threading.Lock()
        self._warned_fallback = False
        # counters (metrics and tests)
        self.selection_fallbacks = 0
        self.forward_failures = 0
        self.forwarded = 0
        self.forward_duplicates = 0  # labels the reward model had already (at-least-once re-sends)
        self.last_forward_error = ""

    # ------------------------------------------------------------------------------ lifecycle
    def start(self) -> "QueryService":
        if self._threads:
            return self
        self._stop.clear()
        for target, name in ((self._select_loop, "query-select"), (self._forward_loop, "query-forward")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake_select.set()
        self._wake_forward.set()
        for t in self._threads:
            t.join(timeout=30)
        self._threads.clear()

    def close(self) -> None:
        self.stop()
        with self._routes_lock:
            backends, self._backends = list(self._backends.values()), {}
        for b in backends:
            if hasattr(b, "close"):
                try:
                    b.close()
                except Exception:  # noqa: BLE001
                    pass
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

    def set_reward(self, reward: Any) -> None:
        """Swap the reward backend (e.g. after the reward service moved); forwarding resumes."""
        self.reward = reward
        self._warned_fallback = False
        self._forward_backoff.clear()
        self._wake_forward.set()
        self._wake_select.set()

    # ------------------------------------------------------------------------------ routing
    def reward_address(self, experiment: str) -> str:
        """The reward service address `experiment` reported ("" when none: the default backend)."""
        with self._routes_lock:
            return self._routes.get(experiment, "")

    def reward_for(self, experiment: str) -> Any:
        """The reward backend of `experiment`: its own service if it reported one, else the default."""
        return self._route(experiment)[1]

    def _route(self, experiment: str) -> tuple[str, Any]:
        """(address, backend) of `experiment`; address "" for the default backend."""
        with self._routes_lock:
            address = self._routes.get(experiment, "")
            if not address:
                return "", self.reward
            backend = self._backends.get(address)
            if backend is None:
                backend = self._backends[address] = self._reward_factory(address)
            return address, backend

    def _drop_backend(self, address: str) -> None:
        """Forget the cached backend of `address` when no experiment routes to it any more."""
        with self._routes_lock:
            if address in self._routes.values():
                return
            backend = self._backends.pop(address, None)
        if backend is not None and hasattr(backend, "close"):
            try:
                backend.close()
            except Exception:  # noqa: BLE001
                pass

    # ------------------------------------------------------------------------------ tokens
    def create_token(self, name: str, role: str = "labeler", experiments: Sequence[str] | str = ()) -> str:
        """Create (or replace) `name`'s token; the plain token is returned once, only its hash is kept."""
        try:
            return self.store.create_token(name, role, experiments if isinstance(experiments, str)
                                           else list(experiments), now=self.clock())
        except ValueError as e:
            raise InvalidRequest(str(e)) from None

    def revoke_token(self, name: str) -> None:
        if not self.store.revoke_token(name):
            raise NotFound(f"no labeler named {name!r}")

    def authenticate(self, token: str | None, roles: Sequence[str] = ROLES) -> Caller:
        """The caller behind `token`; Unauthenticated when missing, unknown, revoked or of another role."""
        return self._auth(token, roles)

    def _auth(self, token: str | None, roles: Sequence[str]) -> Caller:
        if not isinstance(token, str) or not token:
            raise Unauthenticated("missing token: send 'authorization: Bearer <token>' "
                                  "(create one with `rlhp token create`)")
        row = self.store.labeler_for(token)
        if row is None:
            raise Unauthenticated("unknown token (create one with `rlhp token create`)")
        if row["revoked"]:
            raise Unauthenticated(f"the token of {row['name']!r} was revoked")
        if row["role"] not in roles:
            raise Unauthenticated(f"{row['name']!r} has role {row['role']!r}, which may not do this "
                                  f"(needs one of: {', '.join(roles)})")
        exps = row["experiments"]
        return Caller(row["name"], row["role"], frozenset(exps.split(",")) if exps else None)

    # ------------------------------------------------------------------------------ producers
    def add_segments(self, token: str, records: Sequence[SegmentRecord]) -> AddSegmentsResult:
        """Store candidate segments (all or nothing); evicts the oldest unqueried ones beyond the bound."""
        caller = self._auth(token, PRODUCER_ROLES)
        if not isinstance(records, (list, tuple)):
            records = list(records)
        if not records:
            return AddSegmentsResult(0, 0, 0, 0)
        clean = [self._validate_record(r, i) for i, r in enumerate(records)]
        for r in clean:
            if not caller.may(r.experiment):
                raise Unauthenticated(f"{caller.name!r} may not add segments to experiment {r.experiment!r}")
        # shape agreement inside the batch
        shapes: dict[str, tuple] = {}
        for i, r in enumerate(clean):
            key = (r.observations.shape[1:], str(r.observations.dtype), r.actions.shape[1:])
            if shapes.setdefault(r.experiment, key) != key:
                raise InvalidRequest(
                    f"segment {i} ({r.id!r}): observations {list(r.observations.shape[1:])} / actions "
                    f"{list(r.actions.shape[1:])} differ from other segments of {r.experiment!r} in the request")
        now = self.clock()
        rows = [Store.segment_row(r, now) for r in clean]  # compress outside the lock
        accepted = duplicates = dropped = 0
        stored = 0
        with self.store.write() as c:
            for exp, (obs_shape, obs_dtype, act_shape) in shapes.items():
                env_id = next(r.env_id for r in clean if r.experiment == exp)
                obs_key = "x".join(map(str, obs_shape)) + ":" + obs_dtype
                act_key = "x".join(map(str, act_shape))
                row = c.execute("SELECT obs_shape, act_shape FROM progress WHERE experiment=?", (exp,)).fetchone()
                if row is None:
                    c.execute("INSERT INTO progress (experiment, env_id, env_steps, label_budget, obs_shape, "
                              "act_shape, updated) VALUES (?, ?, 0, ?, ?, ?, ?)",
                              (exp, env_id, self.config.label_budget, obs_key, act_key, now))
                elif not row["obs_shape"]:
                    c.execute("UPDATE progress SET env_id=?, obs_shape=?, act_shape=? WHERE experiment=?",
                              (env_id, obs_key, act_key, exp))
                elif (row["obs_shape"], row["act_shape"]) != (obs_key, act_key):
                    raise InvalidRequest(
                        f"experiment {exp!r} stores observations {row['obs_shape']} and actions "
                        f"[{row['act_shape']}] per step, but this request sends {obs_key} and [{act_key}]")
            for row in rows:
                n = c.execute("INSERT OR IGNORE INTO segments (id, experiment, env_id, length, env_step, fps, "
                              "random_policy, created, data, media) VALUES (?,?,?,?,?,?,?,?,?,?)", row).rowcount
                accepted += n
                duplicates += 1 - n
            for exp in shapes:
                count = c.execute("SELECT COUNT(*) FROM segments WHERE experiment=?", (exp,)).fetchone()[0]
                excess = count - self.config.max_segments
                if excess > 0:
                    dropped += c.execute(
                        "DELETE FROM segments WHERE seq IN (SELECT s.seq FROM segments s WHERE s.experiment=? "
                        "AND NOT EXISTS (SELECT 1 FROM queries q WHERE q.experiment=s.experiment AND "
                        "(q.left_id=s.id OR q.right_id=s.id)) ORDER BY s.seq ASC LIMIT ?)", (exp, excess)).rowcount
                stored += c.execute("SELECT COUNT(*) FROM segments WHERE experiment=?", (exp,)).fetchone()[0]
        self._wake_select.set()
        return AddSegmentsResult(accepted, duplicates, dropped, stored)

    def _validate_record(self, r: Any, i: int) -> SegmentRecord:
        if not isinstance(r, SegmentRecord):
            raise InvalidRequest(f"segment {i} is a {type(r).__name__}, not a SegmentRecord")
        where = f"segment {i}"
        for name in ("id", "experiment"):
            v = getattr(r, name)
            if not isinstance(v, str) or not v.strip():
                raise InvalidRequest(f"{where}: {name} is empty")
            if len(v) > MAX_ID_CHARS or any(ch in v for ch in "\x00\n\r"):
                raise InvalidRequest(f"{where}: {name} must be ≤ {MAX_ID_CHARS} printable characters")
        where = f"segment {i} ({r.id!r})"
        if not isinstance(r.env_id, str) or len(r.env_id) > MAX_ID_CHARS:
            raise InvalidRequest(f"{where}: env_id must be a string of ≤ {MAX_ID_CHARS} characters")
        obs = self._array(r.observations, f"{where}: observations")
        if obs.ndim < 1 or obs.shape[0] < 1:
            raise InvalidRequest(f"{where}: observations have shape {list(obs.shape)}; need [T ≥ 1, ...]")
        t = obs.shape[0]
        if t > self.config.max_segment_steps:
            raise InvalidRequest(f"{where}: {t} steps is longer than the limit of {self.config.max_segment_steps}")
        act = self._array(r.actions, f"{where}: actions")
        if act.ndim < 1 or act.shape[0] != t:
            raise InvalidRequest(f"{where}: actions have shape {list(act.shape)}, but observations have T={t} steps")
        rew = self._array(r.true_rewards, f"{where}: true_rewards")
        if rew.shape != (t,):
            raise InvalidRequest(f"{where}: true_rewards have shape {list(rew.shape)}, expected [{t}]")
        if rew.dtype.kind not in "fiu":
            raise InvalidRequest(f"{where}: true_rewards must be numbers, got {rew.dtype}")
        rew = rew.astype(np.float32)
        if not np.isfinite(rew).all():
            raise InvalidRequest(f"{where}: true_rewards contain NaN or infinite values (or overflow float32)")
        frames = qpos = qvel = None
        if r.frames is not None and np.size(r.frames) > 0:
            frames = self._array(r.frames, f"{where}: frames")
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[0] != t or frames.shape[3] != 3:
                raise InvalidRequest(f"{where}: frames must be [T={t}, H, W, 3] uint8 RGB, got "
                                     f"{list(frames.shape)} {frames.dtype}")
        for name in ("qpos", "qvel"):
            v = getattr(r, name)
            if v is not None and np.size(v) > 0:
                a = self._array(v, f"{where}: {name}")
                if a.ndim != 2 or a.shape[0] != t:
                    raise InvalidRequest(f"{where}: {name} must be [T={t}, n], got {list(a.shape)}")
                a = a.astype(np.float64)
                if name == "qpos":
                    qpos = a
                else:
                    qvel = a
        if qvel is not None and qpos is None:
            raise InvalidRequest(f"{where}: qvel was sent without qpos")
        try:
            env_step = int(r.env_step)
            fps = float(r.fps) if r.fps else 30.0
        except (TypeError, ValueError):
            raise InvalidRequest(f"{where}: env_step must be an integer and fps a number") from None
        if env_step < 0:
            raise InvalidRequest(f"{where}: env_step is negative ({env_step})")
        if not (math.isfinite(fps) and 0 < fps <= 1000):
            raise InvalidRequest(f"{where}: fps must lie in (0, 1000], got {fps}")
        return replace(r, id=r.id.strip(), experiment=r.experiment.strip(), observations=obs, actions=act,
                       true_rewards=rew, frames=frames, qpos=qpos, qvel=qvel, env_step=env_step, fps=fps,
                       random_policy=bool(r.random_policy))

    @staticmethod
    def _array(value: Any, what: str) -> np.ndarray:
        if value is None:
            raise InvalidRequest(f"{what} are missing")
        try:
            a = np.asarray(value)
        except Exception:  # noqa: BLE001
            raise InvalidRequest(f"{what} are not an array") from None
        if a.dtype.kind not in "biuf":
            raise InvalidRequest(f"{what} must be numeric, got dtype {a.dtype}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise InvalidRequest(f"{what} contain {int(a.size - np.isfinite(a).sum())} NaN or infinite value(s)")
        return a

    def report_progress(self, token: str, experiment: str, env_steps: int, reward_address: str = "",
                        env_id: str = "", label_budget: int = 0) -> Progress:
        """Record env steps T (kept monotone); returns where the label schedule stands.

        `reward_address` (HOST:PORT) routes this experiment's selection and forwarding to its own
        reward service ("" keeps the one known). A new address (the learner restarted elsewhere)
        re-sends the experiment's labels there: a reward model restored from an older checkpoint gets
        those it missed, the others count as duplicates. `label_budget` > 0 replaces the service's
        default budget for this experiment (its schedule is the default one scaled to that budget);
        `env_id` names the game for labelers.
        """
        caller = self._auth(token, PRODUCER_ROLES)
        experiment = self._experiment_name(experiment)
        if not caller.may(experiment):
            raise Unauthenticated(f"{caller.name!r} may not report progress for {experiment!r}")
        try:
            steps = int(env_steps)
            budget = int(label_budget or 0)
        except (TypeError, ValueError):
            raise InvalidRequest("env_steps and label_budget must be integers") from None
        if steps < 0:
            raise InvalidRequest(f"env_steps must be ≥ 0, got {steps}")
        if not 0 <= budget <= MAX_LABEL_BUDGET:
            raise InvalidRequest(f"label_budget must lie in [0, {MAX_LABEL_BUDGET:,}] (0: the service's "
                                 f"default), got {budget}")
        address = self._address(reward_address)
        env_id = self._text(env_id, "env_id")
        with self.store.write() as c:
            c.execute("INSERT INTO progress (experiment, env_id, env_steps, label_budget, updated) "
                      "VALUES (?, ?, ?, ?, ?) ON CONFLICT (experiment) DO UPDATE SET "
                      "env_steps=MAX(env_steps, excluded.env_steps), updated=excluded.updated"
                      + (", label_budget=excluded.label_budget" if budget else "")
                      + (", env_id=excluded.env_id" if env_id else ""),
                      (experiment, env_id, steps, budget or self.config.label_budget, self.clock()))
            old = self._routes.get(experiment, "")
            moved = bool(address) and address != old
            if moved:
                c.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                          "value=excluded.value", (ROUTE_KEY + experiment, address))
                resent = c.execute("UPDATE labels SET forwarded=0 WHERE forwarded=1 AND experiment=?",
                                   (experiment,)).rowcount if old else 0
                with self._routes_lock:  # under the write lock: `_forward_experiment` sees it when marking
                    self._routes[experiment] = address
        if moved:
            self._forward_backoff.pop(experiment, None)
            if old:
                log.info("%s: reward service moved from %s to %s; re-sending its %d forwarded label(s)",
                         experiment, old, address, resent)
                self._drop_backend(old)
            self._wake_forward.set()
        self._wake_select.set()
        with self.store.read() as c:
            s = self._schedule(c, experiment)
        return Progress(labels=s["labels"], labels_wanted=s["wanted"], queries_pending=s["queued"] + s["leased"],
                        label_budget=s["budget"])

    @staticmethod
    def _text(value: Any, what: str) -> str:
        if value is None:
            return ""
        if not isinstance(value, str) or len(value) > MAX_ID_CHARS or any(
                ch in value for ch in "\x00\n\r"):
            raise InvalidRequest(f"{what} must be a string of ≤ {MAX_ID_CHARS} printable characters")
        return value.strip()

    @classmethod
    def _address(cls, value: Any) -> str:
        address = cls._text(value, "reward_address")
        if address and (":" not in address or any(ch.isspace() for ch in address)):
            raise InvalidRequest(f"reward_address must look like HOST:PORT (e.g. 127.0.0.1:50051), "
                                 f"got {address!r}")
        return address

    @staticmethod
    def _experiment_name(experiment: Any) -> str:
        if not isinstance(experiment, str) or not experiment.strip():
            raise InvalidRequest("experiment is empty")
        if len(experiment) > MAX_ID_CHARS:
            raise InvalidRequest(f"experiment name is longer than {MAX_ID_CHARS} characters")
        return experiment.strip()

    # ------------------------------------------------------------------------------ schedule
    def _schedule(self, c: Any, experiment: str) -> dict[str, int]:
        prog = c.execute("SELECT env_steps, label_budget, env_id FROM progress WHERE experiment=?",
                         (experiment,)).fetchone()
        env_steps = int(prog["env_steps"]) if prog else 0
        budget = int(prog["label_budget"]) if prog else self.config.label_budget
        sched = self._schedule_config(budget)
        labels = c.execute("SELECT COUNT(*) FROM labels WHERE experiment=?", (experiment,)).fetchone()[0]
        counts = dict(c.execute("SELECT state, COUNT(*) FROM queries WHERE experiment=? AND state!='answered' "
                                "GROUP BY state", (experiment,)).fetchall())
        segments = c.execute("SELECT COUNT(*) FROM segments WHERE experiment=?", (experiment,)).fetchone()[0]
        return dict(env_steps=env_steps, budget=budget, labels=labels, queued=counts.get("queued", 0),
                    leased=counts.get("leased", 0), wanted=sched.labels_wanted(env_steps),
                    segments=segments, env_id=prog["env_id"] if prog else "")

    def labels_wanted(self, env_steps: float, label_budget: int | None = None) -> int:
        return self._schedule_config(self.config.label_budget if label_budget is None
                                     else label_budget).labels_wanted(env_steps)

    def _schedule_config(self, budget: int) -> QueryConfig:
        """The schedule of an experiment whose budget is `budget`: the service's, with that budget
        (so its initial batch is min(initial_labels, budget) and its rate spends it by the horizon)."""
        if budget == self.config.label_budget:
            return self.config
        cfg = self._schedules.get(budget)
        if cfg is None:
            cfg = self._schedules[budget] = replace(self.config, label_budget=budget)
        return cfg

    # ------------------------------------------------------------------------------ selection
    def select_once(self) -> int:
        """One selection pass over every experiment; returns the number of queries enqueued."""
        with self._select_lock:
            self._expire_leases()
            with self.store.read() as c:
                exps = [r[0] for r in c.execute("SELECT experiment FROM progress ORDER BY experiment")]
            total = 0
            for exp in exps:
                try:
                    total += self._select_experiment(exp)
                except Exception:  # noqa: BLE001 — one experiment's trouble never stops the others
                    log.exception("query selection failed for %s", exp)
            return total

    def _select_experiment(self, exp: str) -> int:
        cfg = self.config
        with self.store.read() as c:
            s = self._schedule(c, exp)
            pending = s["queued"] + s["leased"]
            needed = min(cfg.queue_target, s["wanted"] - s["labels"]) - pending
            if needed <= 0:
                return 0
            initial = s["labels"] + pending < self._schedule_config(s["budget"]).initial
            pool = c.execute("SELECT id, length, random_policy FROM segments WHERE experiment=? "
                             "ORDER BY seq DESC LIMIT ?", (exp, cfg.candidate_pool)).fetchall()
            taken = {(r[0], r[1]) for r in c.execute(
                "SELECT left_id, right_id FROM queries WHERE experiment=?", (exp,))}
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
        backend = self.reward_for(exp) if cfg.selection == "disagreement" and not initial else None
        use_model = backend is not None
        n_cand = needed * (cfg.oversampling if use_model else 1)
        cands = self._draw_pairs(pool, n_cand, taken)
        if not cands:
            return 0
        version, scores = 0, None
        if use_model and len(cands) > needed:
            try:
                scores, version = self._disagreement(exp, cands, backend)
            except Exception as e:  # noqa: BLE001 — fall back to random selection
                self.selection_fallbacks += 1
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
            for k, ((left, right), dis) in enumerate(chosen):
                ok = c.execute("SELECT COUNT(*) FROM segments WHERE experiment=? AND id IN (?, ?)",
                               (exp, left, right)).fetchone()[0]
                if ok != 2:
                    continue  # evicted meanwhile
                c.execute("INSERT INTO queries (id, experiment, left_id, right_id, model_version, disagreement, "
                          "state, created, order_key, initial) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
                          (uuid.uuid4().hex, exp, left, right, int(version), dis, now, now + k * 1e-6,
                           int(initial)))
                added += 1
        return added

    def _draw_pairs(self, pool: list, n: int, taken: set) -> list[tuple[str, str]]:
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

    def _disagreement(self, exp: str, pairs: list[tuple[str, str]], backend: Any = None
                      ) -> tuple[np.ndarray, int]:
        from reward_service.types import SegmentData

        backend = backend if backend is not None else self.reward_for(exp)

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

    def _select_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.select_once()
            except Exception:  # noqa: BLE001
                log.exception("selection pass failed")
            self._wake_select.wait(self.config.selection_interval)
            self._wake_select.clear()

    # ------------------------------------------------------------------------------ labelers
    def _expire_leases(self) -> int:
        now = self.clock()
        # a read probe of the expiry index first: no write transaction (and no wait for the
        # write lock) on the many passes where no lease is due
        due = self.store.conn().execute("SELECT 1 FROM queries WHERE state='leased' AND lease_expires <= ? "
                                        "LIMIT 1", (now,)).fetchone()
        if due is None:
            return 0
        with self.store.write() as c:
            return self._expire_due(c, now)

    @staticmethod
    def _expire_due(c: Any, now: float) -> int:
        """Return queries whose lease has lapsed to the queue (inside the caller's write transaction).

        Cheap when nothing is due: the partial index `queries_lease_expiry` (leased queries only, by
        expiry) turns this into one index probe instead of a scan of every query ever asked."""
        return c.execute("UPDATE queries SET state='queued', lease_owner=NULL, lease_expires=NULL "
                         "WHERE state='leased' AND lease_expires <= ?", (now,)).rowcount

    @staticmethod
    def _next_queued(c: Any, where: str, args: list, name: str) -> Any:
        """The queued query to lease next: by queue order (`order_key`, then higher disagreement first),
        those `name` skipped (released) last. Two probes along the `queries_queued` /
        `queries_state` indexes instead of ranking every queued query by a subquery."""
        base = "SELECT q.* FROM queries q WHERE q.state='queued'" + where
        order = " ORDER BY q.order_key, q.disagreement DESC LIMIT 1"
        row = c.execute(base + " AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.query_id=q.id AND "
                        "l.labeler=? AND l.released=1)" + order, (*args, name)).fetchone()
        if row is None:  # every queued query was skipped by this labeler: offer those again
            row = c.execute(base + order, args).fetchone()
        return row

    def _scope(self, caller: Caller, experiments: Sequence[str]) -> list[str] | None:
        if isinstance(experiments, str):
            experiments = [experiments] if experiments else []
        wanted = [self._experiment_name(e) for e in experiments or ()]
        for e in wanted:
            if not caller.may(e):
                raise Unauthenticated(f"{caller.name!r} may not label experiment {e!r}")
        if wanted:
            return sorted(set(wanted))
        return None if caller.experiments is None else sorted(caller.experiments)

    def lease(self, token: str, experiments: Sequence[str] = (), lease_seconds: float = 0) -> Lease:
        """Lease the next query of the given (or allowed) experiments, or say what the run waits for."""
        caller = self._auth(token, LABELING_ROLES)
        scope = self._scope(caller, experiments)
        try:
            seconds = float(lease_seconds or 0)
        except (TypeError, ValueError):
            raise InvalidRequest("lease_seconds must be a number") from None
        if not math.isfinite(seconds) or seconds < 0:
            raise InvalidRequest(f"lease_seconds must be ≥ 0 (0: the default), got {lease_seconds}")
        seconds = min(seconds or self.config.lease_seconds, self.config.max_lease_seconds)
        where, args = "", []
        if scope is not None:
            where = f" AND q.experiment IN ({','.join('?' * len(scope))})"
            args = list(scope)
        now = self.clock()
        with self.store.write() as c:
            self._expire_due(c, now)
            row = self._next_queued(c, where, args, caller.name)
            if row is not None:
                expires = now + seconds
                c.execute("UPDATE queries SET state='leased', lease_owner=?, lease_expires=? WHERE id=?",
                          (caller.name, expires, row["id"]))
                c.execute("INSERT INTO leases (query_id, labeler, granted, expires) VALUES (?, ?, ?, ?)",
                          (row["id"], caller.name, now, expires))
        with self.store.read() as c:
            pending = c.execute("SELECT COUNT(*) FROM queries q WHERE q.state='queued'" + where, args).fetchone()[0]
            answered = self._answered(c, caller.name)
            if row is None:
                self._wake_select.set()
                return Lease(False, None, self._why_waiting(c, scope), pending, answered)
            exp, ids = row["experiment"], (row["left_id"], row["right_id"])
            # columns only: the compressed arrays stay untouched (teachers get just the true rewards)
            meta = {r["id"]: r for r in c.execute(
                "SELECT id, env_id, fps, length FROM segments WHERE experiment=? AND id IN (?, ?)", (exp, *ids))}
        if len(meta) != 2:  # cannot happen: queried segments are never evicted
            raise FailedPrecondition(f"the segments of query {row['id']} are gone")
        left = meta[ids[0]]
        rewards = self.store.load_rewards(exp, list(ids)) if caller.role == "teacher" else {}
        q = QueryData(id=row["id"], experiment=exp, env_id=left["env_id"], left_id=ids[0], right_id=ids[1],
                      lease_expires=expires, model_version=int(row["model_version"]), fps=float(left["fps"]),
                      length=int(left["length"]), left_rewards=rewards.get(ids[0]),
                      right_rewards=rewards.get(ids[1]))
        return Lease(True, q, "", pending, answered)

    @staticmethod
    def _answered(c: Any, name: str) -> int:
        return c.execute("SELECT COUNT(*) FROM labels WHERE labeler=?", (name,)).fetchone()[0]

    def _why_waiting(self, c: Any, scope: list[str] | None) -> str:
        exps = scope if scope is not None else [r[0] for r in c.execute(
            "SELECT experiment FROM progress ORDER BY experiment")]
        if not exps:
            return "waiting for the agent to produce clips (no experiment has sent segments yet)"
        reasons = []
        for e in exps:
            s = self._schedule(c, e)
            labels, budget, wanted, steps = s["labels"], s["budget"], s["wanted"], s["env_steps"]
            pending = s["queued"] + s["leased"]
            if s["segments"] < 2:
                reasons.append(f"waiting for the agent to produce clips ({_plural(s['segments'], 'segment')} "
                               f"so far for {e})")
            elif labels >= budget:
                reasons.append(f"label budget reached for {e} ({labels:,} of {budget:,} labels)")
            elif not s["queued"] and s["leased"] >= min(self.config.queue_target, wanted - labels) > 0:
                reasons.append(f"all {_plural(s['leased'], 'pending query')} of {e} are leased by other labelers "
                               f"(they return to the queue if not answered in time)")
            elif labels + pending >= wanted:
                t_next = self._schedule_config(budget).env_steps_for(labels + pending + 1)
                if t_next is None:
                    reasons.append(f"label budget for {e} is fully queued ({labels:,} labels, {pending} pending)")
                else:
                    more = max(1, math.ceil(t_next - steps))
                    reasons.append(f"label schedule satisfied for {e} ({labels:,} labels given, {wanted:,} wanted "
                                   f"at {steps:,} env steps): next query after {more:,} more env steps")
            else:
                reasons.append(f"selecting the next queries for {e} ({wanted - labels - pending:,} more wanted; "
                               f"{_plural(s['segments'], 'segment')} stored)")
        return "; ".join(reasons)

    def _query(self, c: Any, caller: Caller, query_id: Any) -> Any:
        if not isinstance(query_id, str) or not query_id:
            raise InvalidRequest("query_id is empty")
        if len(query_id) > MAX_ID_CHARS:
            raise InvalidRequest("query_id is too long")
        row = c.execute("SELECT * FROM queries WHERE id=?", (query_id,)).fetchone()
        if row is None:
            raise NotFound(f"no query with id {query_id!r}")
        if not caller.may(row["experiment"]):
            raise Unauthenticated(f"{caller.name!r} may not label experiment {row['experiment']!r}")
        return row

    @staticmethod
    def _ever_leased(c: Any, query_id: str, name: str) -> bool:
        return c.execute("SELECT 1 FROM leases WHERE query_id=? AND labeler=? LIMIT 1",
                         (query_id, name)).fetchone() is not None

    def submit(self, token: str, query_id: str, answer: Preference | int | str, seconds: float = 0.0
               ) -> SubmitResult:
        """Store a label durably (committed before returning). Idempotent per query."""
        caller = self._auth(token, LABELING_ROLES)
        if answer in (0, None, "", "PREFERENCE_UNSPECIFIED"):
            raise InvalidRequest("answer is unset: send LEFT, RIGHT, EQUAL or INCOMPARABLE")
        pref = Preference.parse(answer)
        try:
            secs = float(seconds or 0.0)
        except (TypeError, ValueError):
            raise InvalidRequest("seconds must be a number") from None
        if not math.isfinite(secs) or secs < 0:
            raise InvalidRequest(f"seconds must be a finite number ≥ 0, got {seconds}")
        now = self.clock()
        with self.store.write() as c:
            q = self._query(c, caller, query_id)
            label = c.execute("SELECT labeler, answer FROM labels WHERE query_id=?", (q["id"],)).fetchone()
            if label is not None:
                answered = self._answered(c, caller.name)
                if label["labeler"] == caller.name and label["answer"] == int(pref):
                    return SubmitResult("DUPLICATE", "you already gave this answer; nothing new stored", answered)
                if label["labeler"] == caller.name:
                    return SubmitResult("ALREADY_ANSWERED", f"you already answered "
                                        f"{Preference(label['answer']).name}; labels are final", answered)
                return SubmitResult("ALREADY_ANSWERED", "another labeler answered this query first; "
                                    "nothing new stored", answered)
            if not self._ever_leased(c, q["id"], caller.name):
                raise FailedPrecondition(f"query {q['id']} was not leased to {caller.name!r}; lease it first")
            c.execute("INSERT INTO labels (query_id, experiment, left_id, right_id, answer, labeler, seconds, "
                      "created, model_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (q["id"], q["experiment"], q["left_id"], q["right_id"], int(pref), caller.name,
                       min(secs, 1e7), now, q["model_version"]))
            c.execute("UPDATE queries SET state='answered', lease_owner=NULL, lease_expires=NULL WHERE id=?",
                      (q["id"],))
            late = q["state"] != "leased" or q["lease_owner"] != caller.name
            answered = self._answered(c, caller.name)
        self._wake_forward.set()
        self._wake_select.set()
        msg = "stored" + (" (after your lease had expired; nobody else had answered)" if late else "")
        return SubmitResult("ACCEPTED", msg, answered)

    def release(self, token: str, query_id: str) -> None:
        """Give a leased query back unanswered (a skip); it returns to the end of the queue."""
        caller = self._auth(token, LABELING_ROLES)
        now = self.clock()
        with self.store.write() as c:
            q = self._query(c, caller, query_id)
            if q["state"] == "answered":
                return
            if q["state"] == "leased" and q["lease_owner"] == caller.name:
                c.execute("UPDATE queries SET state='queued', lease_owner=NULL, lease_expires=NULL, order_key=? "
                          "WHERE id=?", (now, q["id"]))
                c.execute("UPDATE leases SET released=1 WHERE query_id=? AND labeler=?", (q["id"], caller.name))
                return
            if self._ever_leased(c, q["id"], caller.name):
                c.execute("UPDATE leases SET released=1 WHERE query_id=? AND labeler=?", (q["id"], caller.name))
                return  # the lease had already lapsed: nothing to give back
            raise FailedPrecondition(f"query {q['id']} is not leased to {caller.name!r}")

    def get_clip(self, token: str, query_id: str, side: Preference | int | str, fmt: str = "mp4"
                 ) -> tuple[str, bytes]:
        """(mime type, video bytes) of one side of a query: for the holder of a live lease, for a
        labeler who leased it once it is answered, and for admins."""
        caller = self._auth(token, LABELING_ROLES)
        if side in (0, None, ""):
            raise InvalidRequest("side is unset: send LEFT or RIGHT")
        pside = Preference.parse(side)
        if pside not in (Preference.LEFT, Preference.RIGHT):
            raise InvalidRequest(f"side must be LEFT or RIGHT, not {pside.name}")
        fmt = (fmt or "mp4").lower()
        if fmt not in ("mp4", "webm"):
            raise InvalidRequest(f"format must be 'mp4' or 'webm', not {fmt!r}")
        now = self.clock()
        with self.store.read() as c:
            q = self._query(c, caller, query_id)
            live = q["state"] == "leased" and q["lease_owner"] == caller.name and q["lease_expires"] > now
            ok = live or caller.role == "admin" or (q["state"] == "answered" and self._ever_leased(
                c, q["id"], caller.name))
        if not ok:
            raise FailedPrecondition(f"query {q['id']} is not leased to {caller.name!r} (or the lease expired); "
                                     "lease it first")
        seg_id = q["left_id"] if pside == Preference.LEFT else q["right_id"]
        # the cache is keyed by segment id: make it unique across experiments
        key = f"{q['experiment']}/{seg_id}"
        try:
            renderer = self._clip_renderer()
        except FailedPrecondition:
            renderer = None  # reported below, after the segment's existence (as before)
        if renderer is not None:
            hit = renderer.cached(key, fmt)
            if hit is not None:  # rendered before: no need to load and decompress frames/qpos/qvel
                return hit
        rec = self.store.load_segments(q["experiment"], [seg_id], media=True).get(seg_id)
        if rec is None:
            raise NotFound(f"segment {seg_id!r} of query {q['id']} is gone")
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

    # ------------------------------------------------------------------------------ stats
    def stats(self) -> QueryStats:
        now = self.clock()
        exps = []
        with self.store.read() as c:
            for (e,) in c.execute("SELECT experiment FROM progress ORDER BY experiment").fetchall():
                s = self._schedule(c, e)
                live = c.execute("SELECT COUNT(*) FROM queries WHERE experiment=? AND state='leased' AND "
                                 "lease_expires > ?", (e, now)).fetchone()[0]
                fwd = c.execute("SELECT COUNT(*) FROM labels WHERE experiment=? AND forwarded!=0",
                                (e,)).fetchone()[0]
                exps.append(ExperimentStats(
                    experiment=e, env_id=s["env_id"], segments=s["segments"],
                    queries_pending=s["queued"] + s["leased"] - live, queries_leased=live, labels=s["labels"],
                    labels_wanted=s["wanted"], label_budget=s["budget"], env_steps=s["env_steps"],
                    labels_forwarded=fwd))
            labelers = tuple(LabelerStats(r[0], int(r[1]), float(r[2] or 0.0)) for r in c.execute(
                "SELECT labeler, COUNT(*), AVG(seconds) FROM labels GROUP BY labeler ORDER BY labeler"))
        return QueryStats(tuple(exps), labelers)

    # ------------------------------------------------------------------------------ forwarding
    def forward_once(self) -> int:
        """Send up to `forward_batch` unforwarded labels per experiment to that experiment's reward
        model; mark them after success.

        At-least-once: a crash between the call and the mark re-sends them, which the reward service
        counts as duplicates (idempotent by query id). Every experiment is tried; when one's reward
        model cannot be reached the others are still forwarded, then the first error is raised.
        Labels of an experiment without a reward backend (no address, no default) wait.
        """
        sent, failed = self._forward_pass()
        if failed:
            raise failed[0][1]
        return sent

    def _forward_pass(self, due: Callable[[str], bool] | None = None
                      ) -> tuple[int, list[tuple[str, Exception]]]:
        with self._forward_lock:
            exps = [r[0] for r in self.store.conn().execute(
                "SELECT DISTINCT experiment FROM labels WHERE forwarded=0")]
            sent = 0
            failed: list[tuple[str, Exception]] = []
            for exp in exps:
                if due is not None and not due(exp):
                    continue
                try:
                    address, backend = self._route(exp)
                    if backend is None:
                        continue
                    sent += self._forward_experiment(exp, backend, address)
                except Exception as e:  # noqa: BLE001 — one reward service down never stops the others
                    failed.append((exp, e))
            self.forwarded += sent
            return sent, failed

    def _forward_experiment(self, exp: str, backend: Any, address: str = "") -> int:
        from reward_service.types import ComparisonData, SegmentData

        group = self.store.conn().execute(
            "SELECT query_id, experiment, left_id, right_id, answer FROM labels WHERE forwarded=0 AND "
            "experiment=? ORDER BY created LIMIT ?", (exp, self.config.forward_batch)).fetchall()
        if not group:
            return 0
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
            self.forward_duplicates += int(getattr(res, "duplicates", 0) or 0)
        with self.store.write() as c:
            if self.reward_address(exp) != address:
                return 0  # the experiment moved to another reward service meanwhile: send them there
            for r in ok:
                c.execute("UPDATE labels SET forwarded=1 WHERE query_id=?", (r["query_id"],))
            for qid in lost:  # segments gone (cannot happen in normal operation): never retried
                c.execute("UPDATE labels SET forwarded=2 WHERE query_id=?", (qid,))
        if lost:
            log.error("%d label(s) of %s reference missing segments and cannot be forwarded", len(lost), exp)
        return len(ok)

    def reforward(self, experiment: str | None = None) -> int:
        """Mark labels unforwarded so they are sent again (e.g. a reward service restarted without its
        checkpoint). Harmless for one that kept them: it counts them as duplicates."""
        with self.store.write() as c:
            if experiment is None:
                return c.execute("UPDATE labels SET forwarded=0 WHERE forwarded=1").rowcount
            return c.execute("UPDATE labels SET forwarded=0 WHERE forwarded=1 AND experiment=?",
                             (experiment,)).rowcount

    def unforwarded(self) -> int:
        return self.store.conn().execute("SELECT COUNT(*) FROM labels WHERE forwarded=0").fetchone()[0]

    def _forward_loop(self) -> None:
        """Forward continuously; an experiment whose reward service fails is retried with its own
        exponential backoff, so one game's unreachable reward service never delays another's labels."""
        interval = self.config.forward_interval

        def due(exp: str) -> bool:
            entry = self._forward_backoff.get(exp)
            return entry is None or entry[1] <= time.monotonic()

        while not self._stop.is_set():
            try:
                sent, failed = self._forward_pass(due)
            except Exception as e:  # noqa: BLE001 — e.g. the database is busy: retry
                sent, failed = 0, [("", e)]
            now = time.monotonic()
            for exp, e in failed:
                self.forward_failures += 1
                self.last_forward_error = f"{exp + ': ' if exp else ''}{type(e).__name__}: {e}"
                delay = self._forward_backoff.get(exp, (interval / 2, 0.0))[0] * 2
                delay = min(self.config.forward_max_backoff, max(interval, delay))
                if delay == interval:
                    log.warning("forwarding labels to the reward model failed (%s); retrying with backoff",
                                self.last_forward_error)
                self._forward_backoff[exp] = (delay, now + delay)
            failed_exps = {exp for exp, _ in failed}
            for exp in [e for e in list(self._forward_backoff) if e not in failed_exps and due(e)]:
                self._forward_backoff.pop(exp, None)  # tried again (or nothing left to send): healthy
            if "" in failed_exps:
                self._stop.wait(self._forward_backoff[""][0])
                continue
            if sent:
                continue  # more may be waiting
            waits = [at - now for _, at in list(self._forward_backoff.values())]
            self._wake_forward.wait(max(0.0, min([interval] + waits)))
            self._wake_forward.clear()


def _reward_client(address: str) -> Any:
    """The default backend of a routed experiment: its reward service over gRPC (imported here so
    the core itself stays free of gRPC)."""
    from reward_service.client import RewardClient

    return RewardClient(address)


__all__ = ["QueryService", "Caller", "ROLES"]
