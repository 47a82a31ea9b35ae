"""Conversation events: the bus on its own, then a whole call of the voice bot (real VAD,
STT and TTS, the deterministic echo LLM) seen as ``message.new`` and ``call.state``
events, and an operator's ``send_message`` heard by the caller."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import ExitStack
from difflib import SequenceMatcher
from typing import Any

import numpy as np
import pytest
import trio

from pipeline.bot.conversation import TurnRecord
from pipeline.bot.messages import (
    MAX_CONTENT_CHARS,
    CallState,
    CallStateChange,
    ConversationBus,
    MessageNew,
)
from pipeline.caller.emulator import converse, open_call
from stages import mulaw
from stages.llm import EchoLlm

from .test_voicebot import LONG_REPLY, caller, voice_bot, words


class ScriptedSpeaker:
    """Stands in for a conversation: 'says' the text at once, as heard in full."""

    def __init__(self) -> None:
        self.said: list[tuple[str, dict[str, Any]]] = []

    async def say(self, text: str, metadata: Mapping[str, Any] | None = None) -> TurnRecord:
        self.said.append((text, dict(metadata or {})))
        await trio.sleep(0.1)
        now = trio.current_time()
        return TurnRecord(
            len(self.said),
            source="operator",
            reply_text=text,
            heard_text=text,
            bot_started_at=now - 0.1,
            bot_ended_at=now + 1.0,
            metadata=dict(metadata or {}),
        )


def drain(subscription) -> list:
    events = []
    while True:
        try:
            events.append(subscription.receive_nowait())
        except trio.WouldBlock:
            return events


def test_subscribers_get_only_their_channels_and_a_slow_one_loses_counted_events():
    bus = ConversationBus(subscriber_capacity=4)
    with (
        bus.subscribe(["a"]) as only_a,
        bus.subscribe() as everything,
        bus.subscribe(["b"], capacity=2) as slow_b,
    ):
        for index in range(5):
            bus.publish(CallStateChange("a", CallState.CONNECTING, f"a{index}"))
            bus.publish(CallStateChange("b", CallState.CONNECTED, f"b{index}"))
        assert [event.message for event in drain(only_a)] == ["a0", "a1", "a2", "a3"]
        assert only_a.dropped == 1  # its buffer holds 4: the fifth was dropped, not waited for
        assert len(drain(everything)) == 4
        assert [event.message for event in drain(slow_b)] == ["b0", "b1"]
        assert slow_b.dropped == 3
        only_a.update(["b"])  # follow another channel from now on
        bus.publish(CallStateChange("a", CallState.DISCONNECTED))
        bus.publish(CallStateChange("b", CallState.DISCONNECTED))
        assert [event.channel_id for event in drain(only_a)] == ["b"]
    assert bus.statistics()["subscribers"] == 0
    assert bus.dropped == 1 + 6 + 3


async def test_subscription_iterates_until_closed():
    bus = ConversationBus()
    subscription = bus.subscribe(["a"])
    bus.publish(CallStateChange("a", CallState.CONNECTED))
    subscription.close()
    bus.publish(CallStateChange("a", CallState.DISCONNECTED))  # after closing: not delivered
    assert [event.state async for event in subscription] == [CallState.CONNECTED]


def error_of(result) -> tuple[int, str]:
    shape = result.as_json()
    assert shape["status"]["error"] is True
    assert shape["response"] == {"message": None}
    data = shape["status"]["errorData"]
    assert set(data) == {"message", "statusCode"}
    return data["statusCode"], data["message"]


async def test_send_message_results_have_the_chat_shape():
    bus = ConversationBus()
    speaker = ScriptedSpeaker()
    with bus.open_channel("call-1", speaker, origin=trio.current_time()), bus.subscribe() as events:
        result = await bus.send_message("call-1", "  Your order is ready.  ", {"agent": "sam"})
        assert result.status.error is False
        message = result.response.message
        assert message.content == "Your order is ready."
        assert message.metadata["agent"] == "sam"
        assert message.metadata["role"] == "bot"
        assert message.metadata["source"] == "operator"
        shape = result.as_json()
        assert shape["status"] == {"error": False, "errorData": None}
        assert shape["response"]["message"]["channelId"] == "call-1"
        assert shape["response"]["message"]["id"] == message.id
        assert shape["response"]["message"]["createdAt"].endswith("Z")
        (published,) = drain(events)
        assert published.as_json() == {
            "type": "message.new",
            "data": {"message": message.as_json()},
        }
        assert speaker.said == [("Your order is ready.", {"agent": "sam"})]

        assert error_of(await bus.send_message("call-1", "   "))[0] == 400
        assert error_of(await bus.send_message("call-1", 42))[0] == 400  # type: ignore[arg-type]
        too_long = "x" * (MAX_CONTENT_CHARS + 1)
        assert error_of(await bus.send_message("call-1", too_long))[0] == 413
        assert error_of(await bus.send_message("call-1", "hi", ["x"]))[0] == 400  # type: ignore[arg-type]
        code, text = error_of(await bus.send_message("nope", "hello"))
        assert code == 404
        assert "nope" in text
    code, text = error_of(await bus.send_message("call-1", "hello"))
    assert code == 410
    assert "ended" in text
    assert len(speaker.said) == 1  # no error case reached the call


async def test_a_whole_conversation_is_published_with_reply_links():
    greeting = "Good morning, this is the bakery."
    sentences = ["Please book a table for four people.", "Do you have fresh bread today?"]
    with trio.fail_after(90):
        async with voice_bot(EchoLlm(), greeting=greeting) as (bot, url):
            with (
                bot.messages.subscribe(["conv-1"]) as events,
                bot.messages.subscribe(["x"]) as other,
            ):
                async with open_call(url, call_id="conv-1") as call:
                    await call.wait_for_greeting()
                    await call.listen_until_quiet(0.3)
                    await converse(call, [(s, caller(s)) for s in sentences], pause=0.3)
                await trio.sleep(0.5)  # the call ends on the server
                published = drain(events)
                assert drain(other) == []
    states = [e.state for e in published if isinstance(e, CallStateChange)]
    assert states == [CallState.CONNECTING, CallState.CONNECTED, CallState.DISCONNECTED]
    messages = [e.message for e in published if isinstance(e, MessageNew)]
    roles = [(m.metadata["role"], m.metadata["turn"]) for m in messages]
    assert roles == [("bot", 0), ("caller", 1), ("bot", 1), ("caller", 2), ("bot", 2)]
    hello, *exchanges = messages
    assert hello.content == greeting
    assert hello.parent_id is None
    assert hello.metadata["source"] == "greeting"
    for (question, answer), sentence in zip(
        zip(exchanges[::2], exchanges[1::2], strict=True), sentences, strict=True
    ):
        assert question.channel_id == answer.channel_id == "conv-1"
        assert words(question.content) == words(sentence)
        assert question.parent_id is None
        assert answer.parent_id == question.id  # the reply points at what it answers
        assert answer.content == f"You said: {question.content}"
        assert answer.metadata["interrupted"] is False
        assert 0 < question.metadata["sttConfidence"] <= 1
        assert question.metadata["start"] < question.metadata["end"] < answer.metadata["start"]
        assert answer.metadata["start"] < answer.metadata["end"]
        assert "first_send" in answer.metadata["latencyMs"]
        assert "stt" in question.metadata["latencyMs"]
    assert len({m.id for m in messages}) == len(messages)
    assert [m.created_at for m in messages] == sorted(m.created_at for m in messages)


async def test_a_barged_in_reply_is_published_as_interrupted():
    with trio.fail_after(90):
        async with voice_bot(EchoLlm(LONG_REPLY), greeting="") as (bot, url):
            with bot.messages.subscribe() as events:
                async with open_call(url) as call:
                    spoken = await call.speak(caller("What are your opening hours?"))
                    await call.wait_for_bot_audio(spoken.speech_end_at)
                    await trio.sleep(2.0)  # past the continuation window: a barge-in
                    await call.speak(caller("Sorry, I only wanted to know about Sunday."))
                    # the second question is published once its turn is committed, which
                    # may come after audio of the cut reply already on its way; and if an
                    # answer to "Sorry," alone started in the comma's pause, that withdrawn
                    # turn is published before the whole sentence
                    published: list = []
                    while not any("sunday" in words(m.content) for m in published[2:]):
                        await trio.sleep(0.1)
                        published += [e.message for e in drain(events) if isinstance(e, MessageNew)]
    first_question, cut, *rest = published
    assert cut.parent_id == first_question.id
    assert cut.metadata["interrupted"] is True
    assert 0 < len(cut.content) < len(cut.metadata["replyText"]) / 2  # what was heard
    assert cut.metadata["replyText"].startswith(cut.content.rstrip("."))
    callers = [m for m in rest if m.metadata["role"] == "caller"]
    assert words(callers[-1].content)[:3] == ["sorry", "i", "only"]  # answered whole


async def test_send_message_makes_the_bot_say_it_into_the_call():
    line = "Your order is ready at the front desk, please come in."
    with trio.fail_after(90):
        async with voice_bot(EchoLlm(), greeting="") as (bot, url):
            bus = bot.messages
            async with open_call(url, call_id="op-1") as call:
                await trio.sleep(0.5)
                asked_at = trio.current_time()
                result = await bus.send_message("op-1", line, {"agent": "ops"})
                assert result.status.error is False, result.as_json()
                await call.wait_for_bot_audio(asked_at)
                await call.listen_until_quiet(0.3)
                heard = np.concatenate(
                    [mulaw.decode(a.mulaw) for a in call.bot_audio_since(asked_at)]
                )
                transcript = await bot.services.stt.transcribe(heard, 8000)
                conversation = bot.conversations["op-1"]
                assert words(conversation.history[-1].content) == words(line)
            await trio.sleep(0.5)
            ended = await bus.send_message("op-1", "Are you still there?")
    # Piper samples its prosody, so Whisper tiny may mishear a word now and then
    assert SequenceMatcher(None, words(transcript.text), words(line)).ratio() >= 0.8
    message = result.response.message
    assert words(message.content) == words(line)  # as spoken: clause by clause
    assert message.metadata["replyText"] == line
    assert message.metadata["source"] == "operator"
    assert message.metadata["agent"] == "ops"
    assert message.metadata["interrupted"] is False
    assert "first_send" in message.metadata["latencyMs"]
    assert error_of(ended)[0] == 410


@pytest.mark.parametrize("bad", ["", "   "])
async def test_say_refuses_nothing_to_say(bad):
    bus = ConversationBus()
    with bus.open_channel("c", ScriptedSpeaker(), origin=0.0):
        assert error_of(await bus.send_message("c", bad))[0] == 400


async def test_a_redial_replaces_a_live_channel_and_the_old_one_cannot_end_the_new():
    bus = ConversationBus()
    old_speaker, new_speaker = ScriptedSpeaker(), ScriptedSpeaker()
    with bus.subscribe(["call-1"]) as events, ExitStack() as old_connection:
        old = old_connection.enter_context(bus.open_channel("call-1", old_speaker, origin=0.0))
        old.state(CallState.CONNECTED)
        with bus.open_channel("call-1", new_speaker, origin=0.0) as new:  # the re-dial
            new.state(CallState.CONNECTED)
            old.state(CallState.DISCONNECTED)  # the old call's bot ends after the re-dial
            old_connection.close()
            assert bus.live_channels() == ["call-1"]
            result = await bus.send_message("call-1", "Welcome back.")
            assert result.status.error is False
            assert [text for text, _ in new_speaker.said] == ["Welcome back."]
            assert old_speaker.said == []
            assert [
                (event.state, event.message)
                for event in drain(events)
                if isinstance(event, CallStateChange)
            ] == [
                (CallState.CONNECTED, None),
                (CallState.DISCONNECTED, "replaced by a new connection"),
                (CallState.CONNECTED, None),  # the last word on call-1: live
            ]
            new.state(CallState.DISCONNECTED)
        assert [event.state for event in drain(events)] == [CallState.DISCONNECTED]
    assert bus.live_channels() == []
    assert error_of(await bus.send_message("call-1", "Hello?"))[0] == 410
