"""HTTP for the labeling page (stdlib `http.server`): the static page, the JSON API over a
`LabelApp` session, and clip bytes with Range support. Every error is a JSON body with a fitting
status, never a traceback page. The routes are listed in `app.py`'s docstring.
"""

from __future__ import annotations

import json
import logging
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from .session import ApiError, LabelApp

log = logging.getLogger("rlhp.label")

STATIC_DIR = Path(__file__).resolve().parent
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/index.html": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}
MAX_BODY = 64 * 1024


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
