"""Model services serving several calls at once: how to split the cores between them.

    python -m benchmarks.concurrency_bench [--quick] [--only llm,stt,tts]

Each model service is loaded in two shapes with the same total of threads (the
machine's cores), and driven by 1, 2 and 4 concurrent "calls" in the same run:

- LLM (:class:`~stages.llm_local.LlamaCppLlm`): one context with every prompt thread
  (the baseline: replies queue) vs a pool of N contexts with cores/N threads each.
  Each call holds a conversation (the bakery system prompt, three turns whose
  history grows), greedy, so both shapes generate the same text. Reported: time to
  first token and to the end of the reply per turn, and memory (RSS, PSS, USS) after
  loading, since N contexts map the same weights once.
- STT (:class:`~stages.stt.SttService`): ``workers=1`` with every thread vs
  ``workers=N`` (CTranslate2 replicas) with cores/N threads each; each call
  transcribes the demo caller turns one after the other.
- TTS (:class:`~stages.tts.PiperTts`): one sentence at a time with every thread vs N
  sentences at once (one ONNX Runtime session, run from N threads) with cores/N each.

(LLM also: one context with cores/N threads, to tell queueing from thread contention.)
The figure of merit is the p95 latency a caller waits (first token, transcript,
sentence audio) at each number of concurrent calls; ``ratio`` is pool/baseline.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import psutil
import trio

from benchmarks.report import progress, write_report
from pipeline.caller import load_audio
from pipeline.demo import DEMO_AUDIO
from stages.llm import Message
from stages.llm_local import LlamaCppLlm
from stages.stt import SttConfig, SttService
from stages.tts import PiperTts

CORES = os.cpu_count() or 1
SYSTEM = (
    "You are the phone assistant of a small bakery. Answer in one or two short "
    "sentences. The bakery opens at seven and closes at six, Monday to Saturday."
)
TURNS = [
    "Hello, is this the bakery?",
    "What time do you open on Saturday?",
    "I would like to order two loaves of bread.",
]
SENTENCES = [
    "Sure, our bakery opens at seven in the morning.",
    "Your order of two loaves will be ready at noon.",
    "We are on Main Street, next to the post office.",
    "Yes, we can make a cake for Saturday.",
]


def memory() -> dict[str, float]:
    """This process's memory in MB: RSS counts shared mapped pages once per mapping,
    PSS divides them among the processes mapping them, USS is ours alone."""
    info = psutil.Process().memory_full_info()
    return {key: round(getattr(info, key) / 2**20, 1) for key in ("rss", "pss", "uss")}


def p(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else None


async def concurrently(calls: int, one_call: Callable[[int], Awaitable[None]]) -> float:
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for index in range(calls):
            nursery.start_soon(one_call, index)
    return time.perf_counter() - started


# --- LLM --------------------------------------------------------------------------------


async def llm_shape(
    contexts: int, loads: Sequence[int], max_tokens: int, threads: int = CORES
) -> dict[str, Any]:
    before = memory()
    llm = LlamaCppLlm(
        contexts=contexts, threads=threads, temperature=0.0, seed=0, max_tokens=max_tokens
    )
    await llm.setup()
    loaded = memory()
    system = [Message("system", SYSTEM)]
    await llm.prime([*system, Message("user", "Hello?")])
    rows = []
    for calls in loads:
        first: list[float] = []
        whole: list[float] = []
        tokens = 0

        async def one_call(
            index: int, first: list[float] = first, whole: list[float] = whole
        ) -> None:
            nonlocal tokens
            history: list[Message] = []
            await trio.sleep(0.05 * index)  # staggered, as calls are
            for turn in TURNS:
                messages = [*system, *history, Message("user", f"{turn} (caller {index})")]
                started = time.perf_counter()
                text = ""
                async with aclosing(llm.stream(messages)) as deltas:
                    async for delta in deltas:
                        if not text:
                            first.append(time.perf_counter() - started)
                        text += delta
                        tokens += 1
                whole.append(time.perf_counter() - started)
                history += [messages[-1], Message("assistant", text)]

        wall = await concurrently(calls, one_call)
        rows.append(
            {
                "calls": calls,
                "first_token_p50_ms": p(first, 50),
                "first_token_p95_ms": p(first, 95),
                "reply_p50_ms": p(whole, 50),
                "reply_p95_ms": p(whole, 95),
                "tokens_per_s_total": round(tokens / wall, 1),
            }
        )
        progress(f"  llm contexts={contexts} calls={calls}: {rows[-1]}")
    statistics = llm.statistics()
    await llm.aclose()
    return {
        "contexts": contexts,
        "threads_per_context": llm.threads_per_context,
        "memory_before_mb": before,
        "memory_loaded_mb": loaded,
        "pool": {k: statistics.get(k) for k in ("granted", "waited", "affinity_hits")},
        "rows": rows,
    }


# --- STT --------------------------------------------------------------------------------


async def latency_rows(
    label: str, loads: Sequence[int], rounds: int, request: Callable[[int], Awaitable[None]]
) -> list[dict[str, Any]]:
    """For each load, that many calls each making ``rounds`` requests (call i's n-th asks
    ``request(i + n)``): latency p50/p95 and requests per second."""
    rows = []
    for calls in loads:
        latencies: list[float] = []

        async def one_call(index: int, latencies: list[float] = latencies) -> None:
            for turn in range(rounds):
                started = time.perf_counter()
                await request(index + turn)
                latencies.append(time.perf_counter() - started)

        wall = await concurrently(calls, one_call)
        rows.append(
            {
                "calls": calls,
                "p50_ms": p(latencies, 50),
                "p95_ms": p(latencies, 95),
                "per_s": round(len(latencies) / wall, 2),
            }
        )
        progress(f"  {label} calls={calls}: {rows[-1]}")
    return rows


async def stt_shape(workers: int, loads: Sequence[int], rounds: int) -> dict[str, Any]:
    config = SttConfig(workers=workers, cpu_threads=max(1, CORES // workers))
    service = SttService(config)
    await service.setup()
    clips = [load_audio(DEMO_AUDIO / f"{name}.wav") for name in ("01-hello", "02-hours")]

    async def transcribe(n: int) -> None:
        await service.transcribe(clips[n % len(clips)])

    rows = await latency_rows(f"stt workers={workers}", loads, rounds, transcribe)
    await service.aclose()
    return {"workers": workers, "threads_each": config.cpu_threads, "rows": rows}


# --- TTS --------------------------------------------------------------------------------


async def tts_shape(workers: int, loads: Sequence[int], rounds: int) -> dict[str, Any]:
    tts = PiperTts(threads=max(1, CORES // workers), workers=workers)
    await tts.setup()

    async def synthesize(n: int) -> None:
        await tts.synthesize(SENTENCES[n % len(SENTENCES)])

    rows = await latency_rows(f"tts workers={workers}", loads, rounds, synthesize)
    await tts.aclose()
    return {"workers": workers, "threads_each": max(1, CORES // workers), "rows": rows}


# --- report -----------------------------------------------------------------------------


def ratios(base: dict[str, Any], pool: dict[str, Any], key: str) -> dict[str, float | None]:
    out = {}
    for b, q in zip(base["rows"], pool["rows"], strict=True):
        out[f"calls_{b['calls']}"] = round(q[key] / b[key], 3) if b[key] and q[key] else None
    return out


def figure(results: dict[str, Any]) -> Any:
    parts = [name for name in ("llm", "stt", "tts") if name in results]
    load = results.get("load_average_1min")
    fig, axes = plt.subplots(1, len(parts), figsize=(5 * len(parts), 4), squeeze=False)
    keys = {"llm": "first_token_p95_ms", "stt": "p95_ms", "tts": "p95_ms"}
    for axis, name in zip(axes[0], parts, strict=True):
        for label, shape in results[name]["shapes"].items():
            rows = shape["rows"]
            axis.plot([r["calls"] for r in rows], [r[keys[name]] for r in rows], "o-", label=label)
        axis.set_title(f"{name}: {keys[name]}")
        axis.set_xlabel("concurrent calls")
        axis.set_ylabel("ms")
        axis.set_ylim(bottom=0)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    busy = f", load average {load['start']:.1f} → {load['end']:.1f}" if load else ""
    fig.suptitle(f"model services under concurrent calls, {CORES} cores{busy}", fontsize=10)
    fig.tight_layout()
    return fig


async def run(args: argparse.Namespace) -> dict[str, Any]:
    loads = (1, 2) if args.quick else (1, 2, 4)
    pool_size = max(2, min(CORES, 4))
    results: dict[str, Any] = {}
    if "llm" in args.only:
        progress("LLM: one context vs a pool")
        tokens = 24 if args.quick else 48
        base = await llm_shape(1, loads, tokens)
        one_thread = await llm_shape(1, loads, tokens, threads=max(1, CORES // pool_size))
        pool = await llm_shape(pool_size, loads, tokens)
        results["llm"] = {
            "shapes": {
                f"1 context, {CORES} threads": base,
                f"1 context, {max(1, CORES // pool_size)} thread(s)": one_thread,
                f"{pool_size} contexts": pool,
            },
            "first_token_p95_ratio": ratios(base, pool, "first_token_p95_ms"),
            "reply_p95_ratio": ratios(base, pool, "reply_p95_ms"),
        }
    rounds = 2 if args.quick else 4
    if "stt" in args.only:
        progress("STT: one worker vs several")
        base = await stt_shape(1, loads, rounds)
        pool = await stt_shape(pool_size, loads, rounds)
        results["stt"] = {
            "shapes": {"1 worker": base, f"{pool_size} workers": pool},
            "p95_ratio": ratios(base, pool, "p95_ms"),
        }
    if "tts" in args.only:
        progress("TTS: one sentence at a time vs several")
        base = await tts_shape(1, loads, rounds)
        pool = await tts_shape(pool_size, loads, rounds)
        results["tts"] = {
            "shapes": {"1 worker": base, f"{pool_size} workers": pool},
            "p95_ratio": ratios(base, pool, "p95_ms"),
        }
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and rounds")
    parser.add_argument("--only", default="llm,stt,tts", help="comma-separated: llm,stt,tts")
    args = parser.parse_args(argv)
    args.only = set(args.only.split(","))
    load_before = os.getloadavg()[0]
    results = trio.run(run, args)
    # the figures mean little on a machine others are using: say how busy it was
    results["load_average_1min"] = {"start": load_before, "end": os.getloadavg()[0]}
    name = "concurrency_quick" if args.quick else "concurrency"
    json_path, png_path = write_report(name, results, figure(results))
    progress(f"wrote {json_path} and {png_path}")


if __name__ == "__main__":
    main()
