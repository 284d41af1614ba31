"""Request and connection limits: what keeps one client from stalling the robot's ``/api/infer``.

uvicorn, as shipped, reads any request body an app asks for, never times out a request that is
still arriving (its keep-alive timer is disarmed by the first byte), and accepts connections
until the process runs out of file descriptors; every Server-Sent Events subscriber costs a
poll loop. Measured on this project's server before these limits: a 100 MiB body to
``/api/infer`` stalled a 100 Hz client for 7 s, 1,100 half-open connections under
``ulimit -n 1024`` made new connections fail, 500 idle SSE subscribers took 69% of a core.

Two layers, both cheap on the hot path (a few attribute stores per request):

* :class:`RequestGuard`, ASGI middleware in every app :func:`~continuonbrain.runtime.api.create_app`
  builds: the ``Host`` header against the bound address (DNS rebinding: a web page whose
  name resolves to 127.0.0.1 must not reach the robot's unauthenticated routes), the body size
  (413 from ``Content-Length`` before a byte is read, and while a chunked body streams in), and
  a cap on SSE subscribers (503).
* :func:`http_protocol`, the uvicorn HTTP protocol ``serve()`` runs: a deadline for a request's
  headers and for its body (408 / closed), a bound on header bytes (431), a cap on open
  connections that evicts the least recently active half-open or idle connection first (a
  control loop on a keep-alive connection is the most recently active one), and JSON bodies
  on the protocol's own error answers.

Host rule (see :class:`HostPolicy`): bound to a loopback address, only ``localhost``,
``127.0.0.1`` and ``[::1]`` (any port: an ``ssh -L`` tunnel keeps the name and changes the
port) plus ``allowed_hosts``; bound to one address, that address too; bound to a wildcard
(``0.0.0.0``, ``::``: the owner chose to expose the robot, under names it cannot know), any
``Host`` unless ``allowed_hosts`` is given.

Why one module of 472 lines: both layers enforce one :class:`ServerLimits` and answer
refusals the same way (:func:`send_json_error`), and the stall tests exercise them together.
Split candidate: the uvicorn protocol side (:class:`_Connections`, :func:`connection_cap`,
:func:`raise_open_file_limit`, :func:`http_protocol`, :func:`connection_stats`) into its own
module, leaving the ASGI :class:`RequestGuard` and the host rule here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson
from pydantic import ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from continuonbrain.config_base import ConfigModel
from continuonbrain.runtime.frames import DEFAULT_MAX_IMAGE_B64_BYTES

log = logging.getLogger(__name__)

#: The route whose subscribers are capped (a stream that never ends by itself).
SSE_PATHS = frozenset({"/api/training/events"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
#: Where the connection registry is found in each request's ``scope["state"]``.
CONNECTIONS_STATE_KEY = "continuonbrain.connections"
#: File descriptors kept free for what the server opens besides connections (weights, logs, jobs).
FD_RESERVE = 96


class ServerLimits(ConfigModel):
    """Bounds on what one client can make the server hold; the defaults suit a robot's API
    (one control loop, a few Robot Editor tabs, scripts) on a Pi with ``ulimit -n 1024``.
    A frozen :class:`~continuonbrain.config_base.ConfigModel` (``model_copy(update=...)`` or
    :meth:`with_overrides` for a changed copy)."""

    model_config = ConfigDict(frozen=True)

    max_body_bytes: int = Field(1 << 20, ge=1)
    """Largest request body. An ``/api/infer`` observation is at most 64 k numbers (~600 KB of
    JSON at worst) or a few base64 camera frames."""
    max_header_bytes: int = Field(64 << 10, ge=1)
    """Request line plus headers (counted as they arrive, so the parser never buffers more)."""
    header_timeout_s: float = Field(10.0, gt=0)
    """From connecting (or the end of the previous answer, or a request's first byte) to the
    end of its headers."""
    body_timeout_s: float = Field(30.0, gt=0)
    """From the end of the headers to the end of the body."""
    max_connections: int = Field(256, ge=1)
    """Open connections; further limited by the file descriptors the process may open."""
    max_sse_subscribers: int = Field(16, ge=1)
    """Concurrent ``/api/training/events`` streams."""
    max_image_b64_bytes: int = Field(DEFAULT_MAX_IMAGE_B64_BYTES, ge=1)
    """Longest base64 image string in an ``/api/infer`` observation (characters, checked before
    decoding; longer is a 413). 512 KiB holds a 640x480 JPEG at quality 95; the decoded image
    must also have the served model's exact shape, read from its header before any pixel is
    decoded (:mod:`continuonbrain.runtime.frames`)."""
    keep_alive_s: int = Field(5, ge=1)
    """uvicorn's keep-alive: an idle connection is closed after this long."""
    sweep_interval_s: float = Field(0.5, gt=0)
    """How often deadlines are checked (one timer for all connections, none per request)."""


# --------------------------------------------------------------------------- the Host rule


def host_name(raw: bytes | str) -> str:
    """The name in a ``Host`` header value, lower case, without port, brackets or final dot."""
    value = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    name, sep, port = value.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        value = name
    return value.rstrip(".")


class HostPolicy:
    """Which ``Host`` headers a server bound to ``bind_host`` answers (see the module doc)."""

    def __init__(self, bind_host: str = "127.0.0.1", allowed_hosts: Iterable[str] = ()):
        extra = {host_name(h) for h in allowed_hosts if h}
        bind = host_name(bind_host) if bind_host not in WILDCARD_HOSTS else ""
        self.any_host = bind_host in WILDCARD_HOSTS and not extra
        self.allowed = frozenset(LOOPBACK_NAMES | extra | ({bind} if bind else set()))
        self.bind_host = bind_host
        self._cache: dict[bytes, bool] = {}

    def allows(self, raw: bytes | None) -> bool:
        """True for an acceptable ``Host`` value (no header: an HTTP/1.0 client, not a browser)."""
        if self.any_host or raw is None:
            return True
        ok = self._cache.get(raw)
        if ok is None:
            ok = host_name(raw) in self.allowed
            if len(self._cache) >= 256:  # a bounded memo: attackers can vary the header at will
                self._cache.clear()
            self._cache[raw] = ok
        return ok

    def describe(self) -> dict[str, Any]:
        return {"bind_host": self.bind_host, "any_host": self.any_host, "allowed": sorted(self.allowed)}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------- ASGI layer


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a chunked body passes the limit (FastAPI re-raises
    HTTP exceptions from body reading, and the app's handler answers it as JSON)."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than {limit} bytes", headers={"Connection": "close"})


def json_error_body(status: int, message: str) -> bytes:
    return orjson.dumps({"detail": message, "message": message, "status": status})


async def send_json_error(send: Send, status: int, message: str, *, close: bool = False, retry_after: int = 0) -> None:
    body = json_error_body(status, message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    if retry_after:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@dataclass
class GuardCounters:
    """What :class:`RequestGuard` refused, and the SSE streams open now (shown in ``/api/status``)."""

    sse_subscribers: int = 0
    refused: dict[str, int] = field(default_factory=lambda: {"host": 0, "body": 0, "sse": 0})


class RequestGuard:
    """Host check, body size limit and SSE subscriber cap, before the app sees a request."""

    def __init__(self, app: ASGIApp, *, limits: ServerLimits, hosts: HostPolicy, counters: GuardCounters):
        self.app = app
        self.limits = limits
        self.hosts = hosts
        self.counters = counters
        self.refused = counters.refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = length = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
        if not self.hosts.allows(host):
            self.refused["host"] += 1
            shown = host.decode("latin-1")[:100] if host else ""
            message = f"Host {shown!r} is not this server's (allowed: {', '.join(sorted(self.hosts.allowed))})"
            await send_json_error(send, 400, message)
            return
        limit = self.limits.max_body_bytes
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await send_json_error(send, 400, "Content-Length is not a number", close=True)
                return
            if declared > limit:
                self.refused["body"] += 1
                await send_json_error(
                    send, 413, f"request body of {declared} bytes is over the {limit}-byte limit", close=True
                )
                return
        elif chunked:
            receive = self._bounded(receive, limit)
        if scope["path"] in SSE_PATHS:
            await self._subscriber(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _bounded(self, receive: Receive, limit: int) -> Receive:
        """``receive`` for a body of unknown length: counts it and refuses it past ``limit``."""
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    self.refused["body"] += 1
                    raise BodyTooLarge(limit)
            return message

        return bounded

    async def _subscriber(self, scope: Scope, receive: Receive, send: Send) -> None:
        cap, counters = self.limits.max_sse_subscribers, self.counters
        if counters.sse_subscribers >= cap:
            self.refused["sse"] += 1
            await send_json_error(send, 503, f"{cap} event subscribers already: try again later", retry_after=5)
            return
        counters.sse_subscribers += 1
        try:
            await self.app(scope, receive, send)
        finally:
            counters.sse_subscribers -= 1


# --------------------------------------------------------------------------- protocol layer

#: Connection phases (see :class:`_Connections`).
_HEADERS, _BODY, _BUSY, _IDLE = "headers", "body", "busy", "idle"


class _Connections:
    """The open connections of one server and the one timer that enforces their deadlines.

    Two queues, least recently active first: ``fresh`` connections have not had an answer yet
    (half-open ones among them), ``served`` ones have. A new connection over the cap evicts the
    oldest fresh connection that is not busy, and only when there is none the least recently
    answered idle one: a control loop's keep-alive connection, answered every few ms, is the
    last to go, however fast an attacker opens connections."""

    def __init__(self, limits: ServerLimits, cap: int, loop: asyncio.AbstractEventLoop):
        self.limits = limits
        self.cap = cap
        self.loop = loop
        self.fresh: OrderedDict[Any, None] = OrderedDict()
        self.served: OrderedDict[Any, None] = OrderedDict()
        self.stats = {"evicted": 0, "refused": 0, "header_timeouts": 0, "body_timeouts": 0, "oversized_headers": 0}
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self.fresh) + len(self.served)

    def add(self, conn: Any) -> bool:
        """Register a new connection; False when it must be refused (all others are busy)."""
        self.fresh[conn] = None
        if self._timer is None:
            self._timer = self.loop.call_later(self.limits.sweep_interval_s, self._sweep)
        if len(self) <= self.cap:
            return True
        victim = next((c for c in self.fresh if c is not conn and c.phase != _BUSY), None)
        if victim is None:
            victim = next((c for c in self.served if c.phase != _BUSY), None)
        if victim is None:
            del self.fresh[conn]
            self.stats["refused"] += 1
            return False
        self.discard(victim)
        self.stats["evicted"] += 1
        victim.close_quietly()
        return True

    def touch(self, conn: Any) -> None:
        """An answer went out on ``conn``: it is now the most recently served connection."""
        if conn in self.fresh:
            del self.fresh[conn]
            self.served[conn] = None
        elif conn in self.served:  # (not if it was evicted or timed out meanwhile)
            self.served.move_to_end(conn)

    def discard(self, conn: Any) -> None:
        self.fresh.pop(conn, None)
        self.served.pop(conn, None)

    def _sweep(self) -> None:
        """Close connections past their phase's deadline; reschedules itself while any remain."""
        now = self.loop.time()
        header_s, body_s = self.limits.header_timeout_s, self.limits.body_timeout_s
        for conn in [*self.fresh, *self.served]:
            waited = now - conn.since
            if conn.phase in (_HEADERS, _IDLE) and waited > header_s:
                # an idle keep-alive connection that only trickles blank lines is closed without a word
                started = conn.phase == _HEADERS
                self.stats["header_timeouts"] += started
                conn.time_out(408 if started else None, f"request headers not complete within {header_s:g} s")
            elif conn.phase == _BODY and waited > body_s:
                self.stats["body_timeouts"] += 1
                conn.time_out(None, f"request body not complete within {body_s:g} s")
        self._timer = self.loop.call_later(self.limits.sweep_interval_s, self._sweep) if len(self) else None


def connection_cap(limits: ServerLimits) -> int:
    """``max_connections``, lowered to what the process's open-file limit leaves room for."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        in_use = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 64
    except (ImportError, OSError, ValueError):
        return limits.max_connections
    if soft == resource.RLIM_INFINITY:
        return limits.max_connections
    room = soft - in_use - FD_RESERVE
    if room < limits.max_connections:
        log.warning(
            "open-file limit %d leaves room for %d connections (max_connections %d)", soft, room, limits.max_connections
        )
    return max(8, min(limits.max_connections, room))


def raise_open_file_limit(target: int = 4096) -> None:
    """Raise the soft open-file limit towards ``target`` within the hard limit (a Pi's shell
    default soft limit is 1024; the hard one is often higher)."""
    with contextlib.suppress(ImportError, OSError, ValueError):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = target if hard == resource.RLIM_INFINITY else min(target, hard)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def http_protocol(limits: ServerLimits, cap: int | None = None) -> type[asyncio.Protocol] | str:
    """The uvicorn HTTP protocol class enforcing ``limits`` (httptools-based). Without httptools,
    uvicorn's h11 protocol (header size bounded by ``h11_max_incomplete_event_size``, but no
    deadlines and no connection cap: a warning says so)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        log.warning("httptools is not installed: request deadlines and the connection cap are not enforced")
        return "h11"
    cap = connection_cap(limits) if cap is None else cap

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol plus deadlines, a header bound, the connection cap and
        JSON error bodies (see the module doc). State per connection: ``phase`` and ``since``."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.phase, self.since = _HEADERS, self.loop.time()
            self._header_bytes = 0
            registry = getattr(self.server_state, "continuon_connections", None)
            if registry is None:
                registry = _Connections(limits, cap, self.loop)
                self.server_state.continuon_connections = registry  # type: ignore[attr-defined]
                self.app_state[CONNECTIONS_STATE_KEY] = registry  # each request's scope["state"]: for /api/status
            self._registry = registry
            if not registry.add(self):
                self._write_error(503, "too many connections, all busy: try again shortly")

        def connection_lost(self, exc: Exception | None) -> None:
            self._registry.discard(self)
            super().connection_lost(exc)

        # -- parser callbacks: phase changes and the header bound

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # Bytes that leave the request still short of its headers are header bytes (the parser
            # buffers a header until it is complete, so they are counted here, as they arrive).
            if self.phase in (_HEADERS, _IDLE):
                self._header_bytes += len(data)
                if self._header_bytes > limits.max_header_bytes and not self.transport.is_closing():
                    self._registry.stats["oversized_headers"] += 1
                    self._write_error(431, f"request line and headers over {limits.max_header_bytes} bytes")
            else:
                self._header_bytes = 0

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.phase, self.since = _HEADERS, self.loop.time()

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self.phase, self.since = _BODY, self.loop.time()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self.phase = _BUSY

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.phase == _BUSY:
                self.phase, self.since = _IDLE, self.loop.time()
            self._registry.touch(self)

        # -- answers and closing

        def send_400_response(self, msg: str) -> None:
            self._write_error(400, f"{msg} (malformed HTTP)")

        def _write_error(self, status: int, message: str) -> None:
            """A complete JSON error answer written straight to the socket, then close."""
            if self.transport.is_closing():
                return
            body = json_error_body(status, message)
            phrase = HTTPStatus(status).phrase.encode()
            head = (
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            )
            self.transport.write(head % (status, phrase, len(body)) + body)
            self.transport.close()
            self.phase = _BUSY  # closing: never evicted or timed out again

        def time_out(self, status: int | None, message: str) -> None:
            """A deadline passed: answer (when no answer is under way) and close."""
            self._registry.discard(self)
            if status is not None and (self.cycle is None or self.cycle.response_complete):
                self._write_error(status, message)
            else:
                self.close_quietly()

        def close_quietly(self) -> None:
            if not self.transport.is_closing():
                self.transport.close()
            self.phase = _BUSY

    return GuardedHttpToolsProtocol


def connection_stats(scope_state: dict[str, Any] | None) -> dict[str, Any] | None:
    """Open connections, the cap and what was evicted, refused or timed out, from a request's
    ``scope["state"]`` (None when the server does not run :func:`http_protocol`)."""
    registry = (scope_state or {}).get(CONNECTIONS_STATE_KEY)
    if registry is None:
        return None
    return {"open": len(registry), "cap": registry.cap, **registry.stats}
