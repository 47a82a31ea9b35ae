"""The parsers that read what the network sends, as one fuzz target.

:func:`parse_one` takes any bytes: the first byte picks a parser, the rest is its input.
Each parser may refuse input only with its own declared error (or, for the protocol,
a defined event: it never raises on the peer's input); anything else escaping is a
crash. Used by the coverage-guided run (``benchmarks/fuzz_run.py``, atheris) and by the
suite, which replays the committed corpus (``tests/fuzz/corpus/``) and a bounded
hypothesis run through the same function.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from pipeline.protocol.bot_side import ServerProtocol
from pipeline.protocol.events import (
    Connected,
    ConnectedAck,
    Greeting,
    Interrupt,
    Media,
    MessageSkipped,
    ProtocolViolation,
    SpeechChunk,
)
from pipeline.protocol.payload import PayloadError, decode_payload
from pipeline.protocol.platform_side import ClientProtocol
from stages.mulaw import mulaw_from_wav
from stages.rtp import RtpError, RtpPacket
from stages.wav import WavError, decode_wav

__all__ = ["CORPUS", "PARSERS", "corpus_inputs", "parse_one"]

CORPUS = Path(__file__).parent / "corpus"
LIMIT = 65_536  # the protocol's message limit here: big enough for any corpus entry
SERVER_EVENTS = (Connected, Media, MessageSkipped, ProtocolViolation)
CLIENT_EVENTS = (ConnectedAck, Greeting, SpeechChunk, Interrupt, MessageSkipped, ProtocolViolation)
REGISTER = json.dumps({"event": "connected", "callId": "fuzz-1", "mobileNo": "5550100"})


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogatepass") if _utf8(data) else data.decode("latin-1")


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return False
    return True


def _protocol_messages(data: bytes, *, registered: bool) -> None:
    """The bot side: each line of ``data`` one WebSocket message (text, or binary if the
    line starts with 0x00), after a registration or not. Events only, never an exception."""
    protocol = ServerProtocol(max_message_size=LIMIT)
    if registered:
        protocol.receive_message(REGISTER)
        protocol.acknowledge()
    for line in data.split(b"\n"):
        message: str | bytes = line[1:] if line[:1] == b"\x00" else _text(line)
        for event in protocol.receive_message(message):
            assert isinstance(event, SERVER_EVENTS), event
    protocol.statistics()


def _platform_messages(data: bytes) -> None:
    """The platform side (our emulator) reading what a bot sends."""
    protocol = ClientProtocol("fuzz-1", "5550100", max_message_size=LIMIT)
    protocol.connect()
    for line in data.split(b"\n"):
        for event in protocol.receive_message(_text(line)):
            assert isinstance(event, CLIENT_EVENTS), event


def _payload(data: bytes) -> None:
    try:
        value = json.loads(_text(data))
    except (ValueError, RecursionError):
        return
    with suppress(PayloadError):  # its declared refusal
        decode_payload(value)


def _rtp(data: bytes) -> None:
    with suppress(RtpError):  # its declared refusal
        RtpPacket.parse(data)


def _wav(data: bytes) -> None:
    with suppress(WavError):  # its declared refusal
        decode_wav(data)


def _mulaw_wav(data: bytes) -> None:
    with suppress(WavError):  # its declared refusal
        mulaw_from_wav(data)


PARSERS: dict[str, Callable[[bytes], None]] = {
    "protocol_unregistered": lambda data: _protocol_messages(data, registered=False),
    "protocol_registered": lambda data: _protocol_messages(data, registered=True),
    "platform_side": _platform_messages,
    "payload": _payload,
    "rtp": _rtp,
    "wav": _wav,
    "mulaw_wav": _mulaw_wav,
}
_ORDER = list(PARSERS.values())


def parse_one(data: bytes) -> None:
    """Fuzz entry point: byte 0 picks the parser, the rest is its input."""
    if not data:
        return
    _ORDER[data[0] % len(_ORDER)](data[1:])


def selector(name: str) -> bytes:
    """The first byte that sends an input to parser ``name``."""
    return bytes([list(PARSERS).index(name)])


def corpus_inputs() -> list[tuple[str, bytes]]:
    """The committed seed corpus: (file name, bytes), sorted by name."""
    return [(path.name, path.read_bytes()) for path in sorted(CORPUS.iterdir()) if path.is_file()]
