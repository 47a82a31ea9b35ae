"""Does the bot get its facts right? Caller questions through the whole voice bot.

    python -m benchmarks.dialogue_bench [--quick]

The demo's bakery bot (``pipeline/demo/bot.toml``, local SmolLM2) takes calls of four
questions each over the real transport, the questions spoken by the six voices of
:mod:`benchmarks.speech_corpus` (Piper and espeak-ng, several speeds, μ-law 8 kHz).
The questions are about the bakery's facts but worded otherwise than its ``[faq]``
phrasings; a few more are outside the facts (the LLM answers those).

Two bots in the same run, same questions, same voices:

- ``faq``: the demo bot as shipped (the FAQ stage answers matching questions);
- ``llm_only``: the same bot without ``[faq]``: the facts only in its system prompt,
  as the demo bot was before the FAQ stage (the baseline).

A reply is right when it contains the fact's key phrase. Reported per bot: share of
fact questions answered right, verbatim repeats of the previous reply in a call, and
voice-to-voice latency of FAQ answers against LLM answers. JSON and PNG go to
``benchmarks/results/dialogue.{json,png}``.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import trio

from benchmarks.report import progress, write_report
from benchmarks.speech_corpus import VOICES, speech
from pipeline.bench import InstrumentedBot, dial, distribution, match_records, serve_on_loopback
from pipeline.bot import VoiceBot, load_config
from pipeline.demo import DEMO_AUDIO
from stages.faq import FaqConfig

# (what the caller says, what a right answer contains; None: not one of the facts)
QUESTIONS: list[tuple[str, str | None]] = [
    ("Hi, am I speaking to Rosie's Bakery?", "Rosie's Bakery"),
    ("What are your opening hours during the week?", "7 am"),
    ("How much does one loaf of bread cost?", "4 dollars"),
    ("I'd like to order three loaves of bread, please.", "take your order"),
    ("Are you open on Sunday morning?", "8 am"),
    ("What time do you close on Saturday?", "6 pm"),
    ("How much is a loaf?", "4 dollars"),
    ("Can I place an order for tomorrow?", "take your order"),
    ("Is this the bakery on the phone?", "Rosie's Bakery"),
    ("When do you open in the morning?", "7 am"),
    ("What's the price of your bread?", "4 dollars"),
    ("Okay, thanks a lot, bye.", "Goodbye"),
    ("Hello, is that Rosie's?", "Rosie's Bakery"),
    ("What are the opening hours on Sundays?", "1 pm"),
    ("Could I order some bread to pick up later?", "take your order"),
    ("How much do you charge for bread?", "4 dollars"),
    ("When are you open on Saturdays?", "7 am"),
    ("I want to order two loaves for Friday.", "take your order"),
    ("What time do you open?", "7 am"),
    ("Thank you so much, goodbye.", "Goodbye"),
    ("Do you sell birthday cakes?", None),
    ("Can you deliver to my office?", None),
    ("Do you have gluten free bread?", None),
    ("Is there parking near the shop?", None),
]
TURNS_PER_CALL = 4


@dataclasses.dataclass(slots=True)
class Answer:
    bot: str
    said: str
    expected: str | None
    heard: str
    reply: str
    answered_by: str
    guarded: str
    right: bool | None
    repeat: bool
    voice_to_voice_ms: float | None


async def run_bot(name: str, bot: VoiceBot, spoken: list[tuple[str, np.ndarray]]) -> list[Answer]:
    instrumented = InstrumentedBot(bot)
    answers: list[Answer] = []
    async with serve_on_loopback(instrumented) as (_, url):
        for start in range(0, len(spoken), TURNS_PER_CALL):
            chunk = spoken[start : start + TURNS_PER_CALL]
            result = await dial(url, instrumented, chunk, pause=0.4, reply_timeout=15.0)
            previous = ""
            for turn, record in zip(
                result.turns, match_records(result.turns, result.records), strict=True
            ):
                said = turn.source
                expected = dict(QUESTIONS)[said]
                reply = record.reply_text if record is not None else ""
                right = None if expected is None else expected.lower() in reply.lower()
                answers.append(
                    Answer(
                        bot=name,
                        said=said,
                        expected=expected,
                        heard=record.caller_text if record is not None else "",
                        reply=reply,
                        answered_by=record.answered_by if record is not None else "",
                        guarded=record.guarded if record is not None else "",
                        right=right,
                        repeat=bool(reply) and reply == previous,
                        voice_to_voice_ms=turn.voice_to_voice_ms,
                    )
                )
                previous = reply or previous
                mark = {True: "right", False: "WRONG", None: "-"}[right]
                progress(f"  {name}: {said!r} -> {reply[:60]!r} ({mark})")
    return answers


def summary(answers: list[Answer]) -> dict[str, Any]:
    facts = [a for a in answers if a.expected is not None]
    by_faq = [a.voice_to_voice_ms for a in answers if a.answered_by == "faq"]
    by_llm = [a.voice_to_voice_ms for a in answers if a.answered_by not in ("faq", "")]
    return {
        "fact_questions": len(facts),
        "right": sum(bool(a.right) for a in facts),
        "right_share": round(sum(bool(a.right) for a in facts) / max(1, len(facts)), 3),
        "verbatim_repeats": sum(a.repeat for a in answers),
        "answered_by_faq": len(by_faq),
        "voice_to_voice_faq_ms": distribution(by_faq),
        "voice_to_voice_llm_ms": distribution(by_llm),
    }


def plot(results: dict[str, Any]) -> plt.Figure:
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(results["bots"])
    shares = [results["bots"][name]["right_share"] * 100 for name in names]
    left.bar(names, shares, color=["tab:green", "tab:gray"][: len(names)])
    left.axhline(90, color="tab:red", linestyle="--", label="target 90%")
    left.set_ylabel("fact questions answered right (%)")
    left.set_ylim(0, 100)
    left.legend()
    series = {
        f"{name}: {path}": [
            a["voice_to_voice_ms"]
            for a in results["answers"]
            if a["bot"] == name
            and a["voice_to_voice_ms"] is not None
            and (a["answered_by"] == "faq") == (path == "faq")
        ]
        for name in names
        for path in ("faq", "llm")
    }
    series = {label: values for label, values in series.items() if values}
    right.boxplot(list(series.values()), tick_labels=list(series))
    right.set_ylabel("voice-to-voice (ms)")
    right.tick_params(axis="x", labelrotation=15)
    figure.suptitle("dialogue benchmark: the bakery bot's facts, spoken by six voices")
    figure.tight_layout()
    return figure


async def main(quick: bool) -> dict[str, Any]:
    questions = QUESTIONS[:8] if quick else QUESTIONS
    progress(f"synthesizing {len(questions)} questions in {len(VOICES)} voices")
    spoken = [
        (text, speech(text, VOICES[index % len(VOICES)]))
        for index, (text, _) in enumerate(questions)
    ]
    config = load_config(str(DEMO_AUDIO / "bot.toml"))
    bots = {
        "faq": VoiceBot(config),
        "llm_only": VoiceBot(dataclasses.replace(config, faq=FaqConfig())),
    }
    answers: list[Answer] = []
    for name, bot in bots.items():
        progress(f"bot {name}: {len(spoken)} questions in calls of {TURNS_PER_CALL}")
        answers += await run_bot(name, bot, spoken)
    results = {
        "bots": {name: summary([a for a in answers if a.bot == name]) for name in bots},
        "answers": [dataclasses.asdict(a) for a in answers],
        "voices": [voice.label for voice in VOICES],
    }
    for name, row in results["bots"].items():
        progress(
            f"{name}: {row['right']}/{row['fact_questions']} right, "
            f"{row['verbatim_repeats']} verbatim repeats, {row['answered_by_faq']} by the FAQ; "
            f"voice-to-voice p50 FAQ {row['voice_to_voice_faq_ms'].get('p50')} ms, "
            f"LLM {row['voice_to_voice_llm_ms'].get('p50')} ms"
        )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 questions, for a smoke run")
    args = parser.parse_args()
    results = trio.run(main, args.quick)
    json_path, png_path = write_report("dialogue", results, plot(results))
    progress(f"wrote {json_path} and {png_path}")
