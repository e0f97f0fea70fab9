"""`rlhp label`: label queries in your browser.

A small local web server (stdlib only) between your browser and the query service:

    rlhp label --server HOST:PORT --token TOKEN            # then open http://127.0.0.1:8765/

The page shows the two clips of a query side by side, looping in sync; answer with the buttons or the
arrow keys (← left is better, → right is better, ↑ equal, ↓ can't tell). The token stays in this
process; the page never sees it. While you look at one query the next one is already leased and its
clips fetched, so the next pair shows the moment you answer. Leases you hold are given back when you
stop the server (Ctrl-C).

HTTP API (JSON unless noted):

    GET  /                              the page
    GET  /api/next[?fmt=mp4|webm]       {available, query, next, pending, answered, waiting_for}
    GET  /api/clip/<query_id>/<left|right>[?fmt=…]   video bytes (supports Range requests)
    POST /api/answer {query_id, answer: LEFT|RIGHT|EQUAL|INCOMPARABLE, seconds} → {result, …state}
    POST /api/skip   {query_id}         give the query back unanswered → state
    GET  /api/health                    {ok, server}

Errors are JSON {error, unreachable?} with a fitting HTTP status, never a traceback page.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import webbrowser
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from rlhp import rpc
from rlhp.types import FailedPrecondition, InvalidRequest, NotFound, Preference, Unauthenticated

log = logging.getLogger("rlhp.label")

STATIC_DIR = Path(__file__).resolve().parent
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/index.html": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}
SIDES = {"left": Preference.LEFT, "right": Preference.RIGHT}
FORMATS = ("mp4", "webm")
# A prefetched query is not shown if its lease would lapse this soon (seconds); a fresh one is leased.
MIN_LEASE_LEFT = 60.0
MAX_BODY = 64 * 1024


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
    return {"id": q.id, "experiment": q.experiment, "env_id": q.env_id, "model_version": int(q.model_version),
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
            return out

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


# ---------------------------------------------------------------------- HTTP


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single `bytes=` range; None for no/ignored header; raises ValueError
    when unsatisfiable."""
    if not header:
        return None
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not m or (not m.group(1) and not m.group(2)):
        return None  # multi-range or malformed: serve the whole body (allowed by RFC 9110)
    if m.group(1):
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else size - 1
        if start >= size:
            raise ValueError("range starts beyond the end")
        return start, min(end, size - 1)
    suffix = int(m.group(2))
    if suffix == 0:
        raise ValueError("empty suffix range")
    return max(0, size - suffix), size - 1


