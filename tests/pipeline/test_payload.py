"""Media payload shapes: what is accepted, what is refused and why, and the encoders."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.protocol.payload import (
    BUFFER_JSON_OVERHEAD,
    BufferJsonCache,
    PayloadError,
    decode_payload,
    encode_base64,
    encode_buffer_json,
    encode_buffer_object,
    encode_byte_list_json,
    max_buffer_json_size,
)

PACKET = bytes([0x80, 0x00, 0x12, 0x34]) + bytes(range(256))
packets = st.binary(min_size=1, max_size=2048)


# --- accepted shapes -------------------------------------------------------------------


def test_node_buffer_object_is_decoded() -> None:
    assert decode_payload({"type": "Buffer", "data": list(PACKET)}) == PACKET


def test_buffer_object_with_other_keys_is_decoded() -> None:
    value = {"type": "Buffer", "data": [1, 2, 3], "byteOffset": 0}
    assert decode_payload(value) == b"\x01\x02\x03"


def test_plain_list_of_ints_is_decoded() -> None:
    assert decode_payload(list(PACKET)) == PACKET


def test_padded_base64_is_decoded() -> None:
    assert decode_payload(base64.b64encode(PACKET).decode()) == PACKET


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 172])
def test_base64_without_padding_is_decoded(length: int) -> None:
    data = bytes(range(length))
    text = base64.b64encode(data).decode().rstrip("=")
    assert decode_payload(text) == data


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_binary_frames_are_taken_as_they_are(kind: type) -> None:
    decoded = decode_payload(kind(PACKET))
    assert decoded == PACKET
    assert type(decoded) is bytes


def test_json_booleans_in_a_byte_list_read_as_one_and_zero() -> None:
    """Documented trade-off: refusing them would cost a per-element scan."""
    assert decode_payload([True, False, 7]) == b"\x01\x00\x07"


# --- refused shapes --------------------------------------------------------------------

REFUSED = {
    "byte above 255": ([1, 256, 3], "int 256 at index 1"),
    "negative byte": ([-1], "int -1 at index 0"),
    "float in list": ([1, 2.5], "float 2.5 at index 1"),
    "string in list": (["12"], "str '12' at index 0"),
    "null in list": ([0, None], "NoneType None at index 1"),
    "nested list": ([[1]], "list [1] at index 0"),
    "empty list": ([], "an empty list"),
    "empty Buffer": ({"type": "Buffer", "data": []}, "an empty dict"),
    "Buffer data not a list": ({"type": "Buffer", "data": "AAEC"}, '"data" is str'),
    "Buffer without data": ({"type": "Buffer"}, '"data" is NoneType'),
    "object of another type": ({"type": "Blob", "data": [1]}, "\"type\" 'Blob'"),
    "object without type": ({"data": [1]}, '"type" None'),
    "empty string": ("", "an empty str"),
    "non-alphabet base64": ("!!!!", "invalid base64 string '!!!!'"),
    "URL-safe base64": ("AA-_", "invalid base64 string 'AA-_'"),
    "base64 with whitespace": ("AAEC AAEC", "invalid base64"),
    "base64 with newline": ("AAEC\n", "invalid base64"),
    "base64 length 4n+1": ("AAECA", "invalid base64"),
    "base64 with partial padding": ("AA=", "invalid base64"),
    "base64 with data after padding": ("AA==AA==", "invalid base64"),
    "non-ASCII string": ("AAEé", "invalid base64"),
    "empty binary frame": (b"", "an empty bytes"),
    "null": (None, "NoneType None"),
    "number": (12, "int 12"),
    "boolean": (True, "bool True"),
    "float": (1.5, "float 1.5"),
}


@pytest.mark.parametrize(("value", "received"), REFUSED.values(), ids=REFUSED.keys())
def test_refused_payload_names_what_came_and_what_would_do(value: object, received: str) -> None:
    with pytest.raises(PayloadError) as caught:
        decode_payload(value)
    message = str(caught.value)
    assert received in message
    assert 'expected a Buffer object {"type":"Buffer"' in message
    assert "base64 string" in message


def test_payload_error_is_a_value_error() -> None:
    assert issubclass(PayloadError, ValueError)


def test_long_refused_values_are_abbreviated_in_the_message() -> None:
    with pytest.raises(PayloadError) as caught:
        decode_payload("!" * 10_000)
    assert len(str(caught.value)) < 400


# --- encoders --------------------------------------------------------------------------


def test_buffer_json_is_compact_node_serialisation() -> None:
    assert encode_buffer_json(b"\x0c\x22\x38\x4e") == '{"type":"Buffer","data":[12,34,56,78]}'


@given(packets)
def test_buffer_json_parses_as_json_dumps_would(data: bytes) -> None:
    text = encode_buffer_json(data)
    assert json.loads(text) == json.loads(json.dumps({"type": "Buffer", "data": list(data)}))
    assert decode_payload(json.loads(text)) == data


@given(st.lists(packets, min_size=1, max_size=8))
def test_buffer_json_cache_writes_the_same_bytes_as_encode_buffer_json(
    datas: list[bytes],
) -> None:
    cache = BufferJsonCache(head=12, size=3)  # small: the cache also starts over
    for data in datas + datas:  # the second round hits the cache
        assert cache.encode(data) == encode_buffer_json(data)


@given(packets)
def test_byte_list_json_round_trips(data: bytes) -> None:
    assert json.loads(encode_byte_list_json(data)) == list(data)
    assert decode_payload(json.loads(encode_byte_list_json(data))) == data


@given(packets)
def test_base64_round_trips(data: bytes) -> None:
    text = encode_base64(data)
    assert text == base64.b64encode(data).decode()
    assert decode_payload(text) == data


@given(packets)
def test_buffer_object_round_trips(data: bytes) -> None:
    assert decode_payload(encode_buffer_object(data)) == data


@given(packets)
def test_max_buffer_json_size_bounds_every_payload(data: bytes) -> None:
    assert len(encode_buffer_json(data)) <= max_buffer_json_size(len(data))


@pytest.mark.parametrize("length", [1, 2, 1000])
def test_max_buffer_json_size_is_reached_by_three_digit_bytes(length: int) -> None:
    assert len(encode_buffer_json(b"\xff" * length)) == max_buffer_json_size(length)
    assert max_buffer_json_size(0) == BUFFER_JSON_OVERHEAD == len(encode_buffer_json(b""))
