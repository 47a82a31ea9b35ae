"""Smart Turn v3.2: what one inference costs, whether batching pays, and how often it is right.

    python -m benchmarks.smart_turn_bench [--quick] [--model PATH] [--threads N]

Cost (one onnxruntime thread unless ``--threads``):

- inference alone: ms per request for batches of 1, 4 and 16 (features precomputed);
- features: ms per request (resample 8 -> 16 kHz, log-mel);
- the service: N = 1, 4, 16 requests arriving at once at one :class:`SmartTurnService`,
  batched (``max_batch`` = 32) against one at a time (``max_batch`` = 1): each request's
  wait from asking to answer, mean and worst.

Accuracy: 20 phrases a caller might say, each as ``(prefix, rest)``, spoken by every
voice of :mod:`benchmarks.speech_corpus` (Piper joe at three speeds, three espeak-ng
voices), 0.3 s of silence before and 0.2 s after (the pause at which the bot asks):

- complete: the whole sentence;
- incomplete (cut): the same recording cut at the word gap nearest the end of
  ``prefix``: a caller who stops mid-sentence, with mid-sentence intonation;
- incomplete (alone): ``prefix`` synthesised on its own: the voice closes it like a
  sentence, so only the words say it is unfinished.

each through the telephone (8 kHz, G.711 μ-law) and, for comparison, at 16 kHz without
it. Reported: how many complete phrases the model calls incomplete (P < 0.5) and how
many incomplete ones it calls complete.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np
import trio

from benchmarks.report import progress, write_report
from benchmarks.speech_corpus import VOICES, Voice, padded, speech, telephony
from stages.smart_turn import SmartTurnModel, SmartTurnService, turn_features

LEAD_S = 0.3
TAIL_S = 0.2  # about when the endpointer reports a pause (SpeechPaused)
THRESHOLD = 0.5
BATCH_SIZES = (1, 4, 16)

PHRASES: tuple[tuple[str, str], ...] = (
    ("What time do you open on", "Saturday?"),
    ("I would like to book a table for", "four people."),
    ("Can you tell me the balance of", "my account?"),
    ("My order number is", "four five six seven."),
    ("I need to change the delivery address for", "my order."),
    ("Do you have any", "gluten free bread today?"),
    ("Could you tell me how long the drive to", "the airport takes?"),
    ("I want to cancel my", "subscription."),
    ("Is the shop open on", "public holidays?"),
    ("My flight was cancelled and I need", "a new booking."),
    ("Can I pick up my order", "after five?"),
    ("I would like to speak to", "someone in billing."),
    ("How much does a", "loaf of sourdough cost?"),
    ("Please send the invoice to", "my email address."),
    ("The parcel arrived but the box was", "damaged."),
    ("Do you deliver to the north side", "of town?"),
    ("I called yesterday about", "a refund."),
    ("Where can I park near", "the bakery?"),
    ("We are having a party on", "Saturday afternoon."),
    ("Thank you, that is all", "I needed."),
)


def cut_at_word_gap(full: np.ndarray, prefix_samples: int, rate: int = 8000) -> int:
    """Where to cut ``full`` to stop mid-sentence near the end of its prefix.

    The prefix said alone is about as long as in the sentence (a little longer: the
    voice slows at its end), so the quietest 30 ms between 70 % and 105 % of its length
    is the gap between two words there.
    """
    hop = rate // 100
    frames = len(full) // hop
    energy = (full[: frames * hop].astype(np.float64).reshape(frames, hop) ** 2).mean(axis=1)
    energy = np.convolve(energy, np.ones(3) / 3, mode="same")
    low = int(0.7 * prefix_samples / hop)
    high = max(low + 1, min(frames - 5, int(1.05 * prefix_samples / hop)))
    return (low + int(np.argmin(energy[low:high]))) * hop + hop // 2


def phrase_clips(prefix: str, rest: str, voice: Voice, rate: int) -> dict[str, np.ndarray]:
    """The three renderings of one phrase at ``rate`` (8000: through the telephone)."""
    line = telephony if rate == 8000 else (lambda samples: samples)
    full = speech(f"{prefix} {rest}", voice, rate)
    alone = speech(prefix, voice, rate)
    cut = full[: cut_at_word_gap(full, len(alone), rate)]
    return {
        name: line(padded(clip, LEAD_S, TAIL_S, rate))
        for name, clip in (("complete", full), ("cut", cut), ("alone", alone))
    }


def accuracy(model: SmartTurnModel, voices: tuple[Voice, ...], rate: int) -> dict[str, Any]:
    probabilities: dict[str, list[float]] = {"complete": [], "cut": [], "alone": []}
    engines: dict[str, dict[str, list[float]]] = {}
    for voice in voices:
        for prefix, rest in PHRASES:
            for name, clip in phrase_clips(prefix, rest, voice, rate).items():
                p = model.completion(clip, rate)
                probabilities[name].append(p)
                engines.setdefault(voice.engine, {}).setdefault(name, []).append(p)

    def summary(values: dict[str, list[float]]) -> dict[str, Any]:
        complete = np.array(values["complete"])
        out: dict[str, Any] = {
            "complete": len(complete),
            "complete_called_incomplete": int(np.sum(complete < THRESHOLD)),
            "complete_called_incomplete_pct": round(100 * float(np.mean(complete < THRESHOLD)), 1),
            "complete_median_p": round(float(np.median(complete)), 3),
        }
        for name in ("cut", "alone"):
            incomplete = np.array(values[name])
            out[f"incomplete_{name}_called_complete"] = int(np.sum(incomplete >= THRESHOLD))
            out[f"incomplete_{name}_called_complete_pct"] = round(
                100 * float(np.mean(incomplete >= THRESHOLD)), 1
            )
            out[f"incomplete_{name}_median_p"] = round(float(np.median(incomplete)), 3)
            # how often the complete sentence scores above its own cut / prefix
            out[f"complete_above_{name}_pct"] = round(
                100 * float(np.mean(complete > incomplete)), 1
            )
        return out

    return {
        "rate": rate,
        "telephone": rate == 8000,
        "voices": [v.label for v in voices],
        "all": summary(probabilities),
        "by_engine": {engine: summary(values) for engine, values in engines.items()},
    }


def inference_cost(model: SmartTurnModel, clip: np.ndarray, repeats: int) -> dict[str, Any]:
    started = time.perf_counter()
    for _ in range(repeats):
        features = turn_features(clip, 8000)
    features_ms = (time.perf_counter() - started) / repeats * 1000
    batch = np.stack([features] * max(BATCH_SIZES))
    points = []
    for size in BATCH_SIZES:
        model.probabilities(batch[:size])  # warm-up
        times, cpu_times = [], []
        for _ in range(max(3, repeats // size)):
            started, cpu_started = time.perf_counter(), time.thread_time()
            model.probabilities(batch[:size])
            times.append(time.perf_counter() - started)
            cpu_times.append(time.thread_time() - cpu_started)
        per_request = np.array(times) / size * 1000
        points.append(
            {
                "batch": size,
                "ms_per_request_median": round(float(np.median(per_request)), 2),
                "ms_per_request_min": round(float(per_request.min()), 2),
                "ms_per_batch_median": round(float(np.median(times)) * 1000, 2),
                # with one onnxruntime thread the inference runs on this thread, so its CPU
                # time is the cost without the wait for a busy machine's cores
                "cpu_ms_per_request_median": round(float(np.median(cpu_times)) / size * 1000, 2),
            }
        )
    return {"features_ms_per_request": round(features_ms, 2), "inference": points}


async def _timed_request(service: SmartTurnService, clip: np.ndarray, waits: list) -> None:
    started = time.perf_counter()
    await service.completion(clip, 8000)
    waits.append(time.perf_counter() - started)


def service_latency(model: SmartTurnModel, clip: np.ndarray, max_batch: int) -> list[dict]:
    """N simultaneous requests: each one's wall time from asking to its answer."""
    points = []

    async def main() -> None:
        service = SmartTurnService(model, max_batch=max_batch)
        async with service.serving():
            await service.completion(clip, 8000)  # warm-up
            for count in BATCH_SIZES:
                waits: list[float] = []
                before = service.statistics()["batches"]
                async with trio.open_nursery() as nursery:
                    for _ in range(count):
                        nursery.start_soon(_timed_request, service, clip, waits)
                points.append(
                    {
                        "requests": count,
                        "batches": service.statistics()["batches"] - before,
                        "mean_wait_ms": round(float(np.mean(waits)) * 1000, 1),
                        "max_wait_ms": round(float(np.max(waits)) * 1000, 1),
                    }
                )

    trio.run(main)
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two voices, fewer repeats")
    parser.add_argument("--model", default=None, help="path of a Smart Turn v3 ONNX file")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    args = parser.parse_args()

    model = SmartTurnModel(args.model, threads=args.threads)
    voices = (VOICES[0], VOICES[3]) if args.quick else VOICES
    clip = telephony(padded(speech("What time do you open on Saturday?"), LEAD_S, TAIL_S))
    results: dict[str, Any] = {
        "threads": args.threads,
        "threshold": THRESHOLD,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    progress("inference cost ...")
    results["cost"] = inference_cost(model, clip, 8 if args.quick else 32)
    progress("service: batched vs one at a time ...")
    results["service"] = {
        "batched": service_latency(model, clip, max_batch=32),
        "one_at_a_time": service_latency(model, clip, max_batch=1),
    }
    results["accuracy"] = {}
    for rate in (8000, 16000):
        progress(f"accuracy at {rate} Hz, {len(voices)} voices x {len(PHRASES)} phrases ...")
        results["accuracy"]["telephone" if rate == 8000 else "wideband"] = accuracy(
            model, voices, rate
        )
    name = "smart_turn_quick" if args.quick else "smart_turn"
    paths = write_report(name, results, _figure(results))
    for point in results["cost"]["inference"]:
        progress(
            f"  batch {point['batch']}: {point['ms_per_request_median']} ms/request wall, "
            f"{point['cpu_ms_per_request_median']} ms CPU"
        )
    for kind, points in results["service"].items():
        for point in points:
            progress(f"  {kind} x{point['requests']}: {point}")
    for band, figures in results["accuracy"].items():
        progress(f"  {band}: {figures['all']}")
    progress(f"wrote {paths[0]}")


def _figure(results: dict[str, Any]) -> Any:
    import matplotlib.pyplot as plt

    figure, (cost, errors) = plt.subplots(1, 2, figsize=(11, 4))
    inference = results["cost"]["inference"]
    sizes = [p["batch"] for p in inference]
    cost.plot(sizes, [p["ms_per_request_median"] for p in inference], "o-", label="inference")
    cost.plot(
        sizes, [p["cpu_ms_per_request_median"] for p in inference], "o:", label="inference, CPU"
    )
    for kind, label in (("batched", "service, batched"), ("one_at_a_time", "service, one by one")):
        points = results["service"][kind]
        cost.plot(
            [p["requests"] for p in points],
            [p["mean_wait_ms"] for p in points],
            "s--",
            label=f"{label}: mean wait",
        )
    cost.set_xscale("log", base=2)
    cost.set_yscale("log")
    cost.set_xlabel("requests at once (batch size)")
    cost.set_ylabel("ms per request")
    cost.set_title(f"Smart Turn v3.2 cost, {results['threads']} onnxruntime thread(s)")
    cost.legend(fontsize=8)

    labels = ["complete\ncalled incomplete", "cut\ncalled complete", "alone\ncalled complete"]
    keys = (
        "complete_called_incomplete_pct",
        "incomplete_cut_called_complete_pct",
        "incomplete_alone_called_complete_pct",
    )
    x = np.arange(len(labels))
    for offset, band in ((-0.2, "telephone"), (0.2, "wideband")):
        figures = results["accuracy"][band]["all"]
        errors.bar(x + offset, [figures[k] for k in keys], 0.4, label=band)
    errors.set_xticks(x, labels)
    errors.set_ylabel("% wrong at P = 0.5")
    voices = len(results["accuracy"]["telephone"]["voices"])
    errors.set_title(f"{len(PHRASES)} phrases x {voices} voices, 0.2 s after speech")
    errors.legend()
    figure.tight_layout()
    return figure


if __name__ == "__main__":
    main()
