"""The labeler's session behind the labeling page: which query is on screen, the next one leased and
its clips fetched ahead, answers and skips, and every query-service error turned into a message for a
person (`ApiError`). No HTTP here: `handler.py` serves this over HTTP, `app.py` is `rlhp label`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Callable

from rlhp import rpc
from rlhp.types import FailedPrecondition, InvalidRequest, NotFound, PermissionDenied, Preference, Unauthenticated

log = logging.getLogger("rlhp.label")

SIDES = {"left": Preference.LEFT, "right": Preference.RIGHT}
FORMATS = ("mp4", "webm")
# A prefetched query is not shown if its lease would lapse this soon (seconds); a fresh one is leased.
MIN_LEASE_LEFT = 60.0


def error_status(exc: BaseException) -> tuple[int, str, bool]:
    """Map an error from the query client to (HTTP status, message for a person, unreachable).

    The client already turned gRPC statuses into exceptions (`rlhp.rpc.exception_for`); a raw
    `grpc.RpcError` (another client) goes through the same table first."""
    if type(exc).__module__.startswith("grpc") and hasattr(exc, "code"):
        exc = rpc.exception_for(exc, "query service")  # type: ignore[arg-type]
    if isinstance(exc, InvalidRequest):
        return HTTPStatus.BAD_REQUEST, str(exc), False
    if isinstance(exc, NotFound):
        return HTTPStatus.NOT_FOUND, str(exc), False
    if isinstance(exc, FailedPrecondition):
        return HTTPStatus.CONFLICT, str(exc), False
    if isinstance(exc, Unauthenticated):
        return HTTPStatus.UNAUTHORIZED, str(exc), False
    if isinstance(exc, PermissionDenied):
        return HTTPStatus.FORBIDDEN, str(exc), False
    if isinstance(exc, TimeoutError):
        return HTTPStatus.GATEWAY_TIMEOUT, str(exc), True
    if isinstance(exc, ConnectionError):
        return HTTPStatus.SERVICE_UNAVAILABLE, str(exc), True
    return HTTPStatus.BAD_GATEWAY, f"{type(exc).__name__}: {exc}", False


class ApiError(Exception):
    """An error for the page: HTTP status, a message for a person, and optional extra JSON fields."""

    def __init__(self, status: int, message: str, unreachable: bool = False, extra: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.unreachable = int(status), message, unreachable
        self.extra = extra or {}


@dataclass
class _Slot:
    """A leased query and (once fetched) its clips."""

    query: Any  # QueryData
    leased_at: float = field(default_factory=time.time)


def query_json(q: Any) -> dict:
    return {"id": q.id, "experiment": q.experiment, "env_id": q.env_id, "goal": getattr(q, "goal", ""),
            "model_version": int(q.model_version),
            "fps": float(q.fps), "length": int(q.length), "lease_expires": float(q.lease_expires)}


class LabelApp:
    """The labeler's session: the query on screen, the next one prefetched, clip bytes in memory.

    `client` offers `lease`, `get_clip`, `submit`, `release` like `query_service.client.QueryClient`.
    """

    def __init__(self, client: Any, experiments: tuple[str, ...] = (), lease_seconds: float = 600.0,
                 server: str = "", prefetch: bool = True, clip_cache: int = 12,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.experiments = tuple(experiments)
        self.lease_seconds = float(lease_seconds)
        self.server = server
        self.prefetch_enabled = prefetch
        self.clock = clock
        self.fmt = "mp4"
        self.current: _Slot | None = None
        self.upcoming: _Slot | None = None
        self.pending = 0
        self.answered = 0
        self.waiting_for = ""
        self.last_error = ""
        self._me: dict | None = None  # `me()`: this labeler's numbers, and when they were read
        self._me_answered, self._me_at = -1, 0.0
        self._lock = threading.RLock()  # guards the fields above
        self._lease_lock = threading.Lock()  # one lease call at a time (page and prefetcher)
        self._clips: "OrderedDict[tuple[str, str, str], tuple[str, bytes]]" = OrderedDict()
        self._inflight: dict[tuple[str, str, str], Future] = {}
        self._clip_cache = clip_cache
        self._prefetching = False
        self._next_prefetch = 0.0
        self._closed = False
        self._prefetch_thread: threading.Thread | None = None

    # ------------------------------------------------------------------ service calls, guarded
    def _call(self, fn: Callable, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except ApiError:
            raise
        except Exception as exc:  # noqa: BLE001 — every error becomes a message on the page
            status, message, unreachable = error_status(exc)
            if unreachable:
                message = f"cannot reach the query service at {self.server or 'its address'}: {message}"
            raise ApiError(status, message, unreachable) from None

    def _lease(self) -> _Slot | None:
        lease = self._call(self.client.lease, experiments=self.experiments, lease_seconds=self.lease_seconds)
        with self._lock:
            self.pending, self.answered = int(lease.pending), int(lease.answered)
            if not lease.available or lease.query is None:
                self.waiting_for = lease.waiting_for or "waiting for the agent to produce clips"
                return None
            self.waiting_for = ""
            return _Slot(lease.query, self.clock())

    def _usable(self, slot: _Slot | None, margin: float = 5.0) -> bool:
        return slot is not None and slot.query.lease_expires - self.clock() > margin

    # ------------------------------------------------------------------ state
    def state(self, fmt: str | None = None) -> dict:
        """What the page shows: the current query (leased now if needed) and the prefetched next one."""
        if fmt in FORMATS:
            self.fmt = fmt
        dropped: list[_Slot] = []
        with self._lease_lock:
            with self._lock:
                if self.current is not None and not self._usable(self.current):
                    dropped.append(self.current)  # lease lapsed: the service has requeued it
                    self.current = None
                if self.current is None and self.upcoming is not None:
                    up, self.upcoming = self.upcoming, None
                    if self._usable(up, MIN_LEASE_LEFT):
                        self.current = up
                    else:
                        dropped.append(up)
                current = self.current
            if current is None:
                current = self._lease()
                with self._lock:
                    self.current = current
        for slot in dropped:
            self._forget(slot, release=True)
        if current is not None:
            self._kick_prefetch()
        return self._snapshot()

    def _snapshot(self) -> dict:
        with self._lock:
            cur, up = self.current, self.upcoming
            out: dict[str, Any] = {"available": cur is not None, "pending": self.pending,
                                   "answered": self.answered, "waiting_for": "" if cur else self.waiting_for,
                                   "server": self.server, "format": self.fmt}
            if cur is not None:
                out["query"] = query_json(cur.query)
                out["clips"] = self._clip_urls(cur.query.id)
            out["next"] = None
            if cur is not None and up is not None:
                out["next"] = {**query_json(up.query), "clips": self._clip_urls(up.query.id)}
        out["me"] = self.me()
        return out

    def me(self) -> dict | None:
        """This labeler's own numbers (labels, median seconds, gold, agreement, excluded), from the
        service's stats (a labeler's token sees only its own); refreshed after an answer, else every
        15 s. None until the service knows any."""
        with self._lock:
            fresh = self._me_answered == self.answered and self.clock() - self._me_at < 15.0
            if fresh:
                return self._me
            self._me_answered, self._me_at = self.answered, self.clock()
        try:
            labelers = self.client.stats().labelers
        except Exception as exc:  # noqa: BLE001 — the numbers are a courtesy: keep the last ones
            log.debug("stats for the labeler's own numbers failed: %s", exc)
            return self._me
        if len(labelers) == 1:
            x = labelers[0]
            me = {"labels": x.answered, "median_seconds": round(x.median_seconds, 1),
                  "gold": [x.gold_correct, x.gold_answered], "agreement": [x.agreed, x.agreement_checks],
                  "excluded": bool(x.excluded)}
            with self._lock:
                self._me = me
        return self._me

    def _clip_urls(self, query_id: str) -> dict:
        return {side: f"/api/clip/{query_id}/{side}?fmt={self.fmt}" for side in SIDES}

    # ------------------------------------------------------------------ prefetch
    def _kick_prefetch(self) -> None:
        if not self.prefetch_enabled:
            return
        with self._lock:
            if self._closed or self._prefetching or self.upcoming is not None or self.current is None:
                return
            if self.clock() < self._next_prefetch:
                return
            self._prefetching = True
        self._prefetch_thread = threading.Thread(target=self._prefetch, name="label-prefetch", daemon=True)
        self._prefetch_thread.start()

    def _prefetch(self) -> None:
        try:
            with self._lease_lock:
                with self._lock:
                    if self.upcoming is not None or self.current is None or self._closed:
                        return
                slot = self._lease()
                with self._lock:
                    if slot is None:  # nothing more to label now; the page's polling retries later
                        self._next_prefetch = self.clock() + 1.5
                        return
                    self.upcoming = slot
            for side in SIDES:
                self.clip(slot.query.id, side, self.fmt)
        except ApiError as e:
            log.warning("prefetch failed: %s", e.message)
            with self._lock:
                self._next_prefetch = self.clock() + 2.0
        except Exception:  # noqa: BLE001
            log.exception("prefetch failed")
        finally:
            with self._lock:
                self._prefetching = False

    # ------------------------------------------------------------------ clips
    def clip(self, query_id: str, side: str, fmt: str = "mp4") -> tuple[str, bytes]:
        """(mime, bytes) of one clip, from memory when prefetched; concurrent requests share a fetch."""
        if side not in SIDES:
            raise ApiError(HTTPStatus.NOT_FOUND, f"side must be left or right, not {side!r}")
        if fmt not in FORMATS:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        key = (query_id, side, fmt)
        with self._lock:
            hit = self._clips.get(key)
            if hit is not None:
                self._clips.move_to_end(key)
                return hit
            fut = self._inflight.get(key)
            owner = fut is None
            if owner:
                fut = self._inflight[key] = Future()
        assert fut is not None
        if not owner:
            return fut.result(timeout=300)
        try:
            mime, data = self._call(self.client.get_clip, query_id, SIDES[side], fmt)
            result = (mime, bytes(data))
            with self._lock:
                self._clips[key] = result
                while len(self._clips) > self._clip_cache:
                    self._clips.popitem(last=False)
            fut.set_result(result)
            return result
        except BaseException as exc:
            fut.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._inflight.pop(key, None)

    def _forget(self, slot: _Slot, release: bool = False) -> None:
        with self._lock:
            for key in [k for k in self._clips if k[0] == slot.query.id]:
                del self._clips[key]
        if release:
            try:
                self.client.release(slot.query.id)
            except Exception:  # noqa: BLE001 — the lease lapses on its own anyway
                pass

    # ------------------------------------------------------------------ answers
    def _take(self, query_id: str) -> _Slot | None:
        with self._lock:
            if self.current is not None and self.current.query.id == query_id:
                slot, self.current = self.current, None
                return slot
            if self.upcoming is not None and self.upcoming.query.id == query_id:
                slot, self.upcoming = self.upcoming, None
                return slot
        return None

    def answer(self, query_id: str, answer: str, seconds: float = 0.0) -> dict:
        if not isinstance(query_id, str) or not query_id:
            raise ApiError(HTTPStatus.BAD_REQUEST, "query_id is missing")
        try:
            pref = Preference.parse(answer)
        except InvalidRequest as e:
            raise ApiError(HTTPStatus.BAD_REQUEST, str(e)) from None
        try:
            secs = max(0.0, float(seconds or 0.0))
        except (TypeError, ValueError):
            raise ApiError(HTTPStatus.BAD_REQUEST, "seconds must be a number") from None
        try:
            result = self._call(self.client.submit, query_id, pref, secs)
        except ApiError as e:
            if e.unreachable or e.status not in (HTTPStatus.NOT_FOUND, HTTPStatus.CONFLICT):
                raise
            # The query is gone or no longer ours: drop it and move on to the next one.
            slot = self._take(query_id)
            if slot is not None:
                self._forget(slot)
            raise ApiError(e.status, e.message, extra=self.state()) from None
        slot = self._take(query_id)
        if slot is not None:
            self._forget(slot)
        with self._lock:
            self.answered = int(result.answered)
        state = self.state()
        state["result"] = {"status": result.status, "message": result.message, "answered": int(result.answered)}
        return state

    def skip(self, query_id: str) -> dict:
        if not isinstance(query_id, str) or not query_id:
            raise ApiError(HTTPStatus.BAD_REQUEST, "query_id is missing")
        slot = self._take(query_id)
        if slot is not None:
            self._forget(slot)
        try:
            self._call(self.client.release, query_id)
        except ApiError as e:
            if e.unreachable:
                raise
            log.info("release of %s: %s", query_id, e.message)  # lapsed or answered: nothing to give back
        return self.state()

    def close(self) -> None:
        """Give back every lease this session holds (they return to the queue at once)."""
        with self._lock:
            self._closed = True
            thread = self._prefetch_thread
        if thread is not None:
            thread.join(timeout=10)  # let an in-flight prefetch finish before giving leases back
        with self._lock:
            slots = [s for s in (self.current, self.upcoming) if s is not None]
            self.current = self.upcoming = None
        for slot in slots:
            self._forget(slot, release=True)
