"""``/events``: conversation events and the operator's ``sendMessage`` over a WebSocket.

The wire form of :mod:`pipeline.bot.messages`, for dashboards and supervisors that are not
in the bot's process. Authentication is the calls' own (the same key, offered the same
ways). Messages are JSON objects with a ``type``:

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
    for a request that cannot be understood (the socket stays open).

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
from pipeline.protocol.events import CLOSE_TIMEOUT, CloseCode
from pipeline.server.auth import credentials_from_request, is_authorized

__all__ = ["MAX_PENDING_SENDS", "serve_events"]

MAX_PENDING_SENDS = 8
"""``sendMessage`` requests one socket may have in flight (each waits for speech)."""


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
    if not is_authorized(api_key, offered):
        await _close(ws, CloseCode.POLICY_VIOLATION, "authentication failed")
        return
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
        if not isinstance(request, dict):
            await self._error("a request is a JSON object")
            return
        handler = self._handlers.get(request.get("type"))  # type: ignore[arg-type]
        if handler is None:
            known = ", ".join(self._handlers)
            await self._error(f"unknown type {request.get('type')!r}; expected one of {known}")
            return
        await handler(request)

    def _channel_ids(self, request: dict[str, Any]) -> list[str] | None:
        ids = request.get("channelIds")
        if isinstance(ids, list) and all(isinstance(i, str) and i for i in ids):
            return ids
        return None

    async def _subscribe(self, request: dict[str, Any]) -> None:
        ids = self._channel_ids(request)
        if ids is None:
            await self._error("channelIds must be a list of non-empty strings")
            return
        self.events.update(None if "*" in ids else ids)
        await self._reply({"type": "subscribed", "channelIds": self._following()})

    async def _unsubscribe(self, request: dict[str, Any]) -> None:
        ids = self._channel_ids(request)
        if ids is None:
            await self._error("channelIds must be a list of non-empty strings")
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


def _result(request_id: Any, result: SendResult) -> dict[str, Any]:
    return {"type": "sendMessage.result", "requestId": request_id, **result.as_json()}


async def _close(ws: WebSocketConnection, code: int, reason: str) -> None:
    with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
        await ws.aclose(code=int(code), reason=reason)
