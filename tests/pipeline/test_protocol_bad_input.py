"""Every bad input to the protocol has its documented outcome: the bot's side (a counted
skip or a close, per the table in pipeline/protocol.py) and the emulator's strict side."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.protocol.bot_side import (
    ServerProtocol,
    ServerState,
)
from pipeline.protocol.events import (
    MAX_MESSAGE_SIZE,
    CloseCode,
    Connected,
    ConnectedAck,
    Greeting,
    Interrupt,
    Media,
    MessageSkipped,
    ProtocolViolation,
    SkipReason,
    SpeechChunk,
)
from pipeline.protocol.payload import encode_base64, encode_buffer_json
from pipeline.protocol.platform_side import ClientProtocol, ClientState
from stages.wav import encode_mulaw_wav

from .protocol_cases import (
    CALL_ID,
    PACKET,
    TIMESTAMP,
    assert_closes,
    assert_skips,
    json_parser,  # noqa: F401 - autouse: every test with orjson and json
    registered,
    single,
    text,
)

# --- bad input on the server side: every row of the module's table ---------------------

OVERSIZE_ASCII = text(event="media", callId=CALL_ID, pad="x" * MAX_MESSAGE_SIZE)


@pytest.mark.parametrize(
    "message",
    [
        OVERSIZE_ASCII,
        '{"event":"media","pad":"' + "é" * (MAX_MESSAGE_SIZE // 2) + '"}',  # chars < limit
        b"\x80" * (MAX_MESSAGE_SIZE + 1),
    ],
    ids=["text", "non-ascii text", "binary"],
)
@pytest.mark.parametrize("ack", [False, True])
def test_message_over_one_megabyte_closes_with_1009(message: str | bytes, ack: bool) -> None:
    server, _ = registered(ack=ack)
    assert_closes(single(server.receive_message(message)), CloseCode.MESSAGE_TOO_BIG)
    assert server.state is ServerState.CLOSING
    assert server.statistics().close_code == 1009


def test_message_of_exactly_one_megabyte_is_not_too_big() -> None:
    server, client = registered()
    message = client.media(PACKET, TIMESTAMP)
    message = message[:-1] + "," + '"pad":"' + "x" * (MAX_MESSAGE_SIZE - len(message) - 9) + '"}'
    assert len(message) == MAX_MESSAGE_SIZE
    assert isinstance(single(server.receive_message(message)), Media)


MALFORMED = {
    "malformed JSON": ('{"event":"media",', SkipReason.MALFORMED_JSON),
    "not JSON at all": ("hello", SkipReason.MALFORMED_JSON),
    "deeply nested JSON": ("[" * 100_000, SkipReason.MALFORMED_JSON),
    "JSON array": ('["media"]', SkipReason.NOT_AN_OBJECT),
    "JSON string": ('"media"', SkipReason.NOT_AN_OBJECT),
    "JSON null": ("null", SkipReason.NOT_AN_OBJECT),
    "missing event": (text(callId=CALL_ID), SkipReason.MISSING_EVENT),
    "event not a string": (text(event=["media"]), SkipReason.MISSING_EVENT),
    "event null": (text(event=None), SkipReason.MISSING_EVENT),
}


@pytest.mark.parametrize(("message", "reason"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_message_before_registration_closes(message: str, reason: SkipReason) -> None:
    server = ServerProtocol()
    assert_closes(single(server.receive_message(message)))
    assert server.state is ServerState.CLOSING


@pytest.mark.parametrize(("message", "reason"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_message_after_registration_is_skipped(message: str, reason: SkipReason) -> None:
    server, client = registered()
    assert_skips(single(server.receive_message(message)), reason)
    assert server.statistics().skipped[reason.value] == 1
    assert isinstance(single(server.receive_message(client.media(PACKET, 1))), Media)


@pytest.mark.parametrize("ack", [False, True])
def test_unknown_event_is_skipped_before_and_after_registration(ack: bool) -> None:
    server = ServerProtocol()
    assert_skips(single(server.receive_message(text(event="start"))), SkipReason.UNKNOWN_EVENT)
    assert server.state is ServerState.AWAITING_REGISTRATION
    server, _ = registered(ack=ack)
    assert_skips(single(server.receive_message(text(event="mark"))), SkipReason.UNKNOWN_EVENT)
    assert server.statistics().skipped["unknown_event"] == 1


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"callId": None},
        {"callId": ""},
        {"callId": 123},
        {"callId": CALL_ID, "mobileNo": None},
        {"callId": CALL_ID, "mobileNo": ["4155551234"]},
        {"callId": CALL_ID, "mobileNo": True},
    ],
)
def test_bad_registration_closes(fields: dict[str, object]) -> None:
    server = ServerProtocol()
    assert_closes(single(server.receive_message(text(event="connected", **fields))))
    assert server.call_id is None


@pytest.mark.parametrize("ack", [False, True])
def test_repeated_registration_for_the_same_call_is_skipped(ack: bool) -> None:
    server, _ = registered(ack=ack)
    state = server.state
    event = single(server.receive_message(text(event="connected", callId=CALL_ID)))
    assert_skips(event, SkipReason.DUPLICATE_CONNECTED)
    assert server.state is state


@pytest.mark.parametrize("ack", [False, True])
def test_registration_for_another_call_closes(ack: bool) -> None:
    server, _ = registered(ack=ack)
    assert_closes(single(server.receive_message(text(event="connected", callId="other"))))
    assert server.call_id == CALL_ID


def test_media_before_registration_closes() -> None:
    server = ServerProtocol()
    message = text(event="media", callId=CALL_ID, payload=encode_base64(PACKET), timestamp=1)
    assert_closes(single(server.receive_message(message)))


def test_binary_frame_before_registration_closes() -> None:
    server = ServerProtocol()
    assert_closes(single(server.receive_message(PACKET)))


@pytest.mark.parametrize("call_id", ["other-call", "", None, 123, [CALL_ID]])
def test_media_for_another_call_closes(call_id: object) -> None:
    server, _ = registered()
    message = text(event="media", callId=call_id, payload=encode_base64(PACKET))
    assert_closes(single(server.receive_message(message)))
    assert server.state is ServerState.CLOSING


def test_media_without_call_id_belongs_to_the_registered_call() -> None:
    server, _ = registered()
    message = text(event="media", payload=encode_base64(PACKET), timestamp=7)
    assert single(server.receive_message(message)) == Media(CALL_ID, PACKET, 7)


@pytest.mark.parametrize(
    "payload",
    [None, 42, "!!!", [], [300], {"type": "Blob", "data": [1]}, {"type": "Buffer"}, "", [1.5]],
)
def test_media_with_unusable_payload_is_skipped(payload: object) -> None:
    server, _ = registered()
    message = text(event="media", callId=CALL_ID, payload=payload, timestamp=1)
    event = single(server.receive_message(message))
    assert_skips(event, SkipReason.BAD_PAYLOAD)
    assert "expected a Buffer object" in event.detail
    assert server.statistics().skipped["bad_payload"] == 1
    assert server.state is ServerState.ACTIVE


def test_media_without_payload_is_skipped() -> None:
    server, _ = registered()
    event = single(server.receive_message(text(event="media", callId=CALL_ID)))
    assert_skips(event, SkipReason.BAD_PAYLOAD)


def test_empty_binary_frame_is_skipped() -> None:
    server, _ = registered()
    assert_skips(single(server.receive_message(b"")), SkipReason.BAD_PAYLOAD)


@pytest.mark.parametrize("timestamp", [None, "1649433600000", 1.5, True, float("nan")])
def test_media_timestamp_that_is_not_an_integer_reads_as_none(timestamp: object) -> None:
    server, _ = registered()
    packet = encode_base64(PACKET)
    message = text(event="media", callId=CALL_ID, payload=packet, timestamp=timestamp)
    assert single(server.receive_message(message)) == Media(CALL_ID, PACKET, None)


def test_payload_that_is_not_rtp_is_passed_on_for_the_rtp_stage_to_count() -> None:
    server, client = registered()
    not_rtp = b"\x00" * 5
    assert single(server.receive_message(client.media(not_rtp, 1))) == Media(CALL_ID, not_rtp, 1)


@pytest.mark.parametrize("how", ["our close", "violation", "socket closed"])
def test_every_message_after_a_close_is_skipped(how: str) -> None:
    server, client = registered()
    if how == "our close":
        server.close()
    elif how == "violation":
        server.receive_message(text(event="connected", callId="other"))
    else:
        server.receive_close(1000)
    for message in (client.media(PACKET, 1), PACKET, "{", text(event="connected", callId="x")):
        assert_skips(single(server.receive_message(message)), SkipReason.AFTER_CLOSE)
    assert server.statistics().skipped["after_close"] == 4


def test_a_message_that_is_not_str_or_bytes_is_a_transport_bug() -> None:
    server = ServerProtocol()
    with pytest.raises(TypeError):
        server.receive_message(None)  # type: ignore[arg-type]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
messages = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    json_values.map(json.dumps),
    st.fixed_dictionaries(
        {"event": st.sampled_from(["connected", "media", "greeting", "interrupt", "x"])},
        optional={
            "callId": st.sampled_from([CALL_ID, "other"]) | json_values,
            "payload": json_values,
            "timestamp": json_values,
            "data": json_values,
        },
    ).map(json.dumps),
)
OUTCOMES = (
    Connected,
    Media,
    ConnectedAck,
    Greeting,
    SpeechChunk,
    Interrupt,
    MessageSkipped,
    ProtocolViolation,
)


@settings(max_examples=300, deadline=None)
@given(
    role=st.sampled_from(["fresh server", "active server", "active client"]),
    inputs=st.lists(messages, min_size=1, max_size=5),
)
def test_no_input_makes_either_side_raise(role: str, inputs: list[str | bytes]) -> None:
    side: ServerProtocol | ClientProtocol
    side = ServerProtocol() if role == "fresh server" else registered()[role == "active client"]
    for message in inputs:
        event = single(side.receive_message(message))
        assert isinstance(event, OUTCOMES)


# --- the emulator's side is strict -----------------------------------------------------


def client_awaiting_ack() -> ClientProtocol:
    client = ClientProtocol(CALL_ID)
    client.connect()
    return client


def active_client() -> ClientProtocol:
    return registered()[1]


GOOD_WAV = encode_mulaw_wav(b"\x01\x02\x03")
CLIENT_BAD = {
    "malformed JSON": (active_client, "{"),
    "not an object": (active_client, "[]"),
    "missing event": (active_client, "{}"),
    "binary frame": (active_client, b"RIFF"),
    "ack for another call": (client_awaiting_ack, text(event="connected", data={"callId": "x"})),
    "ack data not an object": (client_awaiting_ack, text(event="connected", data="x")),
    "media before ack": (
        client_awaiting_ack,
        text(event="media", callId=CALL_ID, payload=json.loads(encode_buffer_json(GOOD_WAV))),
    ),
    "greeting before ack": (client_awaiting_ack, text(event="greeting", payload=[1])),
    "interrupt before ack": (client_awaiting_ack, text(event="interrupt", callId=CALL_ID)),
    "media for another call": (
        active_client,
        text(event="media", callId="x", payload=json.loads(encode_buffer_json(GOOD_WAV))),
    ),
    "interrupt for another call": (active_client, text(event="interrupt", callId="x")),
    "media with bad payload": (active_client, text(event="media", callId=CALL_ID, payload=[-1])),
    "greeting with bad payload": (active_client, text(event="greeting", payload="!!")),
}


@pytest.mark.parametrize(("make", "message"), CLIENT_BAD.values(), ids=CLIENT_BAD.keys())
def test_client_closes_on_what_our_server_must_never_send(
    make: Callable[[], ClientProtocol], message: str | bytes
) -> None:
    client = make()
    assert_closes(single(client.receive_message(message)))
    assert client.state is ClientState.CLOSING


def test_client_closes_on_oversize_message() -> None:
    client = active_client()
    assert_closes(single(client.receive_message(OVERSIZE_ASCII)), CloseCode.MESSAGE_TOO_BIG)


def test_client_accepts_a_bare_acknowledgement() -> None:
    """The platform's own sample server acknowledges with ``{"event":"connected"}``."""
    client = client_awaiting_ack()
    assert single(client.receive_message(text(event="connected"))) == ConnectedAck(CALL_ID)


def test_client_skips_unknown_events_and_repeated_acknowledgements() -> None:
    client = active_client()
    assert_skips(single(client.receive_message(text(event="mark"))), SkipReason.UNKNOWN_EVENT)
    ack = text(event="connected", data={"callId": CALL_ID})
    assert_skips(single(client.receive_message(ack)), SkipReason.DUPLICATE_CONNECTED)
    assert client.state is ClientState.ACTIVE


def test_client_reads_speech_without_timestamp() -> None:
    client = active_client()
    message = text(event="media", callId=CALL_ID, payload=json.loads(encode_buffer_json(GOOD_WAV)))
    assert single(client.receive_message(message)) == SpeechChunk(CALL_ID, GOOD_WAV, None)