class Handler(BaseHTTPRequestHandler):
    server_version = "rlhp-label/1"
    protocol_version = "HTTP/1.1"
    app: LabelApp  # set on the subclass made by make_server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 — stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    # -- responses --
    def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", {"Cache-Control": "no-store"})

    def _error(self, exc: ApiError) -> None:
        body: dict[str, Any] = {**exc.extra, "error": exc.message}
        if exc.unreachable:
            body["unreachable"] = True
            body["server"] = self.app.server
        self._json(exc.status, body)

    def _guard(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except ApiError as e:
            self._error(e)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away (e.g. it cancelled a video request)
        except Exception as exc:  # noqa: BLE001 — never a traceback page
            log.exception("error serving %s", self.path)
            try:
                self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"})
            except Exception:  # noqa: BLE001
                pass

    # -- routing --
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self._guard(self._get)

    def do_POST(self) -> None:
        self._guard(self._post)

    def _get(self) -> None:
        url = urlsplit(self.path)
        qs = parse_qs(url.query)
        path = url.path
        if path in STATIC:
            name, ctype = STATIC[path]
            try:
                body = (STATIC_DIR / name).read_bytes()
            except FileNotFoundError:
                raise ApiError(HTTPStatus.NOT_FOUND, f"{name} is missing from the installation") from None
            self._send(HTTPStatus.OK, body, ctype, {"Cache-Control": "no-cache"})
            return
        if path == "/api/next":
            self._json(HTTPStatus.OK, self.app.state(qs.get("fmt", [None])[0]))
            return
        if path == "/api/health":
            self._json(HTTPStatus.OK, {"ok": True, "server": self.app.server})
            return
        m = re.fullmatch(r"/api/clip/([^/]+)/([a-z]+)", path)
        if m:
            fmt = qs.get("fmt", [self.app.fmt])[0]
            mime, data = self.app.clip(m.group(1), m.group(2), fmt)
            self._send_bytes(mime, data)
            return
        raise ApiError(HTTPStatus.NOT_FOUND, f"no such page: {path}")

    def _send_bytes(self, mime: str, data: bytes) -> None:
        base = {"Accept-Ranges": "bytes", "Cache-Control": "private, max-age=3600"}
        try:
            rng = parse_range(self.headers.get("Range"), len(data))
        except ValueError:
            self._send(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, b"", mime,
                       {**base, "Content-Range": f"bytes */{len(data)}"})
            return
        if rng is None:
            self._send(HTTPStatus.OK, data, mime, base)
            return
        start, end = rng
        self._send(HTTPStatus.PARTIAL_CONTENT, data[start:end + 1], mime,
                   {**base, "Content-Range": f"bytes {start}-{end}/{len(data)}"})

    def _body(self) -> dict:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise ApiError(HTTPStatus.BAD_REQUEST, "bad Content-Length") from None
        if length > MAX_BODY:
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request body too large")
        raw = self.rfile.read(length) if length else b""
        # JSON only: a cross-site form cannot send it without a CORS preflight, which we never allow.
        if "application/json" not in (self.headers.get("Content-Type") or ""):
            raise ApiError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send JSON (Content-Type: application/json)")
        try:
            obj = json.loads(raw or b"{}")
        except ValueError:
            raise ApiError(HTTPStatus.BAD_REQUEST, "body is not valid JSON") from None
        if not isinstance(obj, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
        return obj

    def _post(self) -> None:
        path = urlsplit(self.path).path
        if path == "/api/answer":
            body = self._body()
            self._json(HTTPStatus.OK, self.app.answer(body.get("query_id"), body.get("answer"),
                                                      body.get("seconds", 0.0)))
            return
        if path == "/api/skip":
            body = self._body()
            self._json(HTTPStatus.OK, self.app.skip(body.get("query_id")))
            return
        raise ApiError(HTTPStatus.NOT_FOUND, f"no such endpoint: POST {path}")


class LabelServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: LabelApp) -> None:
        handler = type("BoundHandler", (Handler,), {"app": app})
        super().__init__(address, handler)
        self.app = app

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{host}:{port}/"

    def shutdown_and_close(self) -> None:
        self.shutdown()
        self.server_close()
        self.app.close()


def make_server(server: str, token: str, host: str = "127.0.0.1", port: int = 8765,
                experiments: tuple[str, ...] = (), lease_seconds: float = 600.0,
                client: Any = None) -> LabelServer:
    """Build the labeling web server (not started: call `serve_forever`, e.g. in a thread)."""
    if client is None:
        from query_service.client import QueryClient

        client = QueryClient(server, token)
    app = LabelApp(client, experiments=experiments, lease_seconds=lease_seconds, server=server)
    return LabelServer((host, port), app)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rlhp label",
        description="Label queries in your browser. Serves a local page that shows the two clips of "
                    "each query side by side; answer with ← (left is better), → (right is better), "
                    "↑ (equal) or ↓ (can't tell). Your token stays in this process.",
        epilog="Example: rlhp label --server 127.0.0.1:50052 --token $RLHP_TOKEN --open")
    p.add_argument("--server", required=True, metavar="HOST:PORT", help="address of the query service")
    p.add_argument("--token", default=os.environ.get("RLHP_TOKEN"), required=not os.environ.get("RLHP_TOKEN"),
                   help="your labeler token (from `rlhp token create`); default: $RLHP_TOKEN")
    p.add_argument("--port", type=int, default=8765, help="port of the local page (default 8765; 0 picks one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve the page on (default 127.0.0.1: only this machine)")
    p.add_argument("--experiments", default="", metavar="A,B",
                   help="label only these experiments (comma-separated; default: all your token allows)")
    p.add_argument("--lease-seconds", type=float, default=600.0,
                   help="how long you may hold a query before it returns to the queue (default 600)")
    p.add_argument("--open", action="store_true", help="open the page in your web browser")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    experiments = tuple(e.strip() for e in args.experiments.split(",") if e.strip())
    try:
        httpd = make_server(args.server, args.token, args.host, args.port, experiments, args.lease_seconds)
    except OSError as e:
        print(f"rlhp label: cannot serve on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    url = httpd.url
    print(f"Labeling page: {url}  (query service {args.server}; Ctrl-C to stop)", flush=True)
    if args.open:
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM too gives leases back

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        httpd.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        print("\nstopping; giving back leased queries", flush=True)
    finally:
        httpd.server_close()
        httpd.app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
