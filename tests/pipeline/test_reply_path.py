"""The whole bot as one graph: swapped services, stages inserted into the reply path.

Every test runs the real voice bot over real WebSockets with the named fakes of
``tests/fakes.py`` (no model loads), so what the bot heard and said is exact.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import soundfile
import trio

from examples.faq_answerer import FAQ, with_faq
from pipeline.bot.config import BotConfig
from pipeline.bot.voicebot import VoiceBot
from pipeline.caller.emulator import converse, open_call
from pipeline.cli.main import main
from pipeline.runtime.dialogue import SpeakableText
from pipeline.runtime.editing import insert_after
from pipeline.runtime.stage import Stage
from stages.llm import EchoLlm
from stages.sentences import SpeechSplitter
from tests.fakes import FakeEnergyVad, FakeScriptedStt, FakeToneTts

from .conftest import fake_bot, utterance


class DigitRedactor(Stage[Any, Any]):
    """A text filter before the voice: digits are never spoken."""

    def process(self, item: Any) -> Iterable[Any]:
        if isinstance(item, SpeakableText):
            item.text = re.sub(r"\d", "#", item.text)
        return (item,)


async def test_a_bot_runs_on_swapped_services():
    tts, stt = FakeToneTts(), FakeScriptedStt(["What time do you open?"])
    with trio.fail_after(30):
        async with fake_bot([], stt=stt, tts=tts, greeting="Hi there.") as (bot, url):
            async with open_call(url) as call:
                await call.wait_for_greeting()
                (report,) = await converse(call, [("q", utterance(0.8))], pause=0.3)
    assert report.bot_messages >= 1
    assert tts.spoken == ["Hi there.", "You said:", "What time do you open?"]
    assert len(stt.heard) == 1
    assert 0.7 < stt.heard[0] < 1.2  # the caller's turn, cut by the (fake) VAD
    ((_, turns),) = bot.finished
    greeting, turn = turns
    assert (greeting.source, greeting.answered_by) == ("greeting", "greeting")
    assert (turn.caller_text, turn.answered_by) == ("What time do you open?", "echo")
    assert turn.heard_text == "You said: What time do you open?"
    for step in ("endpointing", "stt", "llm_first_token", "first_clause", "tts_first_chunk"):
        assert step in turn.timings_ms
    assert turn.timings_ms["first_send"] >= turn.timings_ms["tts_first_chunk"]


async def test_a_stage_between_stt_and_the_llm_answers_what_it_knows():
    llm = EchoLlm()
    script = ["When are you open?", "Do you sell cakes?"]
    with trio.fail_after(30):
        async with fake_bot(script, llm=llm, reply_edits=[with_faq(FAQ)]) as (bot, url):
            async with open_call(url) as call:
                reports = await converse(call, [("a", utterance()), ("b", utterance())], pause=0.3)
    assert all(report.bot_messages >= 1 for report in reports)
    ((_, (known, unknown)),) = bot.finished
    assert (known.answered_by, known.reply_text) == ("faq", FAQ["When are you open?"])
    assert (unknown.answered_by, unknown.reply_text) == ("echo", "You said: Do you sell cakes?")
    assert llm.replies == 1  # the model was asked only what the FAQ did not know


async def test_a_text_filter_before_the_voice_applies_to_answers_and_operator_lines():
    tts = FakeToneTts()

    def redact(stages: list[Stage[Any, Any]]) -> list[Stage[Any, Any]]:
        return insert_after(stages, SpeechSplitter, DigitRedactor())

    with trio.fail_after(30):
        async with fake_bot(["Call me on 555 1234"], tts=tts, reply_edits=[redact]) as (
            bot,
            url,
        ):
            async with open_call(url) as call:
                await converse(call, [("a", utterance())], pause=0.3)
                record = await bot.conversations[call.call_id].say("Dial 911 now.")
    assert tts.spoken == ["You said:", "Call me on ### ####", "Dial ### now."]
    assert record.heard_text == "Dial ### now."


async def test_barge_in_cancels_the_whole_reply_path_at_once():
    long_reply = "You said {text}. " + "We bake bread every single morning, " * 6
    llm = EchoLlm(long_reply, token_delay=0.02)
    tts = FakeToneTts(seconds_per_char=0.05)
    with trio.fail_after(40):
        async with fake_bot(["Tell me about bread", "Stop"], llm=llm, tts=tts) as (bot, url):
            async with open_call(url) as call:
                spoken = await call.speak(utterance())
                await call.wait_for_bot_audio(spoken.speech_end_at)
                await trio.sleep(0.5)  # the bot is talking
                barged = await call.speak(utterance(0.8))
                await call.wait_for_bot_audio(barged.speech_end_at)
                await trio.sleep(0.3)
    assert len(call.interrupts) == 1
    ((_, turns),) = bot.finished
    first = turns[0]
    assert first.interrupted
    assert 0 < len(first.heard_text) < len(first.reply_text)
    # nothing of the first reply was voiced after the interrupt: the LLM, the splitter and
    # the voice stopped together (the second reply is all that follows)
    second = next(i for i, piece in enumerate(tts.spoken) if "Stop" in piece)
    assert "bread" in " ".join(tts.spoken[:second])
    assert words_of(tts.spoken[second:]) <= words_of([turns[1].reply_text])


def words_of(texts: Iterable[str]) -> set[str]:
    return {word for text in texts for word in re.findall(r"[a-z]+", text.lower())}


def fake_faq_bot(config: BotConfig) -> VoiceBot:
    """A ``--pipeline`` factory: the voice bot on fakes, with the FAQ stage after STT."""
    return VoiceBot(
        config,
        vad=FakeEnergyVad(),
        stt=FakeScriptedStt(["When are you open?", "Do you sell cakes?"] * 4),
        llm=EchoLlm(),
        tts=FakeToneTts(),
        reply_edits=[with_faq(FAQ)],
    )


def test_bench_measures_a_bot_with_an_edited_reply_path(tmp_path):
    files = []
    for index in range(2):
        path = tmp_path / f"turn{index}.wav"
        soundfile.write(str(path), utterance(0.7), 8000, subtype="PCM_16")
        files.append(str(path))
    out = tmp_path / "stages.json"
    argv = ["bench", "stages", "--pipeline", f"{__name__}:fake_faq_bot", "--audio", *files]
    argv += ["--turns", "2", "--no-warm-up", "--pause", "0.2", "--json", str(out)]
    assert main(argv) == 0
    results = json.loads(out.read_text())["results"]
    assert "turn_stage" in results["stages"]
    assert results["voice_to_voice_ms"]["count"] == 2
    for turn in results["turns"]:
        assert {"stt", "first_send"} <= set(turn["timings_ms"])
