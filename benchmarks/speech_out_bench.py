"""Speech out: how soon the bot starts talking, with sentence chunking vs without.

    python -m benchmarks.speech_out_bench [--quick]

Three measurements, each with its baseline in the same run (same models, same
text, alternating order), reported as ratios:

1. TTS time to first audio for a finished reply text: ours (cut into clauses by
   :class:`~stages.sentences.SentenceSplitter`, first piece synthesized first)
   vs Piper's own per-sentence stream vs synthesizing the whole reply first (the
   baseline: nothing can be sent before all of it is made). Also the real-time
   factor (synthesis seconds per second of audio).
2. LLM to first audio: the bundled SmolLM2 streaming into the splitter, the first
   piece synthesized the moment it is complete, vs waiting for the whole reply
   and then synthesizing it. Greedy decoding, so both modes produce the same text;
   the KV cache is reset before each run, so both evaluate the whole prompt.
3. The LLM alone: time to first token (cold: whole prompt evaluated; warm: the
   system prompt already in the KV cache, as on every turn after the first) and
   generation speed in tokens per second.

Everything goes through the real async services (worker threads, limiters).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from contextlib import aclosing
from typing import Any

import matplotlib.pyplot as plt
import trio

from benchmarks.report import progress, write_report
from stages.llm import Message, complete
from stages.llm_local import LlamaCppLlm
from stages.sentences import SentenceSplitter
from stages.tts import PiperTts

REPLIES = [
    "Sure, I can help with that. Our bakery opens at seven in the morning and closes at six.",
    "Thanks for calling. Your order of two sourdough loaves will be ready at noon tomorrow.",
    "I'm sorry, we are out of croissants today, but we still have fresh muffins and bagels.",
    "Of course, let me check that for you. Delivery is free for orders over thirty dollars.",
    "Great question. All of our breads are baked fresh every morning, without preservatives.",
    "We are located on Main Street, next to the post office, and parking is right in front.",
    "Yes, we can make a birthday cake for Saturday. Which flavor would you like, chocolate "
    "or vanilla?",
    "No problem at all. I have cancelled the order, and you will get a refund within days.",
]
PROMPTS = [
    "What time do you open tomorrow?",
    "Do you have gluten free bread?",
    "Can I order a birthday cake for Saturday?",
    "Where are you located?",
    "How much is a loaf of sourdough?",
    "Do you deliver to my neighborhood?",
    "Can I pay with a credit card?",
    "What is your most popular pastry?",
]
SYSTEM = (
    "You are the phone assistant of a small bakery. Answer the caller in one or two "
    "short, friendly sentences."
)


def median(values: Sequence[float]) -> float:
    return round(statistics.median(values), 4) if values else float("nan")


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def pieces(text: str) -> list[str]:
    splitter = SentenceSplitter()
    return splitter.feed(text) + splitter.flush()


async def tts_first_audio(tts: PiperTts, text: str, method: str) -> tuple[float, float, float]:
    """(seconds to first audio, seconds to all audio, seconds of audio) for one method."""
    started = time.perf_counter()
    first = None
    audio = 0
    if method == "whole":
        audio = len(await tts.synthesize(text))
        first = time.perf_counter() - started
    else:
        parts = pieces(text) if method == "clauses" else [text]
        for part in parts:
            async for chunk in tts.stream(part):
                first = first if first is not None else time.perf_counter() - started
                audio += len(chunk)
    assert first is not None
    return first, time.perf_counter() - started, audio / tts.sample_rate


async def bench_tts(tts: PiperTts, replies: Sequence[str]) -> dict[str, Any]:
    methods = ("clauses", "sentences", "whole")
    rows = []
    for index, text in enumerate(replies):
        row: dict[str, Any] = {"text": text, "first_piece": pieces(text)[0]}
        order = methods if index % 2 == 0 else methods[::-1]
        for method in order:
            first, total, audio = await tts_first_audio(tts, text, method)
            row[method] = {"first_audio_ms": ms(first), "all_audio_ms": ms(total)}
            row["audio_s"] = round(audio, 3)
            if method == "whole":
                row["real_time_factor"] = round(total / audio, 4)
        rows.append(row)
        progress(
            f"tts [{index + 1}/{len(replies)}] first audio: "
            + ", ".join(f"{m} {row[m]['first_audio_ms']:.0f} ms" for m in methods)
        )
    summary: dict[str, Any] = {
        method: {"first_audio_ms_p50": median([r[method]["first_audio_ms"] for r in rows])}
        for method in methods
    }
    summary["real_time_factor_p50"] = median([r["real_time_factor"] for r in rows])
    base = summary["whole"]["first_audio_ms_p50"]
    summary["speedup_clauses_vs_whole"] = round(base / summary["clauses"]["first_audio_ms_p50"], 2)
    summary["speedup_sentences_vs_whole"] = round(
        base / summary["sentences"]["first_audio_ms_p50"], 2
    )
    return {"summary": summary, "replies": rows}


async def llm_then_tts(llm: LlamaCppLlm, tts: PiperTts, messages: list[Message]) -> dict[str, Any]:
    """Baseline: the whole reply, then the whole reply's audio."""
    await llm.forget_cache()
    started = time.perf_counter()
    text = await complete(llm, messages)
    reply_s = time.perf_counter() - started
    await tts.synthesize(text)
    return {
        "text": text,
        "reply_ms": ms(reply_s),
        "first_audio_ms": ms(time.perf_counter() - started),
    }


