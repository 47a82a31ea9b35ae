"""The bot side of the voice-stream protocol over real WebSockets (trio-websocket).

One task per connection, one nursery per call: authentication, the 10 s
registration deadline, the 5 min inactivity deadline (one cancel scope whose
deadline moves with every message), the caller's packets handed to the bot
without ever blocking the socket, and a close code for every way a call ends:

=================================  ==========================================
how the call ends                  close code
=================================  ==========================================
the platform hangs up              (its own close; nothing to send)
the bot hangs up                   1000, or the code the bot chose
no message for 5 minutes           1000 "inactive"
no registration within 10 s        1008 "no registration"
wrong, missing or several API keys 1008 "authentication failed" (logged once per 10 s)
a protocol violation               1002 with the protocol's reason
a broken WebSocket frame           1002, or 1007 for invalid UTF-8 (counted)
a message over 1 MB                1009 (enforced by the WebSocket layer)
a message over 16 kB, unregistered 1009 (the 1 MB applies after ``connected``)
the bot or a stage raised          1011 "internal error"; other calls go on
a re-dial of a live callId         1008 "replaced by a new connection" (to the old one)
server shutdown (SIGINT/SIGTERM)   1001 "server going away" (every live connection)
a new call while draining          HTTP 503 before the upgrade (:mod:`.drain`)
=================================  ==========================================

A re-dial (a second connection registering a callId that is still live) replaces
the live call: the older connection is closed with 1008 "replaced by a new
connection", its bot is cancelled, and the new connection is acknowledged once that
bot has finished (at most :data:`REPLACE_WAIT`), so the two never run side by side.
Why replace rather than refuse: a platform re-dials after a network drop it noticed
before we did, and the old socket may be half-dead for minutes (until the 5 min
inactivity deadline or TCP gives up); refusing would leave the caller with a dead
line for that long. Why 1008 and not 1001: a client reads 1001 as "the server went
away, dial again", so if the older connection is in fact alive (two dialers sharing a
callId by mistake) it would re-dial and replace the newer one, forever; 1008 is a
policy close that clients (ours included) do not retry.

The server tracks each accepted connection as an object, never by its callId: ending
one connection never unregisters another, and shutdown closes every live connection,
registered or not, and every extra WebSocket route's (``/events``), with 1001.

The port also answers plain HTTP through :mod:`pipeline.server.http_front`: the platform's
call webhooks (``POST /callbacks`` by default) and ``GET /health`` (liveness; the call
count and routes only with the key, or from this host when no key is set). One server can
host several bots, one per WebSocket path (``bots={"/media/sales": ..., ...}``);
an upgrade to another path is refused with 404. A single ``bot`` answers any path.

Extra routes (register before ``serve``)::

    server.add_websocket_route("/events", handler)       # async (WebSocketRequest) -> None
    server.add_http_route("GET", "/stats", http_handler)  # async (HttpRequest) -> HttpResponse

A route registered this way wins over the single bot's catch-all.
"""

from __future__ import annotations

import logging
import ssl
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest

from pipeline.protocol.bot_side import ServerProtocol
from pipeline.protocol.events import (
    CLOSE_TIMEOUT,
    MAX_MESSAGE_SIZE,
    CloseCode,
    Connected,
    ProtocolViolation,
)
from pipeline.server.auth import credentials_from_request, is_authorized, is_trusted
from pipeline.server.call import Bot, Call
from pipeline.server.heap import freeze_start_up_heap
from pipeline.server.http_front import (
    HttpFront,
    HttpHandler,
    HttpRequest,
    HttpResponse,
    Listening,
    WebSocketHandler,
    normalize_path,
)
from pipeline.server.limits import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
    UNREGISTERED_MESSAGE_SIZE,
    ConnectionLimits,
)
from pipeline.server.logs import CallLogger, redact_number
from pipeline.server.media_reader import read_media
from pipeline.server.webhooks import WebhookReceiver
from pipeline.server.websocket_stream import frame_error, set_message_limit

__all__ = ["Listening", "ServerConfig", "VoiceStreamServer", "make_ssl_context"]

logger = logging.getLogger("voicegraph.server")

