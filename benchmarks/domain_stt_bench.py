"""Domain vocabulary for STT: WER with and without ``[stt] vocabulary``, by utterance kind.

    python -m benchmarks.domain_stt_bench [--quick] [--model M]

Two generated sets (benchmarks/speech_corpus.py), both through the telephone path
(8 kHz μ-law, a third of them with background noise at 15-20 dB SNR):

- domain: a bakery's callers (questions and orders with its words: Rosie's Bakery,
  sourdough, baguette, croissant, rye, pick-up, names, times), several Piper and
  espeak-ng voices and speeds;
- general: the set of benchmarks/stt_bench.py (no bakery words), to show the
  vocabulary costs nothing where it does not apply.

Every utterance goes through two services on the same audio in the same run,
alternating (machine noise hits both alike): one without a vocabulary, one with
:data:`VOCABULARY`. Reports WER per set and per utterance kind (single word, short
answer, digits, names, sentence), p50/p95 latency, the paired differences with their
95% bootstrap intervals (is a change more than the set's noise?), and the
silence/noise guard (no words may come out of silence or noise with the vocabulary set).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from benchmarks import stt_bench
from benchmarks.report import progress, write_report
from benchmarks.speech_corpus import VOICES, click, noise, silence, telephony
from stages.stt import SttConfig, SttService

# The bakery's words, as its bot.toml would list them: the place, the staff, the products.
VOCABULARY = (
    "Rosie's Bakery",
    "Rosie",
    "sourdough",
    "baguette",
    "croissant",
    "rye",
    "focaccia",
    "brioche",
    "ciabatta",
    "cinnamon roll",
    "loaves",
    "pick-up",
)

# (text, kind). Kinds: single word, digits (numbers, times), names, sentence.
DOMAIN: list[tuple[str, str]] = [
    ("Sourdough.", "single word"),
    ("Baguette.", "single word"),
    ("Croissants.", "single word"),
    ("Rye.", "single word"),
    ("Focaccia.", "single word"),
    ("Brioche.", "single word"),
    ("Six cinnamon rolls, please.", "digits"),
    ("Twelve croissants for nine thirty.", "digits"),
    ("My number is five five five, zero one four two.", "digits"),
    ("I will pick it up at four fifteen.", "digits"),
    ("Hello, is this Rosie's Bakery?", "names"),
    ("Can I speak to Rosie?", "names"),
    ("The order is for Priya Patel.", "names"),
    ("It is under the name Tom Okafor.", "names"),
    ("Hello, is this the bakery?", "sentence"),
    ("I would like to order two loaves of bread.", "sentence"),
    ("Do you have any sourdough left for this afternoon?", "sentence"),
    ("I'd like a rye loaf and two baguettes for pick-up tomorrow.", "sentence"),
    ("Can I get a dozen croissants for pick-up on Saturday morning?", "sentence"),
    ("Is the focaccia made with olive oil and rosemary?", "sentence"),
    ("Do you sell gluten-free bread or only sourdough?", "sentence"),
    ("What time can I pick up my order from Rosie's Bakery?", "sentence"),
    ("Could you put aside a brioche and a ciabatta for me?", "sentence"),
    ("I ordered a cinnamon roll but the pick-up was cancelled.", "sentence"),
]


def general_kind(text: str) -> str:
    """stt_bench's lists as kinds; one-word answers split out of the short answers."""
    if text in stt_bench.DIGITS:
        return "digits"
    if text in stt_bench.NAMES:
        return "names"
    if text in stt_bench.SENTENCES:
        return "sentence"
    return "single word" if len(text.split()) == 1 else "short answer"


def domain_set(quick: bool) -> list[dict[str, Any]]:
    """Texts × voices (rotating over all six), every third one with noise."""
    per_text = 1 if quick else 3
    items = []
    for index, (text, kind) in enumerate(DOMAIN):
        for k in range(per_text):
            voice = VOICES[(index + k * 2) % len(VOICES)]
            noisy = (index + k) % 3 == 2
            items.append(
                {"set": "domain", "kind": kind, "text": text, "voice": voice, "noisy": noisy}
            )
    return items


