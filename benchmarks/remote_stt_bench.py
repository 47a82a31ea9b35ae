"""Upload rate for remote STT: 8 kHz as the phone gives it, or 16 kHz resampled by us.

Starts faster-whisper-server (Whisper tiny.en, offline) and sends each turn of
stt_bench.py's set (Piper and espeak-ng voices, telephone path, a third with noise)
through :class:`~stages.stt_remote.RemoteStt` at both upload rates, alternating which
goes first so drifting load hits both alike. Reports WER and latency per rate::

    python -m benchmarks.remote_stt_bench [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import trio

from benchmarks.model_servers import free_port, start, whisper_command
from benchmarks.report import progress, write_report
from benchmarks.stt_bench import make_audio, percentiles, test_set, word_errors
from stages.remote import RemoteOptions
from stages.stt_remote import RemoteStt

RATES = (8000, 16000)


async def measure(url: str, items: list[dict[str, Any]], audios: list[np.ndarray]) -> list[dict]:
    services = {
        rate: RemoteStt(upload_rate=rate, options=RemoteOptions(backend="openai", url=url))
        for rate in RATES
    }
    rows = []
    async with services[8000].serving(), services[16000].serving():
        await services[16000].transcribe(audios[0], 8000)  # the server loads its model
        for index, (item, audio) in enumerate(zip(items, audios, strict=True)):
            row: dict[str, Any] = {"text": item["text"], "voice": item["voice"].label}
            for rate in RATES if index % 2 == 0 else RATES[::-1]:
                started = time.perf_counter()
                heard = (await services[rate].transcribe(audio, 8000)).text
                row[f"ms_{rate}"] = round((time.perf_counter() - started) * 1000, 1)
                row[f"heard_{rate}"] = heard
                row[f"errors_{rate}"], row["words"] = word_errors(item["text"], heard)
            progress(f"[{index + 1}/{len(items)}] {row['heard_8000']!r} | {row['heard_16000']!r}")
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="24 turns, 3 voices")
    args = parser.parse_args()
    items = test_set(args.quick)
    audios = [make_audio(item, seed) for seed, item in enumerate(items)]
    port = free_port()
    server = start("faster-whisper-server", whisper_command(port), port, "/health",
                   Path(tempfile.mkdtemp()))  # fmt: skip
    try:
        rows = trio.run(measure, server.url, items, audios)
    finally:
        server.stop()
    words = sum(row["words"] for row in rows)
    summary: dict[str, Any] = {"turns": len(rows), "words": words}
    for rate in RATES:
        errors = sum(row[f"errors_{rate}"] for row in rows)
        latency = percentiles([row[f"ms_{rate}"] / 1000 for row in rows])
        summary[str(rate)] = {"wer": round(errors / words, 4), "word_errors": errors, **latency}
    summary["transcripts_differ"] = sum(row["heard_8000"] != row["heard_16000"] for row in rows)
    progress(str(summary))
    paths = write_report("remote_stt_bench", {"summary": summary, "turns": rows}, _figure(summary))
    progress(f"wrote {paths[0]}")


def _figure(summary: dict[str, Any]) -> Any:
    import matplotlib.pyplot as plt

    figure, (wer, latency) = plt.subplots(1, 2, figsize=(8, 3.5))
    labels = [f"{rate // 1000} kHz" for rate in RATES]
    wer.bar(labels, [summary[str(rate)]["wer"] for rate in RATES], color=["#999", "#369"])
    wer.set_title("WER (lower is better)")
    latency.bar(labels, [summary[str(rate)]["p50_ms"] for rate in RATES], color=["#999", "#369"])
    latency.set_title("p50 latency, ms")
    figure.suptitle(f"faster-whisper-server tiny.en, {summary['turns']} telephone turns")
    figure.tight_layout()
    return figure


if __name__ == "__main__":
    main()
