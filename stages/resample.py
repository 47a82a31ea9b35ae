"""Sample-rate conversion with a real anti-aliasing filter (soxr), one-shot or streaming.

The phone line is 8 kHz; Whisper wants 16 kHz; Piper speaks at 22.05 kHz. Repeating
or dropping samples would fold energy above the new Nyquist frequency back into the
speech band (aliasing) or leave images above the old one, and both cost recognition
accuracy and sound quality. soxr's polyphase filters avoid that and are fast.

- :func:`resample` converts a whole clip (an utterance before STT, a TTS sentence).
- :class:`StreamResampler` converts frame by frame, keeping filter state across frames;
  soxr compensates its own delay, so the n-th output sample is the n-th sample of the
  new timeline and positions stay exact.
- :class:`ResampleStage` is the streaming form as a pipeline stage for
  :class:`~pipeline.runtime.frames.PcmAudio`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import soxr

from pipeline.runtime.frames import PcmAudio
from pipeline.runtime.stage import Stage

__all__ = ["ResampleStage", "StreamResampler", "resample", "to_float32", "to_int16"]

# "HQ" keeps the passband flat to ~0.9 of Nyquist with >100 dB stop-band rejection:
# more than 16-bit audio needs, at a few µs per 20 ms frame.
DEFAULT_QUALITY = "HQ"


def to_float32(samples: np.ndarray) -> np.ndarray:
    """int16 (or float) samples as float32 in [-1, 1]."""
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    return samples.astype(np.float32, copy=False)


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Float [-1, 1] samples as int16, clipping instead of wrapping."""
    if samples.dtype == np.int16:
        return samples
    return np.clip(np.rint(samples * 32768.0), -32768, 32767).astype(np.int16)


def resample(
    samples: np.ndarray, in_rate: int, out_rate: int, *, quality: str = DEFAULT_QUALITY
) -> np.ndarray:
    """A whole clip at ``out_rate``, same dtype as the input (int16 or float32)."""
    if in_rate == out_rate or len(samples) == 0:
        return samples.copy()
    dtype = samples.dtype
    out = soxr.resample(to_float32(samples), in_rate, out_rate, quality=quality)
    return to_int16(out) if dtype == np.int16 else out


class StreamResampler:
    """Frame-by-frame conversion that is seamless across frame boundaries.

    soxr holds back its filter delay at first and releases it on :meth:`flush`, so a
    frame in may give fewer (or zero) samples out; the concatenation of all outputs
    equals :func:`resample` of the concatenated input.
    """

    def __init__(self, in_rate: int, out_rate: int, *, quality: str = DEFAULT_QUALITY) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=quality)
        self.samples_in = 0
        self.samples_out = 0

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Convert one chunk; returns int16 if the chunk is int16, else float32."""
        self.samples_in += len(samples)
        out = self._stream.resample_chunk(to_float32(samples))
        self.samples_out += len(out)
        return to_int16(out) if samples.dtype == np.int16 else out

    def flush(self, dtype: Any = np.int16) -> np.ndarray:
        """The samples still inside the filter, at end of stream."""
        out = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self.samples_out += len(out)
        return to_int16(out) if np.dtype(dtype) == np.int16 else out


class ResampleStage(Stage[PcmAudio, PcmAudio]):
    """PCM frames in at one rate, PCM frames out at ``out_rate`` on the same timeline.

    Input start positions are mapped to the output rate once (from the first frame);
    afterwards each output frame starts where the previous one ended, so positions
    are exact sample counts, never accumulated rounding.
    """

    def __init__(
        self, out_rate: int, *, quality: str = DEFAULT_QUALITY, name: str | None = None
    ) -> None:
        super().__init__(name=name)
        self.out_rate = out_rate
        self.quality = quality
        self._resampler: StreamResampler | None = None
        self._next_start = 0
        self._last: PcmAudio | None = None

    def process(self, item: PcmAudio) -> Iterable[PcmAudio]:
        if self._resampler is None:
            self._resampler = StreamResampler(item.sample_rate, self.out_rate, quality=self.quality)
            self._next_start = item.start_sample * self.out_rate // item.sample_rate
        elif item.sample_rate != self._resampler.in_rate:
            raise ValueError(
                f"input rate changed from {self._resampler.in_rate} to {item.sample_rate} Hz"
            )
        self._last = item
        return self._emit(self._resampler.process(item.samples), item)

    def finish(self) -> Iterable[PcmAudio]:
        if self._resampler is None or self._last is None:
            return ()
        return self._emit(self._resampler.flush(self._last.samples.dtype), self._last)

    def _emit(self, samples: np.ndarray, source: PcmAudio) -> Iterable[PcmAudio]:
        if len(samples) == 0:
            return ()
        frame = PcmAudio(
            samples=samples,
            start_sample=self._next_start,
            sample_rate=self.out_rate,
            concealment=source.concealment,
            captured_at=source.captured_at,
        )
        frame.inherit_timing(source)
        self._next_start += len(samples)
        return (frame,)
