"""gRPC plumbing shared by the services' thin servers and clients.

- `make_server` / `make_channel`: message-size limits, keepalive and retry policy in one place.
- `handle_errors`: maps the core's exceptions (rlhp.types) to status codes with readable messages;
  anything unexpected becomes INTERNAL with the error text, and the server keeps serving.
- `exception_for` / `call`: the way back, for every client (and the labeling page): a status code
  becomes the core's exception again, UNAVAILABLE (after the channel's retries) `rlhp.types.Unavailable` (a `ConnectionError`),
  DEADLINE_EXCEEDED `TimeoutError`, anything else `ServiceError`. One table for both directions.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import traceback
from concurrent import futures
from typing import Any, Callable, Iterator

import grpc

from rlhp import types, wire

log = logging.getLogger("rlhp.rpc")

_OPTIONS = [
    ("grpc.max_send_message_length", wire.MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", wire.MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Servers must accept the clients' 30 s keepalive pings; gRPC's default (5 min) answers them
    # with GOAWAY "too_many_pings" and idle channels then fail their next call.
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 20_000),
    ("grpc.http2.max_ping_strikes", 0),
    # A restarted service is found within a few seconds: gRPC's default reconnect backoff grows to
    # 120 s, and calls fail fast (UNAVAILABLE) while a channel waits it out.
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 3_000),
]


def _retry_config(service: str) -> str:
    return json.dumps({
        "methodConfig": [{
            "name": [{"service": service}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }]
    })


_MALLOC_TUNED = False


def tune_malloc_for_large_messages() -> bool:
    """Keep glibc from returning multi-MiB buffers to the OS after every message.

    With glibc's default (dynamic) thresholds each message of a few MiB is allocated with fresh
    pages (mmap, or a heap that was just trimmed), and the page faults made encoding / decoding a
    4 MiB tensor ~10x slower than memcpy (docs/benchmarks.md). Raising M_MMAP_THRESHOLD and
    M_TRIM_THRESHOLD lets those buffers be reused; the process may keep up to ~128 MiB of freed
    heap. Process-wide, idempotent; a no-op (False) where libc is not glibc.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = bool(libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)) and bool(
            libc.mallopt(m_trim_threshold, 128 * 1024 * 1024))
    except (OSError, AttributeError):
        return False
    _MALLOC_TUNED = ok
    return ok


def limit_malloc_arenas(n: int = 2) -> bool:
    """Cap glibc's malloc arenas for this process (call it before the server's threads start).

    glibc gives busy threads arenas of their own (up to 8 per core) and keeps what they freed: under
    varied request sizes (a fuzzing run: 1 MB strings, 70 MB requests) the query service's RSS grew
    ~30 MB per 1,000 requests without any Python object leaking, 2/3 of it given back by
    `malloc_trim`. With 2 arenas it levels off (docs/reliability.md). A no-op (False) off glibc."""
    try:
        import ctypes

        m_arena_max = -8
        return bool(ctypes.CDLL("libc.so.6").mallopt(m_arena_max, int(n)))
    except (OSError, AttributeError):
        return False


def make_server(max_workers: int = 16, initializer: Callable[[], Any] | None = None,
                token: str | None = None, service: str = "this service") -> grpc.Server:
    """A sync server; `initializer` runs once in every worker thread (e.g. per-thread torch settings).
    With `token`, every call must carry it (`authorization: Bearer <token>`, see `SharedToken`)."""
    pool = futures.ThreadPoolExecutor(max_workers=max_workers, initializer=initializer)
    interceptors = [SharedToken(token, service)] if token else None
    return grpc.server(pool, options=_OPTIONS, interceptors=interceptors)