async def llm_streaming_tts(
    llm: LlamaCppLlm, tts: PiperTts, messages: list[Message]
) -> dict[str, Any]:
    """Ours: the first complete piece goes to the TTS while the reply is still coming."""
    await llm.forget_cache()
    started = time.perf_counter()
    splitter = SentenceSplitter()
    deltas: list[str] = []
    first_audio = None
    first_piece = ""
    async with aclosing(llm.stream(messages)) as stream:
        async for delta in stream:
            deltas.append(delta)
            ready = splitter.feed(delta)
            if ready and first_audio is None:
                first_piece = ready[0]
                await tts.synthesize(first_piece)
                first_audio = time.perf_counter() - started
    rest = splitter.flush()
    if first_audio is None and rest:
        first_piece = rest[0]
        await tts.synthesize(first_piece)
        first_audio = time.perf_counter() - started
    return {
        "text": "".join(deltas),
        "first_piece": first_piece,
        "first_audio_ms": ms(first_audio or float("nan")),
    }


async def bench_llm_to_audio(
    llm: LlamaCppLlm, tts: PiperTts, prompts: Sequence[str]
) -> dict[str, Any]:
    rows = []
    for index, prompt in enumerate(prompts):
        messages = [Message("system", SYSTEM), Message("user", prompt)]
        if index % 2 == 0:
            ours = await llm_streaming_tts(llm, tts, messages)
            base = await llm_then_tts(llm, tts, messages)
        else:
            base = await llm_then_tts(llm, tts, messages)
            ours = await llm_streaming_tts(llm, tts, messages)
        rows.append(
            {
                "prompt": prompt,
                "reply": base["text"],
                "same_text": ours["text"] == base["text"],
                "first_piece": ours["first_piece"],
                "streaming_first_audio_ms": ours["first_audio_ms"],
                "baseline_reply_ms": base["reply_ms"],
                "baseline_first_audio_ms": base["first_audio_ms"],
            }
        )
        progress(
            f"llm->audio [{index + 1}/{len(prompts)}] streaming {ours['first_audio_ms']:.0f} ms, "
            f"whole reply first {base['first_audio_ms']:.0f} ms: {base['text'][:70]!r}"
        )
    ours_p50 = median([r["streaming_first_audio_ms"] for r in rows])
    base_p50 = median([r["baseline_first_audio_ms"] for r in rows])
    summary = {
        "streaming_first_audio_ms_p50": ours_p50,
        "baseline_first_audio_ms_p50": base_p50,
        "speedup": round(base_p50 / ours_p50, 2),
        "same_text": all(r["same_text"] for r in rows),
    }
    return {"summary": summary, "turns": rows}


