"""The turn manager on the named fakes: half duplex, LLM failure, barge-in on the last
chunk, priming, pacing. The real models are not needed to test any of this, so these
run in seconds; tests/pipeline/test_voicebot.py keeps the end-to-end ones on real speech.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio

from pipeline.caller.emulator import converse, open_call
from stages.llm import EchoLlm
from tests.fakes import FakeToneTts

from .conftest import fake_bot, utterance

LONG_REPLY = (
    "You said {text}. Let me tell you about our opening hours, our bread, our cakes and "
    "everything else we bake every single morning of the week, starting very early."
)


async def test_half_duplex_bot_is_not_interrupted():
    llm = EchoLlm(LONG_REPLY)
    tts = FakeToneTts(seconds_per_char=0.05)
    with trio.fail_after(30):
        async with fake_bot(["Hours?", "Sunday?"], llm=llm, tts=tts, barge_in=False) as (
            bot,
            url,
        ):
            async with open_call(url) as call:
                spoken = await call.speak(utterance())
                await call.wait_for_bot_audio(spoken.speech_end_at)
                await trio.sleep(0.5)  # the bot is talking
                await call.speak(utterance())  # talked over it: ignored, half duplex
                await trio.sleep(0.5)
    assert call.interrupts == []
    ((_, turns),) = bot.finished
    assert not turns[0].interrupted
    assert turns[0].heard_text  # heard in full, not cut


async def test_llm_failure_speaks_the_fallback_and_the_call_goes_on():
    fallback = "Sorry, I am having trouble answering right now."
    llm = EchoLlm(fail_after_words=0)
    with trio.fail_after(30):
        async with fake_bot(["Open today?", "Hello again."], llm=llm, fallback_line=fallback) as (
            bot,
            url,
        ):
            async with open_call(url) as call:
                turns = [("one", utterance()), ("two", utterance())]
                reports = await converse(call, turns, pause=0.3)
    assert all(report.bot_messages >= 1 for report in reports)
    ((_, turns),) = bot.finished
    assert [turn.llm_failed for turn in turns] == [True, True]
    assert all(turn.heard_text == fallback for turn in turns)


async def test_barge_in_during_the_last_chunk_still_counts_as_an_interruption():
    """A one-piece reply is fully sent at once; cutting into its playout must still
    mark it interrupted and keep only what was heard."""
    one_piece = "You said {text} and that is all I can tell you about it for now my friend"
    tts = FakeToneTts(seconds_per_char=0.05)
    with trio.fail_after(30):
        async with fake_bot(["Is the shop open", "One more"], llm=EchoLlm(one_piece), tts=tts) as (
            bot,
            url,
        ):
            async with open_call(url) as call:
                spoken = await call.speak(utterance())
                first = await call.wait_for_bot_audio(spoken.speech_end_at)
                await trio.sleep(0.8)
                await call.speak(utterance())
                await trio.sleep(1.0)
    assert first.duration > 2.5  # one chunk, long enough to cut into
    assert len(call.interrupts) == 1
    ((_, turns),) = bot.finished
    assert turns[0].interrupted
    assert 0 < len(turns[0].heard_text) < len(turns[0].reply_text)


class PrimedEcho(EchoLlm):
    """The echo fake, recording what it was primed with."""

    def __init__(self) -> None:
        super().__init__()
        self.primed: list[list[tuple[str, str]]] = []

    async def prime(self, messages) -> None:
        self.primed.append([(m.role, m.content) for m in messages])


async def test_llm_is_primed_with_the_system_prompt_once_at_start_up():
    llm = PrimedEcho()
    with trio.fail_after(30):
        async with fake_bot([], llm=llm, system_prompt="You are the bakery.") as (_, url):
            async with open_call(url):
                pass
    assert len(llm.primed) == 1
    assert llm.primed[0][0] == ("system", "You are the bakery.")


class PacedLlm(EchoLlm):
    """The echo fake, noting when the bot asks for each next word (the word yielded
    before it has been handed over)."""

    def __init__(self) -> None:
        super().__init__("Sure, {text} is something we can do for you today.")
        self.asked_at: list[float] = []

    async def stream(self, messages) -> AsyncIterator[str]:
        async for delta in super().stream(messages):
            yield delta
            self.asked_at.append(trio.current_time())


class NotingTts(FakeToneTts):
    """The fake voice, noting when each piece's audio was made."""

    def __init__(self) -> None:
        super().__init__()
        self.done_at: list[tuple[str, float]] = []

    async def synthesize(self, text: str) -> bytes:
        await trio.sleep(0.05)  # a voice takes time
        audio = await super().synthesize(text)
        self.done_at.append((text, trio.current_time()))
        return audio


async def test_the_llm_waits_while_the_first_piece_is_synthesized():
    llm, tts = PacedLlm(), NotingTts()
    with trio.fail_after(30):
        async with fake_bot(["A loaf of bread."], llm=llm, tts=tts) as (_, url):
            async with open_call(url) as call:
                await converse(call, [("order", utterance())], pause=0.3)
    first_text, first_done = tts.done_at[0]
    assert first_text == "Sure"  # the first piece ends at the first comma
    # "Sure," was the first delta: the next word was asked for only once its audio was out
    assert llm.asked_at[0] >= first_done
    assert len(tts.done_at) >= 2
