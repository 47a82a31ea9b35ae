"""The sans-IO voice-stream protocol: handshake, round trips, the 1 MB split, closing, states."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.protocol.bot_side import (
    SERVER_TRANSITIONS,
    LocalProtocolError,
    MessageTooBig,
    ServerProtocol,
    ServerState,
)
from pipeline.protocol.events import (
    MAX_MESSAGE_SIZE,
    CallClosed,
    CloseCode,
    CloseConnection,
    Connected,
    ConnectedAck,
    Greeting,
    Interrupt,
    Media,
    SpeechChunk,
)
from pipeline.protocol.platform_side import CLIENT_TRANSITIONS, ClientProtocol, ClientState
from stages.wav import decode_wav, encode_mulaw_wav

from .protocol_cases import (
    CALL_ID,
    PACKET,
    TIMESTAMP,
    assert_closes,
    json_parser,  # noqa: F401 - autouse: every test with orjson and json
    registered,
    single,
    text,
)

# --- handshake -------------------------------------------------------------------------


def test_connected_message_has_the_documented_shape() -> None:
    client = ClientProtocol(CALL_ID, "4155551234")
    assert json.loads(client.connect()) == {
        "event": "connected",
        "callId": CALL_ID,
        "mobileNo": "4155551234",
    }


def test_server_reads_registration_and_keeps_unknown_fields() -> None:
    server = ServerProtocol()
    message = text(event="connected", callId=CALL_ID, mobileNo="4155551234", agent="sales")
    event = single(server.receive_message(message))
    assert event == Connected(CALL_ID, "4155551234", {"agent": "sales"})
    assert dict(event.extra) == {"agent": "sales"}
    assert server.state is ServerState.REGISTERED
    assert server.call_id == CALL_ID


def test_acknowledgement_has_the_documented_shape() -> None:
    server, _ = registered(ack=False)
    assert json.loads(server.acknowledge()) == {"event": "connected", "data": {"callId": CALL_ID}}
    assert server.state is ServerState.ACTIVE


def test_registration_without_mobile_number_is_accepted() -> None:
    server = ServerProtocol()
    assert single(server.receive_message(text(event="connected", callId=CALL_ID))) == Connected(
        CALL_ID, ""
    )


def test_numeric_mobile_number_is_read_as_text() -> None:
    server = ServerProtocol()
    message = text(event="connected", callId=CALL_ID, mobileNo=4155551234)
    assert single(server.receive_message(message)).mobile_no == "4155551234"


def test_client_walks_its_states() -> None:
    server = ServerProtocol()
    client = ClientProtocol(CALL_ID)
    assert client.state is ClientState.IDLE
    server.receive_message(client.connect())
    assert client.state is ClientState.AWAITING_ACK
    client.receive_message(server.acknowledge())
    assert client.state is ClientState.ACTIVE
    client.close()
    assert client.state is ClientState.CLOSING
    assert client.receive_close(1000) == [CallClosed(1000)]
    assert client.state is ClientState.CLOSED


# --- round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("payload_format", ["buffer", "base64", "list"])
def test_media_round_trips_in_every_json_format(payload_format: str) -> None:
    server, client = registered()
    message = client.media(PACKET, TIMESTAMP, payload_format)
    assert single(server.receive_message(message)) == Media(CALL_ID, PACKET, TIMESTAMP)


def test_media_buffer_message_has_the_documented_shape() -> None:
    _, client = registered()
    assert json.loads(client.media(b"\x0c\x22\x38\x4e", TIMESTAMP)) == {
        "event": "media",
        "callId": CALL_ID,
        "payload": {"type": "Buffer", "data": [12, 34, 56, 78]},
        "timestamp": TIMESTAMP,
    }


def test_media_as_binary_frame_round_trips_without_timestamp() -> None:
    server, client = registered()
    message = client.media(PACKET, TIMESTAMP, "binary")
    assert message == PACKET
    assert single(server.receive_message(message)) == Media(CALL_ID, PACKET, None)


def test_media_before_the_acknowledgement_is_accepted() -> None:
    server, client = registered(ack=False)
    assert single(server.receive_message(client.media(PACKET, TIMESTAMP))) == Media(
        CALL_ID, PACKET, TIMESTAMP
    )


def test_client_send_of_a_media_event_uses_buffer_format() -> None:
    server, client = registered()
    [message] = client.send(Media(CALL_ID, PACKET, 5))
    assert json.loads(message)["payload"]["type"] == "Buffer"
    assert single(server.receive_message(message)) == Media(CALL_ID, PACKET, 5)


@settings(max_examples=50, deadline=None)
@given(
    packet=st.binary(min_size=1, max_size=1500),
    payload_format=st.sampled_from(["buffer", "base64", "list", "binary"]),
)
def test_any_packet_survives_any_format(packet: bytes, payload_format: str) -> None:
    server, client = registered()
    event = single(server.receive_message(client.media(packet, 1, payload_format)))
    assert isinstance(event, Media)
    assert event.payload == packet


def test_greeting_round_trips() -> None:
    server, client = registered()
    wav = encode_mulaw_wav(bytes(range(256)) * 10)
    message = server.greeting(wav)
    assert json.loads(message) == {
        "event": "greeting",
        "payload": {"type": "Buffer", "data": list(wav)},
    }
    assert single(client.receive_message(message)) == Greeting(wav)


def test_interrupt_round_trips() -> None:
    server, client = registered()
    message = server.interrupt()
    assert json.loads(message) == {"event": "interrupt", "callId": CALL_ID}
    assert single(client.receive_message(message)) == Interrupt(CALL_ID)


def test_speech_round_trips_as_one_complete_wav() -> None:
    server, client = registered()
    audio = bytes(range(256)) * 40
    [message] = server.speech(audio, TIMESTAMP)
    parsed = json.loads(message)
    assert parsed["event"] == "media"
    assert parsed["callId"] == CALL_ID
    assert parsed["timestamp"] == TIMESTAMP
    assert parsed["payload"]["type"] == "Buffer"
    event = single(client.receive_message(message))
    assert event == SpeechChunk(CALL_ID, encode_mulaw_wav(audio), TIMESTAMP)
    wav = decode_wav(event.wav)
    assert (wav.format_tag, wav.sample_rate, wav.channels, wav.data) == (7, 8000, 1, audio)


def test_speech_given_a_wav_sends_its_samples() -> None:
    server, client = registered()
    audio = bytes(range(200))
    [message] = server.speech(encode_mulaw_wav(audio), TIMESTAMP)
    assert decode_wav(single(client.receive_message(message)).wav).data == audio


def test_empty_speech_sends_nothing() -> None:
    server, _ = registered()
    assert server.speech(b"", TIMESTAMP) == []


# --- the 1 MB limit on outgoing speech -------------------------------------------------


def test_ten_minutes_of_worst_case_speech_is_split_under_one_megabyte() -> None:
    server, client = registered()
    audio = bytes(range(100, 256)) * (10 * 60 * 8000 // 156 + 1)
    messages = server.speech(audio, TIMESTAMP)
    assert len(messages) > 1
    chunks = []
    for message in messages:
        assert len(message.encode()) < MAX_MESSAGE_SIZE
        event = single(client.receive_message(message))
        assert isinstance(event, SpeechChunk)
        wav = decode_wav(event.wav)
        assert (wav.format_tag, wav.sample_rate, wav.channels) == (7, 8000, 1)
        chunks.append((event.timestamp, wav.data))
    assert b"".join(data for _, data in chunks) == audio
    timestamps = [timestamp for timestamp, _ in chunks]
    assert timestamps[0] == TIMESTAMP
    assert timestamps == sorted(timestamps)
    # each part carries its offset in the utterance
    offset = sum(len(data) for _, data in chunks[:-1])
    assert timestamps[-1] == TIMESTAMP + offset * 1000 // 8000
    # parts are equal, not full-then-scrap
    assert max(map(len, (d for _, d in chunks))) - min(map(len, (d for _, d in chunks))) <= 1


def test_speech_just_under_the_limit_is_one_message_and_just_over_is_two() -> None:
    server, _ = registered()
    most = server.max_speech_samples(TIMESTAMP + 60_000)
    assert len(server.speech(b"\xff" * most, TIMESTAMP)) == 1
    assert len(server.speech(b"\xff" * (most + 1), TIMESTAMP)) == 2


@settings(max_examples=40, deadline=None)
@given(audio=st.binary(min_size=1, max_size=5000), limit=st.integers(400, 3000))
def test_any_speech_splits_into_messages_within_any_limit(audio: bytes, limit: int) -> None:
    server, _ = registered(max_message_size=limit)
    client = ClientProtocol(CALL_ID, max_message_size=limit)
    client.connect()
    client.receive_message(text(event="connected", data={"callId": CALL_ID}))
    messages = server.speech(audio, TIMESTAMP)
    assert all(len(message) <= limit for message in messages)
    wavs = [single(client.receive_message(message)).wav for message in messages]
    assert b"".join(decode_wav(wav).data for wav in wavs) == audio


def test_call_id_too_long_for_any_speech_is_refused() -> None:
    server = ServerProtocol(max_message_size=400)
    server.receive_message(text(event="connected", callId="x" * 128))  # the longest allowed
    server.acknowledge()
    with pytest.raises(MessageTooBig):
        server.speech(b"\x00" * 10, TIMESTAMP)


def test_greeting_over_the_limit_is_refused_and_the_state_stays() -> None:
    server, _ = registered(max_message_size=2000)
    with pytest.raises(MessageTooBig):
        server.greeting(encode_mulaw_wav(b"\xff" * 1000))
    assert server.state is ServerState.ACTIVE
    assert server.statistics().messages_sent == 1  # the acknowledgement only


def test_a_speech_chunk_over_the_limit_is_refused() -> None:
    server, _ = registered(max_message_size=2000)
    with pytest.raises(MessageTooBig):
        server.send(SpeechChunk(CALL_ID, encode_mulaw_wav(b"\xff" * 1000), TIMESTAMP))


# --- closing ---------------------------------------------------------------------------


def test_close_moves_to_closing_then_closed() -> None:
    server, _ = registered()
    assert server.close(CloseCode.GOING_AWAY, "server going away") == CloseConnection(
        1001, "server going away"
    )
    assert server.state is ServerState.CLOSING
    assert server.close() == CloseConnection(1000)  # idempotent
    assert server.receive_close(1001, "server going away") == [
        CallClosed(1001, "server going away")
    ]
    assert server.state is ServerState.CLOSED
    assert server.statistics().close_code == 1001


def test_peer_close_in_any_state_ends_the_call() -> None:
    server = ServerProtocol()
    assert server.receive_close(1000) == [CallClosed(1000, "")]
    assert server.state is ServerState.CLOSED


def test_close_reasons_fit_in_a_close_frame() -> None:
    server, _ = registered()
    event = single(server.receive_message(text(event="connected", callId="é" * 500)))
    assert_closes(event)
    assert len(event.reason.encode()) <= 123
    assert len(server.close(1000, "ü" * 200).reason.encode()) <= 123


# --- the transition tables and local misuse --------------------------------------------

SERVER_SENDS = {
    ConnectedAck: lambda: ConnectedAck(CALL_ID),
    Greeting: lambda: Greeting(encode_mulaw_wav(b"\x01\x02")),
    SpeechChunk: lambda: SpeechChunk(CALL_ID, encode_mulaw_wav(b"\x01"), 1),
    Interrupt: lambda: Interrupt(CALL_ID),
}


def server_in(state: ServerState) -> ServerProtocol:
    server = ServerProtocol()
    if state is not ServerState.AWAITING_REGISTRATION:
        server.receive_message(text(event="connected", callId=CALL_ID))
    if state is ServerState.ACTIVE:
        server.acknowledge()
    if state is ServerState.CLOSING:
        server.close()
    if state is ServerState.CLOSED:
        server.receive_close(1000)
    return server


@pytest.mark.parametrize("state", list(ServerState))
@pytest.mark.parametrize("kind", list(SERVER_SENDS))
def test_server_sends_exactly_what_its_table_allows(state: ServerState, kind: type) -> None:
    server = server_in(state)
    assert server.state is state
    allowed = (state, kind) in SERVER_TRANSITIONS
    if allowed:
        assert server.send(SERVER_SENDS[kind]())
        assert server.state is SERVER_TRANSITIONS[(state, kind)]
    else:
        with pytest.raises(LocalProtocolError):
            server.send(SERVER_SENDS[kind]())
        assert server.state is state


def test_server_table_allows_our_audio_only_after_the_acknowledgement() -> None:
    for kind in (Greeting, SpeechChunk, Interrupt):
        allowed = {state for state in ServerState if (state, kind) in SERVER_TRANSITIONS}
        assert allowed == {ServerState.ACTIVE}
    assert (ServerState.REGISTERED, Media) in SERVER_TRANSITIONS
    assert (ServerState.AWAITING_REGISTRATION, Media) not in SERVER_TRANSITIONS


def test_server_never_sends_client_events() -> None:
    server, _ = registered()
    with pytest.raises(LocalProtocolError, match="never sends"):
        server.send(Media(CALL_ID, PACKET, 1))


def test_acknowledging_twice_is_a_local_error() -> None:
    server, _ = registered()
    with pytest.raises(LocalProtocolError):
        server.acknowledge()


def test_speech_before_the_acknowledgement_is_a_local_error() -> None:
    server, _ = registered(ack=False)
    with pytest.raises(LocalProtocolError):
        server.speech(b"\x01", TIMESTAMP)


def test_events_for_another_call_are_a_local_error() -> None:
    server, _ = registered()
    with pytest.raises(LocalProtocolError):
        server.send(Interrupt("other"))
    with pytest.raises(LocalProtocolError):
        server.send(SpeechChunk("other", encode_mulaw_wav(b"\x01"), 1))


@pytest.mark.parametrize("timestamp", [-1, 1.5, None, "1"])
def test_speech_timestamp_must_be_non_negative_integer_ms(timestamp: object) -> None:
    server, _ = registered()
    with pytest.raises(ValueError, match="timestamp"):
        server.speech(b"\x01", timestamp)  # type: ignore[arg-type]


def test_greeting_must_be_a_wav() -> None:
    server, _ = registered()
    with pytest.raises(ValueError, match="WAV"):
        server.greeting(b"\xff" * 100)


def test_client_media_before_connect_is_a_local_error() -> None:
    client = ClientProtocol(CALL_ID)
    with pytest.raises(LocalProtocolError):
        client.media(PACKET, 1)


@pytest.mark.parametrize(
    ("packet", "payload_format", "error"),
    [(b"", "buffer", "never empty"), (PACKET, "hex", "unknown payload format")],
    ids=["empty", "format"],
)
def test_client_media_arguments_are_checked(packet: bytes, payload_format: str, error: str) -> None:
    _, client = registered()
    with pytest.raises(ValueError, match=error):
        client.media(packet, 1, payload_format)  # type: ignore[arg-type]


def test_client_constructor_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        ClientProtocol("")
    with pytest.raises(ValueError, match="may not replace"):
        ClientProtocol(CALL_ID, extra={"callId": "other"})


def test_client_table_walks_idle_to_active() -> None:
    assert CLIENT_TRANSITIONS[(ClientState.IDLE, Connected)] is ClientState.AWAITING_ACK
    assert CLIENT_TRANSITIONS[(ClientState.AWAITING_ACK, ConnectedAck)] is ClientState.ACTIVE
    for state in ClientState:
        assert (state, CallClosed) in CLIENT_TRANSITIONS


# --- statistics ------------------------------------------------------------------------


def test_statistics_count_what_happened() -> None:
    server, client = registered()
    server.receive_message(client.media(PACKET, 1))
    server.receive_message(PACKET)
    server.receive_message("{")
    server.receive_message(text(event="media", callId=CALL_ID, payload=[]))
    server.speech(b"\x01" * 10, TIMESTAMP)
    stats = server.statistics()
    assert stats.state == "active"
    assert stats.messages_received == 5  # connected, 2 media, 2 skipped
    assert stats.media_received == 2
    assert stats.messages_sent == 2  # ack and one speech chunk
    assert stats.skipped["malformed_json"] == 1
    assert stats.skipped["bad_payload"] == 1
    assert stats.skipped_total == 2
    assert stats.close_code is None