async def bench_llm(llm: LlamaCppLlm, prompts: Sequence[str]) -> dict[str, Any]:
    rows = []
    for index, prompt in enumerate(prompts):
        messages = [Message("system", SYSTEM), Message("user", prompt)]
        for cache in ("cold", "warm"):
            if cache == "cold":
                await llm.forget_cache()
            else:  # the previous prompt shares the system prompt: only the rest is new
                await complete(llm, [Message("system", SYSTEM), Message("user", "Hello?")])
            started = time.perf_counter()
            stamps = []
            async with aclosing(llm.stream(messages)) as stream:
                async for _ in stream:
                    stamps.append(time.perf_counter() - started)
            rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 2 else None
            rows.append(
                {
                    "prompt": prompt,
                    "cache": cache,
                    "first_token_ms": ms(stamps[0]) if stamps else None,
                    "tokens": len(stamps),
                    "tokens_per_s": round(rate, 1) if rate else None,
                }
            )
        progress(f"llm [{index + 1}/{len(prompts)}] {rows[-2]} {rows[-1]['first_token_ms']} ms")
    summary = {
        f"first_token_ms_p50_{cache}": median(
            [r["first_token_ms"] for r in rows if r["cache"] == cache and r["first_token_ms"]]
        )
        for cache in ("cold", "warm")
    }
    summary["tokens_per_s_p50"] = median([r["tokens_per_s"] for r in rows if r["tokens_per_s"]])
    return {"summary": summary, "runs": rows}


def plot(tts_result: dict[str, Any], audio_result: dict[str, Any]) -> plt.Figure:
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = ["clauses (ours)", "Piper sentences", "whole reply"]
    methods = ["clauses", "sentences", "whole"]
    for x, method in enumerate(methods):
        values = [r[method]["first_audio_ms"] for r in tts_result["replies"]]
        left.bar(x, median(values), color=["tab:green", "tab:blue", "tab:gray"][x], alpha=0.7)
        left.scatter([x] * len(values), values, color="black", s=10, zorder=3)
    left.set_xticks(range(3), labels)
    left.set_ylabel("time to first audio (ms)")
    speedup = tts_result["summary"]["speedup_clauses_vs_whole"]
    left.set_title(f"TTS, finished reply text: ours {speedup}x sooner")
    rows = audio_result["turns"]
    for x, key in enumerate(["streaming_first_audio_ms", "baseline_first_audio_ms"]):
        values = [r[key] for r in rows]
        right.bar(x, median(values), color=["tab:green", "tab:gray"][x], alpha=0.7)
        right.scatter([x] * len(values), values, color="black", s=10, zorder=3)
    right.set_xticks(range(2), ["LLM stream → clauses → TTS", "whole reply, then TTS"])
    right.set_ylabel("request to first audio (ms)")
    right.set_title(f"SmolLM2 + Piper: ours {audio_result['summary']['speedup']}x sooner")
    figure.suptitle("Speech out: time until the caller hears the bot (median bars, runs as dots)")
    figure.tight_layout()
    return figure


async def run(quick: bool) -> dict[str, Any]:
    replies = REPLIES[:3] if quick else REPLIES
    prompts = PROMPTS[:3] if quick else PROMPTS
    progress("loading Piper voice and SmolLM2")
    tts = PiperTts()
    llm = LlamaCppLlm(temperature=0.0, max_tokens=80)
    await tts.setup()
    await llm.setup()
    await tts.synthesize(REPLIES[0])  # warm every path once
    await complete(llm, [Message("user", PROMPTS[0])])
    results = {
        "voice": tts.voice_name,
        "llm_model": llm.model_path.name if llm.model_path else None,
        "llm_threads": llm.threads,
        "tts": await bench_tts(tts, replies),
        "llm_to_audio": await bench_llm_to_audio(llm, tts, prompts),
        "llm": await bench_llm(llm, prompts),
    }
    await llm.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 replies and 3 prompts")
    args = parser.parse_args()
    results = trio.run(run, args.quick)
    figure = plot(results["tts"], results["llm_to_audio"])
    summary = {
        "tts": results["tts"]["summary"],
        "llm_to_audio": results["llm_to_audio"]["summary"],
        "llm": results["llm"]["summary"],
    }
    json_path, _ = write_report("speech_out", {"summary": summary, **results}, figure)
    progress(f"summary: {summary}")
    progress(f"wrote {json_path}")


if __name__ == "__main__":
    main()