class SharedToken(grpc.ServerInterceptor):
    """Refuses every call that does not carry `token` as ``authorization: Bearer <token>`` with
    UNAUTHENTICATED (compared in constant time; the message never repeats what was sent)."""

    def __init__(self, token: str, service: str = "this service") -> None:
        if not token:
            raise ValueError("a shared token must not be empty")
        self._digest = hashlib.sha256(token.encode()).digest()
        self._service = service

    def _sent(self, metadata: Any) -> str | None:
        for key, value in metadata or ():
            if key == "authorization" and value.startswith("Bearer "):
                return value[len("Bearer "):].strip()
        return None

    def intercept_service(self, continuation: Callable, details: Any) -> Any:
        sent = self._sent(details.invocation_metadata)
        if sent is not None and hmac.compare_digest(hashlib.sha256(sent.encode()).digest(), self._digest):
            return continuation(details)
        handler = continuation(details)
        if handler is None:
            return None
        message = (f"{self._service} needs its token: send 'authorization: Bearer <token>'" if sent is None
                   else f"wrong token for {self._service}")

        def deny(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, base: Any, metadata: list) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


class _WithToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                 grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call of a channel."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        metadata = [m for m in (details.metadata or ()) if m[0] != "authorization"]
        return _CallDetails(details, metadata + [self._header])

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


def bind(server: grpc.Server, host: str, port: int, tls: tuple[bytes, bytes] | None = None) -> int:
    """Bind `host:port` (port 0 picks a free one); returns the bound port. `tls` is (cert, key) PEM."""
    address = f"{host}:{port}"
    if tls is not None:
        creds = grpc.ssl_server_credentials([(tls[1], tls[0])])
        bound = server.add_secure_port(address, creds)
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot bind {address} (in use, or not an address of this machine)")
    return bound


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or address to bind) is reachable from this machine only."""
    import ipaddress

    h = (host or "").strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def make_channel(address: str, service: str, root_cert: bytes | None = None, token: str = "") -> grpc.Channel:
    """A channel with our limits and a retry policy for UNAVAILABLE. Open it in the process that uses it.
    `root_cert`: TLS with this CA (PEM); `token`: sent with every call (a server's `SharedToken`)."""
    options = _OPTIONS + [("grpc.enable_retries", 1), ("grpc.service_config", _retry_config(service))]
    if root_cert is not None:
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_cert), options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    return grpc.intercept_channel(channel, _WithToken(token)) if token else channel


