"""Reply guards for small models: no word-for-word repeat of an earlier reply, replies cut
at a sentence end past the spoken-length limit (the LLM stream closed), nothing
unspeakable voiced, and no wait on the path of a reply that does not repeat.

The stream tests run the real reply path (Responder → SpeechSplitter → Synthesizer,
``open_chain``) over the scripted fake LLM and the tone voice of ``tests/fakes.py``;
one runs the whole voice bot, to show ``[reply]`` reaches its reply path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from pipeline.bot.config import BotConfig, ConversationConfig, load_config
from pipeline.bot.voicebot import VoiceBot
from pipeline.caller.emulator import converse, open_call
from pipeline.runtime.dialogue import CallerText, Message, Reply, SpeechAudio
from pipeline.runtime.graph import open_chain
from pipeline.server.voice_stream import ServerConfig, VoiceStreamServer
from stages.guards import LengthLimit, RepeatWatch, ReplyConfig, pick_fallback, words_of
from stages.llm import Responder
from stages.sentences import SpeechSplitter
from stages.tts import Synthesizer
from tests.fakes import (
    REPEAT_PREVIOUS,
    FakeEnergyVad,
    FakeScriptedLlm,
    FakeScriptedStt,
    FakeToneTts,
    tone_burst,
)

BEFORE = "I'm sorry, we are closed on Sundays. We open at 8 am on Monday."
DEFAULT = ReplyConfig()
FALLBACKS = DEFAULT.repeat_fallback_lines


def reply_after(*earlier: str) -> Reply:
    """A reply whose history holds ``earlier`` as the bot's previous replies."""
    history: list[Message] = []
    for text in earlier:
        history += [Message("user", "Hello?"), Message("assistant", text)]
    return Reply(turn=len(earlier) + 1, speech_ended_at=trio.current_time(), history=history)


async def run_path(
    llm: FakeScriptedLlm,
    reply: Reply,
    guards: ReplyConfig | None = DEFAULT,
    caller: str = "Thank you, goodbye.",
) -> tuple[list[tuple[float, str]], FakeToneTts]:
    """One caller turn through the reply path: (time, text) of each piece of speech out."""
    tts = FakeToneTts()
    stages = [Responder(llm, guards=guards), SpeechSplitter(), Synthesizer(tts)]
    send, receive = trio.open_memory_channel[Any](1)
    send.send_nowait(CallerText(reply=reply, text=caller, captured_at=trio.current_time()))
    send.close()
    spoken: list[tuple[float, str]] = []
    start = trio.current_time()
    async with open_chain(*stages, source=receive) as path:
        async for frame in path.outputs:
            if isinstance(frame, SpeechAudio):
                spoken.append((round(trio.current_time() - start, 3), frame.text))
    return spoken, tts


def said(spoken: Sequence[tuple[float, str]]) -> list[str]:
    """The words spoken (the splitter drops a comma that ends a piece)."""
    return words_of(" ".join(text for _, text in spoken))


# --- repeats --------------------------------------------------------------------------


async def test_a_reply_repeating_the_previous_one_is_regenerated_without_it() -> None:
    llm = FakeScriptedLlm([REPEAT_PREVIOUS, "Thank you for calling, goodbye!"])
    reply = reply_after(BEFORE)
    spoken, _ = await run_path(llm, reply)
    assert said(spoken) == words_of("Thank you for calling, goodbye!")
    assert "sundays" not in said(spoken)
    assert reply.text == "Thank you for calling, goodbye!"
    assert reply.guarded == "repeat"
    assert "regenerated" in reply.timings_ms
    # the repeat was caught before the model finished it, and its stream closed
    assert llm.closed_early == 1
    assert llm.words_yielded[0] < len(BEFORE.split())
    # regenerated without the repeated reply in the prompt (the nudge that works for
    # SmolLM2), the caller's words still there
    first, second = llm.prompts
    assert Message("assistant", BEFORE) in first
    assert Message("assistant", BEFORE) not in second
    assert second[-1] == Message("user", "Thank you, goodbye.")


async def test_a_second_repeat_says_a_fallback_line_not_said_before() -> None:
    llm = FakeScriptedLlm([REPEAT_PREVIOUS, REPEAT_PREVIOUS])
    reply = reply_after(BEFORE)
    spoken, _ = await run_path(llm, reply)
    assert said(spoken) == words_of(FALLBACKS[0])
    assert reply.guarded == "repeat,repeat_fallback"
    assert len(llm.prompts) == 2  # regenerated once, then the fallback

    # the fallback line of the last turn is not said again either
    again = reply_after(BEFORE, FALLBACKS[0], BEFORE)
    spoken, _ = await run_path(FakeScriptedLlm([REPEAT_PREVIOUS] * 2), again)
    assert said(spoken) == words_of(FALLBACKS[1])


