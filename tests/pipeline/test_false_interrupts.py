"""False interruptions: a barge-in whose turn carries no words gives the bot its reply
back; one with words cuts it and is answered, as before. The turn manager runs on the
named fakes in virtual time, fed the endpointer's events by a scripted caller; the
last test runs the whole bot over a socket to show a cough does not interrupt it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import trio

from benchmarks.barge_in_sounds import cough
from pipeline.bot.config import ConversationConfig
from pipeline.bot.conversation import Conversation
from pipeline.bot.playback import PlayedPiece, Playout
from pipeline.bot.resumption import carries_words, resend_from, unsent_text
from pipeline.caller.emulator import open_call
from pipeline.runtime.dialogue import Message
from stages.llm import EchoLlm, Responder
from stages.sentences import SpeechSplitter
from stages.transcriber import Transcriber
from stages.tts import Synthesizer
from stages.turns import BargeIn, SpeechPaused, SpeechSegment, TurnConfig
from tests.fakes import FakeCall, FakeScriptedLlm, FakeScriptedStt, FakeToneTts, tone_burst

from .conftest import fake_bot, utterance

RATE = 8000
REPLY = (
    "Our bakery opens at seven every morning. We bake bread and cakes all day. "
    "On Sundays we close at noon."
)
QUESTION = "Tell me about the bakery."


class ScriptedCaller:
    """Plays the endpointer: what it would emit for a caller speaking on the Trio clock."""

    def sample(self, at: float) -> int:
        return round((at - self.t0) * RATE)

    def __init__(self, events: trio.MemorySendChannel, commit_after: float = 0.6) -> None:
        self.events = events
        self.commit_after = commit_after  # hangover mode: 600 ms; semantic: max_wait_ms
        self.t0 = trio.current_time()
        self.spoke_until = 0.0

    def segment(self, start: float, seconds: float) -> SpeechSegment:
        now = trio.current_time()
        until = start + seconds  # this utterance's end (spoke_until is the latest one's)
        return SpeechSegment(
            samples=tone_burst(seconds),
            start_sample=self.sample(start),
            end_sample=self.sample(until),
            speech_start=self.sample(start),
            speech_end=self.sample(until),
            decided_sample=self.sample(now),
            captured_at=now,
        )

    async def says(self, seconds: float, *, barge_in: bool = False) -> None:
        """Speak for ``seconds`` (a barge-in after 220 ms if asked); the pause at 200 ms
        of silence, the turn's segment at ``commit_after``."""
        start = trio.current_time()
        if barge_in:
            await trio.sleep(0.22)
            now = trio.current_time()
            barge = BargeIn(sample=self.sample(start), detected_sample=self.sample(now),
                            captured_at=now)  # fmt: skip
            await self.events.send(barge)
            await trio.sleep(seconds - 0.22)
        else:
            await trio.sleep(seconds)
        self.spoke_until = trio.current_time()
        await trio.sleep(0.2)
        paused = SpeechPaused(segment=self.segment(start, seconds), captured_at=0.0)
        await self.events.send(paused)
        await trio.sleep_until(start + seconds + self.commit_after)
        await self.events.send(self.segment(start, seconds))


class Harness:
    def __init__(self, stt_lines: list[str], llm: FakeScriptedLlm, **turns: Any) -> None:
        self.stt = FakeScriptedStt(stt_lines)
        self.llm = llm
        self.tts = FakeToneTts(seconds_per_char=0.05)
        self.call = FakeCall()
        self.conversation = Conversation(
            self.call,  # type: ignore[arg-type]
            config=ConversationConfig(greeting=""),
            reply_stages=lambda: [
                Transcriber(self.stt),
                Responder(self.llm),
                SpeechSplitter(),
                Synthesizer(self.tts),
            ],
            playout=Playout(),
            turns=TurnConfig(**{"mode": "hangover", **turns}),
        )
        self.commit_after = self.conversation.turn_config.commit_silence_ms / 1000

    async def bot_is_talking(self, since: float) -> float:
        """Wait for the first chunk sent after ``since``; its time."""
        return await self.call.speech_sent(since)


