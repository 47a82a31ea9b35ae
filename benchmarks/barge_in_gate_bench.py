"""The voicing barge-in gate: what it stops, what it costs real speech.

    python -m benchmarks.barge_in_gate_bench [--quick]

Over the bot's speech (``BotSpeech.speaking``), in the same run, each clip goes
through the endpointer with and without :class:`stages.voicing.VoicingGate`:

- speech: short barge-in phrases in the six corpus voices, clean and with pink noise
  at 15 dB SNR, through Silero (the production VAD): how many barge in, and how much
  later the gated barge-in fires than the ungated one (ms; 32 ms per VAD window);
- non-speech (:mod:`benchmarks.barge_in_sounds`: coughs, click trains, door slams,
  breaths, line noise), through Silero and through an energy VAD (every loud window
  is speech, as :class:`tests.fakes.FakeEnergyVad`, the VAD a weaker setup has): how
  many stop the bot;
- voiced backchannels ("Mm-hmm.", "Uh-huh.", "Mm."): they pass the gate by design
  (the turn manager resumes the reply when their turn has no words);
- the gate's CPU per call (it is asked once per 32 ms window while it says no).

Results: ``benchmarks/results/barge_in_gate.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from benchmarks.barge_in_sounds import NON_SPEECH, non_speech
from benchmarks.report import progress, timing_summary, write_report
from benchmarks.speech_corpus import VOICES, mix_at_snr, noise, padded, speech, telephony
from stages.turns import BargeIn, BotSpeech, Endpointer, TurnConfig
from stages.vad import WINDOW, SileroModel, VadFrame, frames_of
from stages.voicing import VoicingGate

SIZE = WINDOW[8000]
PHRASES = (
    "Stop.",
    "Sorry, wait.",
    "No, that is wrong.",
    "Hello there, can you hear me?",
    "Sunday?",
    "Excuse me",
    "Hold on a second",
    "What about Friday",
    "Fine, thanks.",
    "Yes please",
)
BACKCHANNELS = ("Mm-hmm.", "Uh-huh.", "Mm.")


def energy_frames(audio: np.ndarray, threshold: float = 300.0) -> list[VadFrame]:
    frames = []
    for i in range(0, len(audio) - SIZE + 1, SIZE):
        window = audio[i : i + SIZE]
        loud = float(np.sqrt(np.mean(window.astype(np.float64) ** 2))) > threshold
        frames.append(
            VadFrame(
                samples=window, start_sample=i, probability=0.99 if loud else 0.01, captured_at=0.0
            )
        )
    return frames


def first_barge_in(frames: list[VadFrame], gate: VoicingGate | None) -> BargeIn | None:
    bot = BotSpeech()
    bot.speaking = True
    endpointer = Endpointer(bot=bot, barge_in_gate=gate)
    for frame in frames:
        for event in endpointer.process(frame):
            if isinstance(event, BargeIn):
                return event
    return None


def measure_speech(model: SileroModel, phrases: tuple[str, ...]) -> dict[str, Any]:
    delays, missed, ungated_fired, clips = [], [], 0, 0
    for text in phrases:
        for voice in VOICES:
            for snr in (None, 15.0):
                clip = telephony(speech(text, voice))
                if snr is not None:
                    clip = mix_at_snr(clip, noise(3.0, seed=7), snr)
                frames = frames_of(model, padded(clip, 0.5, 0.5))
                clips += 1
                ungated = first_barge_in(frames, None)
                if ungated is None:
                    continue
                ungated_fired += 1
                gated = first_barge_in(frames, VoicingGate())
                if gated is None:
                    missed.append(f"{text} / {voice.label} / snr {snr}")
                    continue
                delays.append((gated.detected_sample - ungated.detected_sample) / 8.0)
    added = np.asarray(delays or [0.0])
    return {
        "clips": clips,
        "barge_ins_ungated": ungated_fired,
        "barge_ins_gated": len(delays),
        "missed_by_gate": missed,
        "added_delay_ms": {
            "p50": float(np.percentile(added, 50)),
            "p95": float(np.percentile(added, 95)),
            "max": float(added.max()),
            "mean": float(added.mean()),
        },
        "delayed_clips": int(np.sum(added > 0)),
        "delayed_over_two_windows": int(np.sum(added > 2 * SIZE / 8.0)),
    }


def measure_non_speech(model: SileroModel, seeds: int) -> dict[str, Any]:
    table: dict[str, dict[str, int]] = {
        kind: dict.fromkeys(("clips", "silero", "silero_gated", "energy", "energy_gated"), 0)
        for kind in NON_SPEECH
    }
    for seed in range(seeds):
        for kind, sound in non_speech(seed).items():
            audio = padded(telephony(sound), 0.5, 0.5)
            row = table[kind]
            row["clips"] += 1
            for vad, frames in (
                ("silero", frames_of(model, audio)),
                ("energy", energy_frames(audio)),
            ):
                row[vad] += first_barge_in(frames, None) is not None
                row[f"{vad}_gated"] += first_barge_in(frames, VoicingGate()) is not None
    return table


def measure_backchannels(model: SileroModel) -> dict[str, Any]:
    passed = {}
    for text in BACKCHANNELS:
        fired = [
            first_barge_in(
                energy_frames(padded(telephony(speech(text, v)), 0.5, 0.5)), VoicingGate()
            )
            is not None
            for v in VOICES
        ]
        passed[text] = f"{sum(fired)}/{len(fired)}"
    return passed


def measure_cost(calls: int = 400) -> dict[str, float]:
    """The gate asked once per window over 3 s of hiss (it never says yes: worst case)."""
    hiss = telephony(noise(3.0, level_dbfs=-20.0))
    timings = []
    ends = list(range(1760, len(hiss) + 1, SIZE))
    while len(timings) < calls:
        gate = VoicingGate()
        for end in ends:
            started = time.perf_counter_ns()
            gate(hiss[:end], 0)
            timings.append(time.perf_counter_ns() - started)
    return timing_summary(np.asarray(timings))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer phrases and seeds")
    args = parser.parse_args()
    model = SileroModel()
    phrases = PHRASES[:4] if args.quick else PHRASES
    progress(f"speech: {len(phrases)} phrases x {len(VOICES)} voices x clean/15 dB")
    gate_ms = TurnConfig().barge_in_min_speech_ms
    results: dict[str, Any] = {"barge_in_min_speech_ms": gate_ms}
    results["speech"] = measure_speech(model, phrases)
    progress("non-speech: Silero and an energy VAD, with and without the gate")
    results["non_speech"] = measure_non_speech(model, 3 if args.quick else 10)
    results["voiced_backchannels_passing"] = measure_backchannels(model)
    results["gate_cost_per_call"] = measure_cost()
    name = "barge_in_gate_quick" if args.quick else "barge_in_gate"
    json_path, png_path = write_report(name, results, _figure(results))
    progress(f"wrote {json_path} and {png_path}")
    speech_part = results["speech"]
    print(
        f"speech: {speech_part['barge_ins_gated']}/{speech_part['barge_ins_ungated']} barge-ins "
        f"kept, added delay p50 {speech_part['added_delay_ms']['p50']:.0f} ms, "
        f"p95 {speech_part['added_delay_ms']['p95']:.0f} ms, "
        f"max {speech_part['added_delay_ms']['max']:.0f} ms"
    )
    for kind, row in results["non_speech"].items():
        print(f"{kind:>13}: {row}")
    print(f"gate per call: {results['gate_cost_per_call']['median_us']:.0f} us median")


def _figure(results: dict[str, Any]) -> Any:
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    table = results["non_speech"]
    kinds = list(table)
    x = np.arange(len(kinds))
    for offset, (key, label) in enumerate(
        [
            ("energy", "energy VAD"),
            ("energy_gated", "energy VAD + gate"),
            ("silero", "Silero"),
            ("silero_gated", "Silero + gate"),
        ]
    ):
        share = [table[k][key] / table[k]["clips"] for k in kinds]
        left.bar(x + (offset - 1.5) * 0.2, share, 0.2, label=label)
    left.set_xticks(x, kinds, rotation=30, ha="right")
    left.set_ylabel("share that stopped the bot")
    left.set_title("non-speech over the bot")
    left.legend(fontsize=8)
    added = results["speech"]["added_delay_ms"]
    right.bar(["p50", "p95", "max"], [added["p50"], added["p95"], added["max"]])
    right.set_ylabel("ms later than without the gate")
    kept, fired = results["speech"]["barge_ins_gated"], results["speech"]["barge_ins_ungated"]
    right.set_title(f"speech barge-ins: {kept}/{fired} kept")
    figure.tight_layout()
    return figure


if __name__ == "__main__":
    main()
