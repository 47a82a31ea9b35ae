"""The caller's own frame writer: frames wsproto (the server's parser) reads back as sent."""

from __future__ import annotations

import inspect
from functools import partial

import pytest
import trio
import trio.testing
from trio_websocket import WebSocketConnection, WebSocketRequest, open_websocket, serve_websocket
from wsproto.frame_protocol import FrameProtocol, Opcode

from pipeline.caller.frames import FrameSender, masked_frame


def _server_reads(data: bytes) -> list[tuple[Opcode, str | bytes, bool]]:
    server = FrameProtocol(client=False, extensions=[])
    server.receive_bytes(data)
    return [(f.opcode, f.payload, f.message_finished) for f in server.received_frames()]


@pytest.mark.parametrize("length", [0, 1, 125, 126, 700, 65535, 65536, 200_000])
def test_text_frames_of_every_length_class_read_back(length: int) -> None:
    text = ('{"event":"media"}' * (length // 17 + 1))[:length]
    assert _server_reads(masked_frame(text)) == [(Opcode.TEXT, text, True)]


def test_binary_frames_read_back() -> None:
    data = bytes(range(256)) * 3
    assert _server_reads(masked_frame(data)) == [(Opcode.BINARY, data, True)]


def test_frames_are_masked_with_a_fresh_key_each_time() -> None:
    frames = [masked_frame("x" * 40) for _ in range(2000)]  # past one pool of keys
    keys = {frame[2:6] for frame in frames}
    assert len(keys) > 1990  # 32-bit random keys: a repeat or two at most
    assert all(frame[1] & 0x80 for frame in frames)  # the mask bit
    assert b"x" * 40 not in b"".join(frames)  # the payload is not sent in clear
    assert _server_reads(b"".join(frames)) == [(Opcode.TEXT, "x" * 40, True)] * 2000


def test_a_given_key_gives_rfc_6455_bytes() -> None:
    # RFC 6455 §5.7: a masked "Hello" from a client
    expected = bytes.fromhex("818537fa213d7f9f4d5158")
    assert masked_frame("Hello", mask=bytes.fromhex("37fa213d")) == expected


def test_the_trio_websocket_internals_it_uses_are_there() -> None:
    source = inspect.getsource(WebSocketConnection._send)
    assert "async with self._stream_lock:" in source
    assert "await self._stream.send_all(data)" in source
    assert "await self._abort_web_socket()" in source
    assert "_close_reason" in inspect.getsource(WebSocketConnection.send_message)


async def test_frame_sender_messages_arrive_in_order_also_while_another_send_holds_the_lock(
    nursery,
) -> None:
    received: list[str | bytes] = []
    all_in = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        while len(received) < 4:
            received.append(await ws.get_message())
        all_in.set()

    server = await nursery.start(partial(serve_websocket, handler, "127.0.0.1", 0, None))
    async with open_websocket("127.0.0.1", server.port, "/", use_ssl=False) as client:
        sender = FrameSender(client)
        await sender.send("first")  # straight to the socket
        await client._stream_lock.acquire()  # as if trio-websocket were sending a ping
        nursery.start_soon(sender.send, b"second")  # must wait for the lock
        await trio.testing.wait_all_tasks_blocked()
        client._stream_lock.release()
        await trio.testing.wait_all_tasks_blocked()
        await sender.send("third")
        await client.send_message("fourth")  # trio-websocket's own path, interleaved
        with trio.fail_after(5):
            await all_in.wait()
    assert received == ["first", b"second", "third", "fourth"]


def test_frame_sender_refuses_a_server_connection() -> None:
    class ServerSide:
        is_client = False

    with pytest.raises(ValueError, match="client connections only"):
        FrameSender(ServerSide())  # type: ignore[arg-type]
