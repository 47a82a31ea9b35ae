"""Reading caller audio from files and saving what a call produced.

Files come in any format libsndfile reads (WAV, FLAC, OGG, MP3, μ-law WAV, ...) at
any rate and channel count; the phone line is 8 kHz mono, so everything is mixed
down and resampled with a real anti-aliasing filter (soxr) before it is sent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import soxr

from pipeline.runtime.errors import ProtocolError
from stages.resample import to_int16

__all__ = ["AudioFileError", "load_audio", "save_wav"]


class AudioFileError(ProtocolError, ValueError):
    """A file that cannot be used as caller audio, with the reason."""


def load_audio(path: str | Path, sample_rate: int = 8000) -> np.ndarray:
    """Mono int16 samples at ``sample_rate`` from any audio file libsndfile can read."""
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioFileError(f"cannot read audio file {str(path)!r}: {exc}") from exc
    if data.shape[0] == 0:
        raise AudioFileError(f"audio file {str(path)!r} holds no samples")
    mono = data.mean(axis=1)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    return to_int16(mono)


def save_wav(path: str | Path, samples: np.ndarray, sample_rate: int = 8000) -> Path:
    """Write int16 mono samples as a PCM16 WAV (readable everywhere)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), to_int16(samples), sample_rate, subtype="PCM_16")
    return path
