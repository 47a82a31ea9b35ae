"""The bot side of the protocol under any sequence of messages: defined events, never a crash.

A hypothesis state machine drives one :class:`~pipeline.protocol.bot_side.ServerProtocol`
with valid, invalid and garbled input (registration with good and bad identifiers, media in
every payload form and for other calls, binary frames, broken JSON, JSON that is not an
object, unknown events, messages over the limit, the WebSocket closing) interleaved with
the bot's own sends (acknowledgement, greeting, speech, interrupt, close). A model of the
state predicts every outcome; the invariants hold after each step: the state only moves
along ``SERVER_TRANSITIONS``, the callId never changes once registered, and the counters
agree with the events returned.

Deterministic in CI: ``derandomize`` and a bounded number of examples (``FUZZ_EXAMPLES``
raises it for a longer local run).
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from pipeline.protocol.bot_side import (
    SERVER_TRANSITIONS,
    LocalProtocolError,
    ServerProtocol,
    ServerState,
)
from pipeline.protocol.events import (
    CallClosed,
    CloseCode,
    Connected,
    Media,
    MessageSkipped,
    ProtocolViolation,
    SkipReason,
    SpeechChunk,
)
from pipeline.protocol.identifiers import call_id_problem, mobile_no_problem
from pipeline.protocol.payload import encode_base64, encode_buffer_object
from pipeline.protocol.platform_side import ClientProtocol
from stages.wav import decode_wav, encode_mulaw_wav

LIMIT = 4096  # a small message limit, so "too big" is cheap to reach
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
S = ServerState

call_ids = st.one_of(
    st.from_regex(r"[A-Za-z0-9_.:-]{1,24}", fullmatch=True),
    st.text(max_size=40),  # mostly invalid: spaces, slashes, non-ASCII, empty
    st.integers(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
mobile_nos = st.one_of(
    st.from_regex(r"\+?[0-9]{0,15}", fullmatch=True), st.text(max_size=40), st.integers()
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
packets = st.binary(min_size=1, max_size=200)


def payload_forms(packet: bytes) -> list[object]:
    """The payload shapes platforms send for one packet."""
    return [encode_buffer_object(packet), encode_base64(packet), list(packet)]


class ServerProtocolMachine(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.protocol = ServerProtocol(max_message_size=LIMIT)
        self.state = S.AWAITING_REGISTRATION  # the model's
        self.call_id: str | None = None
        self.received = 0
        self.media = 0
        self.skipped = 0

    # --- helpers ------------------------------------------------------------------

    def receive(self, message: str | bytes) -> object:
        before = self.protocol.state
        events = self.protocol.receive_message(message)
        self.received += 1
        assert len(events) == 1
        (event,) = events
        assert isinstance(event, Connected | Media | MessageSkipped | ProtocolViolation)
        if before in (S.CLOSING, S.CLOSED):
            assert event == MessageSkipped(SkipReason.AFTER_CLOSE, event.detail)
        if isinstance(event, MessageSkipped):
            self.skipped += 1
        elif isinstance(event, Media):
            self.media += 1
            assert event.call_id == self.call_id
            assert event.payload
        elif isinstance(event, ProtocolViolation):
            assert event.code in (CloseCode.PROTOCOL_ERROR, CloseCode.MESSAGE_TOO_BIG)
            assert event.reason
            self.state = S.CLOSING
        after = self.protocol.state
        assert after == before or SERVER_TRANSITIONS.get((before, type(event))) == after
        return event

    @property
    def open(self) -> bool:
        return self.state not in (S.CLOSING, S.CLOSED)

    # --- the platform's messages ----------------------------------------------------

    @rule(
        call_id=call_ids,
        mobile_no=mobile_nos,
        extra=st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    )
    def connected(self, call_id: object, mobile_no: object, extra: dict) -> None:
        message = json.dumps(
            {**extra, "event": "connected", "callId": call_id, "mobileNo": mobile_no}
        )
        was = self.state
        event = self.receive(message)
        mobile = str(mobile_no) if type(mobile_no) is int else mobile_no
        valid = (
            type(call_id) is str
            and type(mobile) is str
            and call_id_problem(call_id) is None
            and mobile_no_problem(mobile) is None
        )
        if was in (S.CLOSING, S.CLOSED):
            return
        if len(message) > LIMIT or (was is S.AWAITING_REGISTRATION and not valid):
            assert isinstance(event, ProtocolViolation)
        elif was is S.AWAITING_REGISTRATION:
            assert isinstance(event, Connected)
            assert (event.call_id, event.mobile_no) == (call_id, mobile)
            self.state, self.call_id = S.REGISTERED, call_id
        elif call_id == self.call_id:
            assert event == MessageSkipped(SkipReason.DUPLICATE_CONNECTED, event.detail)  # type: ignore[union-attr]
        else:
            assert isinstance(event, ProtocolViolation)

    @rule(
        packet=packets,
        form=st.integers(0, 2),
        which=st.sampled_from(["own", "none", "other"]),
        timestamp=st.one_of(st.none(), st.integers(-5, 2**40), st.text(max_size=3)),
    )
    def media_json(self, packet: bytes, form: int, which: str, timestamp: object) -> None:
        message: dict[str, object] = {"event": "media", "payload": payload_forms(packet)[form]}
        if which == "own":
            message["callId"] = self.call_id
        elif which == "other":
            message["callId"] = f"{self.call_id}-other"
        if timestamp is not None:
            message["timestamp"] = timestamp
        was = self.state
        event = self.receive(json.dumps(message))
        if was in (S.CLOSING, S.CLOSED):
            return
        if len(json.dumps(message)) > LIMIT:
            assert isinstance(event, ProtocolViolation)
            assert event.code == CloseCode.MESSAGE_TOO_BIG
        elif was is S.AWAITING_REGISTRATION or which == "other":
            assert isinstance(event, ProtocolViolation)
        else:
            assert isinstance(event, Media)
            assert event.payload == packet
            assert event.timestamp == (timestamp if type(timestamp) is int else None)

    @rule(payload=json_values)
    def media_with_any_payload(self, payload: object) -> None:
        was = self.state
        event = self.receive(json.dumps({"event": "media", "payload": payload}))
        if was in (S.REGISTERED, S.ACTIVE) and isinstance(event, MessageSkipped):
            assert event.reason in (SkipReason.BAD_PAYLOAD, SkipReason.AFTER_CLOSE)

    @rule(data=st.binary(max_size=300))
    def binary_frame(self, data: bytes) -> None:
        was = self.state
        event = self.receive(data)
        if was is S.AWAITING_REGISTRATION:
            assert isinstance(event, ProtocolViolation)
        elif was in (S.REGISTERED, S.ACTIVE):
            assert isinstance(event, Media if data else MessageSkipped)

    @rule(text=st.text(max_size=60))
    def garbled_text(self, text: str) -> None:
        self.receive(text)

    @rule(value=json_values)
    def any_json(self, value: object) -> None:
        was = self.state
        event = self.receive(json.dumps(value))
        if was is S.AWAITING_REGISTRATION and not isinstance(value, dict):
            assert isinstance(event, ProtocolViolation)
        elif was in (S.REGISTERED, S.ACTIVE) and not isinstance(value, dict):
            assert event == MessageSkipped(SkipReason.NOT_AN_OBJECT, event.detail)  # type: ignore[union-attr]

    @rule(cut=st.integers(1, 60), packet=packets)
    def truncated(self, cut: int, packet: bytes) -> None:
        whole = json.dumps({"event": "media", "callId": self.call_id, "payload": list(packet)})
        self.receive(whole[: max(1, len(whole) - cut)])

    @rule(name=st.text(max_size=12).filter(lambda n: n not in ("connected", "media")))
    def unknown_event(self, name: str) -> None:
        was = self.state
        event = self.receive(json.dumps({"event": name}))
        if was not in (S.CLOSING, S.CLOSED):
            assert event == MessageSkipped(SkipReason.UNKNOWN_EVENT, event.detail)  # type: ignore[union-attr]

    @rule(extra=st.integers(1, 100), binary=st.booleans(), wide=st.booleans())
    def too_big(self, extra: int, binary: bool, wide: bool) -> None:
        was = self.state
        if binary:
            event = self.receive(b"\x80" * (LIMIT + extra))
        else:  # non-ASCII text counts as its UTF-8 size
            filler = "é" * ((LIMIT + extra) // 2 + 1) if wide else "x" * (LIMIT + extra)
            message = json.dumps({"event": "media", "pad": filler}, ensure_ascii=False)
            event = self.receive(message)
        if was not in (S.CLOSING, S.CLOSED):
            assert event == ProtocolViolation(CloseCode.MESSAGE_TOO_BIG, event.reason)  # type: ignore[union-attr]

    @rule(code=st.integers(1000, 4999))
    def socket_closed(self, code: int) -> None:
        (event,) = self.protocol.receive_close(code, "bye")
        assert event == CallClosed(code, "bye")
        self.state = S.CLOSED

    # --- the bot's sends -------------------------------------------------------------

    @rule()
    def acknowledge(self) -> None:
        if self.state is S.REGISTERED:
            message = json.loads(self.protocol.acknowledge())
            assert message == {"event": "connected", "data": {"callId": self.call_id}}
            self.state = S.ACTIVE
        else:
            with pytest.raises(LocalProtocolError):
                self.protocol.acknowledge()

    @rule(audio=st.binary(max_size=3000), timestamp=st.integers(0, 2**40))
    def speech(self, audio: bytes, timestamp: int) -> None:
        if self.state is not S.ACTIVE:
            with pytest.raises(LocalProtocolError):
                self.protocol.speech(audio, timestamp)
            return
        messages = self.protocol.speech(audio, timestamp)
        assert all(len(message) <= LIMIT for message in messages)
        client = ClientProtocol(self.call_id or "", "1")  # the platform reads them back
        client.connect()
        client.receive_message(json.dumps({"event": "connected", "data": {"callId": self.call_id}}))
        chunks = [event for m in messages for event in client.receive_message(m)]
        assert all(isinstance(chunk, SpeechChunk) for chunk in chunks)
        assert b"".join(decode_wav(chunk.wav).data for chunk in chunks) == audio

    @precondition(lambda self: self.state is S.ACTIVE)
    @rule()
    def greeting_and_interrupt(self) -> None:
        greeting = json.loads(self.protocol.greeting(encode_mulaw_wav(b"\xff" * 80, 8000)))
        assert greeting["event"] == "greeting"
        assert json.loads(self.protocol.interrupt()) == {
            "event": "interrupt",
            "callId": self.call_id,
        }

    @rule(code=st.sampled_from([1000, 1001, 1008, 1011]))
    def bot_closes(self, code: int) -> None:
        self.protocol.close(code, "bye")
        if self.state is not S.CLOSED:
            self.state = S.CLOSING

    # --- invariants ------------------------------------------------------------------

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert self.protocol.state is self.state
        assert self.protocol.call_id == self.call_id
        stats = self.protocol.statistics()
        assert stats.messages_received == self.received
        assert stats.media_received == self.media
        assert stats.skipped_total == self.skipped


ServerProtocolMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestServerProtocol = ServerProtocolMachine.TestCase