def general_set(quick: bool) -> list[dict[str, Any]]:
    items = stt_bench.test_set(quick)
    for item in items:
        item.update({"set": "general", "kind": general_kind(item["text"])})
    return items


def non_speech() -> list[tuple[str, np.ndarray]]:
    """What must stay silent with a vocabulary: silence, line hiss, room noise, a click."""
    return [
        ("digital silence", telephony(silence(1.5))),
        ("hiss -60 dBFS", telephony(noise(1.5, level_dbfs=-60, seed=4))),
        ("pink noise -40 dBFS", telephony(noise(1.5, level_dbfs=-40, seed=5))),
        ("white noise -35 dBFS", telephony(noise(2.0, level_dbfs=-35, seed=6, pink=False))),
        ("pink noise -30 dBFS", telephony(noise(1.0, level_dbfs=-30, seed=7))),
        ("click", telephony(np.concatenate([silence(0.3), click(), silence(0.5)]))),
    ]


def summarize(rows: list[dict[str, Any]], variant: str) -> dict[str, Any]:
    words = sum(r["words"] for r in rows) or 1
    times = [r[f"{variant}_ms"] / 1000 for r in rows]
    return {
        "wer": round(sum(r[f"{variant}_errors"] for r in rows) / words, 4),
        "latency": stt_bench.percentiles(times),
        "fallbacks": sum(r[f"{variant}_path"] != "short" for r in rows),
    }


def paired_difference(rows: list[dict[str, Any]], rounds: int = 10_000) -> dict[str, Any]:
    """With minus without, resampling utterances (both variants ran on the same audio):
    the WER difference and the per-utterance latency difference with 95% intervals, so
    "not worse" and "unchanged" are read against the noise of a 72-utterance set."""
    rng = np.random.default_rng(0)
    plain = np.array([r["plain_errors"] for r in rows], dtype=float)
    vocab = np.array([r["vocab_errors"] for r in rows], dtype=float)
    words = np.array([r["words"] for r in rows], dtype=float)
    extra_ms = np.array([r["vocab_ms"] - r["plain_ms"] for r in rows])
    picks = rng.integers(0, len(rows), size=(rounds, len(rows)))
    wer = (vocab[picks].sum(axis=1) - plain[picks].sum(axis=1)) / words[picks].sum(axis=1)
    median_ms = np.median(extra_ms[picks], axis=1)
    return {
        "wer_difference": round(float((vocab.sum() - plain.sum()) / words.sum()), 4),
        "wer_difference_95": [round(float(v), 4) for v in np.percentile(wer, [2.5, 97.5])],
        "utterances_worse": int((vocab > plain).sum()),
        "utterances_better": int((vocab < plain).sum()),
        "median_extra_ms": round(float(np.median(extra_ms)), 1),
        "median_extra_ms_95": [round(float(v), 1) for v in np.percentile(median_ms, [2.5, 97.5])],
    }


