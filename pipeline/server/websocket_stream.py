"""The byte stream under every server WebSocket, and the two things trio-websocket leaves out.

1. **Frame-level errors get their close frame.** When wsproto finds a broken frame (bad
   opcode, reserved bits, an unmasked client frame, invalid UTF-8 text, a bad close code)
   trio-websocket marks the socket closed with the right code (1002, or 1007 for bad
   UTF-8) but closes the TCP stream without sending any close frame, and the server saw
   an ordinary "closed by peer". RFC 6455 (7.1.7, 8.1) says to send the close frame
   first. This stream notices that case when trio-websocket closes it (the socket is
   marked closed while our wsproto connection is still open: nobody sent a close frame),
   sends the close frame, and reports the error (:func:`frame_error`, a callback).
2. **A message limit that can change.** An unregistered call gets a small limit; the
   protocol's 1 MB once ``connected`` is in (:func:`set_message_limit`).

Both reach into trio-websocket (0.12): the connection is built as ``wrap_server_stream``
builds it, around a wsproto connection we own, and the limit is its ``_max_message_size``.
``tests/pipeline/test_limits.py`` pins both, so an upgrade that moves them fails there.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable

import trio
from trio_websocket import CloseReason, WebSocketConnection, WebSocketRequest
from wsproto import ConnectionState, ConnectionType, WSConnection
from wsproto import events as ws_events
from wsproto.utilities import LocalProtocolError

from pipeline.protocol.events import CloseConnection

__all__ = ["WebSocketStream", "frame_error", "open_server_websocket", "set_message_limit"]

CLOSE_FRAME_TIMEOUT = 1.0
"""How long sending an owed close frame may take before the stream is closed anyway."""

_STREAMS: weakref.WeakKeyDictionary[WebSocketConnection, WebSocketStream] = (
    weakref.WeakKeyDictionary()
)


class WebSocketStream(trio.abc.Stream):
    """First gives back bytes already read (the request head, for the handshake), then
    the transport; on close, sends the close frame a frame-level error is owed."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        replay: bytes = b"",
        on_protocol_error: Callable[[CloseReason], None] | None = None,
    ) -> None:
        self.transport_stream = stream
        self._replay = replay
        self._on_protocol_error = on_protocol_error
        # weak: _STREAMS's key is the connection, and a value holding its own key strongly
        # would keep every connection (and its call) alive for ever
        self._connection: weakref.ref[WebSocketConnection] | None = None
        self._wsproto: WSConnection | None = None
        self.protocol_error: CloseReason | None = None

    def frame_error(self) -> CloseReason | None:
        """The close code and reason of a frame-level error found on this socket, if any."""
        if self.protocol_error is not None:
            return self.protocol_error
        connection = self._connection() if self._connection is not None else None
        if connection is None or self._wsproto is None:
            return None
        closed = connection.closed
        if closed is not None and self._wsproto.state is ConnectionState.OPEN:
            return closed  # closed by a parse failure: no close frame went either way
        return None

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._replay:
            size = len(self._replay) if max_bytes is None else max_bytes
            chunk, self._replay = self._replay[:size], self._replay[size:]
            await trio.lowlevel.checkpoint()
            return chunk
        return await self.transport_stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.send_owed_close_frame()
        await self.transport_stream.aclose()

    async def send_owed_close_frame(self) -> None:
        """If a frame-level error closed this socket and no close frame went out, send it
        (once, shielded and bounded: it is cleanup, and may run while being cancelled)."""
        error = self.frame_error() if self.protocol_error is None else None
        if error is None or self._wsproto is None:
            return
        self.protocol_error = error
        if self._on_protocol_error is not None:
            self._on_protocol_error(error)
        reason = CloseConnection(error.code, error.reason or "").reason  # fits in a frame
        try:
            data = self._wsproto.send(ws_events.CloseConnection(code=error.code, reason=reason))
        except LocalProtocolError:
            return
        with (
            trio.move_on_after(CLOSE_FRAME_TIMEOUT, shield=True),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await self.transport_stream.send_all(data)

    def _attach(self, connection: WebSocketConnection, protocol: WSConnection) -> None:
        self._connection = weakref.ref(connection)
        self._wsproto = protocol
        _STREAMS[connection] = self


async def open_server_websocket(
    nursery: trio.Nursery,
    stream: WebSocketStream,
    *,
    message_queue_size: int,
    max_message_size: int,
) -> WebSocketRequest:
    """``trio_websocket.wrap_server_stream``, around a wsproto connection this stream
    can see (to know whether a close frame went out)."""
    protocol = WSConnection(ConnectionType.SERVER)
    connection = WebSocketConnection(
        stream,
        protocol,
        message_queue_size=message_queue_size,
        max_message_size=max_message_size,
    )
    stream._attach(connection, protocol)
    nursery.start_soon(connection._reader_task)
    return await connection._get_request()


def frame_error(ws: WebSocketConnection) -> CloseReason | None:
    """The frame-level error (code 1002 or 1007, and wsproto's reason) that ended ``ws``,
    or None if it ended otherwise (or is open, or was not opened by this module)."""
    stream = _STREAMS.get(ws)
    return stream.frame_error() if stream is not None else None


def set_message_limit(ws: WebSocketConnection, size: int) -> None:
    """Make ``size`` bytes the largest message ``ws`` accepts from now on (1009 above)."""
    if not hasattr(ws, "_max_message_size"):
        raise RuntimeError("this trio-websocket keeps its message limit elsewhere")
    ws._max_message_size = size
