"""The voice-stream protocol as a sans-IO core: whole WebSocket messages in, events out.

No sockets, no Trio, no clock. :class:`ServerProtocol` (our bot) and
:class:`~pipeline.protocol.platform_side.ClientProtocol` (the platform, as our emulator
plays it) turn a text or binary message into typed events (:mod:`pipeline.protocol.events`)
and events back into messages. The transport owns the socket, the timers (10 s registration, 5 min
inactivity) and the close frame; this core owns what every message means. Which
event may happen in which state is one table per role (``SERVER_TRANSITIONS`` here,
``CLIENT_TRANSITIONS`` in :mod:`pipeline.protocol.platform_side`). Our own out-of-order sends raise
:class:`LocalProtocolError`; the peer's input never raises.

Bad input from the platform. *Skip* returns a :class:`~pipeline.protocol.events.MessageSkipped`
and counts it under its key in ``statistics()``; *close* returns a
:class:`~pipeline.protocol.events.ProtocolViolation` whose code the transport closes with,
after which every message is skipped. Before registration a peer that does not speak
the protocol is turned away; after it, one bad packet costs 20 ms of audio (the
jitter buffer conceals it), not the call; anything that mixes calls ends the call.

| input (bot side)                                        | outcome                              |
|---------------------------------------------------------|--------------------------------------|
| message over 1,048,576 bytes (text counted as UTF-8)    | close 1009                           |
| malformed JSON, before / after ``connected``            | close 1002 / skip ``malformed_json`` |
| JSON not an object, before / after ``connected``        | close 1002 / skip ``not_an_object``  |
| no string ``event``, before / after ``connected``       | close 1002 / skip ``missing_event``  |
| unknown ``event`` name (forward compatibility)          | skip ``unknown_event``               |
| ``connected`` with ``callId`` not a non-empty string    | close 1002                           |
| ``connected`` with ``mobileNo`` not a string or integer | close 1002                           |
| ``callId`` over 128 or ``mobileNo`` over 32 characters  | close 1002                           |
| ``callId`` not printable ASCII; ``mobileNo`` not digits | close 1002                           |
| ``connected`` again, same ``callId``                    | skip ``duplicate_connected``         |
| ``connected`` again, another ``callId``                 | close 1002                           |
| ``media`` (JSON or binary frame) before ``connected``   | close 1002                           |
| ``media`` whose ``callId`` is not the registered one    | close 1002                           |
| ``media`` without ``callId``                            | accepted: one socket, one call       |
| ``media`` payload of unknown shape, invalid or empty    | skip ``bad_payload``                 |
| empty binary frame                                      | skip ``bad_payload``                 |
| ``media`` ``timestamp`` missing or not an integer       | accepted, ``timestamp=None``         |
| payload that is not RTP                                 | accepted (see below)                 |
| any message after a close (ours, or a violation)        | skip ``after_close``                 |

No RTP check here: :class:`stages.rtp.RtpDepacketizer` parses every packet anyway,
counts the malformed ones with a reason and is the one owner of what valid RTP is;
a second check would cost the hot path and could disagree with it.

JSON is parsed by ``orjson`` when it is installed (about five times faster on a
Buffer payload) and by :mod:`json` when it is not or when orjson refuses a message,
so what is accepted is what :func:`json.loads` accepts. One difference remains:
orjson reads integers beyond 64 bits as floats.
"""

from __future__ import annotations

import enum
import itertools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Final, Literal

from pipeline.protocol.events import (
    MAX_MESSAGE_SIZE,
    CallClosed,
    CloseCode,
    CloseConnection,
    Connected,
    ConnectedAck,
    Event,
    Greeting,
    Interrupt,
    Media,
    MessageSkipped,
    ProtocolViolation,
    SkipReason,
    SpeechChunk,
)
from pipeline.protocol.identifiers import call_id_problem, mobile_no_problem
from pipeline.protocol.payload import (
    MAX_CHARS_PER_BYTE,
    PayloadError,
    decode_payload,
    encode_buffer_json,
    max_buffer_json_size,
)
from pipeline.runtime.errors import ProtocolError
from pipeline.runtime.frames import TELEPHONE_RATE
from stages.wav import WAV_HEADER_SIZE, WAVE_FORMAT_MULAW, WavError, decode_wav, encode_mulaw_wav

