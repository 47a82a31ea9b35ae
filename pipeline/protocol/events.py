"""Events of the voice-stream protocol: what a WebSocket message means, as a typed value.

The sans-IO core in :mod:`pipeline.protocol.bot_side` turns whole WebSocket messages into
these events and these events back into messages, so the transport, the call
logic and the tests all speak in values that cannot be misspelt, instead of in
JSON dictionaries.

Direction matters: :class:`Connected` and :class:`Media` travel from the telephony
platform (client) to our bot (server); :class:`ConnectedAck`, :class:`Greeting`,
:class:`SpeechChunk` and :class:`Interrupt` travel back. :class:`MessageSkipped`,
:class:`ProtocolViolation` and :class:`CallClosed` are verdicts of the protocol
core itself, and :class:`CloseConnection` is a side's decision to hang up: none of
these four is a JSON message, the last two become a WebSocket close frame.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "CLOSE_TIMEOUT",
    "MAX_CLOSE_REASON_BYTES",
    "MAX_MESSAGE_SIZE",
    "CallClosed",
    "CloseCode",
    "CloseConnection",
    "Connected",
    "ConnectedAck",
    "Event",
    "Greeting",
    "Interrupt",
    "Media",
    "MessageSkipped",
    "ProtocolViolation",
    "SkipReason",
    "SpeechChunk",
]

MAX_MESSAGE_SIZE = 1_048_576
"""The platform's limit on one WebSocket message, in bytes (the document's "1MB")."""

MAX_CLOSE_REASON_BYTES = 123
"""RFC 6455 leaves 123 bytes of a close frame for the UTF-8 reason."""

CLOSE_TIMEOUT = 5.0
"""Seconds a side waits for a connection to close cleanly (the WebSocket closing handshake,
a TLS close) before dropping it: cleanup is shielded, so it must be bounded."""


class CloseCode(enum.IntEnum):
    """The WebSocket close codes the protocol document names (plus 1009 for size)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011


class SkipReason(enum.Enum):
    """Why a message was dropped without closing the call; also the statistics keys."""

    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_EVENT = "missing_event"
    UNKNOWN_EVENT = "unknown_event"
    BAD_PAYLOAD = "bad_payload"
    DUPLICATE_CONNECTED = "duplicate_connected"
    AFTER_CLOSE = "after_close"


def _short_reason(reason: str) -> str:
    """Cut ``reason`` to what fits in a close frame, on a character boundary."""
    encoded = reason.encode("utf-8", "replace")
    if len(encoded) <= MAX_CLOSE_REASON_BYTES:
        return reason
    return encoded[: MAX_CLOSE_REASON_BYTES - 3].decode("utf-8", "ignore") + "..."


@dataclass(frozen=True, slots=True)
class Connected:
    """Client → server registration. ``extra`` keeps every other field (e.g. ``agent``)."""

    call_id: str
    mobile_no: str | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Media:
    """Client → server: one raw RTP packet of caller audio (parsed downstream)."""

    call_id: str
    payload: bytes
    timestamp: int | None = None


@dataclass(frozen=True, slots=True)
class ConnectedAck:
    """Server → client: registration confirmed."""

    call_id: str


@dataclass(frozen=True, slots=True)
class Greeting:
    """Server → client: a complete μ-law WAV to play when the call is answered."""

    audio: bytes


@dataclass(frozen=True, slots=True)
class SpeechChunk:
    """Server → client: one complete μ-law WAV of bot speech, sent as one message.

    ``timestamp`` is milliseconds since the epoch, supplied by the caller: the
    protocol core owns no clock. None only when a received message had none.
    """

    call_id: str
    wav: bytes
    timestamp: int | None = None


@dataclass(frozen=True, slots=True)
class Interrupt:
    """Server → client: stop playing the bot audio already sent (caller barged in)."""

    call_id: str


@dataclass(frozen=True, slots=True)
class MessageSkipped:
    """A message was dropped and counted; the call goes on. ``detail`` is for logs."""

    reason: SkipReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The peer broke the protocol: the transport must close with ``code``/``reason``.

    ``reason`` is cut to the 123 bytes a close frame can carry.
    """

    code: CloseCode
    reason: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", _short_reason(self.reason))


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """This side decided to end the call: the transport sends a close frame with these.

    ``reason`` is cut to the 123 bytes a close frame can carry.
    """

    code: int
    reason: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", _short_reason(self.reason))


@dataclass(frozen=True, slots=True)
class CallClosed:
    """The WebSocket is closed (by either side); nothing more will be sent or received."""

    code: int
    reason: str = ""


Event = (
    Connected
    | Media
    | ConnectedAck
    | Greeting
    | SpeechChunk
    | Interrupt
    | CloseConnection
    | MessageSkipped
    | ProtocolViolation
    | CallClosed
)
