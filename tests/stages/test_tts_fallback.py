"""The voice failing before any of a reply was heard: the caller hears the fallback line
instead of silence (or of a reply missing its start), and the reply ends there."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import trio

from pipeline.runtime.dialogue import CallerText, Reply, SpeakableText, SpeechAudio
from pipeline.runtime.errors import TtsError
from pipeline.runtime.graph import open_chain
from stages.llm import Responder
from stages.sentences import SpeechSplitter
from stages.tts import Synthesizer
from tests.fakes import FakeScriptedLlm, FakeToneTts

FALLBACK = "Sorry, I am having trouble answering right now."
PIECES = ("Sure.", "We open at nine.", "See you soon.")


class FakeFailingTts(FakeToneTts):
    """The tone voice, raising :class:`TtsError` for the texts in ``failing``."""

    def __init__(self, failing: Iterable[str]) -> None:
        super().__init__(seconds_per_char=0.01)
        self.failing = set(failing)
        self.asked: list[str] = []

    async def synthesize(self, text: str) -> bytes:
        self.asked.append(text)
        if text in self.failing:
            raise TtsError(f"cannot voice {text!r}")
        return await super().synthesize(text)


async def voice(synthesizer: Synthesizer, reply: Reply, texts: Iterable[str]) -> list[str]:
    """The texts of the audio ``synthesizer`` makes of ``texts``, pieces of ``reply``."""
    texts = list(texts)
    send, receive = trio.open_memory_channel[Any](len(texts))
    for text in texts:
        send.send_nowait(SpeakableText(reply=reply, text=text, captured_at=0.0))
    send.close()
    async with open_chain(synthesizer, source=receive) as chain:
        return [frame.text async for frame in chain.outputs if isinstance(frame, SpeechAudio)]


async def test_a_first_piece_that_fails_is_replaced_by_the_fallback_line() -> None:
    tts = FakeFailingTts({"Sure."})
    synthesizer = Synthesizer(tts, fallback_line=FALLBACK)
    reply = Reply(turn=1, speech_ended_at=0.0, text=" ".join(PIECES), answered_by="llm")
    assert await voice(synthesizer, reply, PIECES) == [FALLBACK]
    assert tts.asked == ["Sure.", FALLBACK]  # the rest is not voiced after the apology
    assert (reply.text, reply.answered_by, reply.ended) == (FALLBACK, "fallback", True)
    assert reply.error == "tts: cannot voice 'Sure.'"
    assert synthesizer.statistics() == {"pieces": 1, "failures": 1, "fallbacks": 1, "dropped": 2}
    assert reply.first_audio.is_set()


async def test_without_a_fallback_line_the_rest_of_the_reply_is_said() -> None:
    # as before: a reply missing its first sentence, or silence if every piece fails
    tts = FakeFailingTts({"Sure."})
    reply = Reply(turn=1, speech_ended_at=0.0)
    assert await voice(Synthesizer(tts), reply, PIECES) == list(PIECES[1:])
    assert not reply.ended


async def test_a_piece_failing_after_the_caller_heard_some_is_left_out() -> None:
    tts = FakeFailingTts({"We open at nine."})
    synthesizer = Synthesizer(tts, fallback_line=FALLBACK)
    reply = Reply(turn=1, speech_ended_at=0.0)
    assert await voice(synthesizer, reply, PIECES) == ["Sure.", "See you soon."]
    assert synthesizer.fallbacks == 0
    assert not reply.ended


async def test_a_voice_that_cannot_say_the_fallback_either_says_nothing() -> None:
    tts = FakeFailingTts({"Sure.", FALLBACK})
    synthesizer = Synthesizer(tts, fallback_line=FALLBACK)
    reply = Reply(turn=1, speech_ended_at=0.0)
    assert await voice(synthesizer, reply, PIECES) == []
    assert synthesizer.failures == 2
    assert synthesizer.fallbacks == 0
    assert reply.error == f"tts: cannot voice 'Sure.'; tts: cannot voice {FALLBACK!r}"


async def test_the_llm_stops_once_the_fallback_line_was_said(autojump_clock: Any) -> None:
    line = "Sure. We open at nine every day of the week. See you soon then."
    llm = FakeScriptedLlm([line], token_delay=0.1)
    tts = FakeFailingTts({"Sure."})
    reply = Reply(turn=1, speech_ended_at=0.0)
    send, receive = trio.open_memory_channel[Any](1)
    send.send_nowait(CallerText(reply=reply, text="When do you open?", captured_at=0.0))
    send.close()
    stages = [Responder(llm), SpeechSplitter(), Synthesizer(tts, fallback_line=FALLBACK)]
    async with open_chain(*stages, source=receive) as chain:
        said = [frame.text async for frame in chain.outputs if isinstance(frame, SpeechAudio)]
    assert said == [FALLBACK]
    assert llm.closed_early == 1
    assert llm.words_yielded[0] < len(line.split())
    assert reply.text == FALLBACK  # what the turn's record and the history keep