FINISHED_CALLS_KEPT = 1000
REPLACE_WAIT = 2.0
"""How long a re-dial waits for the replaced call's bot to finish before going on anyway
(cancelling a bot takes milliseconds; a model still busy in a thread, about a second)."""
REPLACED_REASON = "replaced by a new connection"
GOING_AWAY_REASON = "server going away"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    registration_timeout: float = 10.0
    inactivity_timeout: float = 300.0
    max_message_size: int = MAX_MESSAGE_SIZE
    redact: bool = False
    webhook_path: str = "/callbacks"
    webhook_header: str | None = None  # checked on every webhook when set, with its value
    webhook_value: str | None = None
    record_dir: Path | None = None  # platform events go to <record_dir>/<callId>/transcript.jsonl
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # of every kind; over it: 503
    max_connections_per_source: int = DEFAULT_MAX_CONNECTIONS_PER_SOURCE  # per address: 503
    unregistered_message_size: int = UNREGISTERED_MESSAGE_SIZE  # until ``connected``
    # process-wide and once: `voicegraph serve` turns it on; a program embedding the
    # server decides for itself (see pipeline.server.heap)
    freeze_start_up_heap: bool = False


def make_ssl_context(certfile: str, keyfile: str | None) -> ssl.SSLContext:
    """A server TLS context for WSS (TLS 1.2 or newer)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    return context


class _CallEnded(Exception):
    """Internal: the call must close with this code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _Connection:
    """One accepted call WebSocket, from its handshake to its close: what the server tracks.

    Identity, not the callId, is the key: two connections may carry the same callId
    for a moment (a re-dial), and each must be ended and unregistered on its own.
    """

    __slots__ = ("bot_done", "call", "closing", "scope", "ws")

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.call: Call | None = None  # once registered
        self.scope = trio.CancelScope()  # everything this connection runs
        self.closing: tuple[int, str] | None = None  # set by end(): the close to send
        self.bot_done = trio.Event()  # the bot no longer runs (or never will)

    def end(self, code: int, reason: str) -> None:
        """Stop this connection and close it with ``code`` (the first caller wins)."""
        if self.closing is None:
            self.closing = (code, reason)
        self.scope.cancel()