async def test_a_near_identical_repeat_counts_case_and_punctuation_aside() -> None:
    near = "i'm sorry we are closed on sundays! we open at 8 am on monday"
    llm = FakeScriptedLlm([near, "Goodbye, and thank you!"])
    spoken, _ = await run_path(llm, reply_after(BEFORE))
    assert said(spoken) == words_of("Goodbye, and thank you!")


async def test_a_repeat_of_an_older_reply_of_the_call_is_caught_too() -> None:
    older = "Our bread costs 4 dollars a loaf."
    llm = FakeScriptedLlm([older, "Goodbye!"])
    spoken, _ = await run_path(llm, reply_after(older, BEFORE))
    assert said(spoken) == words_of("Goodbye!")


async def test_without_guards_the_repeat_is_said(autojump_clock: Any) -> None:
    """The baseline the guard fixes (the demo's turn 4 got turn 3's reply again)."""
    spoken, _ = await run_path(FakeScriptedLlm([REPEAT_PREVIOUS]), reply_after(BEFORE), None)
    assert said(spoken) == words_of(BEFORE)


async def test_a_reply_that_only_opens_like_the_previous_one_is_said_whole() -> None:
    llm = FakeScriptedLlm(["I'm sorry, I did not catch that."])
    reply = reply_after(BEFORE)
    spoken, _ = await run_path(llm, reply)
    assert said(spoken) == words_of("I'm sorry, I did not catch that.")
    assert reply.guarded == ""
    assert len(llm.prompts) == 1


async def test_a_short_reply_said_twice_is_not_a_repeat() -> None:
    spoken, _ = await run_path(FakeScriptedLlm(["Goodbye!"]), reply_after("Goodbye!"))
    assert said(spoken) == words_of("Goodbye!")


# --- no added wait when the reply does not repeat --------------------------------------


async def test_a_reply_that_does_not_repeat_is_not_held(autojump_clock: Any) -> None:
    text = "Sure, we can take your order. What name is it under, and when?"
    times = []
    for guards in (None, ReplyConfig()):
        llm = FakeScriptedLlm([text], token_delay=0.1)
        spoken, _ = await run_path(llm, reply_after(BEFORE), guards)
        times.append([at for at, _ in spoken])
        assert said(spoken) == words_of(text)
    without_guards, with_guards = times
    assert with_guards == without_guards
    # the first piece ("Sure,") went out at the first word, long before the reply ended
    assert with_guards[0] == pytest.approx(0.1)
    assert with_guards[0] < len(text.split()) * 0.1 - 0.5


async def test_a_reply_is_held_only_while_it_matches_the_previous_one(
    autojump_clock: Any,
) -> None:
    text = "I'm sorry, I did not catch that. Could you say it again?"
    spoken, _ = await run_path(FakeScriptedLlm([text], token_delay=0.1), reply_after(BEFORE))
    assert said(spoken) == words_of(text)
    # "I'm sorry," opens BEFORE too: held until " I" (third word) diverged, then released
    assert spoken[0] == (pytest.approx(0.3), "I'm sorry")
    assert spoken[-1][0] < len(text.split()) * 0.1 + 0.05


# --- length ---------------------------------------------------------------------------


LONG = (
    "We bake bread every morning at five. "  # 7 words
    "Our rolls and cakes are ready by seven, and the pies come later in the day. "  # 17
    "We also sell coffee. And we deliver."
)


async def test_a_long_reply_is_cut_at_the_sentence_end_past_the_limit() -> None:
    llm = FakeScriptedLlm([LONG])
    reply = reply_after()
    spoken, _ = await run_path(llm, reply, ReplyConfig(max_spoken_words=10))
    expected = "We bake bread every morning at five. Our rolls and cakes are ready by seven, "
    expected += "and the pies come later in the day."
    assert reply.text == expected
    assert said(spoken) == words_of(expected)
    assert reply.guarded == "length"
    # the LLM stream was closed: the model stopped right after that sentence
    assert llm.closed_early == 1
    assert llm.words_yielded == [len(expected.split()) + 1]


async def test_a_sentence_that_runs_on_is_cut_after_the_overrun() -> None:
    llm = FakeScriptedLlm([" ".join(["word"] * 50) + "."])
    reply = reply_after()
    await run_path(llm, reply, ReplyConfig(max_spoken_words=10, sentence_overrun_words=5))
    assert reply.text == " ".join(["word"] * 15)
    assert llm.closed_early == 1


async def test_a_reply_within_the_limit_is_untouched() -> None:
    llm = FakeScriptedLlm([LONG])
    reply = reply_after()
    await run_path(llm, reply, ReplyConfig(max_spoken_words=0))
    assert reply.text == LONG
    assert (reply.guarded, llm.closed_early) == ("", 0)


