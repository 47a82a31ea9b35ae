"""STT accuracy and latency: our path vs faster-whisper's default ``transcribe()``.

    python -m benchmarks.stt_bench [--quick] [--model M]

The test set is generated (benchmarks/speech_corpus.py): short answers, digits,
names and full sentences, spoken by several Piper and espeak-ng voices, a third of
them mixed with background noise, all through the telephone path (8 kHz μ-law).
Each utterance goes through both paths in the same run on the same model instance,
alternating, so machine noise hits both alike:

- ours: ``SttService.transcribe_sync`` (8 kHz → 16 kHz soxr, short window with
  guards, full-window fallback, hallucination guards);
- baseline: 8 kHz → 16 kHz soxr, then ``WhisperModel.transcribe(beam_size=5)``
  (30 s window) with its lazy segments consumed.

Reports WER (digits spelt out, case and punctuation ignored), latency p50/p95 for
utterances up to 5 s and overall, and how often the short path fell back.
"""

from __future__ import annotations

import argparse
import re
import time
from typing import Any

import numpy as np

from benchmarks.report import progress, write_report
from benchmarks.speech_corpus import VOICES, mix_at_snr, noise, speech, telephony
from stages.resample import resample, to_float32
from stages.stt import SttConfig, SttService

SHORT_ANSWERS = [
    "Yes.",
    "No.",
    "Okay.",
    "Sure.",
    "Correct.",
    "That's right.",
    "Not really.",
    "Maybe later.",
]
DIGITS = [
    "One two three four.",
    "Five five five, two one nine eight.",
    "Seven.",
    "My pin is zero four one six.",
]
NAMES = [
    "John Smith.",
    "Maria Garcia.",
    "My name is Emily Johnson.",
    "This is David Brown speaking.",
]
SENTENCES = [
    "I would like to check the status of my order.",
    "Please call me back tomorrow afternoon.",
    "Can you transfer me to customer service?",
    "I want to cancel my subscription.",
    "The package arrived but the box was damaged.",
    "What time does the store open on Saturday?",
    "I already paid the bill last week.",
    "Could you repeat that more slowly please?",
]
TEXTS = SHORT_ANSWERS + DIGITS + NAMES + SENTENCES

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def normalize(text: str) -> list[str]:
    """Words for WER: lower case, no punctuation, digits spelt one by one, 'ok' = 'okay'."""
    text = text.lower().replace("-", " ")
    text = re.sub(r"\d", lambda m: f" {DIGIT_WORDS[int(m.group())]} ", text)
    words = re.sub(r"[^a-z' ]+", " ", text).split()
    return ["okay" if w == "ok" else w for w in words]


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance in words, reference length)."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[len(hyp)], len(ref)


def test_set(quick: bool) -> list[dict[str, Any]]:
    """Texts × voices (rotating), every third one with noise at 15-20 dB SNR."""
    voices = VOICES[:3] if quick else VOICES
    per_text = 1 if quick else 3
    items = []
    for index, text in enumerate(TEXTS):
        for k in range(per_text):
            voice = voices[(index + k * 2) % len(voices)]
            items.append({"text": text, "voice": voice, "noisy": (index + k) % 3 == 2})
    return items


def make_audio(item: dict[str, Any], seed: int) -> np.ndarray:
    clean = speech(item["text"], item["voice"], rate=8000)
    pad = np.zeros(1600, dtype=np.int16)  # 200 ms either side, as the endpointer leaves it
    audio = np.concatenate([pad, clean, pad])
    if item["noisy"]:
        audio = mix_at_snr(audio, noise(len(audio) / 8000, seed=seed), 15 + seed % 6)
    return telephony(audio)


