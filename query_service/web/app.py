"""`rlhp label`: label queries in your browser.

A small local web server (stdlib only) between your browser and the query service:

    rlhp label --server HOST:PORT --token TOKEN            # then open http://127.0.0.1:8765/
    rlhp label --server HOST:PORT --token TOKEN --tls-ca ca.pem   # a query service that serves TLS

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

This module is the command; the session (leases, prefetch, clips, answers) is `session.py` and the
HTTP routes are `handler.py`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import webbrowser
from typing import Any

from .handler import LabelServer
from .session import LabelApp


def make_server(server: str, token: str, host: str = "127.0.0.1", port: int = 8765,
                experiments: tuple[str, ...] = (), lease_seconds: float = 600.0,
                client: Any = None, root_cert: bytes | None = None) -> LabelServer:
    """Build the labeling web server (not started: call `serve_forever`, e.g. in a thread).
    `root_cert`: the CA (PEM) of a query service that serves TLS."""
    if client is None:
        from query_service.client import QueryClient

        client = QueryClient(server, token, root_cert=root_cert)
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
    p.add_argument("--tls-ca", metavar="PEM",
                   help="the CA certificate of a query service that serves TLS (default: $RLHP_QUERY_CA, if set)")
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
        root_cert = open(args.tls_ca, "rb").read() if args.tls_ca else None
    except OSError as e:
        print(f"rlhp label: cannot read --tls-ca {args.tls_ca}: {e.strerror}", file=sys.stderr)
        return 2
    try:
        httpd = make_server(args.server, args.token, args.host, args.port, experiments, args.lease_seconds,
                            root_cert=root_cert)
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
