"""VAD throughput: one batched VadService vs one onnxruntime session per call.

    python -m benchmarks.vad_bench [--quick]

For 1, 8, 64 and 256 concurrent streams (8 kHz speech, 32 ms windows), in the same
run and process, both with one onnxruntime thread:

- per call: one ``SileroModel`` session per stream, each window run alone (batch 1),
  streams served round-robin, as a server with a session per call would;
- batched: one ``VadService`` under Trio, one task per stream submitting windows as
  fast as results come back, the service batching across streams (the real path:
  thread hop, batching delay and bookkeeping included).

Reports µs per stream-window (wall), CPU seconds, and streams one core keeps in
real time (32 ms of audio per window ÷ CPU time per window).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import trio

from benchmarks.report import progress, write_report
from benchmarks.speech_corpus import padded, speech, telephony
from stages.vad import WINDOW, SileroModel, SileroStream, open_vad_service

WINDOW_S = WINDOW[8000] / 8000


def windows_for(streams: int, total: int) -> int:
    return max(8, total // streams)


def make_audio() -> np.ndarray:
    clip = telephony(speech("Hello, I would like to check the status of my order please."))
    return np.tile(padded(clip, 0.5, 0.5), 4)


def stream_windows(audio: np.ndarray, stream: int, count: int) -> list[np.ndarray]:
    """``count`` consecutive windows of ``audio`` (wrapping round), offset per stream."""
    size = WINDOW[8000]
    offset = stream * 7 * size
    indices = np.arange(offset, offset + count * size) % len(audio)
    return list(audio[indices].reshape(count, size))


def run_per_call(path: Any, audio: np.ndarray, streams: int, count: int) -> dict[str, float]:
    sessions = [SileroStream(SileroModel(path)) for _ in range(streams)]
    inputs = [stream_windows(audio, s, count) for s in range(streams)]
    wall, cpu = time.perf_counter(), time.process_time()
    for index in range(count):
        for stream, windows in zip(sessions, inputs, strict=True):
            stream.probability(windows[index])
    return _figures(time.perf_counter() - wall, time.process_time() - cpu, streams * count)


def run_batched(model: SileroModel, audio: np.ndarray, streams: int, count: int) -> dict:
    inputs = [stream_windows(audio, s, count) for s in range(streams)]
    result: dict[str, Any] = {}

    async def feed(service: Any, windows: list[np.ndarray]) -> None:
        with service.open_stream() as stream:
            for window in windows:
                await stream.probability(window)

    async def main() -> None:
        async with open_vad_service(model) as service:
            wall, cpu = time.perf_counter(), time.process_time()
            async with trio.open_nursery() as nursery:
                for windows in inputs:
                    nursery.start_soon(feed, service, windows)
            result.update(
                _figures(time.perf_counter() - wall, time.process_time() - cpu, streams * count)
            )
            result["mean_batch"] = round(service.statistics()["mean_batch"], 1)

    trio.run(main)
    return result


def _figures(wall: float, cpu: float, windows: int) -> dict[str, float]:
    return {
        "windows": windows,
        "wall_s": round(wall, 4),
        "cpu_s": round(cpu, 4),
        "us_per_stream_window": round(wall / windows * 1e6, 2),
        "streams_per_core_realtime": round(WINDOW_S * windows / max(cpu, 1e-9), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer windows per point")
    parser.add_argument("--model", default=None, help="path of a Silero VAD ONNX file")
    args = parser.parse_args()

    total = 1500 if args.quick else 6000
    model = SileroModel(args.model)
    audio = make_audio()
    results: dict[str, Any] = {"window_ms": WINDOW_S * 1000, "points": []}
    for streams in (1, 8, 64, 256):
        count = windows_for(streams, total)
        progress(f"{streams} streams x {count} windows: per-call sessions ...")
        per_call = run_per_call(args.model, audio, streams, count)
        progress(f"{streams} streams x {count} windows: batched service ...")
        batched = run_batched(model, audio, streams, count)
        ratio = per_call["us_per_stream_window"] / batched["us_per_stream_window"]
        results["points"].append(
            {
                "streams": streams,
                "per_call": per_call,
                "batched": batched,
                "throughput_ratio": round(ratio, 2),
            }
        )
        progress(
            f"  per-call {per_call['us_per_stream_window']} µs/window, batched "
            f"{batched['us_per_stream_window']} µs/window (mean batch {batched['mean_batch']}): "
            f"{ratio:.2f}x"
        )
    write_report("vad_bench", results, _figure(results))


def _figure(results: dict[str, Any]) -> Any:
    import matplotlib.pyplot as plt

    points = results["points"]
    streams = [p["streams"] for p in points]
    figure, axis = plt.subplots(figsize=(6, 4))
    for key, label in (("per_call", "one session per call"), ("batched", "batched VadService")):
        axis.plot(streams, [p[key]["us_per_stream_window"] for p in points], "o-", label=label)
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xlabel("concurrent streams")
    axis.set_ylabel("µs per stream-window (wall)")
    axis.set_title("Silero VAD, 8 kHz, 32 ms windows, 1 onnxruntime thread")
    axis.legend()
    return figure


if __name__ == "__main__":
    main()