try:
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - depends on the environment
    _fast_loads = None

__all__ = [
    "SERVER_TRANSITIONS",
    "LocalProtocolError",
    "MessageTooBig",
    "PayloadFormat",
    "ProtocolStatistics",
    "ServerProtocol",
    "ServerState",
]

PayloadFormat = Literal["buffer", "base64", "list", "binary"]


class LocalProtocolError(ProtocolError, RuntimeError):
    """Our own code sent an event the protocol does not allow in the current state."""


class MessageTooBig(ProtocolError, ValueError):
    """An outgoing message would exceed the 1 MB limit and cannot be split."""


class ServerState(enum.Enum):
    AWAITING_REGISTRATION = "awaiting_registration"
    REGISTERED = "registered"  # ``connected`` received, acknowledgement not yet sent
    ACTIVE = "active"
    CLOSING = "closing"  # a close was decided; the transport is closing the socket
    CLOSED = "closed"


def _with_closing(table: dict[tuple[Any, type], Any], states: type[enum.Enum]) -> dict:
    """Add the transitions every role shares: any open state may close; anything may end."""
    closing, closed = states["CLOSING"], states["CLOSED"]
    for state in states:
        table[(state, CallClosed)] = closed
        if state is closed:
            table[(state, CloseConnection)] = closed
        else:
            table[(state, CloseConnection)] = closing
            if state is not closing:
                table[(state, ProtocolViolation)] = closing
    return table


_S = ServerState
SERVER_TRANSITIONS: Final[Mapping[tuple[ServerState, type], ServerState]] = MappingProxyType(
    _with_closing(
        {
            (_S.AWAITING_REGISTRATION, Connected): _S.REGISTERED,
            (_S.REGISTERED, Media): _S.REGISTERED,  # the platform may stream before our ack
            (_S.REGISTERED, ConnectedAck): _S.ACTIVE,
            (_S.ACTIVE, Media): _S.ACTIVE,
            (_S.ACTIVE, Greeting): _S.ACTIVE,
            (_S.ACTIVE, SpeechChunk): _S.ACTIVE,
            (_S.ACTIVE, Interrupt): _S.ACTIVE,
        },
        ServerState,
    )
)


@dataclass(frozen=True, slots=True)
class ProtocolStatistics:
    """Counters of one connection, for logs and the call summary; ``skipped`` by reason."""

    state: str
    messages_received: int
    media_received: int
    messages_sent: int
    skipped: Mapping[str, int]
    close_code: int | None

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


def _loads(text: str) -> Any:
    """:func:`json.loads` semantics, at orjson's speed where orjson agrees."""
    if _fast_loads is not None:
        try:
            return _fast_loads(text)
        except ValueError:
            pass  # let json decide: it accepts NaN, big integers, lone surrogates
    return json.loads(text)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_Handler = Callable[[dict[str, Any]], Event]