def by_kind(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds: dict[str, dict[str, Any]] = {}
    for kind in dict.fromkeys(r["kind"] for r in rows):
        subset = [r for r in rows if r["kind"] == kind]
        words = sum(r["words"] for r in subset)
        kinds[kind] = {
            "utterances": len(subset),
            "words": words,
            "wer_without": round(sum(r["plain_errors"] for r in subset) / words, 4),
            "wer_with": round(sum(r["vocab_errors"] for r in subset) / words, 4),
        }
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one voice per text: 44 utterances")
    parser.add_argument("--model", default=None, help="faster-whisper model name or path")
    args = parser.parse_args()

    items = domain_set(args.quick) + general_set(args.quick)
    progress(f"synthesizing {len(items)} utterances (cached after the first run)")
    audios = [stt_bench.make_audio(item, seed) for seed, item in enumerate(items)]
    services = {
        "plain": SttService(SttConfig(model=args.model)),
        "vocab": SttService(SttConfig(model=args.model, vocabulary=VOCABULARY)),
    }
    for service in services.values():
        service.load()
        service.transcribe_sync(audios[0])  # warm

    rows = []
    for index, (item, audio) in enumerate(zip(items, audios, strict=True)):
        row: dict[str, Any] = {
            "set": item["set"],
            "kind": item["kind"],
            "text": item["text"],
            "voice": item["voice"].label,
            "noisy": item["noisy"],
            "audio_s": round(len(audio) / 8000, 3),
            "words": stt_bench.word_errors(item["text"], "")[1],
        }
        order = ("plain", "vocab") if index % 2 == 0 else ("vocab", "plain")
        for variant in order:
            started = time.perf_counter()
            result = services[variant].transcribe_sync(audio)
            row[f"{variant}_ms"] = round((time.perf_counter() - started) * 1000, 1)
            row[variant] = result.text
            row[f"{variant}_path"] = result.path
            row[f"{variant}_errors"] = stt_bench.word_errors(item["text"], result.text)[0]
        rows.append(row)
        progress(
            f"[{index + 1}/{len(items)}] {row['plain_ms']:5.0f} {row['vocab_ms']:5.0f} ms "
            f"{item['text']!r} -> {row['plain']!r} | {row['vocab']!r}"
        )

    guard = []
    for label, audio in non_speech():
        texts = {name: s.transcribe_sync(audio).text for name, s in services.items()}
        guard.append({"audio": label, "without": texts["plain"], "with": texts["vocab"]})
        progress(f"non-speech {label}: {texts['plain']!r} | {texts['vocab']!r}")

    summary: dict[str, Any] = {"vocabulary": list(VOCABULARY)}
    for name in ("domain", "general"):
        subset = [r for r in rows if r["set"] == name]
        plain, vocab = summarize(subset, "plain"), summarize(subset, "vocab")
        summary[name] = {
            "utterances": len(subset),
            "words": sum(r["words"] for r in subset),
            "without_vocabulary": plain,
            "with_vocabulary": vocab,
            "wer_relative_change": round(vocab["wer"] / plain["wer"] - 1, 3) if plain["wer"] else 0,
            "by_kind": by_kind(subset),
            "paired": paired_difference(subset),
        }
        progress(
            f"{name}: WER {plain['wer']:.3f} -> {vocab['wer']:.3f} with the vocabulary "
            f"({summary[name]['wer_relative_change']:+.0%}); p50 {plain['latency']['p50_ms']} -> "
            f"{vocab['latency']['p50_ms']} ms; p95 {plain['latency']['p95_ms']} -> "
            f"{vocab['latency']['p95_ms']} ms; paired {summary[name]['paired']}"
        )
    summary["non_speech_words"] = sum(bool(g["with"]) for g in guard)
    name = "domain_stt_quick" if args.quick else "domain_stt"
    results = {"summary": summary, "non_speech": guard, "utterances": rows}
    paths = write_report(name, results, _figure(summary))
    progress(f"wrote {paths[0]}")


def _figure(summary: dict[str, Any]) -> Any:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 1]})
    labels, without, with_ = [], [], []
    for name in ("domain", "general"):
        for kind, values in summary[name]["by_kind"].items():
            labels.append(f"{name}\n{kind}")
            without.append(values["wer_without"])
            with_.append(values["wer_with"])
    x = np.arange(len(labels))
    axes[0].bar(x - 0.2, without, 0.4, label="without vocabulary")
    axes[0].bar(x + 0.2, with_, 0.4, label="with vocabulary")
    axes[0].set_xticks(x, labels, fontsize=7)
    axes[0].set_ylabel("WER")
    axes[0].set_title("Whisper tiny.en int8, 8 kHz μ-law: WER by utterance kind")
    axes[0].legend()
    for offset, (key, label) in enumerate(
        [("without_vocabulary", "without"), ("with_vocabulary", "with")]
    ):
        p50 = [summary[n][key]["latency"]["p50_ms"] for n in ("domain", "general")]
        p95 = [summary[n][key]["latency"]["p95_ms"] for n in ("domain", "general")]
        positions = np.arange(2) + (offset - 0.5) * 0.4
        axes[1].bar(positions, p50, 0.4, label=f"p50 {label}")
        axes[1].scatter(positions, p95, marker="_", s=200, color="black")
    axes[1].set_xticks(np.arange(2), ["domain", "general"])
    axes[1].set_ylabel("latency (ms); bar p50, tick p95")
    axes[1].legend(fontsize=7)
    figure.tight_layout()
    return figure


if __name__ == "__main__":
    main()
