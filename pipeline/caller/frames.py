"""Send a caller's packets as WebSocket frames without wsproto's per-frame work.

An emulated caller sends one small message every 20 ms, and a load test runs a
hundred callers in one process. Through ``WebSocketConnection.send_message`` each
frame costs an event object, wsproto's generic serializer, a ``getrandom`` system call
for its 4-byte mask and a slice-by-slice XOR: about a sixth of the caller's CPU.
:func:`masked_frame` builds the same RFC 6455 frame (FIN, text or binary opcode,
masked as a client must), taking masks from a pool filled by ``os.urandom`` a few
kilobytes at a time (still unpredictable, as §5.3 asks) and masking with one
big-integer XOR. :class:`FrameSender` writes it to the connection's stream under
the connection's own send lock, so it interleaves safely with trio-websocket's
own frames (pings, the close).

This reaches into trio-websocket (0.12): ``_stream``, ``_stream_lock``,
``_close_reason`` and ``_abort_web_socket``, as its ``_send`` uses them.
``tests/pipeline/test_caller_frames.py`` pins them and checks the frames with wsproto.
"""

from __future__ import annotations

import os
import struct

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

__all__ = ["FrameSender", "masked_frame"]

_TEXT = 0x81  # FIN + opcode 1
_BINARY = 0x82  # FIN + opcode 2
_MASK_BIT = 0x80
_POOL_MASKS = 1024


class _MaskPool:
    """Masking keys, 4 random bytes each, drawn from the OS a pool at a time."""

    __slots__ = ("_next", "_pool")

    def __init__(self) -> None:
        self._pool = b""
        self._next = 0

    def take(self) -> bytes:
        start = self._next
        if start >= len(self._pool):
            self._pool = os.urandom(4 * _POOL_MASKS)
            start = 0
        self._next = start + 4
        return self._pool[start : start + 4]


_MASKS = _MaskPool()


def masked_frame(message: str | bytes, mask: bytes | None = None) -> bytes:
    """One final, masked client frame carrying ``message`` (text for ``str``)."""
    if isinstance(message, str):
        first, payload = _TEXT, message.encode("utf-8")
    else:
        first, payload = _BINARY, bytes(message)
    key = _MASKS.take() if mask is None else mask
    length = len(payload)
    if length < 126:
        header = bytes((first, _MASK_BIT | length))
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, _MASK_BIT | 126, length)
    else:
        header = struct.pack("!BBQ", first, _MASK_BIT | 127, length)
    keystream = key * (length // 4 + 1)
    masked = int.from_bytes(payload, "little") ^ int.from_bytes(keystream[:length], "little")
    return header + key + masked.to_bytes(length, "little")


class FrameSender:
    """``send(message)``: what ``ws.send_message(message)`` does, for a client socket.

    On a plain TCP stream (``ws://``), when nothing else is sending, the frame is
    written straight to the socket (``os.write`` on its non-blocking descriptor): no
    lock round trip and no stream checkpoints, two fewer passes through the scheduler
    per packet. Whatever the socket does not take at once, or any error, goes the
    stream's way (``send_all`` under the lock), as does everything over TLS.
    """

    __slots__ = ("_socket", "_ws")

    def __init__(self, ws: WebSocketConnection) -> None:
        if not ws.is_client:
            raise ValueError("FrameSender masks its frames: client connections only")
        self._ws = ws
        stream = ws._stream
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None

    async def send(self, message: str | bytes) -> None:
        ws = self._ws
        if ws._close_reason:
            raise ConnectionClosed(ws._close_reason)
        frame = masked_frame(message)
        lock = ws._stream_lock
        # read each time, never kept: a closed socket's number is soon another socket's
        fd = -1 if self._socket is None else self._socket.fileno()
        if fd < 0 or lock.locked():
            async with lock:
                await self._send_all(frame)
            return
        lock.acquire_nowait()  # free, and no checkpoint since: nothing can come between
        try:
            try:
                sent = os.write(fd, frame)
            except OSError:  # would block, or broken: the stream's way says which
                sent = 0
            if sent < len(frame):
                await self._send_all(frame[sent:])
        finally:
            lock.release()

    async def _send_all(self, data: bytes) -> None:
        ws = self._ws
        try:
            await ws._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await ws._abort_web_socket()
            raise ConnectionClosed(ws._close_reason) from None