def baseline(service: SttService, audio: np.ndarray) -> str:
    audio16 = to_float32(resample(audio, 8000, 16000))
    segments, _ = service._model.transcribe(audio16, beam_size=5, language="en")
    return " ".join(s.text.strip() for s in segments).strip()


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "n": 0}
    p50, p95 = np.percentile(np.asarray(values) * 1000, [50, 95])
    return {"p50_ms": round(float(p50), 1), "p95_ms": round(float(p95), 1), "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 utterances, 3 voices")
    parser.add_argument("--model", default=None, help="faster-whisper model name or path")
    args = parser.parse_args()

    items = test_set(args.quick)
    progress(f"synthesizing {len(items)} utterances (cached after the first run)")
    audios = [make_audio(item, seed) for seed, item in enumerate(items)]
    service = SttService(SttConfig(model=args.model))
    service.load()
    baseline(service, audios[0])  # warm both paths
    service.transcribe_sync(audios[0])

    rows = []
    for index, (item, audio) in enumerate(zip(items, audios, strict=True)):
        started = time.perf_counter()
        ours = service.transcribe_sync(audio)
        ours_s = time.perf_counter() - started
        started = time.perf_counter()
        base_text = baseline(service, audio)
        base_s = time.perf_counter() - started
        rows.append(
            {
                "text": item["text"],
                "voice": item["voice"].label,
                "noisy": item["noisy"],
                "audio_s": round(len(audio) / 8000, 3),
                "ours": ours.text,
                "ours_ms": round(ours_s * 1000, 1),
                "ours_path": ours.path,
                "fallback": ours.fallback,
                "baseline": base_text,
                "baseline_ms": round(base_s * 1000, 1),
                "ours_errors": word_errors(item["text"], ours.text)[0],
                "baseline_errors": word_errors(item["text"], base_text)[0],
                "words": word_errors(item["text"], "")[1],
            }
        )
        progress(
            f"[{index + 1}/{len(items)}] {ours_s * 1000:6.0f} ms {base_s * 1000:6.0f} ms "
            f"{item['text']!r} -> {ours.text!r} | {base_text!r}"
        )

    words = sum(r["words"] for r in rows)
    short = [r for r in rows if r["audio_s"] <= 5.0]
    summary = {
        "utterances": len(rows),
        "words": words,
        "ours": {
            "wer": round(sum(r["ours_errors"] for r in rows) / words, 4),
            "latency_up_to_5s": percentiles([r["ours_ms"] / 1000 for r in short]),
            "latency_all": percentiles([r["ours_ms"] / 1000 for r in rows]),
            "fallbacks": sum(r["fallback"] is not None for r in rows),
        },
        "baseline_default_transcribe": {
            "wer": round(sum(r["baseline_errors"] for r in rows) / words, 4),
            "latency_up_to_5s": percentiles([r["baseline_ms"] / 1000 for r in short]),
            "latency_all": percentiles([r["baseline_ms"] / 1000 for r in rows]),
        },
    }
    ours, base = summary["ours"], summary["baseline_default_transcribe"]
    summary["speedup_p50"] = round(
        base["latency_up_to_5s"]["p50_ms"] / ours["latency_up_to_5s"]["p50_ms"], 2
    )
    progress(
        f"WER ours {ours['wer']:.3f} vs default {base['wer']:.3f}; p50 "
        f"{ours['latency_up_to_5s']['p50_ms']} vs {base['latency_up_to_5s']['p50_ms']} ms; "
        f"p95 {ours['latency_up_to_5s']['p95_ms']} vs {base['latency_up_to_5s']['p95_ms']} ms; "
        f"fallbacks {ours['fallbacks']}/{len(rows)}"
    )
    figure = _figure(rows)
    paths = write_report("stt_bench", {"summary": summary, "utterances": rows}, figure)
    progress(f"wrote {paths[0]}")


def _figure(rows: list[dict[str, Any]]) -> Any:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    durations = [r["audio_s"] for r in rows]
    axis.scatter(durations, [r["baseline_ms"] for r in rows], s=12, label="default transcribe()")
    axis.scatter(durations, [r["ours_ms"] for r in rows], s=12, label="voicegraph STT path")
    axis.axhline(150, color="grey", linestyle=":", label="150 ms target")
    axis.set_xlabel("utterance length (s)")
    axis.set_ylabel("latency (ms)")
    axis.set_yscale("log")
    axis.set_title("Whisper tiny.en int8, 8 kHz μ-law input")
    axis.legend()
    return figure


if __name__ == "__main__":
    main()