_STATUS = [
    (types.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (types.NotFound, grpc.StatusCode.NOT_FOUND),
    (types.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (types.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (types.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
]


class ServiceError(RuntimeError):
    """A service failed in a way the caller cannot fix (INTERNAL, UNKNOWN, ...)."""


def exception_for(e: grpc.RpcError, service: str = "the service", hint: str = "") -> Exception:
    """The exception a client raises for a failed call (`service` names it in messages, e.g.
    "reward service at 127.0.0.1:50051"; `hint` is added when it cannot be reached)."""
    code = e.code() if hasattr(e, "code") else None
    details = (e.details() if hasattr(e, "details") else None) or str(e)
    for kind, status in _STATUS:
        if code == status:
            return kind(details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return types.InvalidRequest(f"request to the {service} is too large: {details}")
    if code == grpc.StatusCode.UNAVAILABLE:
        return types.Unavailable(f"{service} is unavailable (after retries): {details}" + (f". {hint}" if hint else ""))
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TimeoutError(f"{service} did not answer in time: {details}")
    name = code.name if code is not None else "UNKNOWN"
    return ServiceError(f"{service} failed: {name}: {details}")


def call(method: Callable, request: Any, *, timeout: float, metadata: Any = None,
         service: str = "the service", hint: str = "") -> Any:
    """`method(request)` with a deadline; a failed call raises `exception_for` its status."""
    try:
        if metadata is None:
            return method(request, timeout=timeout)
        return method(request, timeout=timeout, metadata=metadata)
    except grpc.RpcError as e:
        raise exception_for(e, service, hint) from None


def status_for(exc: BaseException) -> grpc.StatusCode:
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code
    if isinstance(exc, types.Unavailable):  # clients see it as any UNAVAILABLE: a ConnectionError
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


class Undecodable:
    """What a request that is not a valid message of its type decodes to (`add_servicer`); the
    servicer method, wrapped by `handle_errors`, answers it with INVALID_ARGUMENT."""

    __slots__ = ("type_name", "error")

    def __init__(self, type_name: str, error: str) -> None:
        self.type_name = type_name
        self.error = error

    def invalid(self) -> types.InvalidRequest:
        return types.InvalidRequest(f"the request is not a valid {self.type_name} message ({self.error})")


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    owner = getattr(deserializer, "__self__", None)  # `Message.FromString` is bound to its class
    type_name = getattr(getattr(owner, "DESCRIPTOR", None), "full_name", "request")

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as e:  # noqa: BLE001 — DecodeError, or anything protobuf raises on junk
            return Undecodable(type_name, f"{type(e).__name__}: {e}")

    return decode


class _Captured:
    """Stands in for a server while generated code registers its handlers (`add_servicer`)."""

    def __init__(self) -> None:
        self.name = ""
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, name: str, handlers: dict) -> None:
        self.name, self.handlers = name, dict(handlers)


def add_servicer(server: grpc.Server, servicer: Any, add_generated: Callable[[Any, Any], None]) -> None:
    """`add_<Service>Servicer_to_server(servicer, server)` (the generated function), except that a
    request that does not decode answers INVALID_ARGUMENT instead of gRPC's INTERNAL "Exception
    deserializing request!": random bytes are bad input, not a fault of the service."""
    captured = _Captured()
    add_generated(servicer, captured)
    handlers = {m: h._replace(request_deserializer=_tolerant(h.request_deserializer))
                for m, h in captured.handlers.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(captured.name, handlers),))
    server.add_registered_method_handlers(captured.name, handlers)


def _decoded(request: Any) -> Any:
    if isinstance(request, Undecodable):
        raise request.invalid()
    return request


def handle_errors(method: Callable) -> Callable:
    """Decorate a servicer method (unary or streaming response) so errors become status codes (and
    an `Undecodable` request INVALID_ARGUMENT)."""

    def _abort(context: grpc.ServicerContext, exc: BaseException) -> None:
        code = status_for(exc)
        if code == grpc.StatusCode.INTERNAL:
            log.error("internal error in %s: %s", method.__name__, "".join(traceback.format_exception(exc)))
            message = f"internal error in {method.__name__}: {type(exc).__name__}: {exc}"
        else:
            message = str(exc)
        context.abort(code, message)

    def requests(request: Any) -> Any:  # a stream of requests is checked one by one as it is read
        if isinstance(request, Iterator):
            return (_decoded(r) for r in request)
        return _decoded(request)

    @functools.wraps(method)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, requests(request), context)
        except Exception as exc:  # noqa: BLE001 — every error becomes a status, never a crash
            if isinstance(exc, grpc.RpcError) or _is_abort(exc, context):
                raise
            _abort(context, exc)

    @functools.wraps(method)
    def streaming(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            yield from method(self, requests(request), context)
        except Exception as exc:  # noqa: BLE001
            if isinstance(exc, grpc.RpcError) or _is_abort(exc, context):
                raise
            _abort(context, exc)

    import inspect

    return streaming if inspect.isgeneratorfunction(method) else unary


def _is_abort(exc: BaseException, context: Any = None) -> bool:
    # context.abort raises an exception private to grpc (a bare `Exception()` in grpcio 1.85) after
    # recording the status on the context; let it through untouched so the status is not replaced.
    state = getattr(context, "_state", None)
    return bool(getattr(state, "aborted", False)) or type(exc).__module__.startswith("grpc")


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def token_from(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata():
        if key == "authorization" and value.startswith("Bearer "):
            return value[len("Bearer "):].strip()
    return ""
