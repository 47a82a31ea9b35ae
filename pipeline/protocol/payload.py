"""Media payloads: the shapes one RTP packet may arrive in, decoded to ``bytes``; and back.

The protocol document shows the caller's audio as ``"<Buffer>"``, which is what a
Node.js ``Buffer`` prints as, not what it serialises to. Since we cannot know which
shape a given platform build sends, we accept every reasonable reading and refuse
the rest with a :class:`PayloadError` that says what arrived and what would do:

=================================================  =====================================
shape                                              accepted as
=================================================  =====================================
``{"type":"Buffer","data":[0..255, ...]}``         ``JSON.stringify(buffer)``; other keys
                                                   of the object are ignored
``[0..255, ...]``                                  a plain list of byte values
``"gAAAAA=="`` (base64 string)                     standard alphabet (``+/``), padding
                                                   optional but, if present, complete; no
                                                   whitespace, no URL-safe ``-_``
binary WebSocket frame                             the raw packet as it is
=================================================  =====================================

Refused: an empty payload (no packet is empty), byte values outside 0..255, floats,
strings or ``null`` inside the list, invalid base64, an object whose ``type`` is not
``"Buffer"`` or whose ``data`` is not a list, and every other JSON type. JSON
``true``/``false`` inside a byte list are read as 1/0 (Python's ``bool`` is an
``int``): ruling them out would need a per-element scan that costs three times the
decode itself, on a path that runs 10,000 times a second on a busy server.

Decoding runs on the inbound hot path, so each accepted shape is one C call
(``bytes(list)``, ``binascii.a2b_base64``) and validation is whatever that call
already refuses; the slow, descriptive work happens only once a payload has failed.
"""

from __future__ import annotations

import binascii
import reprlib
from collections.abc import Callable
from typing import Any, Final

from pipeline.runtime.errors import ProtocolError

__all__ = [
    "ACCEPTED_SHAPES",
    "BUFFER_JSON_OVERHEAD",
    "MAX_CHARS_PER_BYTE",
    "BufferJsonCache",
    "PayloadError",
    "decode_payload",
    "encode_base64",
    "encode_buffer_json",
    "encode_buffer_object",
    "encode_byte_list_json",
    "max_buffer_json_size",
]

ACCEPTED_SHAPES: Final = (
    'a Buffer object {"type":"Buffer","data":[0..255, ...]}, a list of ints 0..255, '
    "a base64 string, or a binary frame"
)

_BUFFER_PREFIX: Final = '{"type":"Buffer","data":['
_BUFFER_SUFFIX: Final = "]}"
BUFFER_JSON_OVERHEAD: Final = len(_BUFFER_PREFIX) + len(_BUFFER_SUFFIX)
"""Characters of a Buffer object's JSON that are not byte values or commas."""

MAX_CHARS_PER_BYTE: Final = 4
"""Worst case of one byte in Buffer JSON: three digits and a comma."""

_DIGITS: Final = tuple(str(value) for value in range(256))

_repr = reprlib.Repr()
_repr.maxstring = 40
_repr.maxother = 40
_repr.maxlist = 6
_repr.maxdict = 4
_repr.maxlevel = 2


class PayloadError(ProtocolError, ValueError):
    """A media payload of a shape we do not accept; the message names shape and choices."""


def _describe(value: object) -> str:
    return f"{type(value).__name__} {_repr.repr(value)}"


def _refuse(what: str) -> PayloadError:
    return PayloadError(f"unusable media payload: {what}; expected {ACCEPTED_SHAPES}")


def _from_int_list(values: list[Any]) -> bytes:
    try:
        return bytes(values)
    except (TypeError, ValueError):
        pass
    for index, value in enumerate(values):
        if not isinstance(value, int) or not 0 <= value <= 255:
            raise _refuse(f"byte list holds {_describe(value)} at index {index}") from None
    raise _refuse("byte list could not be read")  # pragma: no cover - bytes() agreed


