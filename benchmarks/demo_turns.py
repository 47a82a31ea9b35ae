"""Render the demo's caller turns (``pipeline/demo/*.wav``) from ``turns.json``.

    python -m benchmarks.demo_turns

The caller speaks with the Piper ``joe`` voice at 0.9 speed, pitched up 300 cents
(sox) so that it does not sound like the bot, which speaks with ``joe`` too; then the
telephone path (8 kHz G.711 μ-law). A neural voice is nearer to the people who call
than espeak-ng's formant voices, which the demo used before: Whisper tiny.en misheard
"Hello, is this the bakery?" in those on every decoding path, faster-whisper's own
``transcribe()`` included. The benchmarks keep the espeak-ng voices among theirs.
"""

from __future__ import annotations

import io
import json
import subprocess

import numpy as np
import soundfile

from benchmarks.report import progress
from benchmarks.speech_corpus import Voice, speech, telephony
from pipeline.demo import DEMO_AUDIO

CALLER = Voice("piper", "joe", 0.9)
PITCH_CENTS = 300
PIPER_RATE = 22050


def caller_voice(text: str) -> np.ndarray:
    """``text`` as the demo's caller says it: 8 kHz int16, after μ-law."""
    raw = speech(text, CALLER, rate=PIPER_RATE)
    wav = io.BytesIO()
    soundfile.write(wav, raw, PIPER_RATE, format="WAV", subtype="PCM_16")
    shifted = subprocess.run(
        ["sox", "-t", "wav", "-", "-t", "wav", "-", "pitch", str(PITCH_CENTS)],
        input=wav.getvalue(),
        capture_output=True,
        check=True,
    ).stdout
    samples, _ = soundfile.read(io.BytesIO(shifted), dtype="int16")
    return telephony(samples, PIPER_RATE)


def main() -> None:
    manifest = json.loads((DEMO_AUDIO / "turns.json").read_text())
    for entry in manifest:
        path = DEMO_AUDIO / entry["file"]
        soundfile.write(str(path), caller_voice(entry["text"]), 8000, subtype="ULAW")
        progress(f"wrote {path}: {entry['text']!r}")


if __name__ == "__main__":
    main()
