"""The voice bot over a real WebSocket with real VAD, STT and TTS.

The LLM is the deterministic echo fake (named so in stages.llm) except in the one
test that runs the bundled SmolLM2, so what the bot says can be asserted exactly. These
are the end-to-end tests on real speech and real models; the turn manager's finer
behaviour is tested on the named fakes in test_turn_manager.py and test_reply_path.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import soundfile
import trio

from benchmarks.speech_corpus import speech
from pipeline.bot.config import BotConfig, ConversationConfig
from pipeline.bot.voicebot import VoiceBot
from pipeline.caller.emulator import converse, open_call
from pipeline.server.voice_stream import ServerConfig, VoiceStreamServer
from stages.llm import EchoLlm, LlmBackend

LONG_REPLY = (
    "You said {text}. Let me tell you about our opening hours, our bread, our cakes and "
    "everything else we bake every single morning of the week, starting very early. "
    "We also deliver to the whole town, and we take orders by phone for birthdays, weddings "
    "and every other celebration you can think of, large or small."
)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


@asynccontextmanager
async def voice_bot(
    llm: LlmBackend | None, **conversation: object
) -> AsyncIterator[tuple[VoiceBot, str]]:
    """A voice bot on a free port; ``llm=None`` means the configured default (local).
    Leaving the block shuts the server down, which waits for every call to end."""
    config = BotConfig(conversation=ConversationConfig(**conversation))
    bot = VoiceBot(config, llm=llm)
    server = VoiceStreamServer(ServerConfig(port=0), bot)
    async with trio.open_nursery() as nursery:
        ws_server = await nursery.start(server.serve)
        yield bot, f"ws://127.0.0.1:{ws_server.port}/"
        server.shutdown()


def caller(text: str) -> np.ndarray:
    return speech(text)


async def test_greeting_is_sent_as_the_greeting_event():
    greeting_text = "Good morning, this is the bakery."
    with trio.fail_after(30):
        async with voice_bot(EchoLlm(), greeting=greeting_text) as (bot, url):
            async with open_call(url) as call:
                greeting = await call.wait_for_greeting()
    assert greeting.duration > 1.0
    assert bot.greeting is not None
    assert bot.greeting[1] == greeting.mulaw  # made once at start-up, sent as is


async def test_caller_sentence_comes_back_in_the_reply():
    sentence = "Please book a table for four people tonight."
    with trio.fail_after(60):
        async with voice_bot(EchoLlm(), greeting="") as (bot, url), open_call(url) as call:
            (report,) = await converse(call, [("booking", caller(sentence))], pause=1.0)
    assert report.bot_messages >= 1
    assert report.voice_to_voice_ms is not None
    ((_, turns),) = bot.finished
    (turn,) = turns
    assert words(turn.caller_text) == words(sentence)
    assert turn.heard_text == f"You said: {turn.caller_text}"
    assert not turn.interrupted
    for stage in ("endpointing", "stt", "llm_first_token", "tts_first_chunk", "first_send"):
        assert stage in turn.timings_ms


async def test_barge_in_interrupts_cancels_and_truncates_history():
    with trio.fail_after(90):
        async with voice_bot(EchoLlm(LONG_REPLY), greeting="") as (bot, url):
            async with open_call(url) as call:
                spoken = await call.speak(caller("What are your opening hours?"))
                await call.wait_for_bot_audio(spoken.speech_end_at)
                await trio.sleep(2.0)  # the bot is talking, past the continuation window
                barged = await call.speak(caller("Sorry, I only wanted to know about Sunday."))
                await call.wait_for_bot_audio(barged.speech_end_at)  # the answer to it
                await trio.sleep(0.5)
    assert len(call.interrupts) == 1
    interrupt = call.interrupts[0]
    assert barged.started_at < interrupt < barged.speech_end_at  # while the caller talked
    ((_, turns),) = bot.finished
    first = turns[0]
    assert first.interrupted
    full = LONG_REPLY.format(text=first.caller_text)
    assert 0 < len(first.heard_text) < len(full) / 2  # only what the caller heard is kept
    assert full.startswith(first.heard_text.rstrip("."))
    # the reply was cancelled: after the interrupt, bot audio only comes for the next turn
    after = [a for a in call.received if a.kind == "media" and a.received_at > interrupt]
    assert after
    assert all(audio.received_at > barged.speech_end_at for audio in after)
    assert words(turns[1].caller_text)[:3] == ["sorry", "i", "only"]


async def test_real_local_llm_answers_with_speech():
    """The bundled SmolLM2-135M through llama.cpp: one short turn."""
    with trio.fail_after(120):
        async with voice_bot(None, greeting="") as (bot, url), open_call(url) as call:
            (report,) = await converse(call, [("q", caller("What is your name?"))], pause=0.3)
    assert report.bot_audio_seconds > 0.3
    ((_, turns),) = bot.finished
    assert turns[0].reply_text.strip()
    assert not turns[0].llm_failed


async def test_record_keeps_transcript_and_both_sides(tmp_path):
    config = BotConfig(conversation=ConversationConfig(greeting="Hello there."))
    bot = VoiceBot(config, llm=EchoLlm(), record_dir=tmp_path)
    server = VoiceStreamServer(ServerConfig(port=0), bot)
    sentence = "Please book a table for two."
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            ws_server = await nursery.start(server.serve)
            async with open_call(f"ws://127.0.0.1:{ws_server.port}/", call_id="rec-1") as call:
                await call.wait_for_greeting()
                await call.listen_until_quiet(0.3)
                await converse(call, [("booking", caller(sentence))], pause=0.3)
            server.shutdown()
    folder = tmp_path / "rec-1"
    lines = [json.loads(line) for line in (folder / "transcript.jsonl").read_text().splitlines()]
    roles = [(line["turn"], line["role"]) for line in lines]
    assert roles == [(0, "bot"), (1, "caller"), (1, "bot")]
    assert lines[0]["text"] == "Hello there."
    assert words(lines[1]["text"]) == words(sentence)
    assert lines[2]["text"] == f"You said: {lines[1]['text']}"
    assert lines[2]["interrupted"] is False
    assert "first_send" in lines[2]["latency_ms"]
    assert lines[0]["start"] < lines[0]["end"] < lines[1]["start"]  # the greeting came first
    assert lines[1]["end"] < lines[2]["start"] < lines[2]["end"]
    caller_audio, rate = soundfile.read(str(folder / "caller.wav"), dtype="int16")
    bot_audio, _ = soundfile.read(str(folder / "bot.wav"), dtype="int16")
    assert rate == 8000

    def span(audio: np.ndarray, line: dict) -> np.ndarray:
        return np.abs(audio[int(line["start"] * 8000) : int(line["end"] * 8000)])

    # both sides on one timeline: each voice where the transcript says it spoke
    assert span(bot_audio, lines[0]).mean() > 300  # the greeting
    assert span(bot_audio, lines[2]).mean() > 300  # the reply
    assert span(bot_audio, lines[1]).max() == 0  # the bot is silent while the caller talks
    assert span(caller_audio, lines[1]).mean() > 300