def _from_buffer_object(value: dict[str, Any]) -> bytes:
    kind = value.get("type")
    if kind != "Buffer":
        raise _refuse(f'an object with "type" {_repr.repr(kind)} (not "Buffer")')
    data = value.get("data")
    if type(data) is not list:
        raise _refuse(f'a Buffer object whose "data" is {_describe(data)}, not a list')
    return _from_int_list(data)


def _from_base64(value: str) -> bytes:
    try:
        return binascii.a2b_base64(value, strict_mode=True)
    except ValueError as exc:  # binascii.Error is a ValueError; so is non-ASCII text
        error = exc
    if "=" not in value and len(value) % 4 in (2, 3) and value.isascii():
        try:
            return binascii.a2b_base64(value + "=" * (-len(value) % 4), strict_mode=True)
        except ValueError as exc:
            error = exc
    raise _refuse(f"invalid base64 string {_repr.repr(value)} ({error})") from None


def _from_bytes(value: bytes | bytearray | memoryview) -> bytes:
    return bytes(value)


_DECODERS: Final[dict[type, Callable[[Any], bytes]]] = {
    dict: _from_buffer_object,
    list: _from_int_list,
    str: _from_base64,
    bytes: _from_bytes,
    bytearray: _from_bytes,
    memoryview: _from_bytes,
}


def decode_payload(value: object) -> bytes:
    """The packet bytes ``value`` carries, or :class:`PayloadError` naming what is wrong."""
    decoder = _DECODERS.get(type(value))
    if decoder is None:
        raise _refuse(_describe(value))
    data = decoder(value)
    if not data:
        raise _refuse(f"an empty {type(value).__name__} (a packet is never empty)")
    return data


def encode_buffer_json(data: bytes) -> str:
    """``data`` as Node.js serialises a Buffer, compact: ``{"type":"Buffer","data":[..]}``.

    Builds the digits from a 256-entry table. On 262 kB (one full speech message):
    13 ms, against 41 ms for ``",".join(map(str, data))`` and 28 ms for
    ``json.dumps(list(data))``.
    """
    return _BUFFER_PREFIX + ",".join(map(_DIGITS.__getitem__, data)) + _BUFFER_SUFFIX


class BufferJsonCache:
    """:func:`encode_buffer_json` for packets whose tail repeats, same bytes out.

    An RTP packet's 12-byte header changes every time, but its payload does not: a
    caller's silence, or a turn that every emulated caller of a load test speaks. The
    digits of each distinct tail are built once; the header's 12 are built each time.
    At most ``size`` tails are kept, then the cache starts over (a stream of payloads
    that never repeat costs one dictionary miss more per packet, no more memory).
    """

    __slots__ = ("_head", "_size", "_tails")

    def __init__(self, head: int = 12, size: int = 4096) -> None:
        self._head = head
        self._size = size
        self._tails: dict[bytes, str] = {}

    def encode(self, data: bytes) -> str:
        head = self._head
        if len(data) <= head:
            return encode_buffer_json(data)
        tail = data[head:]
        digits = self._tails.get(tail)
        if digits is None:
            if len(self._tails) >= self._size:
                self._tails.clear()
            digits = self._tails[tail] = ",".join(map(_DIGITS.__getitem__, tail))
        return (
            _BUFFER_PREFIX
            + ",".join(map(_DIGITS.__getitem__, data[:head]))
            + ","
            + digits
            + _BUFFER_SUFFIX
        )


def encode_byte_list_json(data: bytes) -> str:
    """``data`` as a compact JSON list of byte values: ``[12,34,...]``."""
    return "[" + ",".join(map(_DIGITS.__getitem__, data)) + "]"


def encode_buffer_object(data: bytes) -> dict[str, Any]:
    """``data`` as the parsed form of a Buffer object, for callers that build JSON."""
    return {"type": "Buffer", "data": list(data)}


def encode_base64(data: bytes) -> str:
    """``data`` as a padded, standard-alphabet base64 string."""
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def max_buffer_json_size(length: int) -> int:
    """Upper bound of ``len(encode_buffer_json(data))`` for any ``data`` of ``length`` bytes."""
    return BUFFER_JSON_OVERHEAD + max(MAX_CHARS_PER_BYTE * length - 1, 0)
