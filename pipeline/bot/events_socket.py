"""``/events``: conversation events and the operator's ``sendMessage`` over a WebSocket.

The wire form of :mod:`pipeline.bot.messages`, for dashboards and supervisors that are not
in the bot's process. Authentication is the calls' own (the same key, offered the same
ways); with no key set, only connections from this host (loopback) are accepted, since
``sendMessage`` makes the bot say anything in a live call. Others are closed with 1008.
Messages are JSON objects with a ``type``:

client → server
    ``{"type": "subscribe", "channelIds": ["<callId>", ...]}`` (``["*"]``: every call;
    replaces the previous list), ``{"type": "unsubscribe", "channelIds": [...]}``,
    ``{"type": "sendMessage", "requestId": "r1", "channelId": "<callId>",
    "content": "...", "metadata": {...}, "parentId": "..."}``.
server → client
    ``{"type": "subscribed", "channelIds": [...]}``; every event of the followed
    channels (``message.new``, ``call.state``: :meth:`MessageNew.as_json`,
    :meth:`CallStateChange.as_json`); ``{"type": "sendMessage.result", "requestId":
    "r1", "status": {...}, "response": {...}}`` once the line was spoken (or refused);
    ``{"type": "events.dropped", "data": {"count": n, "total": t}}`` when this client
    read too slowly and lost events; ``{"type": "error", "error": {"message", "statusCode"}}``
    for a request that cannot be understood (the socket stays open): not JSON, nested
    deeper than Python's parser goes, not an object, ``type`` not a known string,
    ``channelIds`` not a list of at most :data:`MAX_CHANNEL_IDS` callIds, a
    ``requestId`` that is not a short string or an integer, ``metadata`` over
    :data:`MAX_METADATA_BYTES`. A message over 1 MB closes the socket with 1009.

With ``serve --bus`` (:mod:`pipeline.bot.redis_bus`) the socket of any worker or host
follows the calls of the whole fleet, and ``sendMessage`` reaches a call wherever it
runs; its result adds 503 (the bus or the call's worker cannot be reached) and 504 (that
worker did not answer in time) to the codes of
:meth:`~pipeline.bot.messages.ConversationBus.send_message`.

A client that reads slowly loses events (counted, reported), never slows a call. A
channel is a ``callId``, not a connection: a client following a call that the platform
re-dials sees ``call.state`` ``disconnected`` and then ``connected`` again, and keeps
following it. At server shutdown the socket is closed with 1001.
"""

from __future__ import annotations

import json
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest

from pipeline.bot.messages import ConversationBus, SendResult, Subscription
from pipeline.protocol.events import CLOSE_TIMEOUT, MAX_MESSAGE_SIZE, CloseCode
from pipeline.protocol.identifiers import call_id_problem, text_field_problem
from pipeline.server.auth import credentials_from_request, is_trusted
from pipeline.server.http_front import current_peer
from pipeline.server.websocket_stream import set_message_limit

__all__ = ["MAX_CHANNEL_IDS", "MAX_METADATA_BYTES", "MAX_PENDING_SENDS", "serve_events"]

MAX_PENDING_SENDS = 8
"""``sendMessage`` requests one socket may have in flight (each waits for speech)."""

MAX_CHANNEL_IDS = 100
"""Channels one ``subscribe`` may name (``["*"]`` follows every call)."""

MAX_METADATA_BYTES = 4096
"""A ``sendMessage``'s metadata, as JSON: it travels with the message to every follower."""


async def serve_events(
    request: WebSocketRequest, bus: ConversationBus, api_key: str | None
) -> None:
    """Serve one ``/events`` connection until the client leaves. Never raises on the
    client's behalf: bad requests are answered with an ``error`` message."""
    offered = credentials_from_request(request.path, request.headers)
    try:
        ws = await request.accept()
    except ConnectionClosed:
        return  # gone before the handshake finished
    if not is_trusted(api_key, offered, current_peer()):
        await _close(ws, CloseCode.POLICY_VIOLATION, "authentication failed")
        return
    set_message_limit(ws, MAX_MESSAGE_SIZE)  # the server may start sockets lower
    code, reason = CloseCode.NORMAL, "bye"
    try:
        with bus.subscribe([]) as subscription:
            await _EventsSession(ws, bus, subscription).run()
    except BaseException:
        code, reason = CloseCode.GOING_AWAY, "server going away"
        raise
    finally:
        await _close(ws, code, reason)