class VoiceStreamServer:
    """Accepts calls from the platform and runs a bot on each one.

    ``bot`` answers calls on any path; ``bots`` maps WebSocket paths to bots (one
    server, several numbers' bots). Start it with ``await nursery.start(server.serve)``;
    the started value is a :class:`~pipeline.server.http_front.Listening` (its ``port`` is the
    bound port). ``shutdown()`` stops accepting and closes every live call with 1001.
    """

    def __init__(
        self,
        config: ServerConfig,
        bot: Bot | None = None,
        *,
        bots: Mapping[str, Bot] | None = None,
        protocol_factory: Callable[[], ServerProtocol] = ServerProtocol,
    ) -> None:
        if (bot is None) == (not bots):
            raise ValueError("give either one bot (any path) or bots by path")
        self.config = config
        self.bot = bot
        self.bots: dict[str, Bot] = {normalize_path(path): b for path, b in (bots or {}).items()}
        self._protocol_factory = protocol_factory
        self.finished_calls: deque[dict[str, Any]] = deque(maxlen=FINISHED_CALLS_KEPT)
        self._connections: set[_Connection] = set()  # every live call socket, registered or not
        self._registered: dict[str, _Connection] = {}  # callId -> the connection holding it now
        self._route_scopes: set[trio.CancelScope] = set()  # live extra-route connections
        self._shutdown = trio.Event()
        # each finished call's summary (close code, reason, statistics): for metrics
        self.call_observers: list[Callable[[dict[str, Any]], None]] = []
        self.draining = False  # set by start_draining(): new calls get 503 (see .drain)
        self._connection_gone = trio.lowlevel.ParkingLot()  # woken when a call socket ends
        self.counters: dict[str, int] = {
            "connections": 0,
            "calls": 0,
            "replaced": 0,
            "auth_refused": 0,
            "registration_timeouts": 0,
            "protocol_errors": 0,
            "inactivity_timeouts": 0,
            "internal_errors": 0,
            "refused_draining": 0,
        }
        self.front = HttpFront(
            max_message_size=config.max_message_size,
            message_queue_size=4,
            limits=ConnectionLimits(config.max_connections, config.max_connections_per_source),
            initial_message_size=min(config.unregistered_message_size, config.max_message_size),
        )
        self._log = self.front.rate_limited_log  # for what an outsider can repeat at will
        self.webhooks = WebhookReceiver(
            header=config.webhook_header,
            value=config.webhook_value,
            record_dir=config.record_dir,
        )
        for method in ("POST", "PUT", "GET"):
            self.front.add_http_route(method, config.webhook_path, self.webhooks.handle)
        self.front.add_http_route("GET", "/health", self._health)
        for path, routed in self.bots.items():
            self.front.add_websocket_route(path, partial(self._handle_connection, bot=routed))
        if bot is not None:
            self.front.set_default_websocket(partial(self._handle_connection, bot=bot))

    # --- routes -------------------------------------------------------------------------

    def add_websocket_route(self, path: str, handler: WebSocketHandler) -> None:
        """Serve WebSocket upgrades to ``path`` with ``handler(request)``; call before ``serve``.

        The handler accepts (``await request.accept()``) or rejects the request and runs
        until its connection is done. At shutdown it is cancelled (and should close its
        socket with 1001 then). It must not raise: an exception is logged and only
        closes its own connection.
        """
        self.front.add_websocket_route(path, partial(self._handle_route, handler=handler))

    async def _handle_route(self, request: WebSocketRequest, *, handler: WebSocketHandler) -> None:
        with trio.CancelScope() as scope:
            self._route_scopes.add(scope)
            try:
                if self._shutdown.is_set():
                    scope.cancel()
                await handler(request)
            finally:
                self._route_scopes.discard(scope)

    @property
    def calls(self) -> dict[str, Call]:
        """The live registered calls by callId (a snapshot; after a re-dial, the new one)."""
        return {
            call_id: connection.call
            for call_id, connection in self._registered.items()
            if connection.call is not None
        }

    def add_http_route(self, method: str, path: str, handler: HttpHandler) -> None:
        """Answer ``method path`` with ``handler(request) -> HttpResponse``."""
        self.front.add_http_route(method, path, handler)

    async def _health(self, request: HttpRequest) -> HttpResponse:
        """Liveness for anyone; the call count and routes for the key's holder (or, with
        no key set, for this host): they tell an outsider what is worth probing."""
        offered = credentials_from_request(request.target, _raw_headers(request))
        status, code = ("draining", 503) if self.draining else ("ok", 200)
        if not is_trusted(self.config.api_key, offered, request.peer):
            return HttpResponse.json(code, {"status": status})
        return HttpResponse.json(
            code,
            {
                "status": status,
                "calls": len(self.calls),
                "bots": sorted(self.bots) if self.bots else ["*"],
            },
        )

    # --- serving ------------------------------------------------------------------------

    async def serve(
        self, *, task_status: trio.TaskStatus[Listening] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen until :meth:`shutdown`, then close every call with 1001 and return.

        Each distinct bot's ``serving()`` is entered once, before listening, so its
        models load at start-up and a bad one fails there.
        """
        async with AsyncExitStack() as stack:
            for bot in self._distinct_bots():
                await stack.enter_async_context(bot.serving())
            if self.config.freeze_start_up_heap:
                freeze_start_up_heap()
            await self._serve(task_status)

    def _distinct_bots(self) -> list[Bot]:
        bots = [self.bot] if self.bot is not None else []
        for bot in self.bots.values():
            if all(bot is not seen for seen in bots):
                bots.append(bot)
        return bots

    async def _serve(self, task_status: trio.TaskStatus[Listening]) -> None:
        ssl_context = None
        if self.config.certfile:
            ssl_context = make_ssl_context(self.config.certfile, self.config.keyfile)
        async with trio.open_nursery() as calls_nursery:
            async with trio.open_nursery() as listen_nursery:
                listening = await listen_nursery.start(
                    partial(
                        self.front.serve,
                        self.config.host,
                        self.config.port,
                        ssl_context,
                        handler_nursery=calls_nursery,
                    )
                )
                logger.info(
                    "listening",
                    extra={
                        "host": self.config.host,
                        "port": listening.port,
                        "tls": bool(ssl_context),
                        "bots": sorted(self.bots) or ["*"],
                        "webhooks": normalize_path(self.config.webhook_path),
                    },
                )
                if self.config.webhook_header is None:
                    logger.info("webhooks are accepted without a header check")
                task_status.started(listening)
                await self._shutdown.wait()
                listen_nursery.cancel_scope.cancel()
            self.front.close_idle()
            for connection in list(self._connections):
                connection.end(CloseCode.GOING_AWAY, GOING_AWAY_REASON)
            for scope in list(self._route_scopes):
                scope.cancel()
        logger.info(
            "stopped",
            extra={
                **self.counters,
                "http": self.front.counters,
                "webhooks": self.webhooks.counters,
                "log_lines_left_out": self._log.summary(),
            },
        )

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection over an already-open byte stream (any transport, or a
        test's in-memory stream), routed like a TCP connection."""
        await self.front.handle_stream(stream)

    def shutdown(self) -> None:
        self._shutdown.set()

    def start_draining(self) -> None:
        """Take no new calls (503 before the upgrade), ``/health`` 503; live calls go on."""
        self.draining = True

    async def wait_until_idle(self) -> None:
        """Return once no call socket is open (registered or not)."""
        while self._connections:
            await self._connection_gone.park()

    def _end_call(self, call_id: str, code: int, reason: str) -> None:
        """End the live call registered as ``call_id`` (if any) with ``code``."""
        connection = self._registered.get(call_id)
        if connection is not None:
            connection.end(code, reason)

    async def _handle_connection(self, request: WebSocketRequest, *, bot: Bot) -> None:
        """One connection, start to end. Never raises: one bad call must not touch others."""
        self.counters["connections"] += 1
        if self.draining:  # before the upgrade: a load balancer retries another front-end
            self.counters["refused_draining"] += 1
            headers = [(b"retry-after", b"1"), (b"content-type", b"application/json")]
            await request.reject(503, extra_headers=headers, body=b'{"error": "draining"}')
            return
        offered = credentials_from_request(request.path, request.headers)
        ws = await request.accept()
        if not is_authorized(self.config.api_key, offered):
            self.counters["auth_refused"] += 1
            self._log.warning(
                "authentication failed",
                path=request.path.split("?")[0][:200],
                total=self.counters["auth_refused"],
            )
            await _close(ws, CloseCode.POLICY_VIOLATION, "authentication failed")
            return
        connection = _Connection(ws)
        self._connections.add(connection)
        if self._shutdown.is_set():  # accepted while the server was stopping
            connection.end(CloseCode.GOING_AWAY, GOING_AWAY_REASON)
        code, reason = CloseCode.GOING_AWAY, GOING_AWAY_REASON  # if cancelled from outside
        try:
            with connection.scope:
                code, reason = await self._converse(connection, bot)
        finally:
            connection.bot_done.set()  # before the close, which a half-dead socket may stall
            self._connections.discard(connection)
            self._connection_gone.unpark_all()
            if connection.closing is not None:
                code, reason = connection.closing
            if connection.call is not None:
                self._call_finished(connection, connection.call, code, reason)
            await _close(ws, code, reason)

    async def _converse(self, connection: _Connection, bot: Bot) -> tuple[int, str]:
        """Registration, then the call; the close code and reason it ended with."""
        protocol = self._protocol_factory()
        try:
            connected = await self._await_registration(connection.ws, protocol)
        except _CallEnded as ended:
            return ended.code, ended.reason
        except ConnectionClosed:
            return self._closed_by_peer(connection.ws)
        set_message_limit(connection.ws, self.config.max_message_size)  # registered: 1 MB
        return await self._run_call(connection, protocol, connected, bot)

    def _closed_by_peer(self, ws: WebSocketConnection) -> tuple[int, str]:
        """How a connection that stopped delivering messages ended: the peer's close, or
        a broken frame (1002/1007, already answered with its close frame, counted)."""
        error = frame_error(ws)
        if error is None:
            return CloseCode.NORMAL, "closed by peer"
        self.counters["protocol_errors"] += 1
        return error.code, f"WebSocket protocol error: {error.reason or ''}"

    async def _await_registration(
        self, ws: WebSocketConnection, protocol: ServerProtocol
    ) -> Connected:
        with trio.move_on_after(self.config.registration_timeout):
            while True:
                message = await ws.get_message()
                for event in protocol.receive_message(message):
                    if isinstance(event, Connected):
                        return event
                    self._raise_if_violation(event)
        self.counters["registration_timeouts"] += 1
        raise _CallEnded(CloseCode.POLICY_VIOLATION, "no registration within the time limit")

    def _raise_if_violation(self, event: Any) -> None:
        if isinstance(event, ProtocolViolation):
            self.counters["protocol_errors"] += 1
            raise _CallEnded(event.code, event.reason)

    async def _run_call(
        self, connection: _Connection, protocol: ServerProtocol, connected: Connected, bot: Bot
    ) -> tuple[int, str]:
        ws = connection.ws
        call_id = connected.call_id
        mobile = redact_number(connected.mobile_no) if self.config.redact else connected.mobile_no
        log = CallLogger(logger, call_id, mobileNo=mobile)
        call = Call(
            call_id=call_id,
            mobile_no=connected.mobile_no,
            extra=connected.extra,
            send_text=ws.send_message,
            encode_speech=protocol.speech,
            encode_greeting=protocol.greeting,
            encode_interrupt=protocol.interrupt,
            log=log,
        )
        self.counters["calls"] += 1
        connection.call = call
        await self._claim(connection, call)
        try:
            await ws.send_message(protocol.acknowledge())
            log.info("call registered", extra={"path": ws.path.split("?")[0][:200]})
            return await self._supervise(ws, protocol, call, bot)
        except Exception as exc:
            if _only_connection_closed(exc):
                return self._closed_by_peer(ws)
            self.counters["internal_errors"] += 1
            log.exception("call failed")
            return CloseCode.INTERNAL_ERROR, "internal error"

    async def _claim(self, connection: _Connection, call: Call) -> None:
        """Register ``call`` under its callId, replacing a live call that has it (a re-dial):
        the older connection is closed with 1008, and its bot given :data:`REPLACE_WAIT`
        to finish so the two bots never overlap."""
        previous = self._registered.get(call.call_id)
        self._registered[call.call_id] = connection
        if previous is None:
            return
        self.counters["replaced"] += 1
        call.log.warning("callId re-dialled: the earlier connection is replaced")
        previous.end(CloseCode.POLICY_VIOLATION, REPLACED_REASON)
        with trio.move_on_after(REPLACE_WAIT) as waited:
            await previous.bot_done.wait()
        if waited.cancelled_caught:
            call.log.warning("the replaced call's bot is still finishing; going on")

    def _call_finished(self, connection: _Connection, call: Call, code: int, reason: str) -> None:
        if self._registered.get(call.call_id) is connection:  # not a re-dial's
            del self._registered[call.call_id]
        summary = {"code": int(code), "reason": reason, **call.statistics()}
        self.finished_calls.append(summary)
        call.log.info("call ended", extra=summary)
        for observer in self.call_observers:
            observer(summary)

    async def _supervise(
        self, ws: WebSocketConnection, protocol: ServerProtocol, call: Call, bot: Bot
    ) -> tuple[int, str]:
        """Run reader and bot side by side; whichever ends first ends the call."""
        outcome: tuple[int, str] = (CloseCode.NORMAL, "call ended")
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                nonlocal outcome
                try:
                    await self._read_media(ws, protocol, call)
                    outcome = self._closed_by_peer(ws)
                except _CallEnded as ended:
                    outcome = (ended.code, ended.reason)
                nursery.cancel_scope.cancel()

            async def run_bot() -> None:
                nonlocal outcome
                await bot.handle_call(call)
                outcome = (call.hang_up_code, call.hang_up_reason)
                nursery.cancel_scope.cancel()

            async def watch_hang_up() -> None:
                nonlocal outcome
                await call.wait_hung_up()
                outcome = (call.hang_up_code, call.hang_up_reason)
                nursery.cancel_scope.cancel()

            nursery.start_soon(read)
            nursery.start_soon(run_bot)
            nursery.start_soon(watch_hang_up)
        return outcome

    async def _read_media(
        self, ws: WebSocketConnection, protocol: ServerProtocol, call: Call
    ) -> None:
        """Socket → protocol → the call's packet channel (:mod:`.media_reader`); returns
        when the peer closes, raises :class:`_CallEnded` for a violation or inactivity."""
        ended = await read_media(ws, protocol, call, self.counters, self.config.inactivity_timeout)
        if ended is not None:
            raise _CallEnded(*ended)


def _raw_headers(request: HttpRequest) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in request.headers]


def _only_connection_closed(exc: BaseException) -> bool:
    """True if ``exc`` (or every leaf of an exception group) is the peer having gone."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_connection_closed(inner) for inner in exc.exceptions)
    return isinstance(exc, ConnectionClosed)


async def _close(ws: WebSocketConnection, code: int, reason: str) -> None:
    """Close within a bounded time, even while being cancelled."""
    with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
        await ws.aclose(code=int(code), reason=reason)
