"""The ``/events`` socket under any sequence of requests: one defined answer each, never a crash.

A hypothesis state machine drives the socket's request handling (the session behind
:func:`pipeline.bot.events_socket.serve_events`, on a recording stand-in for the
WebSocket and a real :class:`~pipeline.bot.messages.ConversationBus`) with subscribe,
unsubscribe and sendMessage requests, valid and not, garbled text, invalid UTF-8 bytes,
deeply nested JSON and unknown types, while calls open and end on the bus. A model of
what the client follows predicts each answer: every request gets exactly one reply, a
bad one an ``error`` (400) and the socket stays usable, a send reaches a live call and
is refused with the bus's status (404, 410, 400, 413) otherwise, and a spoken line is
delivered to the client only when it follows that call.
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from typing import Any

import trio
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

from pipeline.bot.conversation import TurnRecord
from pipeline.bot.events_socket import MAX_CHANNEL_IDS, _EventsSession
from pipeline.bot.messages import MAX_CONTENT_CHARS, ConversationBus
from pipeline.protocol.identifiers import call_id_problem

FIRST_CALLS = ("c1", "c2")  # live from the start, so sends and deliveries are reached
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
ANSWERS = {"error", "subscribed", "sendMessage.result"}


class RecordingSocket:
    """Stands in for the WebSocket: keeps what the session sends."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_message(self, text: str) -> None:
        self.sent.append(json.loads(text))


class FakeSpeaker:
    """A call that says every line at once (what the bus needs of a conversation)."""

    def __init__(self) -> None:
        self.said: list[str] = []

    async def say(self, text: str, metadata: Any = None) -> TurnRecord:
        self.said.append(text)
        record = TurnRecord(len(self.said), source="operator", reply_text=text, heard_text=text)
        record.bot_started_at = record.bot_ended_at = trio.current_time()
        return record


call_ids = st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True)
bad_ids = st.one_of(st.text(max_size=10), st.integers(), st.none(), st.just("a b"), st.just(""))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)


