"""One listening port for plain HTTP and WebSocket calls.

trio-websocket only speaks WebSocket, but the bot server must also answer the
platform's webhooks and a health check on the same port (the platform is given
one public address). So every accepted connection (TCP, or TLS above TCP) first
goes through this front: it reads the request head with h11, bounded in size and
time. A WebSocket upgrade is handed to trio-websocket over a stream that first
replays the bytes already read, so the WebSocket handshake sees the request
untouched; anything else is plain HTTP/1.1 (keep-alive included), answered by the
route registered for its method and path.

Bounds, before anything is read: a connection over the global cap or over the cap for
its source address gets ``503`` (with ``retry-after``; a WebSocket client sees its
handshake refused) and is counted; an ``accept()`` failing for lack of descriptors
(EMFILE) is counted and logged once per interval, and accepting resumes after a short
pause. WebSocket frame errors get their close frame (1002/1007) and are counted
(:mod:`pipeline.server.websocket_stream`).

Routing is deliberately small: exact paths (the query string and a trailing slash
are ignored), one handler per WebSocket path, one per (method, path) for HTTP, and
an optional catch-all WebSocket handler. An upgrade to an unknown path is refused
with 404 before any WebSocket handshake.
"""

from __future__ import annotations

import contextvars
import http
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import h11
import trio
from trio_websocket import CloseReason, WebSocketRequest

from pipeline.protocol.events import CLOSE_TIMEOUT
from pipeline.server.limits import (
    ACCEPT_CAPACITY_ERRNOS,
    ConnectionGate,
    ConnectionLimits,
    RateLimitedLog,
)
from pipeline.server.websocket_stream import WebSocketStream, open_server_websocket

__all__ = [
    "HostedServer",
    "HttpFront",
    "HttpHandler",
    "HttpRequest",
    "HttpResponse",
    "Listening",
    "WebSocketHandler",
    "current_peer",
    "normalize_path",
]

logger = logging.getLogger("voicegraph.http")


class HostedServer(Protocol):
    """What the server's helpers (workers, drain, the fleet's bus, metrics) need of
    :class:`~pipeline.server.voice_stream.VoiceStreamServer`: its live calls, its
    configuration, and routes of their own on its port."""

    @property
    def calls(self) -> dict[str, Any]: ...

    @property
    def config(self) -> Any: ...

    def add_http_route(self, method: str, path: str, handler: Any) -> None: ...


MAX_HEAD_BYTES = 16 * 1024
DEFAULT_MAX_BODY = 64 * 1024
RECEIVE_BYTES = 16 * 1024
HEAD_TIMEOUT = 10.0  # a client that connects and says nothing (or a slow-loris head)
BODY_TIMEOUT = 10.0
KEEP_ALIVE_TIMEOUT = 15.0
HANDLER_TIMEOUT = 30.0
SEND_TIMEOUT = 10.0
DRAIN_TIMEOUT = 1.0
DRAIN_BYTES = 1 << 20
REFUSAL_DRAIN_TIMEOUT = 0.25  # a refused connection must not hold its descriptor long
ACCEPT_PAUSE = 0.1  # after an accept() that failed for lack of descriptors

_PEER: contextvars.ContextVar[str | None] = contextvars.ContextVar("peer", default=None)


def current_peer() -> str | None:
    """The source address of the connection being served (None: an in-process stream).

    For WebSocket handlers, whose ``request.remote`` cannot see through the stream that
    replays the request head."""
    return _PEER.get()


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A complete plain HTTP request: head and (bounded) body."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    peer: str | None = None  # the source address (None: an in-process stream)

    @property
    def path(self) -> str:
        return normalize_path(self.target)

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return None

    def json(self) -> Any:
        """The body as JSON; raises ValueError if it is not."""
        return json.loads(self.body.decode("utf-8"))


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(
        cls, status: int, document: Any, headers: tuple[tuple[str, str], ...] = ()
    ) -> HttpResponse:
        body = json.dumps(document).encode()
        return cls(status, body, "application/json", headers)

    @classmethod
    def text(cls, status: int, text: str) -> HttpResponse:
        return cls(status, (text + "\n").encode())


HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]
WebSocketHandler = Callable[[WebSocketRequest], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Listening:
    """What ``serve`` reports once its sockets listen (``port`` is the bound port)."""

    host: str
    port: int
    tls: bool
    listeners: list[trio.abc.Listener[Any]] = field(repr=False)


@dataclass(frozen=True, slots=True)
class _HttpRoute:
    handler: HttpHandler
    max_body: int


def normalize_path(target: str) -> str:
    """``/media/sales/?token=x`` → ``/media/sales``: routes ignore query and trailing slash."""
    path = urlsplit(target).path or "/"
    return path.rstrip("/") or "/"


class _Reply(Exception):
    """Internal: answer this request with ``status`` and close the connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class HttpFront:
    """Routes each connection to a WebSocket handler or an HTTP handler.

    Register routes before serving; ``serve`` (for ``nursery.start``) listens on TCP
    or TLS, ``handle_stream`` serves one already-open stream (tests use memory
    streams). ``close_idle()`` ends connections waiting for a request, for shutdown.
    WebSocket upgrades start with ``initial_message_size`` as their message limit (a
    handler may raise it to ``max_message_size``).
    """

    def __init__(
        self,
        *,
        max_message_size: int = 1 << 20,
        message_queue_size: int = 4,
        head_timeout: float = HEAD_TIMEOUT,
        keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT,
        handler_timeout: float = HANDLER_TIMEOUT,
        limits: ConnectionLimits | None = None,
        initial_message_size: int | None = None,
    ) -> None:
        self.max_message_size = max_message_size
        self.initial_message_size = initial_message_size or max_message_size
        self.gate = ConnectionGate(limits or ConnectionLimits())
        self.rate_limited_log = RateLimitedLog(logger)
        self.message_queue_size = message_queue_size
        self.head_timeout = head_timeout
        self.keep_alive_timeout = keep_alive_timeout
        self.handler_timeout = handler_timeout
        self._http: dict[tuple[str, str], _HttpRoute] = {}
        self._websocket: dict[str, WebSocketHandler] = {}
        self._default_websocket: WebSocketHandler | None = None
        self._waiting: set[trio.CancelScope] = set()
        self._closing = False
        self.counters: dict[str, int] = {
            "connections": 0,
            "http_requests": 0,
            "websocket_upgrades": 0,
            "not_found": 0,
            "bad_requests": 0,
            "handler_errors": 0,
            "refused_busy": 0,  # over the connection cap: 503
            "refused_per_source": 0,  # over the cap for one source address: 503
            "websocket_protocol_errors": 0,  # frame-level errors, closed with 1002/1007
            "accept_capacity_errors": 0,  # accept() failed for lack of descriptors
        }

    # --- routes -------------------------------------------------------------------

    def add_http_route(
        self,
        method: str,
        path: str,
        handler: HttpHandler,
        *,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        """Answer ``method path`` with ``handler``; bodies over ``max_body`` get 413."""
        key = (method.upper(), normalize_path(path))
        if key in self._http:
            raise ValueError(f"HTTP route {key[0]} {key[1]} is already registered")
        self._http[key] = _HttpRoute(handler, max_body)

    def add_websocket_route(self, path: str, handler: WebSocketHandler) -> None:
        """Hand upgrades to ``path`` to ``handler(request)`` (it accepts or rejects)."""
        path = normalize_path(path)
        if path in self._websocket:
            raise ValueError(f"WebSocket route {path} is already registered")
        self._websocket[path] = handler

    def set_default_websocket(self, handler: WebSocketHandler | None) -> None:
        """Upgrades to any path without its own route go here (None: refused with 404)."""
        self._default_websocket = handler

    @property
    def websocket_paths(self) -> list[str]:
        return list(self._websocket)

    def websocket_handler(self, target: str) -> WebSocketHandler | None:
        return self._websocket.get(normalize_path(target), self._default_websocket)

    # --- serving ------------------------------------------------------------------

    async def serve(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        *,
        handler_nursery: trio.Nursery | None = None,
        task_status: trio.TaskStatus[Listening] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` (TLS if ``ssl_context``) until cancelled."""
        tcp = await trio.open_tcp_listeners(port, host=host)
        bound = tcp[0].socket.getsockname()[1]
        listeners: list[trio.abc.Listener[Any]] = list(tcp)
        if ssl_context is not None:
            listeners = [
                trio.SSLListener(listener, ssl_context, https_compatible=True) for listener in tcp
            ]
        task_status.started(Listening(host, bound, ssl_context is not None, listeners))
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self.accept_loop, listener, handler_nursery or nursery)

    async def accept_loop(self, listener: trio.abc.Listener[Any], nursery: trio.Nursery) -> None:
        """Accept connections until cancelled. Running out of descriptors (EMFILE and its
        kin) is counted and logged once per interval, not a traceback per attempt, and
        accepting resumes after :data:`ACCEPT_PAUSE` (connections closing free some)."""
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                        raise
                    self.counters["accept_capacity_errors"] += 1
                    self.rate_limited_log.log(
                        logging.ERROR,
                        "cannot accept: out of resources",
                        error=exc.strerror or str(exc),
                        total=self.counters["accept_capacity_errors"],
                    )
                    await trio.sleep(ACCEPT_PAUSE)
                    continue
                nursery.start_soon(self.handle_stream, stream)

    def close_idle(self) -> None:
        """Shutdown: end every connection waiting for its next request, accept no more."""
        self._closing = True
        for scope in list(self._waiting):
            scope.cancel()

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection to its end. Never raises (except Cancelled)."""
        self.counters["connections"] += 1
        peer = _peer_address(stream)
        refused = self.gate.admit(peer)
        try:
            if refused is not None:
                await self._refuse(stream, peer, refused)
                return
            _PEER.set(peer)
            await self._serve_connection(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer went away (or TLS failed): nothing to answer
        except Exception:
            self.counters["handler_errors"] += 1
            logger.exception("connection failed")
        finally:
            if refused is None:
                self.gate.release(peer)
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await stream.aclose()

    async def _refuse(self, stream: trio.abc.Stream, peer: str | None, reason: str) -> None:
        """503 before reading anything: over a cap, the cheapest clear answer."""
        for name, value in self.gate.counters.items():
            self.counters[name] = value
        self.rate_limited_log.warning("connection refused", reason=reason, peer=peer)
        body = json.dumps({"error": reason}).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n"
            "server: voicegraph\r\n\r\n"
        )
        with trio.move_on_after(SEND_TIMEOUT):
            await stream.send_all(head.encode() + body)
        await _drain(stream, REFUSAL_DRAIN_TIMEOUT)

    async def _serve_connection(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        first = True
        while not self._closing:
            raw = bytearray(conn.trailing_data[0])  # this request's bytes, for a replay
            try:
                request = await self._receive_head(conn, stream, raw, first=first)
            except h11.RemoteProtocolError as exc:
                self.counters["bad_requests"] += 1
                await self._reply(conn, stream, exc.error_status_hint, str(exc), close=True)
                return
            if request is None:
                return
            first = False
            target = request.target.decode("latin-1")
            if _is_websocket_upgrade(request):
                await self._upgrade(conn, stream, target, bytes(raw))
                return
            if not await self._answer(conn, stream, request, target):
                return
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _receive_head(
        self, conn: h11.Connection, stream: trio.abc.Stream, raw: bytearray, *, first: bool
    ) -> h11.Request | None:
        """The next request head, or None when the client closed or kept quiet too long."""
        timeout = self.head_timeout if first else self.keep_alive_timeout
        with trio.move_on_after(timeout) as scope:
            self._waiting.add(scope)
            try:
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(RECEIVE_BYTES)
                        raw += data
                        conn.receive_data(data)
                    elif isinstance(event, h11.Request):
                        return event
                    else:  # ConnectionClosed
                        return None
            finally:
                self._waiting.discard(scope)
        if first and scope.cancelled_caught and not self._closing:
            logger.debug("no request head in time", extra={"timeout": timeout})
        return None

    async def _upgrade(
        self, conn: h11.Connection, stream: trio.abc.Stream, target: str, raw: bytes
    ) -> None:
        handler = self.websocket_handler(target)
        if handler is None:
            self.counters["not_found"] += 1
            self.rate_limited_log.log(
                logging.INFO, "no WebSocket route", path=normalize_path(target)[:200]
            )
            await self._reply(conn, stream, 404, "no bot on this path", close=True)
            return
        self.counters["websocket_upgrades"] += 1
        async with trio.open_nursery() as nursery:
            ws_stream = WebSocketStream(stream, raw, self._websocket_protocol_error)
            with trio.move_on_after(self.head_timeout) as scope:
                request = await open_server_websocket(
                    nursery,
                    ws_stream,
                    message_queue_size=self.message_queue_size,
                    max_message_size=self.initial_message_size,
                )
            if not scope.cancelled_caught:
                await handler(request)
            await ws_stream.send_owed_close_frame()  # if a broken frame ended it
            nursery.cancel_scope.cancel()

    def _websocket_protocol_error(self, error: CloseReason) -> None:
        self.counters["websocket_protocol_errors"] += 1
        self.rate_limited_log.warning(
            "WebSocket protocol error",
            code=error.code,
            reason=error.reason,
            total=self.counters["websocket_protocol_errors"],
        )

    async def _answer(
        self, conn: h11.Connection, stream: trio.abc.Stream, request: h11.Request, target: str
    ) -> bool:
        """Read the body, run the route, send the response; False: close the connection."""
        self.counters["http_requests"] += 1
        method = request.method.decode("ascii", "replace").upper()
        path = normalize_path(target)
        route = self._http.get((method, path))
        limit = route.max_body if route else DEFAULT_MAX_BODY
        try:
            body = await self._receive_body(conn, stream, request, limit)
        except _Reply as reply:
            self.counters["bad_requests"] += 1
            await self._reply(conn, stream, reply.status, str(reply), close=True)
            return False
        except h11.RemoteProtocolError as exc:
            self.counters["bad_requests"] += 1
            await self._reply(conn, stream, exc.error_status_hint, str(exc), close=True)
            return False
        if body is None:
            return False
        if route is None:
            allowed = sorted(m for (m, p) in self._http if p == path)
            if allowed:
                response = HttpResponse.json(
                    405, {"error": "method not allowed"}, (("allow", ", ".join(allowed)),)
                )
            else:
                self.counters["not_found"] += 1
                response = HttpResponse.json(404, {"error": "not found"})
            await self._send(conn, stream, response)
            return True
        headers = tuple(
            (name.decode("latin-1").lower(), value.decode("latin-1"))
            for name, value in request.headers
        )
        request = HttpRequest(method, target, headers, body, _PEER.get())
        response = await self._run_handler(route, request)
        await self._send(conn, stream, response)
        return True

    async def _run_handler(self, route: _HttpRoute, request: HttpRequest) -> HttpResponse:
        with trio.move_on_after(self.handler_timeout):
            try:
                return await route.handler(request)
            except Exception:
                self.counters["handler_errors"] += 1
                logger.exception("HTTP handler failed", extra={"path": request.path})
                return HttpResponse.json(500, {"error": "internal error"})
        self.counters["handler_errors"] += 1
        return HttpResponse.json(503, {"error": "handler timed out"})

    async def _receive_body(
        self, conn: h11.Connection, stream: trio.abc.Stream, request: h11.Request, limit: int
    ) -> bytes | None:
        declared = _content_length(request)
        if declared is not None and declared > limit:
            raise _Reply(413, f"body over {limit} bytes")
        body = bytearray()
        with trio.move_on_after(BODY_TIMEOUT):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(RECEIVE_BYTES))
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > limit:
                        raise _Reply(413, f"body over {limit} bytes")
                elif isinstance(event, h11.EndOfMessage):
                    return bytes(body)
                else:  # the client closed mid-body
                    return None
        raise _Reply(408, "request body not received in time")

    async def _reply(
        self,
        conn: h11.Connection,
        stream: trio.abc.Stream,
        status: int,
        reason: str,
        *,
        close: bool,
    ) -> None:
        """An error answer, if the connection can still take one, then a lingering close."""
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        await self._send(conn, stream, HttpResponse.json(status, {"error": reason}), close=close)
        if close:
            await _drain(stream)

    async def _send(
        self,
        conn: h11.Connection,
        stream: trio.abc.Stream,
        response: HttpResponse,
        *,
        close: bool = False,
    ) -> None:
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
            ("server", "voicegraph"),
            *response.headers,
        ]
        if close or self._closing:
            headers.append(("connection", "close"))
        try:
            phrase = http.HTTPStatus(response.status).phrase.encode()
        except ValueError:
            phrase = b""
        data = conn.send(h11.Response(status_code=response.status, headers=headers, reason=phrase))
        data += conn.send(h11.Data(data=response.body)) + conn.send(h11.EndOfMessage())
        with trio.move_on_after(SEND_TIMEOUT):
            await stream.send_all(data)


async def _drain(stream: trio.abc.Stream, within: float = DRAIN_TIMEOUT) -> None:
    """Read (and drop) what the client is still sending, briefly, before closing: closing
    with unread input makes TCP reset the connection, and the client may then never
    read the error answer already sent."""
    if isinstance(stream, trio.abc.HalfCloseableStream):
        with trio.move_on_after(within):
            await stream.send_eof()
    received = 0
    with trio.move_on_after(within):
        while received < DRAIN_BYTES:
            chunk = await stream.receive_some(RECEIVE_BYTES)
            if not chunk:
                break
            received += len(chunk)


def _peer_address(stream: trio.abc.Stream) -> str | None:
    """The remote IP address of a TCP (or TLS over TCP) stream; None for other streams."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if not isinstance(stream, trio.SocketStream):
        return None
    if stream.socket.family not in (trio.socket.AF_INET, trio.socket.AF_INET6):
        return None  # a Unix socket: this host
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:
        return None


def _is_websocket_upgrade(request: h11.Request) -> bool:
    for name, value in request.headers:
        if name == b"upgrade" and b"websocket" in value.lower():
            return True
    return False


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)  # h11 has already checked it is a number
    return None