class _EventsSession:
    def __init__(self, ws: WebSocketConnection, bus: ConversationBus, events: Subscription):
        self.ws = ws
        self.bus = bus
        self.events = events
        self.pending_sends = 0
        self.dropped_reported = 0
        self._handlers = {
            "subscribe": self._subscribe,
            "unsubscribe": self._unsubscribe,
            "sendMessage": self._send_message,
        }

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._forward)
            try:
                while True:
                    await self._handle(await self.ws.get_message())
            except ConnectionClosed:
                pass
            nursery.cancel_scope.cancel()

    async def _reply(self, message: dict[str, Any]) -> None:
        try:
            await self.ws.send_message(json.dumps(message))
        except ConnectionClosed:
            self._nursery.cancel_scope.cancel()

    async def _forward(self) -> None:
        async for event in self.events:
            if self.events.dropped > self.dropped_reported:
                count = self.events.dropped - self.dropped_reported
                self.dropped_reported = self.events.dropped
                notice = {"count": count, "total": self.events.dropped}
                await self._reply({"type": "events.dropped", "data": notice})
            await self._reply(event.as_json())

    async def _error(self, message: str, status_code: int = 400) -> None:
        error = {"message": message, "statusCode": status_code}
        await self._reply({"type": "error", "error": error})

    async def _handle(self, raw: str | bytes) -> None:
        try:
            request = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            await self._error("not JSON")
            return
        except RecursionError:
            await self._error("JSON nested too deeply")
            return
        if not isinstance(request, dict):
            await self._error("a request is a JSON object")
            return
        kind = request.get("type")
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            known = ", ".join(self._handlers)
            shown = kind[:40] if isinstance(kind, str) else type(kind).__name__
            await self._error(f"unknown type {shown!r}; expected one of {known}")
            return
        await handler(request)

    def _channel_ids(self, request: dict[str, Any]) -> list[str] | None:
        ids = request.get("channelIds")
        if (
            isinstance(ids, list)
            and len(ids) <= MAX_CHANNEL_IDS
            and all(i == "*" or call_id_problem(i) is None for i in ids)
        ):
            return ids
        return None

    async def _subscribe(self, request: dict[str, Any]) -> None:
        ids = self._channel_ids(request)
        if ids is None:
            await self._error(_BAD_CHANNEL_IDS)
            return
        self.events.update(None if "*" in ids else ids)
        await self._reply({"type": "subscribed", "channelIds": self._following()})

    async def _unsubscribe(self, request: dict[str, Any]) -> None:
        ids = self._channel_ids(request)
        if ids is None:
            await self._error(_BAD_CHANNEL_IDS)
            return
        current = self.events.channel_ids
        if "*" in ids:
            self.events.update([])
        elif current is not None:
            self.events.update(current - set(ids))
        await self._reply({"type": "subscribed", "channelIds": self._following()})

    def _following(self) -> list[str]:
        ids = self.events.channel_ids
        return ["*"] if ids is None else sorted(ids)

    async def _send_message(self, request: dict[str, Any]) -> None:
        request_id = request.get("requestId")
        problem = _send_problem(request)
        if problem is not None:
            await self._error(problem)
            return
        if self.pending_sends >= MAX_PENDING_SENDS:
            result = SendResult.failed(429, f"more than {MAX_PENDING_SENDS} sends in flight")
            await self._reply(_result(request_id, result))
            return
        self.pending_sends += 1
        self._nursery.start_soon(self._speak, request_id, request)

    async def _speak(self, request_id: Any, request: dict[str, Any]) -> None:
        try:
            result = await self.bus.send_message(
                request.get("channelId"),  # type: ignore[arg-type]  (checked there)
                request.get("content"),  # type: ignore[arg-type]
                request.get("metadata"),
                parent_id=request.get("parentId"),
            )
        finally:
            self.pending_sends -= 1
        await self._reply(_result(request_id, result))


_BAD_CHANNEL_IDS = f"channelIds must be a list of at most {MAX_CHANNEL_IDS} callIds"


def _send_problem(request: dict[str, Any]) -> str | None:
    """What bounds a ``sendMessage`` breaks before it reaches the bus (None: none); the
    bus itself answers a bad channel, content or metadata type in the chat shape."""
    request_id = request.get("requestId")
    if request_id is not None and type(request_id) is not int:
        problem = text_field_problem(request_id, "requestId")
        if problem is not None:
            return problem
    channel_id = request.get("channelId")
    if isinstance(channel_id, str) and call_id_problem(channel_id) is not None:
        return f"channelId: {call_id_problem(channel_id)}"
    parent_id = request.get("parentId")
    if parent_id is not None and text_field_problem(parent_id, "parentId") is not None:
        return text_field_problem(parent_id, "parentId")
    metadata = request.get("metadata")
    if isinstance(metadata, dict):
        try:
            size = len(json.dumps(metadata))
        except (ValueError, RecursionError):
            size = MAX_METADATA_BYTES + 1
        if size > MAX_METADATA_BYTES:
            return f"metadata over {MAX_METADATA_BYTES} bytes of JSON"
    return None


def _result(request_id: Any, result: SendResult) -> dict[str, Any]:
    return {"type": "sendMessage.result", "requestId": request_id, **result.as_json()}


async def _close(ws: WebSocketConnection, code: int, reason: str) -> None:
    with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
        await ws.aclose(code=int(code), reason=reason)
