"""The fleet's shared event bus on Redis/Valkey (``voicegraph serve --bus redis://HOST:PORT``).

One :class:`~pipeline.bot.messages.ConversationBus` per worker stays the in-process bus;
:class:`RedisBus` is the :class:`~pipeline.bot.messages.FleetLink` that joins them:

- **events**: every local event is published, as its JSON wire form with the publishing
  worker's id, on one fleet channel ``PREFIX:events``; every worker subscribes to it and
  hands the others' events to its local subscribers (its own it skips: they were delivered
  locally already, so each subscriber sees each event once). One channel, not one per
  call: ``subscribe(["*"])``, what a dashboard asks for, would otherwise need a
  SUBSCRIBE per call on every worker; the per-call filter runs where it runs today, in
  :class:`~pipeline.bot.messages.Subscription`. Decoding is skipped while a worker has
  no subscriber.
- **the call directory** (:mod:`pipeline.bot.call_directory`), kept as channels open and
  close and refreshed by a heartbeat, so a killed worker's calls leave it within
  ``ttl_s``; ``GET /health/fleet`` shows every live worker of every host.
- **sendMessage routing** (:mod:`pipeline.bot.send_routing`) over per-worker inbox
  channels ``PREFIX:inbox:<holderId>``.

Nothing a call does waits for Redis: publishing and directory changes are queued (bounded;
what does not fit is counted in ``mirror_dropped`` / ``directory_dropped``) and sent by
this link's own tasks. A Redis that cannot be reached at start-up is a
:class:`BusUnavailable` (``serve`` exits 2 with one line); one lost later is logged once
and counted (``errors``) while the calls go on, and the client reconnects by itself (its
subscriptions too); the next heartbeat lists this worker's calls again.

The client is valkey-glide's asyncio/Trio client (its Trio support goes through anyio);
its own log is switched off (it writes to stdout, where ``serve`` prints its address) and
its failures are reported here instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import trio

from pipeline.bot.call_directory import CallDirectory, Holder, bus_errors
from pipeline.bot.config import ConfigError
from pipeline.bot.event_codec import event_from_json
from pipeline.bot.messages import ConversationBus, ConversationEvent, SendResult
from pipeline.bot.send_routing import DEFAULT_SEND_TIMEOUT_S, REQUEST, RESULT, SendRouter
from pipeline.runtime.errors import ServiceError
from pipeline.server.auth import credentials_from_request, is_trusted
from pipeline.server.http_front import HostedServer, HttpRequest, HttpResponse
from pipeline.server.workers import worker_index

if TYPE_CHECKING:
    from glide import GlideClient, PubSubMsg

__all__ = [
    "BusAddress",
    "BusUnavailable",
    "RedisBus",
    "fleet_health_route",
    "open_redis_bus",
    "serve_on_bus",
]

logger = logging.getLogger("voicegraph.bus")

TTL_S = 4.0  # a worker silent this long is gone, and its calls with it
BEATS_PER_TTL = 4  # heartbeats a worker may miss, less one, before it is taken for gone
MIN_TTL_S, MAX_TTL_S = 1.0, 3600.0
REQUEST_TIMEOUT_MS = 1000
CONNECT_TIMEOUT_MS = 2000
OUTBOX_SIZE = 1024
PUBLISH_BATCH = 256
DIRECTORY_QUEUE_SIZE = 1024
INBOX_SIZE = 4096
CLOSE_TIMEOUT_S = 2.0
TAKEN = "channelTaken"


class BusUnavailable(ServiceError):
    """The event bus (``--bus``) cannot be reached at start-up; the message says where."""


@dataclass(frozen=True, slots=True)
class BusAddress:
    """Where the bus is: ``redis://[:PASSWORD@]HOST[:PORT][/DB][?prefix=NAME&ttl=SECONDS]``
    (``rediss://`` for TLS; ``valkey://`` and ``valkeys://`` too). ``prefix`` keeps fleets
    sharing one Redis apart; ``ttl``: how long a silent worker stays listed."""

    host: str
    port: int = 6379
    db: int = 0
    password: str | None = None
    tls: bool = False
    prefix: str = "voicegraph"
    ttl_s: float = TTL_S

    @classmethod
    def parse(cls, url: str) -> BusAddress:
        """``ConfigError`` names what is wrong with ``url``."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "valkey", "valkeys"):
            raise ConfigError(f"--bus {url!r}: expected redis://HOST:PORT")
        try:
            port = parts.port or 6379
            db = int(parts.path.strip("/") or 0)
        except ValueError:
            raise ConfigError(f"--bus {url!r}: bad port or database number") from None
        if not parts.hostname:
            raise ConfigError(f"--bus {url!r}: no host")
        query = parse_qs(parts.query)
        prefix = query.get("prefix", ["voicegraph"])[-1]
        if not prefix or any(c.isspace() for c in prefix):
            raise ConfigError(f"--bus {url!r}: prefix must be a word")
        try:
            ttl_s = float(query.get("ttl", [TTL_S])[-1])
        except ValueError:
            ttl_s = 0.0
        if not MIN_TTL_S <= ttl_s <= MAX_TTL_S:
            raise ConfigError(f"--bus {url!r}: ttl must be {MIN_TTL_S:g} to {MAX_TTL_S:g} s")
        password = unquote(parts.password) if parts.password else None
        tls = parts.scheme in ("rediss", "valkeys")
        return cls(parts.hostname, port, db, password, tls, prefix, ttl_s)

    def __str__(self) -> str:  # the password never reaches a log
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.db}"

    def channel(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    def inbox_of(self, holder_id: str) -> str:
        return f"{self.prefix}:inbox:{holder_id}"


class RedisBus:
    """The link between one worker's :class:`ConversationBus` and the fleet's; made and
    run by :func:`open_redis_bus`."""

    def __init__(
        self,
        bus: ConversationBus,
        client: GlideClient,
        address: BusAddress,
        holder: Holder,
        *,
        calls: Callable[[], int] | None = None,
        ttl_s: float = TTL_S,
        heartbeat_s: float = TTL_S / BEATS_PER_TTL,
        send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S,
    ) -> None:
        self.bus = bus
        self.client = client
        self.address = address
        self.holder = holder
        self.events_channel = address.channel("events")
        self.inbox_channel = address.inbox_of(holder.id)
        self.directory = CallDirectory(client, holder, prefix=address.prefix, ttl_s=ttl_s)
        self.router = SendRouter(
            client, self.directory, bus, inbox_of=address.inbox_of, timeout_s=send_timeout_s
        )
        self.heartbeat_s = heartbeat_s
        self._calls = calls or (lambda: len(bus.live_channels()))
        self._inbox_send, self._inbox = trio.open_memory_channel[tuple[str, bytes]](INBOX_SIZE)
        self._trio_token = trio.lowlevel.current_trio_token()
        self._outbox_send, self._outbox = trio.open_memory_channel[bytes](OUTBOX_SIZE)
        self._ops_send, self._ops = trio.open_memory_channel[tuple[str, str]](DIRECTORY_QUEUE_SIZE)
        self._unreleased: set[str] = set()  # ended here, not yet out of the directory
        self.healthy = True
        self.mirrored = 0
        self.mirror_dropped = 0  # the outbox was full (Redis slow or gone)
        self.mirror_failed = 0  # Redis refused or timed out
        self.received = 0
        self.inbox_dropped = 0  # arrived faster than this worker could take them in
        self.malformed = 0
        self.directory_dropped = 0
        self.errors = 0
        self.recoveries = 0

    # --- FleetLink: called by the bus, never waits ---------------------------------------

    def mirror(self, event: ConversationEvent) -> None:
        document = {"origin": self.holder.id, "event": event.as_json()}
        try:
            self._outbox_send.send_nowait(json.dumps(document).encode())
        except trio.WouldBlock:
            self.mirror_dropped += 1

    def channel_opened(self, channel_id: str) -> None:
        self._unreleased.discard(channel_id)
        self._queue_directory("claim", channel_id)

    def channel_closed(self, channel_id: str) -> None:
        self._unreleased.add(channel_id)
        self._queue_directory("release", channel_id)

    def _queue_directory(self, operation: str, channel_id: str) -> None:
        try:
            self._ops_send.send_nowait((operation, channel_id))
        except trio.WouldBlock:  # the heartbeat lists the live ones; the rest expire
            self.directory_dropped += 1

    async def send_remote(
        self, channel_id: str, content: str, metadata: dict[str, Any], parent_id: str | None
    ) -> SendResult:
        return await self.router.ask(channel_id, content, metadata, parent_id)

    def on_message(self, message: PubSubMsg, _context: object) -> None:
        """The subscriber client's callback, once per message: queue it for
        :meth:`_dispatch` (it is called on the Trio thread; from another, it hops)."""

        def put() -> None:
            try:
                self._inbox_send.send_nowait((message.channel.decode(), message.message))
            except (trio.WouldBlock, trio.ClosedResourceError):
                self.inbox_dropped += 1

        if trio.lowlevel.in_trio_run():
            put()
        else:
            self._trio_token.run_sync_soon(put)

    # --- the link's tasks ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish, keep the directory, dispatch what arrives, beat; until cancelled."""
        async with trio.open_nursery() as nursery:
            await self._beat()  # listed before the first call can be routed here
            nursery.start_soon(self._publish_events)
            nursery.start_soon(self._write_directory)
            nursery.start_soon(self._dispatch, nursery)
            nursery.start_soon(self._heartbeat)
            task_status.started()

    async def _publish_events(self) -> None:
        """One PUBLISH per event, or what has queued meanwhile in one pipelined batch (one
        round trip): a burst costs round trips per batch, not per event."""
        from glide import Batch

        async for payload in self._outbox:
            payloads = [payload]
            while len(payloads) < PUBLISH_BATCH:
                try:
                    payloads.append(self._outbox.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                if len(payloads) == 1:
                    await self.client.publish(payload, self.events_channel)
                else:
                    batch = Batch(is_atomic=False)
                    for queued in payloads:
                        batch.publish(queued, self.events_channel)
                    await self.client.exec(batch, raise_on_error=True)
            except bus_errors() as exc:
                self.mirror_failed += len(payloads)
                self._failing("publish", exc)
            else:
                self.mirrored += len(payloads)
                self._working()

    async def _write_directory(self) -> None:
        async for operation, channel_id in self._ops:
            try:
                if operation == "claim":
                    previous = await self.directory.claim(channel_id)
                    if previous is not None:  # a re-dial moved the call here
                        notice = {"type": TAKEN, "channelId": channel_id}
                        await self.client.publish(
                            json.dumps(notice), self.address.inbox_of(previous)
                        )
                else:
                    await self.directory.release(channel_id)
                    self._unreleased.discard(channel_id)
            except bus_errors() as exc:
                self._failing("directory", exc)

    async def _heartbeat(self) -> None:
        while True:
            await trio.sleep(self.heartbeat_s)
            await self._beat()

    async def _beat(self) -> None:
        record = {"calls": self._calls(), "bus": self.statistics()}
        try:
            taken = await self.directory.heartbeat(self.bus.live_channels(), record)
        except bus_errors() as exc:
            self._failing("heartbeat", exc)
            return
        self._working()
        for channel_id in taken:
            self.bus.channel_taken(channel_id)

    async def _dispatch(self, nursery: trio.Nursery) -> None:
        async for channel, payload in self._inbox:
            self.received += 1
            if channel == self.events_channel and not self.bus.has_subscribers:
                continue  # nobody here to show it to
            try:
                document = json.loads(payload)
                if not isinstance(document, dict):
                    raise ValueError("not an object")
                if channel == self.events_channel:
                    if document.get("origin") != self.holder.id:
                        self.bus.deliver_remote(event_from_json(document.get("event")))
                else:
                    self._from_inbox(document, nursery)
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                self.malformed += 1
                if self.malformed == 1 or self.malformed % 1000 == 0:  # counted, not a flood
                    error = {"error": str(exc)[:200], "count": self.malformed}
                    logger.warning("malformed bus message dropped", extra=error)

    def _from_inbox(self, document: dict[str, Any], nursery: trio.Nursery) -> None:
        kind = document.get("type")
        if kind == REQUEST:
            self.router.request_received(document, nursery)
        elif kind == RESULT:
            self.router.result_received(document)
        elif kind == TAKEN and isinstance(document.get("channelId"), str):
            self.bus.channel_taken(document["channelId"])
        else:
            raise ValueError(f"unknown inbox message type {str(kind)[:40]!r}")

    def _failing(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        if self.healthy:
            self.healthy = False
            logger.warning(
                "event bus unreachable; calls go on, events are not shared",
                extra={"bus": str(self.address), "during": what, "error": str(exc)[:200]},
            )

    def _working(self) -> None:
        if not self.healthy:
            self.healthy = True
            self.recoveries += 1
            logger.info("event bus reachable again", extra={"bus": str(self.address)})

    async def close(self) -> None:
        """Leave the directory now (bounded: Redis may be gone) and disconnect."""
        with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
            try:
                calls = set(self.bus.live_channels()) | self._unreleased
                await self.directory.leave(sorted(calls))
            except bus_errors() as exc:
                logger.info("bus directory left to expire", extra={"error": str(exc)[:200]})
        with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
            await self.client.close()

    def statistics(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "mirrored": self.mirrored,
            "mirror_dropped": self.mirror_dropped,
            "mirror_failed": self.mirror_failed,
            "received": self.received,
            "inbox_dropped": self.inbox_dropped,
            "malformed": self.malformed,
            "directory_dropped": self.directory_dropped,
            "errors": self.errors,
            "recoveries": self.recoveries,
            "send": self.router.statistics(),
        }


# --- opening it -------------------------------------------------------------------------


async def _connect(
    address: BusAddress, subscriptions: dict[str, set[str]] | None, on_message: Any
) -> GlideClient:
    from glide import (
        AdvancedGlideClientConfiguration,
        BackoffStrategy,
        GlideClient,
        GlideClientConfiguration,
        NodeAddress,
        ServerCredentials,
    )

    pubsub = None
    if subscriptions is not None:
        modes = GlideClientConfiguration.PubSubChannelModes
        pubsub = GlideClientConfiguration.PubSubSubscriptions(
            {modes.Exact: subscriptions["exact"]}, on_message, None
        )
    config = GlideClientConfiguration(
        [NodeAddress(address.host, address.port)],
        use_tls=address.tls,
        credentials=ServerCredentials(address.password) if address.password else None,
        request_timeout=REQUEST_TIMEOUT_MS,
        reconnect_strategy=BackoffStrategy(num_of_retries=5, factor=50, exponent_base=2),
        database_id=address.db,
        client_name="voicegraph",
        pubsub_subscriptions=pubsub,
        advanced_config=AdvancedGlideClientConfiguration(connection_timeout=CONNECT_TIMEOUT_MS),
    )
    try:
        return await GlideClient.create(config)
    except bus_errors() as exc:
        raise BusUnavailable(f"cannot reach the event bus at {address}: {exc}") from None


def _quiet_client_log() -> None:
    from glide import Logger, LogLevel

    Logger.set_logger_config(LogLevel.OFF)


@asynccontextmanager
async def open_redis_bus(
    address: BusAddress | str,
    bus: ConversationBus,
    *,
    calls: Callable[[], int] | None = None,
    worker: int | None = None,
    ttl_s: float | None = None,
    heartbeat_s: float | None = None,
    send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S,
) -> AsyncIterator[RedisBus]:
    """Join ``bus`` to the fleet on ``address`` for the block (:class:`BusUnavailable` if
    Redis cannot be reached); ``calls`` counts this worker's calls for the fleet view
    (default: its live channels); ``ttl_s`` overrides the address's."""
    if not isinstance(address, BusAddress):
        address = BusAddress.parse(address)
    ttl_s = address.ttl_s if ttl_s is None else ttl_s
    heartbeat_s = ttl_s / BEATS_PER_TTL if heartbeat_s is None else heartbeat_s
    _quiet_client_log()
    client = await _connect(address, None, None)
    link = RedisBus(
        bus,
        client,
        address,
        Holder.this_process(worker),
        calls=calls,
        ttl_s=ttl_s,
        heartbeat_s=heartbeat_s,
        send_timeout_s=send_timeout_s,
    )
    channels = {link.events_channel, link.inbox_channel}
    try:
        subscriber = await _connect(address, {"exact": channels}, link.on_message)
    except BaseException:
        with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
            await client.close()
        raise
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(link.run)
            bus.attach(link)
            logger.info(
                "joined the event bus", extra={"bus": str(address), "holder": link.holder.id}
            )
            try:
                yield link
            finally:
                bus.attach(None)
                nursery.cancel_scope.cancel()
    finally:
        await link.close()
        with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
            await subscriber.close()


# --- serve's use of it ------------------------------------------------------------------


S = TypeVar("S", bound=HostedServer)


def serve_on_bus(
    serve: Callable[[S], Awaitable[None]], url: str, bus: ConversationBus
) -> Callable[[S], Awaitable[None]]:
    """``serve`` with ``bus`` joined to the fleet's on ``url`` and ``GET /health/fleet``
    answered (run the result under ``trio.run``). A bad ``url`` (``ConfigError``) or a
    Redis out of reach (:class:`BusUnavailable`) fails it before ``serve`` starts."""

    async def serve_with_bus(server: S) -> None:
        address = BusAddress.parse(url)
        calls = lambda: len(server.calls)  # noqa: E731 - every call, parrot's too
        async with open_redis_bus(address, bus, calls=calls, worker=worker_index()) as link:
            route = fleet_health_route(link, server.config.api_key)
            server.add_http_route("GET", "/health/fleet", route)
            await serve(server)

    return serve_with_bus


def fleet_health_route(
    link: RedisBus, api_key: str | None
) -> Callable[[HttpRequest], Awaitable[HttpResponse]]:
    """``GET /health/fleet``: every live worker on every host (from the directory), for the
    key's holder (or, with no key set, this host); others get ``{"status": "ok"}``."""

    async def health(request: HttpRequest) -> HttpResponse:
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in request.headers]
        offered = credentials_from_request(request.target, headers)
        if not is_trusted(api_key, offered, request.peer):
            return HttpResponse.json(200, {"status": "ok"})
        answered_by = link.directory.describe()
        try:
            with trio.fail_after(REQUEST_TIMEOUT_MS / 1000 * 3):
                fleet = await link.directory.fleet()
        except (*bus_errors(), trio.TooSlowError) as exc:
            error = str(exc)[:200] or "timed out"
            body = {"status": "bus unavailable", "error": error, "answered_by": answered_by}
            return HttpResponse.json(503, body)
        return HttpResponse.json(200, {**fleet, "answered_by": answered_by})

    return health