async def converse(harness: Harness, script) -> None:
    """Run the conversation while ``script(caller)`` plays, then let the bot finish."""
    send, receive = trio.open_memory_channel(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(harness.conversation.run, receive)
        caller = ScriptedCaller(send, harness.commit_after)
        await script(caller)
        await trio.sleep(20)  # every reply played out
        await send.aclose()


def first_reply_audio(harness: Harness, until: float) -> list[bytes]:
    return [audio for at, audio in harness.call.speech if at < until]


@pytest.mark.parametrize(
    ("heard", "mode"),
    [("Mm-hmm.", "hangover"), ("", "hangover"), ("Uh-huh", "hangover"), ("[coughing]", "hangover"),
     ("Mm-hmm.", "semantic"), ("", "semantic")],
)  # fmt: skip
async def test_a_barge_in_without_words_resumes_the_reply(autojump_clock, heard, mode):
    harness = Harness([QUESTION, heard], FakeScriptedLlm([REPLY, "Unused."]), mode=mode)
    marks: dict[str, float] = {}

    async def script(caller: ScriptedCaller) -> None:
        async with trio.open_nursery() as nursery:
            # the question's own segment may come after the reply started (semantic
            # mode commits at the pause): the sound is timed from the reply
            nursery.start_soon(caller.says, 1.0)
            first = await harness.bot_is_talking(0.0)
            await trio.sleep_until(first + 1.0)  # halfway through the first sentence
            await caller.says(0.4, barge_in=True)
            marks["sound_ended"] = caller.spoke_until

    await converse(harness, script)
    call, conversation = harness.call, harness.conversation
    (interrupt,) = call.interrupts
    before = first_reply_audio(harness, interrupt)
    after = call.speech_since(interrupt)
    assert len(before) >= 2
    assert after == before  # all of it again, from the cut sentence, with no new synthesis
    assert len(harness.tts.spoken) == len(before)
    resumed_at = min(at for at, _ in call.speech if at >= interrupt)
    assert resumed_at >= marks["sound_ended"] + 0.3  # the gap
    (record,) = conversation.turns  # the sound left no turn of its own
    assert record.resumed == 1
    assert not record.interrupted
    assert record.heard_text.split() == REPLY.split()
    assert conversation.history == [Message("user", QUESTION), Message("assistant", REPLY)]
    assert len(harness.llm.prompts) == 1  # the filler was never answered
    assert conversation.false_interrupts.counts == {"held": 1, "resumed": 1, "dropped": 0}


async def test_a_cut_in_the_second_sentence_resends_from_that_sentence(autojump_clock):
    harness = Harness([QUESTION, "mm"], FakeScriptedLlm([REPLY]))

    async def script(caller: ScriptedCaller) -> None:
        await caller.says(1.0)
        first = await harness.bot_is_talking(0.0)
        await trio.sleep_until(first + 2.5)  # the first sentence (2 s) heard, in the second
        await caller.says(0.4, barge_in=True)

    await converse(harness, script)
    (interrupt,) = harness.call.interrupts
    before = first_reply_audio(harness, interrupt)
    assert harness.call.speech_since(interrupt) == before[1:]
    (record,) = harness.conversation.turns
    assert record.heard_text.split() == REPLY.split()
    assert record.bot_started_at is not None
    assert record.bot_started_at < interrupt


class SlowTts(FakeToneTts):
    """The tone voice, taking ``delay`` seconds per piece."""

    def __init__(self, delay: float) -> None:
        super().__init__(seconds_per_char=0.05)
        self.delay = delay

    async def synthesize(self, text: str) -> bytes:
        await trio.sleep(self.delay)
        return await super().synthesize(text)


async def test_text_the_voice_had_not_reached_is_voiced_on_resumption(autojump_clock):
    harness = Harness([QUESTION, "mm"], FakeScriptedLlm([REPLY]))
    harness.tts = SlowTts(delay=1.5)  # the second sentence is still being voiced at the cut

    async def script(caller: ScriptedCaller) -> None:
        await caller.says(1.0)
        first = await harness.bot_is_talking(0.0)
        await trio.sleep_until(first + 1.0)
        await caller.says(0.4, barge_in=True)

    await converse(harness, script)
    (interrupt,) = harness.call.interrupts
    assert len(first_reply_audio(harness, interrupt)) == 1
    second, third = REPLY.split(". ")[1:]
    assert harness.tts.spoken[-2:] == [f"{second}.", third]  # synthesized after the resume
    (record,) = harness.conversation.turns
    assert record.heard_text.split() == REPLY.split()
    assert not record.interrupted


async def test_a_sentence_the_llm_had_not_finished_is_dropped(autojump_clock):
    harness = Harness([QUESTION, "mm"], FakeScriptedLlm([REPLY], token_delay=0.15))
    first_sentence = REPLY.split(". ")[0] + "."

    async def script(caller: ScriptedCaller) -> None:
        await caller.says(1.0)
        first = await harness.bot_is_talking(0.0)
        await trio.sleep_until(first + 0.3)  # the LLM is a few words into the second
        await caller.says(0.4, barge_in=True)

    await converse(harness, script)
    (record,) = harness.conversation.turns
    assert record.resumed == 1
    assert record.reply_text == record.heard_text == first_sentence
    assert harness.conversation.history[-1] == Message("assistant", first_sentence)


async def test_a_barge_in_with_words_cuts_the_reply_and_is_answered(autojump_clock):
    words = "Wait, what about Sunday?"
    harness = Harness([QUESTION, words], FakeScriptedLlm([REPLY, "We close at noon."]))

    async def script(caller: ScriptedCaller) -> None:
        await caller.says(1.0)
        first = await harness.bot_is_talking(0.0)
        await trio.sleep_until(first + 1.0)
        await caller.says(1.2, barge_in=True)

    await converse(harness, script)
    call, conversation = harness.call, harness.conversation
    (interrupt,) = call.interrupts
    before = set(first_reply_audio(harness, interrupt))
    assert not before & set(call.speech_since(interrupt))  # nothing of it again
    cut, answer = conversation.turns
    assert cut.interrupted
    assert cut.resumed == 0
    assert 0 < len(cut.heard_text) < len(REPLY)
    assert REPLY.startswith(cut.heard_text)
    assert (answer.caller_text, answer.reply_text) == (words, "We close at noon.")
    heard_then = [Message("user", QUESTION), Message("assistant", cut.heard_text)]
    assert conversation.history == [
        *heard_then,
        Message("user", words),
        Message("assistant", "We close at noon."),
    ]
    # the answer's prompt already had the cut reply in its history
    assert harness.llm.prompts[1][-3:] == [*heard_then, Message("user", words)]
    assert conversation.false_interrupts.counts == {"held": 1, "resumed": 0, "dropped": 1}


async def test_a_resumed_reply_cut_again_by_words_keeps_what_was_heard(autojump_clock):
    harness = Harness([QUESTION, "hmm", "Stop."], FakeScriptedLlm([REPLY, "Okay."]))

    async def script(caller: ScriptedCaller) -> None:
        await caller.says(1.0)
        first = await harness.bot_is_talking(0.0)
        await trio.sleep_until(first + 1.0)
        await caller.says(0.4, barge_in=True)
        again = await harness.bot_is_talking(trio.current_time())
        await trio.sleep_until(again + 3.0)  # into the resumed second sentence
        await caller.says(0.8, barge_in=True)

    await converse(harness, script)
    assert len(harness.call.interrupts) == 2
    record, answer = harness.conversation.turns
    assert record.resumed == 1
    assert record.interrupted
    assert REPLY.startswith(record.heard_text)
    assert "We bake" in record.heard_text
    assert "Sundays" not in record.heard_text
    assert answer.caller_text == "Stop."


async def test_with_resumption_off_a_false_interruption_stays_cut(autojump_clock):
    harness = Harness(
        [QUESTION, "mm"], FakeScriptedLlm([REPLY, "Unused."]), resume_false_interrupts=False
    )

    async def script(caller: ScriptedCaller) -> None:
        await caller.says(1.0)
        first = await harness.bot_is_talking(0.0)
        await trio.sleep_until(first + 1.0)
        await caller.says(0.4, barge_in=True)

    await converse(harness, script)
    (interrupt,) = harness.call.interrupts
    assert harness.call.speech_since(interrupt) != first_reply_audio(harness, interrupt)
    record = harness.conversation.turns[0]
    assert record.interrupted
    assert record.resumed == 0


def test_fillers_and_annotations_carry_no_words():
    fillers = ["", "  ", "Mm.", "Mmmm-hmm!", "Uh-huh.", "hmm...", "Um, uh", "[cough]", "(laughs)"]
    for text in fillers:
        assert not carries_words(text), text
    for text in ["No.", "Yeah.", "okay", "Mm, no.", "Hmm, Sunday?", "stop"]:
        assert carries_words(text), text


def pieces(*texts: str, seconds: float = 2.0) -> list[PlayedPiece]:
    return [PlayedPiece(t, i * seconds, (i + 1) * seconds) for i, t in enumerate(texts)]


def test_the_resend_starts_at_the_cut_sentence():
    sent = pieces("We open at seven,", "and we close at noon.", "Cakes are fresh.")
    assert resend_from(sent, 1.0) == 0  # in the first piece
    assert resend_from(sent, 3.0) == 0  # the second piece ends the first's sentence
    assert resend_from(sent, 5.0) == 2  # a sentence of its own
    assert resend_from(sent, 7.0) == 3  # all heard: nothing to send again


def test_the_unsent_text_keeps_whole_sentences_only():
    sent = pieces("We open at seven.")
    text = "We open at seven. Cakes are fresh. And on Sunday we"
    assert unsent_text(text, sent) == ("Cakes are fresh.", "We open at seven. Cakes are fresh.")
    assert unsent_text("We open at seven.", sent) == ("", "We open at seven.")


async def test_a_cough_over_the_bot_does_not_interrupt_but_a_voice_does():
    """The whole bot: its default barge-in gate (voicing) over an energy VAD that takes
    the cough for speech."""
    llm = EchoLlm(REPLY + " You said {text}.")
    tts = FakeToneTts(seconds_per_char=0.05)
    coughs = np.concatenate([np.zeros(4000, np.int16), cough(0.3), cough(0.35, seed=3)])
    with trio.fail_after(40):
        async with fake_bot([QUESTION, "", "Stop."], llm=llm, tts=tts) as (_, url):
            async with open_call(url) as call:
                spoken = await call.speak(utterance())
                await call.wait_for_bot_audio(spoken.speech_end_at)
                await trio.sleep(0.5)
                await call.speak(np.concatenate([coughs, np.zeros(4000, np.int16)]))
                await trio.sleep(0.3)
                assert call.interrupts == []
                await call.speak(utterance(0.8))  # a steady voice
                await trio.sleep(0.5)
    assert len(call.interrupts) == 1


async def test_a_reply_held_when_the_call_ends_is_recorded_as_cut(autojump_clock):
    harness = Harness([QUESTION], FakeScriptedLlm([REPLY]))
    send, receive = trio.open_memory_channel(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(harness.conversation.run, receive)
        caller = ScriptedCaller(send, harness.commit_after)
        await caller.says(1.0)
        first = await harness.bot_is_talking(0.0)
        await trio.sleep_until(first + 1.0)
        now = trio.current_time()
        at = caller.sample(now)
        await send.send(BargeIn(sample=at - 1760, detected_sample=at, captured_at=now))
        await trio.sleep(0.1)
        assert harness.conversation.turns == []  # held: its words are not known yet
        await send.aclose()  # the caller hangs up
    (record,) = harness.conversation.turns
    assert record.interrupted
    assert 0 < len(record.heard_text) < len(REPLY)
