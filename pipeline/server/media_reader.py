"""A registered call's messages, handled in the WebSocket's own reader task.

trio-websocket's reader task parses frames and puts each message into a memory
channel; ``get_message()`` takes it out in another task. For a call's media that is
one channel hop and one more task wake-up per 20 ms packet, for a consumer that never
waits (``Call.deliver_packet`` drops and counts instead). :func:`tap_messages` puts a
stand-in for the channel's sending end in the reader, so each message goes straight
to a handler, in order, in the reader task (messages already queued go first).
Closing still goes through the real channel, so ``get_message()`` still raises
``ConnectionClosed`` when the socket closes: :func:`read_media` waits on that, on a
protocol violation, or on the inactivity deadline.

This reaches into trio-websocket (0.12): the reader sends on ``_send_channel`` (read
afresh for every message, and closed through it), and ``get_message()`` reads
``_recv_channel``. ``tests/pipeline/test_media_reader.py`` pins both, so an upgrade
that moves them fails there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from pipeline.protocol.bot_side import ServerProtocol
from pipeline.protocol.events import CloseCode, Media, MessageSkipped, ProtocolViolation
from pipeline.server.call import Call

__all__ = ["read_media", "tap_messages"]


async def read_media(
    ws: WebSocketConnection,
    protocol: ServerProtocol,
    call: Call,
    counters: dict[str, int],
    inactivity_timeout: float,
) -> tuple[int, str] | None:
    """Feed ``call`` until the socket closes (None) or the call must end: the close code
    and reason of a protocol violation or of inactivity. A failure (a stage raising) is
    raised here. The inactivity deadline is not moved on every message (re-registering
    a Trio deadline 50 times a second per call is measurable at hundreds of calls):
    each message stamps the time, and when the deadline comes it is re-armed from the
    last stamp unless the call really has been quiet that long.
    """
    reader = _MediaReader(protocol, call, counters)
    closed = False
    try:
        with tap_messages(ws, reader.handle):
            while reader.ended is None and reader.failure is None:
                deadline = reader.last_message_at + inactivity_timeout
                if trio.current_time() >= deadline:
                    break
                with trio.CancelScope(deadline=deadline) as reader.wake:
                    while True:  # only the close comes this way (or a message that raced
                        reader.handle(await ws.get_message())  # the tap's install)
                reader.wake = None
    except ConnectionClosed:
        closed = True
    if reader.failure is not None:
        raise reader.failure
    if reader.ended is not None:
        return reader.ended
    call.end_of_media()
    if closed:
        return None
    counters["inactivity_timeouts"] += 1
    return CloseCode.NORMAL, f"inactive for {inactivity_timeout:g} s"


class _MediaReader:
    """A registered call's messages, handled one by one in the socket's reader task.

    It must not raise there: a protocol violation or a failure is kept, the waiting
    task woken (``wake``), and later messages are ignored, as if reading had stopped.
    """

    __slots__ = ("call", "counters", "ended", "failure", "last_message_at", "protocol", "wake")

    def __init__(self, protocol: ServerProtocol, call: Call, counters: dict[str, int]) -> None:
        self.protocol = protocol
        self.call = call
        self.counters = counters
        self.last_message_at = trio.current_time()
        self.ended: tuple[int, str] | None = None
        self.failure: Exception | None = None
        self.wake: trio.CancelScope | None = None

    def handle(self, message: str | bytes) -> None:
        if self.ended is not None or self.failure is not None:
            return
        call = self.call
        now = self.last_message_at = trio.current_time()
        call.stats.messages_received += 1
        try:
            for event in self.protocol.receive_message(message):
                if type(event) is Media:
                    call.deliver_packet(event.payload, now)
                elif isinstance(event, ProtocolViolation):
                    self.counters["protocol_errors"] += 1
                    self.ended = (event.code, event.reason)
                    break
                elif isinstance(event, MessageSkipped):
                    call.count_skip(event.reason.value)
        except Exception as exc:  # raised again in the call's task: 1011, like any failure
            self.failure = exc
        if (self.ended is not None or self.failure is not None) and self.wake is not None:
            self.wake.cancel()


class _Tap:
    """Stands where the reader task expects its channel's sending end."""

    __slots__ = ("_channel", "_handle")

    def __init__(self, channel: Any, handle: Callable[[str | bytes], None]) -> None:
        self._channel = channel
        self._handle = handle

    async def send(self, message: str | bytes) -> None:
        self._handle(message)  # no checkpoint: the reader's next receive is one

    async def aclose(self) -> None:
        await self._channel.aclose()

    def close(self) -> None:
        self._channel.close()


@contextmanager
def tap_messages(ws: WebSocketConnection, handle: Callable[[str | bytes], None]) -> Iterator[None]:
    """While the block runs, every message of ``ws`` goes to ``handle`` (which must not
    raise: it runs in the reader task) instead of to ``get_message()``; messages queued
    before go first. Afterwards messages queue for ``get_message()`` again."""
    channel = ws._send_channel
    while True:  # already queued (and a reader blocked on a full queue): first, in order
        try:
            message = ws._recv_channel.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            break
        handle(message)
    ws._send_channel = _Tap(channel, handle)  # type: ignore[assignment]
    try:
        yield
    finally:
        ws._send_channel = channel
