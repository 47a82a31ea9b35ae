"""A reply the turn manager starts at a pause is speculative work for the model services:
under load its LLM request is shed, and the reply is answered once the turn is committed,
whole, with the shed counted in the turn's record. Virtual time, the named fakes, and a
pooled fake LLM with one context that another call's reply holds.
"""

from __future__ import annotations

from typing import Any

import trio

from pipeline.bot.config import ConversationConfig
from pipeline.bot.conversation import Conversation
from pipeline.bot.playback import Playout
from stages.llm import Responder
from stages.sentences import SpeechSplitter
from stages.transcriber import Transcriber
from stages.tts import Synthesizer
from stages.turns import SpeechPaused, SpeechSegment, TurnConfig
from tests.fakes import FakeCall, FakeScriptedStt, FakeToneTts, tone_burst
from tests.stages.test_speculative_replies import BUSY_LINE, FakePooledLlm, hold_context

RATE = 8000
QUESTION = "When do you open?"
ANSWER = "We open at seven."


def segment(start: float, end: float) -> SpeechSegment:
    """The endpointer's view of caller speech from ``start`` to ``end`` (Trio clock)."""
    now = trio.current_time()
    return SpeechSegment(
        samples=tone_burst(end - start),
        start_sample=round(start * RATE),
        end_sample=round(end * RATE),
        speech_start=round(start * RATE),
        speech_end=round(end * RATE),
        decided_sample=round(now * RATE),
        captured_at=now,
    )


async def test_a_reply_started_at_a_pause_is_shed_under_load_then_answered_whole(
    autojump_clock: Any,
) -> None:
    llm = FakePooledLlm({"busy": BUSY_LINE, QUESTION: ANSWER}, token_delay=0.2)
    tts, call = FakeToneTts(), FakeCall()
    conversation = Conversation(
        call,  # type: ignore[arg-type]
        config=ConversationConfig(greeting=""),
        reply_stages=lambda: [
            Transcriber(FakeScriptedStt([QUESTION])),
            Responder(llm, timeout_s=30.0),
            SpeechSplitter(),
            Synthesizer(tts),
        ],
        playout=Playout(),
        turns=TurnConfig(mode="hangover"),
    )
    send, receive = trio.open_memory_channel[Any](10)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conversation.run, receive)
            await nursery.start(hold_context, llm, "busy")  # another call, ~2.6 s of reply
            start = trio.current_time()
            await trio.sleep(1.0)  # the caller speaks
            await trio.sleep(0.2)
            await send.send(SpeechPaused(segment=segment(start, start + 1.0), captured_at=0.0))
            await trio.sleep(0.4)
            assert llm.pool.shed == 1  # nothing queued for the model, nothing sent
            assert not call.speech
            committed_at = trio.current_time()
            await send.send(segment(start, start + 1.0))
            await call.speech_sent(committed_at)
            await trio.sleep(5)  # played out
            await send.aclose()
    (record,) = conversation.turns
    assert record.llm_shed == 1
    assert "llm_shed" in record.timings_ms
    assert (record.caller_text, record.reply_text, record.heard_text) == (QUESTION, ANSWER, ANSWER)
    assert llm.finished == ["busy", QUESTION]
    assert tts.spoken == [ANSWER]