class EventsSocketMachine(RuleBasedStateMachine):
    calls = Bundle("calls")
    channel_lists = st.lists(
        st.one_of(calls, call_ids, st.sampled_from(["*", *FIRST_CALLS])), max_size=4
    )

    @initialize()
    def start(self) -> None:
        self.bus = ConversationBus()
        self.socket = RecordingSocket()
        self.exits = ExitStack()
        self.subscription = self.exits.enter_context(self.bus.subscribe([]))
        self.session = _EventsSession(self.socket, self.bus, self.subscription)  # type: ignore[arg-type]
        self.following: set[str] | None = set()  # the model: None follows every call
        self.live: dict[str, tuple[FakeSpeaker, ExitStack]] = {}
        self.ended: set[str] = set()
        for call_id in FIRST_CALLS:
            self.call_starts(call_id)

    def teardown(self) -> None:
        for _, stack in self.live.values():
            stack.close()
        self.exits.close()

    def request(self, raw: str | bytes) -> dict[str, Any]:
        """One request through the session, in its own Trio run; its one reply."""
        before = len(self.socket.sent)

        async def handle() -> None:
            async with trio.open_nursery() as nursery:
                self.session._nursery = nursery
                await self.session._handle(raw)

        trio.run(handle)
        replies = self.socket.sent[before:]
        assert len(replies) == 1, replies
        (reply,) = replies
        assert reply["type"] in ANSWERS
        if reply["type"] == "error":
            assert reply["error"]["statusCode"] == 400
            assert reply["error"]["message"]
        return reply

    def follows(self, call_id: str) -> bool:
        return self.following is None or call_id in self.following

    def shown(self) -> list[str]:
        return ["*"] if self.following is None else sorted(self.following)

    # --- calls on the bus ------------------------------------------------------------

    @rule(target=calls, call_id=call_ids)
    def call_starts(self, call_id: str) -> str:
        if call_id in self.live:
            self.live.pop(call_id)[1].close()  # a re-dial replaces the live one
        speaker, stack = FakeSpeaker(), ExitStack()
        stack.enter_context(self.bus.open_channel(call_id, speaker, 0.0))
        self.live[call_id] = (speaker, stack)
        self.ended.discard(call_id)
        return call_id

    @rule(call_id=calls)
    def call_ends(self, call_id: str) -> None:
        if call_id in self.live:
            self.live.pop(call_id)[1].close()
            self.ended.add(call_id)

    # --- requests --------------------------------------------------------------------

    @rule(ids=channel_lists)
    def subscribe(self, ids: list[str]) -> None:
        reply = self.request(json.dumps({"type": "subscribe", "channelIds": ids}))
        self.following = None if "*" in ids else set(ids)
        assert reply == {"type": "subscribed", "channelIds": self.shown()}

    @rule(ids=channel_lists)
    def unsubscribe(self, ids: list[str]) -> None:
        reply = self.request(json.dumps({"type": "unsubscribe", "channelIds": ids}))
        if "*" in ids:
            self.following = set()
        elif self.following is not None:
            self.following -= set(ids)
        assert reply == {"type": "subscribed", "channelIds": self.shown()}

    @rule(kind=st.sampled_from(["subscribe", "unsubscribe"]), ids=json_values | bad_ids)
    def bad_channel_ids(self, kind: str, ids: Any) -> None:
        valid = (
            isinstance(ids, list)
            and len(ids) <= MAX_CHANNEL_IDS
            and all(i == "*" or call_id_problem(i) is None for i in ids)
        )
        if valid:
            return  # covered by the rules above
        reply = self.request(json.dumps({"type": kind, "channelIds": ids}))
        assert reply["type"] == "error"

    @rule(
        data=st.data(),
        content=st.one_of(
            st.text(max_size=30),
            st.sampled_from(["Hello.", "One moment, please.", "  Your table is booked. "]),
            st.integers(MAX_CONTENT_CHARS + 1, MAX_CONTENT_CHARS + 50).map(lambda n: "x" * n),
        ),
        request_id=st.one_of(st.none(), st.integers(), st.text(max_size=8)),
        metadata=st.one_of(st.none(), st.dictionaries(st.text(max_size=5), st.integers())),
    )
    def send_message(self, data: Any, content: str, request_id: Any, metadata: Any) -> None:
        live, ended = sorted(self.live), sorted(self.ended)
        choices = [st.sampled_from(known) for known in (live, live, ended) if known]
        channel = data.draw(st.one_of(*choices, call_ids), label="channel")
        request = {"type": "sendMessage", "channelId": channel, "content": content}
        if request_id is not None:
            request["requestId"] = request_id
        if metadata is not None:
            request["metadata"] = metadata
        delivered_before = self.subscription.delivered
        reply = self.request(json.dumps(request))
        if reply["type"] == "error":  # a requestId out of bounds: refused before the bus
            assert isinstance(request_id, str)
            return
        assert reply["requestId"] == request_id
        error = reply["status"]["errorData"]
        if not content.strip():
            expected = 400
        elif len(content) > MAX_CONTENT_CHARS:
            expected = 413
        elif channel in self.live:
            expected = None
        else:
            expected = 410 if channel in self.ended else 404
        assert (error and error["statusCode"]) == expected, reply
        event(f"sendMessage answered {expected or 'ok'}")
        if expected is None:
            assert self.live[channel][0].said[-1] == content.strip()
            got_it = self.subscription.delivered > delivered_before
            assert got_it == self.follows(channel)

    @rule(value=json_values, kind=st.one_of(st.none(), st.text(max_size=12), st.integers()))
    def unknown_or_missing_type(self, value: Any, kind: Any) -> None:
        if kind in ("subscribe", "unsubscribe", "sendMessage"):
            return
        request = {"type": kind, "value": value} if kind is not None else {"value": value}
        assert self.request(json.dumps(request))["type"] == "error"

    @rule(raw=st.one_of(st.text(max_size=40), st.binary(max_size=40)))
    def garbled(self, raw: str | bytes) -> None:
        self.request(raw)

    @rule(depth=st.integers(1, 100_000), opener=st.sampled_from(["[", '{"a":']))
    def deeply_nested(self, depth: int, opener: str) -> None:
        self.request(opener * depth)

    @rule(value=json_values)
    def not_an_object(self, value: Any) -> None:
        if isinstance(value, dict):
            return
        assert self.request(json.dumps(value))["type"] == "error"

    # --- invariants ------------------------------------------------------------------

    @invariant()
    def follows_what_the_model_says(self) -> None:
        ids = self.subscription.channel_ids
        assert (None if ids is None else set(ids)) == self.following
        assert self.session.pending_sends == 0


EventsSocketMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestEventsSocket = EventsSocketMachine.TestCase