class _Core:
    """What both roles share: size limit, JSON, dispatch by event name, skip/close, stats."""

    _TRANSITIONS: ClassVar[Mapping[tuple[Any, type], Any]]
    _CLOSING: ClassVar[frozenset[Any]]
    _STRICT: ClassVar[frozenset[Any]]  # states where a malformed message closes the call

    def __init__(self, initial: enum.Enum, max_message_size: int) -> None:
        self._state: Any = initial
        self._limit = max_message_size
        self._quarter_limit = max_message_size // MAX_CHARS_PER_BYTE
        self._call_id: str | None = None
        self._received = 0
        self._media = 0
        self._sent = 0
        self._close_code: int | None = None
        self._skipped = dict.fromkeys(SkipReason, 0)
        self._handlers: dict[str, _Handler] = {}
        self._encoders: dict[type, Callable[[Any], list[str]]] = {}

    @property
    def state(self) -> Any:
        return self._state

    @property
    def call_id(self) -> str | None:
        return self._call_id

    # --- receiving ---------------------------------------------------------------

    def receive_message(self, message: str | bytes) -> list[Event]:
        """The events one whole WebSocket message means (a ``str`` is a text frame)."""
        self._received += 1
        if self._state in self._CLOSING:
            return [self._skip(SkipReason.AFTER_CLOSE, "message after the call was closed")]
        if type(message) is str:
            return [self._receive_text(message)]
        if isinstance(message, (bytes, bytearray, memoryview)):
            if len(message) > self._limit:
                return [self._too_big("binary", len(message))]
            return [self._receive_binary(bytes(message))]
        raise TypeError(f"a WebSocket message is str or bytes, not {type(message).__name__}")

    def receive_close(self, code: int, reason: str = "") -> list[Event]:
        """The WebSocket closed (the peer's close frame, or ours acknowledged)."""
        self._advance(CallClosed)
        if self._close_code is None:
            self._close_code = code
        return [CallClosed(code, reason)]

    def _receive_text(self, text: str) -> Event:
        size = len(text)
        if size > self._quarter_limit and not text.isascii():
            size = len(text.encode("utf-8", "surrogatepass"))
        if size > self._limit:
            return self._too_big("text", size)
        try:
            message = _loads(text)
        except (ValueError, RecursionError) as exc:
            return self._malformed(SkipReason.MALFORMED_JSON, f"malformed JSON: {exc}")
        if type(message) is not dict:
            what = type(message).__name__
            return self._malformed(SkipReason.NOT_AN_OBJECT, f"JSON {what} is not an object")
        name = message.get("event")
        handler = self._handlers.get(name) if type(name) is str else None
        if handler is not None:
            return handler(message)
        if type(name) is str:
            return self._skip(SkipReason.UNKNOWN_EVENT, f"unknown event {_short(name)}")
        return self._malformed(SkipReason.MISSING_EVENT, f'"event" is {_short(name)}')

    def _receive_binary(self, data: bytes) -> Event:
        return self._violate(CloseCode.PROTOCOL_ERROR, "unexpected binary frame")

    def _malformed(self, reason: SkipReason, detail: str) -> Event:
        if self._state in self._STRICT:
            return self._violate(CloseCode.PROTOCOL_ERROR, detail)
        return self._skip(reason, detail)

    def _too_big(self, kind: str, size: int) -> Event:
        detail = f"{kind} message of {size} bytes is over the {self._limit}-byte limit"
        return self._violate(CloseCode.MESSAGE_TOO_BIG, detail)

    def _skip(self, reason: SkipReason, detail: str) -> MessageSkipped:
        self._skipped[reason] += 1
        return MessageSkipped(reason, detail)

    def _violate(self, code: CloseCode, reason: str) -> ProtocolViolation:
        self._advance(ProtocolViolation)
        self._close_code = code
        return ProtocolViolation(code, reason)

    def _advance(self, trigger: type) -> bool:
        """Move along the transition table; False (and no move) if ``trigger`` is illegal."""
        following = self._TRANSITIONS.get((self._state, trigger))
        if following is None:
            return False
        self._state = following
        return True

    def _check_call_id(self, message: dict[str, Any]) -> ProtocolViolation | None:
        """Refuse a message for another call; a missing ``callId`` means this call."""
        call_id = message.get("callId", self._call_id)
        if call_id == self._call_id:
            return None
        event = message.get("event")
        return self._violate(
            CloseCode.PROTOCOL_ERROR,
            f"{event} for callId {_short(call_id)} on call {self._call_id!r}",
        )

    # --- sending -----------------------------------------------------------------

    def send(self, event: Event) -> list[str]:
        """The text messages that carry ``event``; raises if this role may not send it now.

        :class:`~pipeline.protocol.events.CloseConnection` gives no message (the transport
        sends the close frame) and is allowed in any state.
        """
        encoder = self._encoders.get(type(event))
        if encoder is None:
            raise LocalProtocolError(f"{type(self).__name__} never sends {type(event).__name__}")
        if (self._state, type(event)) not in self._TRANSITIONS:
            raise LocalProtocolError(f"cannot send {type(event).__name__} in state {self._state}")
        messages = encoder(event)  # may raise (too big): then the state must not move
        self._advance(type(event))
        self._sent += len(messages)
        return messages

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> CloseConnection:
        """Decide to end the call; returns the close frame's code and (cut) reason."""
        event = CloseConnection(code, reason)
        self.send(event)
        if self._close_code is None:
            self._close_code = code
        return event

    def _encode_close(self, event: CloseConnection) -> list[str]:
        return []

    def statistics(self) -> ProtocolStatistics:
        return ProtocolStatistics(
            state=self._state.value,
            messages_received=self._received,
            media_received=self._media,
            messages_sent=self._sent,
            skipped={reason.value: count for reason, count in self._skipped.items()},
            close_code=self._close_code,
        )


