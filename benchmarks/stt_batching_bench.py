"""Whisper across calls: does batching concurrent transcriptions lower the latency a caller waits?

    python -m benchmarks.stt_batching_bench [--quick] [--rounds R]

Whisper's encoder and CTranslate2's ``generate`` take a batch, so N transcriptions
that arrive together could run as one call instead of N in a row. On a CPU the
question is whether one batched call of N is faster than N calls with every thread
(the baseline, what :class:`~stages.stt.SttService` does with ``workers = 1``). Both
variants run the same decode as the service's short path (a window of the utterance
plus ``window_pad_s``, greedy, the service's token budget and suppressed tokens), on
tiny.en int8 with every core's thread, for N = 1, 2, 4 requests that all arrive at
once: the case most favourable to batching (a real collection window only adds its
wait to that). Per request: its latency (from the common arrival to its transcript);
per round: the total time. The two variants alternate within each round (order
swapped every round), so a load from other work on the machine hits both; the load
average is recorded before and after.

The figure of merit is the p95 request latency at 2 and 4 concurrent requests;
``ratio`` is batched / one at a time (below 1: batching wins).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from benchmarks.report import progress, write_report
from pipeline.caller import load_audio
from pipeline.demo import DEMO_AUDIO
from stages.resample import resample, to_float32
from stages.stt import SttConfig, SttService

LOADS = (1, 2, 4)
WHISPER_RATE = 16000
HOP = 160  # samples per mel frame


def clips() -> list[np.ndarray]:
    """Caller turns of 1.2-3.6 s at 16 kHz: the demo turns, and two of them joined."""
    turns = {
        name: load_audio(DEMO_AUDIO / f"{name}.wav")
        for name in ("01-hello", "02-hours", "03-order", "04-bye")
    }
    pcm = [
        turns["04-bye"],
        turns["01-hello"],
        np.concatenate([turns["01-hello"], turns["02-hours"]]),
        turns["03-order"],
        np.concatenate([turns["02-hours"], turns["04-bye"]]),
    ]
    return [to_float32(resample(samples, 8000, WHISPER_RATE)) for samples in pcm]


def _window_and_budget(service: SttService, audio: np.ndarray) -> tuple[float, int]:
    config = service.config
    duration = len(audio) / WHISPER_RATE
    window = min(30.0, math.ceil((duration + config.window_pad_s) * 2) / 2)
    budget = config.token_base + math.ceil(config.tokens_per_second * duration)
    return window, budget


Timed = tuple[list[float], list[str]]  # each request's latency (s), its text


def one_at_a_time(service: SttService, batch: Sequence[np.ndarray]) -> Timed:
    """The baseline: each request decoded alone, in arrival order; latency = its finish."""
    started, done, texts = time.perf_counter(), [], []
    for audio in batch:
        window, budget = _window_and_budget(service, audio)
        texts.append(service._decode(audio, window, 1, budget).text)
        done.append(time.perf_counter() - started)
    return done, texts


def batched(service: SttService, batch: Sequence[np.ndarray]) -> Timed:
    """One encoder call and one generate call for every request (padded to the widest
    window, the largest token budget); every request's latency is the whole call's."""
    import ctranslate2

    started = time.perf_counter()
    model, tokenizer = service._model, service._tokenizer
    shapes = [_window_and_budget(service, audio) for audio in batch]
    window = max(w for w, _ in shapes)
    frames = round(window * WHISPER_RATE / HOP)
    mels = []
    for audio in batch:
        padded = np.zeros(frames * HOP, dtype=np.float32)
        padded[: min(len(audio), len(padded))] = audio[: len(padded)]
        mels.append(model.feature_extractor(padded, padding=0)[:, :frames])
    features = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.stack(mels), np.float32))
    encoded = model.model.encode(features, to_cpu=False)
    prompt = [*service._context, *tokenizer.sot_sequence, tokenizer.no_timestamps]
    budget = max(b for _, b in shapes)
    results = model.model.generate(
        encoded,
        [prompt] * len(batch),
        beam_size=1,
        max_length=min(len(prompt) + budget, model.max_length),
        return_scores=True,
        return_no_speech_prob=True,
        suppress_blank=True,
        suppress_tokens=service._suppress,
    )
    texts = [tokenizer.decode(r.sequences_ids[0]).strip() for r in results]
    elapsed = time.perf_counter() - started
    return [elapsed] * len(batch), texts


def pct(values: Sequence[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 1)


def measure(service: SttService, audio: list[np.ndarray], rounds: int) -> dict[str, Any]:
    variants = {"one_at_a_time": one_at_a_time, "batched": batched}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    agreement: dict[int, float] = {}
    for n in LOADS:
        latencies: dict[str, list[float]] = {name: [] for name in variants}
        totals: dict[str, list[float]] = {name: [] for name in variants}
        same = compared = 0
        for index in range(rounds):
            batch = [audio[(index + k) % len(audio)] for k in range(n)]
            order = list(variants) if index % 2 == 0 else list(reversed(variants))
            texts: dict[str, list[str]] = {}
            for name in order:
                done, texts[name] = variants[name](service, batch)
                latencies[name] += done
                totals[name].append(max(done))
            pairs = zip(texts["one_at_a_time"], texts["batched"], strict=True)
            same += sum(a == b for a, b in pairs)
            compared += n
        agreement[n] = round(same / compared, 3)
        for name in variants:
            rows[name].append(
                {
                    "requests": n,
                    "latency_p50_ms": pct(latencies[name], 50),
                    "latency_p95_ms": pct(latencies[name], 95),
                    "total_p50_ms": pct(totals[name], 50),
                    "total_p95_ms": pct(totals[name], 95),
                }
            )
            progress(f"  N={n} {name}: {rows[name][-1]}")
    ratios = {
        str(base["requests"]): {
            "latency_p95": round(ours["latency_p95_ms"] / base["latency_p95_ms"], 3),
            "latency_p50": round(ours["latency_p50_ms"] / base["latency_p50_ms"], 3),
            "total_p50": round(ours["total_p50_ms"] / base["total_p50_ms"], 3),
        }
        for base, ours in zip(rows["one_at_a_time"], rows["batched"], strict=True)
    }
    return {
        "baseline": rows["one_at_a_time"],
        "ours": rows["batched"],
        "ratio_batched_over_one_at_a_time": ratios,
        "same_text_share": agreement,
    }


def figure(results: dict[str, Any]) -> Any:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, label in (("baseline", "one at a time, all threads"), ("ours", "one batched call")):
        rows = results[name]
        n = [row["requests"] for row in rows]
        axes[0].plot(n, [row["latency_p95_ms"] for row in rows], marker="o", label=label)
        axes[1].plot(n, [row["total_p50_ms"] for row in rows], marker="o", label=label)
    axes[0].set_title("request latency p95 (ms)")
    axes[1].set_title("time for all N requests, p50 (ms)")
    for axis in axes:
        axis.set_xlabel("concurrent requests (arriving together)")
        axis.set_xticks(list(LOADS))
        axis.grid(alpha=0.3)
        axis.legend()
    load = results["load_average"]
    fig.suptitle(
        f"Whisper tiny.en int8, {os.cpu_count()} cores; load average "
        f"{load['before'][0]:.1f} → {load['after'][0]:.1f}"
    )
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds (a smoke run)")
    parser.add_argument("--rounds", type=int, default=24, help="rounds per number of requests")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    service = SttService(SttConfig(compute_type="int8"))
    service.load()
    audio = clips()
    progress(
        f"tiny.en int8, {service._model.model.num_workers} worker, "
        f"clips {[round(len(a) / WHISPER_RATE, 2) for a in audio]} s"
    )
    before = os.getloadavg()
    results = measure(service, audio, rounds)
    results["load_average"] = {"before": list(before), "after": list(os.getloadavg())}
    results["rounds"] = rounds
    results["cpu_threads"] = os.cpu_count()
    name = "stt_batching_quick" if args.quick else "stt_batching"
    json_path, png_path = write_report(name, results, figure(results))
    progress(f"wrote {json_path} and {png_path}")


if __name__ == "__main__":
    main()
