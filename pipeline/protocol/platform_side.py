"""The platform's side of the voice-stream protocol, sans-IO: what our call emulator
and client speak. The shared core and the bot's side are in :mod:`pipeline.protocol.bot_side`.

The emulator's side is strict, because it exists to catch our server's mistakes:
malformed JSON, a binary frame, a bad payload, a message out of order or for another
call all close with 1002 (1009 for size). Unknown events and a repeated
acknowledgement are skipped. A bare ``{"event":"connected"}`` acknowledgement is
accepted: the platform's own sample server sends one.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final

from pipeline.protocol.bot_side import (
    LocalProtocolError,
    PayloadFormat,
    _Core,
    _dumps,
    _media_prefix,
    _short,
    _timestamp_suffix,
    _with_closing,
)
from pipeline.protocol.events import (
    MAX_MESSAGE_SIZE,
    CloseCode,
    CloseConnection,
    Connected,
    ConnectedAck,
    Event,
    Greeting,
    Interrupt,
    Media,
    ProtocolViolation,
    SkipReason,
    SpeechChunk,
)
from pipeline.protocol.payload import (
    BufferJsonCache,
    PayloadError,
    decode_payload,
    encode_base64,
    encode_byte_list_json,
)

__all__ = ["CLIENT_TRANSITIONS", "ClientProtocol", "ClientState"]


class ClientState(enum.Enum):
    IDLE = "idle"
    AWAITING_ACK = "awaiting_ack"
    ACTIVE = "active"
    CLOSING = "closing"
    CLOSED = "closed"


_C = ClientState
CLIENT_TRANSITIONS: Final[Mapping[tuple[ClientState, type], ClientState]] = MappingProxyType(
    _with_closing(
        {
            (_C.IDLE, Connected): _C.AWAITING_ACK,
            (_C.AWAITING_ACK, Media): _C.AWAITING_ACK,
            (_C.AWAITING_ACK, ConnectedAck): _C.ACTIVE,
            (_C.ACTIVE, Media): _C.ACTIVE,
            (_C.ACTIVE, Greeting): _C.ACTIVE,
            (_C.ACTIVE, SpeechChunk): _C.ACTIVE,
            (_C.ACTIVE, Interrupt): _C.ACTIVE,
        },
        ClientState,
    )
)


# one per process: every call of a load test sends the same silence and the same turns
_RTP_BUFFER_JSON: Final = BufferJsonCache(head=12)

_PAYLOAD_ENCODERS: Final[dict[str, Callable[[bytes], str]]] = {
    "buffer": _RTP_BUFFER_JSON.encode,
    "base64": lambda data: '"' + encode_base64(data) + '"',
    "list": encode_byte_list_json,
}


class ClientProtocol(_Core):
    """The platform's side of one call, for the call emulator and tests."""

    _TRANSITIONS = CLIENT_TRANSITIONS
    _CLOSING = frozenset({ClientState.CLOSING, ClientState.CLOSED})
    _STRICT = frozenset(ClientState) - _CLOSING

    def __init__(
        self,
        call_id: str,
        mobile_no: str = "",
        *,
        extra: Mapping[str, Any] | None = None,
        max_message_size: int = MAX_MESSAGE_SIZE,
    ) -> None:
        super().__init__(ClientState.IDLE, max_message_size)
        if type(call_id) is not str or not call_id:
            raise ValueError(f"callId must be a non-empty string, not {call_id!r}")
        reserved = {"event", "callId", "mobileNo"} & set(extra or {})
        if reserved:
            raise ValueError(f"extra fields may not replace {sorted(reserved)}")
        self._call_id = call_id
        self.mobile_no = mobile_no
        self.extra = MappingProxyType(dict(extra or {}))
        self._media_prefix = _media_prefix(call_id)
        self._handlers = {
            "connected": self._on_ack,
            "greeting": self._on_greeting,
            "media": self._on_media,
            "interrupt": self._on_interrupt,
        }
        self._encoders = {
            Connected: self._encode_connected,
            Media: self._encode_media,
            CloseConnection: self._encode_close,
        }

    @property
    def call_id(self) -> str:
        return self._call_id

    def connect(self) -> str:
        """Register the call: ``{"event":"connected","callId":...,"mobileNo":...}``."""
        return self.send(Connected(self.call_id, self.mobile_no, self.extra))[0]

    def media(
        self,
        rtp_packet: bytes,
        timestamp: int | None = None,
        payload_format: PayloadFormat = "buffer",
    ) -> str | bytes:
        """One packet of caller audio, as a JSON ``media`` message or a binary frame."""
        if (self._state, Media) not in self._TRANSITIONS:
            raise LocalProtocolError(f"cannot send media in state {self._state}")
        message = self._media_message(rtp_packet, timestamp, payload_format)
        self._sent += 1
        return message

    def _media_message(
        self, packet: bytes, timestamp: int | None, payload_format: PayloadFormat
    ) -> str | bytes:
        if not packet:
            raise ValueError("a media packet is never empty")
        if payload_format == "binary":
            return bytes(packet)
        encode = _PAYLOAD_ENCODERS.get(payload_format)
        if encode is None:
            raise ValueError(f"unknown payload format {payload_format!r}")
        return self._media_prefix + encode(packet) + _timestamp_suffix(timestamp)

    def _encode_connected(self, event: Connected) -> list[str]:
        fields = {"event": "connected", "callId": event.call_id, "mobileNo": event.mobile_no}
        return [_dumps({**fields, **event.extra})]

    def _encode_media(self, event: Media) -> list[str]:
        return [self._media_message(event.payload, event.timestamp, "buffer")]  # type: ignore[list-item]

    # --- the bot's messages --------------------------------------------------------

    def _out_of_order(self, what: str) -> ProtocolViolation:
        return self._violate(CloseCode.PROTOCOL_ERROR, f"{what} in state {self._state.value}")

    def _payload(self, message: dict[str, Any]) -> bytes | ProtocolViolation:
        try:
            return decode_payload(message.get("payload"))
        except PayloadError as exc:
            return self._violate(CloseCode.PROTOCOL_ERROR, str(exc))

    def _on_ack(self, message: dict[str, Any]) -> Event:
        data = message.get("data", {})
        if type(data) is not dict:
            return self._violate(CloseCode.PROTOCOL_ERROR, f"ack with data {_short(data)}")
        call_id = data.get("callId", self._call_id)
        if call_id != self._call_id:
            return self._violate(CloseCode.PROTOCOL_ERROR, f"ack for callId {_short(call_id)}")
        if self._state is ClientState.ACTIVE:
            return self._skip(SkipReason.DUPLICATE_CONNECTED, "acknowledged again")
        if not self._advance(ConnectedAck):
            return self._out_of_order("connected ack")
        return ConnectedAck(self.call_id)

    def _on_greeting(self, message: dict[str, Any]) -> Event:
        if (self._state, Greeting) not in self._TRANSITIONS:
            return self._out_of_order("greeting")
        audio = self._payload(message)
        return audio if type(audio) is ProtocolViolation else Greeting(audio)

    def _on_media(self, message: dict[str, Any]) -> Event:
        if (self._state, SpeechChunk) not in self._TRANSITIONS:
            return self._out_of_order("media")
        wrong_call = self._check_call_id(message)
        if wrong_call is not None:
            return wrong_call
        wav = self._payload(message)
        if type(wav) is ProtocolViolation:
            return wav
        timestamp = message.get("timestamp")
        self._media += 1
        return SpeechChunk(self.call_id, wav, timestamp if type(timestamp) is int else None)

    def _on_interrupt(self, message: dict[str, Any]) -> Event:
        if (self._state, Interrupt) not in self._TRANSITIONS:
            return self._out_of_order("interrupt")
        return self._check_call_id(message) or Interrupt(self.call_id)