def _media_prefix(call_id: str) -> str:
    return '{"event":"media","callId":' + _dumps(call_id) + ',"payload":'


def _timestamp_suffix(timestamp: int | None) -> str:
    return "}" if timestamp is None else f',"timestamp":{timestamp}}}'


class ServerProtocol(_Core):
    """The bot's side of one call: one WebSocket connection carries exactly one call."""

    _TRANSITIONS = SERVER_TRANSITIONS
    _CLOSING = frozenset({ServerState.CLOSING, ServerState.CLOSED})
    _STRICT = frozenset({ServerState.AWAITING_REGISTRATION})

    def __init__(self, *, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        super().__init__(ServerState.AWAITING_REGISTRATION, max_message_size)
        self._media_prefix = ""
        self._handlers = {"connected": self._on_connected, "media": self._on_media}
        self._encoders = {
            ConnectedAck: self._encode_ack,
            Greeting: self._encode_greeting,
            SpeechChunk: self._encode_speech_chunk,
            Interrupt: self._encode_interrupt,
            CloseConnection: self._encode_close,
        }

    # --- the platform's messages ---------------------------------------------------

    def _on_connected(self, message: dict[str, Any]) -> Event:
        call_id = message.get("callId")
        if (self._state, Connected) not in self._TRANSITIONS:
            if call_id == self._call_id:
                return self._skip(SkipReason.DUPLICATE_CONNECTED, "connected again")
            return self._violate(
                CloseCode.PROTOCOL_ERROR,
                f"second connected, callId {_short(call_id)} on call {self._call_id!r}",
            )
        if type(call_id) is not str or not call_id:
            return self._violate(
                CloseCode.PROTOCOL_ERROR, f"connected with callId {_short(call_id)}"
            )
        mobile_no = message.get("mobileNo", "")
        if type(mobile_no) is int:
            mobile_no = str(mobile_no)
        elif type(mobile_no) is not str:
            return self._violate(
                CloseCode.PROTOCOL_ERROR, f"connected with mobileNo {_short(mobile_no)}"
            )
        problem = call_id_problem(call_id) or mobile_no_problem(mobile_no)
        if problem is not None:  # both go on every log line and into folder names
            return self._violate(CloseCode.PROTOCOL_ERROR, f"connected: {problem}")
        extra = {k: v for k, v in message.items() if k not in ("event", "callId", "mobileNo")}
        self._advance(Connected)
        self._call_id = call_id
        self._media_prefix = _media_prefix(call_id)
        return Connected(call_id, mobile_no, MappingProxyType(extra))

    def _on_media(self, message: dict[str, Any]) -> Event:
        if (self._state, Media) not in self._TRANSITIONS:
            return self._violate(CloseCode.PROTOCOL_ERROR, "media before connected")
        wrong_call = self._check_call_id(message)
        if wrong_call is not None:
            return wrong_call
        try:
            payload = decode_payload(message.get("payload"))
        except PayloadError as exc:
            return self._skip(SkipReason.BAD_PAYLOAD, str(exc))
        timestamp = message.get("timestamp")
        self._media += 1
        return Media(self._call_id, payload, timestamp if type(timestamp) is int else None)

    def _receive_binary(self, data: bytes) -> Event:
        if (self._state, Media) not in self._TRANSITIONS:
            return self._violate(CloseCode.PROTOCOL_ERROR, "binary frame before connected")
        if not data:
            return self._skip(SkipReason.BAD_PAYLOAD, "empty binary frame")
        self._media += 1
        return Media(self._call_id, data, None)

    # --- our messages ----------------------------------------------------------------

    def acknowledge(self) -> str:
        """Confirm registration: ``{"event":"connected","data":{"callId":...}}``."""
        return self.send(ConnectedAck(self._call_id))[0]  # type: ignore[arg-type]

    def greeting(self, wav: bytes) -> str:
        """The optional greeting: a complete μ-law WAV, played when the call is answered."""
        return self.send(Greeting(wav))[0]

    def interrupt(self) -> str:
        """Tell the platform to stop playing our audio (the caller barged in)."""
        return self.send(Interrupt(self._call_id))[0]  # type: ignore[arg-type]

    def speech(self, audio: bytes, timestamp: int) -> list[str]:
        """One utterance as ``media`` messages, each a complete μ-law WAV under 1 MB.

        ``audio`` is μ-law 8 kHz samples, or a μ-law 8 kHz mono WAV recognised by its
        ``RIFF....WAVE`` start (raises :class:`~stages.wav.WavError` for another WAV).
        Audio too long for one message is cut into parts of equal length (±1 sample),
        not full parts and a scrap; part *i* carries ``timestamp`` plus its offset in
        the utterance, in ms, so the parts stay ordered on the platform's side. Empty
        audio sends nothing.
        """
        if type(timestamp) is not int or timestamp < 0:
            raise ValueError(f"timestamp must be non-negative integer ms, not {timestamp!r}")
        if (self._state, SpeechChunk) not in self._TRANSITIONS:
            raise LocalProtocolError(f"cannot send speech in state {self._state}")
        if audio[:4] == b"RIFF" and audio[8:12] == b"WAVE":
            audio = _mulaw_samples(audio)
        if not audio:
            return []
        last_timestamp = timestamp + len(audio) * 1000 // TELEPHONE_RATE
        per_message = self.max_speech_samples(last_timestamp)
        if per_message < 1:
            raise MessageTooBig(f"callId {self._call_id!r} leaves no room for audio in 1 MB")
        parts = -(-len(audio) // per_message)
        bounds = [len(audio) * part // parts for part in range(parts + 1)]
        messages = []
        for start, end in itertools.pairwise(bounds):
            wav = encode_mulaw_wav(audio[start:end], TELEPHONE_RATE)
            chunk = SpeechChunk(self._call_id, wav, timestamp + start * 1000 // TELEPHONE_RATE)
            messages += self.send(chunk)
        return messages

    def max_speech_samples(self, timestamp: int) -> int:
        """Most μ-law samples one ``media`` message can carry, whatever their values.

        Worst case: every WAV byte a three-digit number plus comma, and one pad byte.
        """
        envelope = len(self._media_prefix) + len(_timestamp_suffix(timestamp))
        room = self._limit - envelope - max_buffer_json_size(0) + 1
        return room // MAX_CHARS_PER_BYTE - WAV_HEADER_SIZE - 1

    def _checked(self, message: str) -> list[str]:
        if len(message) > self._limit:  # ASCII only: characters are bytes
            raise MessageTooBig(f"message of {len(message)} bytes is over {self._limit}")
        return [message]

    def _own(self, event: ConnectedAck | SpeechChunk | Interrupt) -> str:
        """The event's callId, refused if it is not this connection's call."""
        if event.call_id != self._call_id:
            raise LocalProtocolError(f"{event!r:.60} is not for call {self._call_id!r}")
        return event.call_id

    def _encode_ack(self, event: ConnectedAck) -> list[str]:
        return [_dumps({"event": "connected", "data": {"callId": self._own(event)}})]

    def _encode_greeting(self, event: Greeting) -> list[str]:
        if event.audio[:4] != b"RIFF" or event.audio[8:12] != b"WAVE":
            raise ValueError("a greeting is a complete WAV file (RIFF....WAVE)")
        message = '{"event":"greeting","payload":' + encode_buffer_json(event.audio) + "}"
        return self._checked(message)

    def _encode_speech_chunk(self, event: SpeechChunk) -> list[str]:
        self._own(event)
        payload = encode_buffer_json(event.wav)
        return self._checked(self._media_prefix + payload + _timestamp_suffix(event.timestamp))

    def _encode_interrupt(self, event: Interrupt) -> list[str]:
        return [_dumps({"event": "interrupt", "callId": self._own(event)})]


def _mulaw_samples(wav: bytes) -> bytes:
    """The samples of a μ-law 8 kHz mono WAV; any other WAV is the caller's to convert
    (:func:`stages.mulaw.mulaw_from_wav` encodes 16-bit PCM), not the protocol's."""
    audio = decode_wav(wav)
    telephone = (WAVE_FORMAT_MULAW, TELEPHONE_RATE, 1)
    if (audio.format_tag, audio.sample_rate, audio.channels) != telephone:
        raise WavError(
            f"speech must be μ-law 8000 Hz mono, not {audio.format_name} "
            f"{audio.sample_rate} Hz with {audio.channels} channel(s)"
        )
    return audio.data