@pytest.mark.parametrize(
    ("deltas", "kept"),
    [
        (["One two three four five. Six"], "One two three four five."),
        (["One two three four five", ".", " Six"], "One two three four five."),
        (["One two three four five six?"], "One two three four five six?"),
        (["One two Mr.", " Smith is four. Seven"], "One two Mr. Smith is four."),
        (["One two three four 3.5 km. Six"], "One two three four 3.5 km."),
        (["One two three four five six seven eight nine"], "One two three four five six seven"),
    ],
)
def test_length_limit_finds_the_sentence_end(deltas: list[str], kept: str) -> None:
    limit = LengthLimit(4, overrun=3)
    out, done = "", False
    for delta in deltas:
        assert not done
        part, done = limit.feed(delta)
        out += part
    assert out == kept


# --- unspeakable text -----------------------------------------------------------------


async def test_markdown_lists_tables_emoji_and_urls_are_never_spoken() -> None:
    markdown = (
        "## Our hours 🕘\n**Monday:** 7 to 6 😀\n1. Bread\n2) Cakes\n- *Pies*\n"
        "| Day | Open |\n|---|---|\n| Sun | 8 to 1 |\n"
        "Order at https://rosies.example/order or www.rosies.example. Thanks :)"
    )
    _, tts = await run_path(FakeScriptedLlm([markdown]), reply_after(), ReplyConfig())
    voiced = " ".join(tts.spoken)
    for mark in ("#", "*", "|", "---", "1.", "2)", "http", "www", ":)", "😀", "🕘"):
        assert mark not in voiced, mark
    assert tts.spoken == [
        "Our hours",
        "Monday: 7 to 6",
        "Bread",
        "Cakes",
        "Pies",
        "Day, Open",
        "Sun, 8 to 1",
        "Order at or.",
        "Thanks",
    ]


# --- the pieces -----------------------------------------------------------------------


def test_repeat_watch_holds_while_the_reply_opens_like_an_earlier_one() -> None:
    watch = RepeatWatch([BEFORE, "Yes."])
    assert watch.feed("I") == "hold"
    assert watch.feed("I'm sor") == "hold"  # an incomplete word that may still match
    assert watch.feed("I'm sorry, we are") == "hold"
    assert RepeatWatch([BEFORE]).feed("I'm sorry, I") == "release"
    assert RepeatWatch([BEFORE]).feed("I'm sore") == "release"
    assert RepeatWatch(["Yes."]).feed("Yes") == "release"  # too short to count
    # 80% of BEFORE's 14 words: a repeat at word 12, before the model says the rest
    assert watch.feed("I'm sorry, we are closed on Sundays. We open at 8 am") == "hold"
    assert watch.feed("I'm sorry, we are closed on Sundays. We open at 8 am on") == "repeat"
    assert watch.repeated == [BEFORE]


def test_repeat_watch_at_the_end_of_a_held_reply() -> None:
    watch = RepeatWatch(["Thank you for calling. Goodbye!"])
    assert watch.end("Thank you for calling. Goodbye") == "repeat"
    assert watch.end("Thank you for") == "release"  # 3 of 5 words: under 80%


def test_pick_fallback_prefers_a_line_not_said_yet() -> None:
    assert pick_fallback(["A b c.", "D e f."], ["a b c"]) == "D e f."
    assert pick_fallback(["A b c.", "D e f."], ["D e f.", "A b c."]) == "D e f."


def test_reply_section_of_bot_toml(tmp_path: Path) -> None:
    path = tmp_path / "bot.toml"
    path.write_text(
        '[reply]\nmax_spoken_words = 25\nno_repeats = false\nrepeat_fallback_lines = ["Hm."]\n'
    )
    config = load_config(path).reply
    assert (config.max_spoken_words, config.no_repeats) == (25, False)
    assert config.repeat_fallback_lines == ("Hm.",)
    assert load_config(None).reply == ReplyConfig()


# --- the whole bot ----------------------------------------------------------------------


QUIET = np.zeros(4000, dtype=np.int16)


async def test_the_voice_bot_does_not_say_its_previous_reply_again() -> None:
    first = "We are open from 7 am to 6 pm today."
    llm = FakeScriptedLlm([first, REPEAT_PREVIOUS, "Thank you for calling, goodbye!"])
    tts = FakeToneTts()
    bot = VoiceBot(
        BotConfig(conversation=ConversationConfig(greeting="")),
        vad=FakeEnergyVad(),
        stt=FakeScriptedStt(["When are you open?", "Thank you, goodbye."]),
        llm=llm,
        tts=tts,
    )
    server = VoiceStreamServer(ServerConfig(port=0), bot)
    utterance = np.concatenate([QUIET, tone_burst(0.8), QUIET])
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            listener = await nursery.start(server.serve)
            async with open_call(f"ws://127.0.0.1:{listener.port}/") as call:
                await converse(call, [("a", utterance), ("b", utterance)], pause=0.3)
            server.shutdown()
    ((_, (one, two)),) = bot.finished
    assert one.reply_text == first
    assert two.reply_text == "Thank you for calling, goodbye!"
    assert words_of(two.heard_text) == words_of("Thank you for calling, goodbye!")
    assert len(llm.prompts) == 3
    assert sum("open from 7 am" in piece for piece in tts.spoken) == 1
