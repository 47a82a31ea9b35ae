"""The message tap: a WebSocket's messages handled in its reader task, in order, and the
close still seen by ``get_message()``. Pins the trio-websocket internals it relies on."""

from __future__ import annotations

import inspect
from functools import partial

import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket,
    serve_websocket,
)

from pipeline.server.media_reader import tap_messages


class Collector:
    """Records what the tap hands over; ``reached(n)`` waits for the n-th message."""

    def __init__(self) -> None:
        self.messages: list[str | bytes] = []
        self._events: dict[int, trio.Event] = {}

    def __call__(self, message: str | bytes) -> None:
        self.messages.append(message)
        event = self._events.get(len(self.messages))
        if event is not None:
            event.set()

    async def reached(self, count: int) -> None:
        if len(self.messages) < count:
            await self._events.setdefault(count, trio.Event()).wait()


async def _serve(nursery: trio.Nursery, handler) -> int:
    server = await nursery.start(partial(serve_websocket, handler, "127.0.0.1", 0, None))
    return server.port


async def _queued(ws: WebSocketConnection, count: int) -> None:
    """Until ``count`` messages wait: in the channel, or in a reader blocked on it full."""
    with trio.fail_after(5):
        while True:
            stats = ws._recv_channel.statistics()
            if stats.current_buffer_used + stats.tasks_waiting_send >= count:
                return
            await trio.sleep(0.005)


async def test_queued_messages_go_first_then_each_message_in_order_then_the_close(nursery):
    handled = Collector()
    closed = trio.Event()
    tapped = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await _queued(ws, 2)  # one in the channel (it holds one), one in the reader
        with tap_messages(ws, handled):
            assert handled.messages == ["m0", "m1"]  # handed over at once, first
            tapped.set()
            try:
                await ws.get_message()
            except ConnectionClosed:
                closed.set()

    port = await _serve(nursery, handler)
    with trio.fail_after(10):
        async with open_websocket("127.0.0.1", port, "/", use_ssl=False) as client:
            await client.send_message("m0")
            await client.send_message("m1")
            await tapped.wait()
            for index in range(2, 6):
                await client.send_message(f"m{index}")
            await client.send_message(b"binary")
            await handled.reached(7)
        await closed.wait()
    assert handled.messages == ["m0", "m1", "m2", "m3", "m4", "m5", b"binary"]


async def test_after_the_block_messages_queue_for_get_message_again(nursery):
    handled = Collector()
    untapped = trio.Event()
    got: list[str | bytes] = []
    done = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        with tap_messages(ws, handled):
            await handled.reached(1)
        untapped.set()
        got.append(await ws.get_message())
        done.set()

    port = await _serve(nursery, handler)
    with trio.fail_after(10):
        async with open_websocket("127.0.0.1", port, "/", use_ssl=False) as client:
            await client.send_message("tapped")
            await untapped.wait()
            await client.send_message("queued")
            await done.wait()
    assert handled.messages == ["tapped"]
    assert got == ["queued"]


def test_the_trio_websocket_internals_it_uses_are_there():
    """An upgrade that renames these breaks the tap: fail here, not in production."""
    source = inspect.getsource(WebSocketConnection)
    assert "await self._send_channel.send(msg)" in source
    assert "async with self._send_channel:" in source
    assert "await self._send_channel.aclose()" in source
    assert "await self._recv_channel.receive()" in source
