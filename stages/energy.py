"""An energy gate that cuts caller speech into utterances: simple, model-free, fast.

It is what the parrot bot listens with, and a fallback where no VAD model is
wanted. A frame counts as voiced when its level is above ``threshold_dbfs``;
speech starts after ``min_speech_ms`` of voiced audio, and ends after
``hangover_ms`` of unvoiced audio. ``preroll_ms`` of audio before the start is
kept so a soft first syllable is not cut.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.runtime.frames import PcmAudio, Utterance
from pipeline.runtime.stage import Stage

__all__ = ["EnergyGateConfig", "EnergySegmenter", "level_dbfs"]


def level_dbfs(samples: np.ndarray) -> float:
    """RMS level of int16 samples in dB relative to full scale (-inf for silence)."""
    if len(samples) == 0:
        return -math.inf
    rms = math.sqrt(float(np.dot(samples.astype(np.float64), samples)) / len(samples))
    return 20.0 * math.log10(rms / 32768.0) if rms > 0 else -math.inf


@dataclass(frozen=True, slots=True)
class EnergyGateConfig:
    threshold_dbfs: float = -45.0
    min_speech_ms: float = 100.0
    hangover_ms: float = 600.0
    preroll_ms: float = 200.0
    tail_ms: float = 100.0
    max_utterance_s: float = 30.0


class EnergySegmenter(Stage[PcmAudio, Utterance]):
    """PCM frames in, one :class:`Utterance` out per stretch of speech."""

    def __init__(self, config: EnergyGateConfig | None = None, *, name: str | None = None):
        super().__init__(name=name)
        self.config = config or EnergyGateConfig()
        self._preroll: deque[PcmAudio] = deque()
        self._preroll_s = 0.0  # running totals: re-summing every frame is quadratic
        self._speech: list[PcmAudio] = []
        self._speech_s = 0.0
        self._voiced_run = 0.0
        self._silent_run = 0.0
        self._last_voiced: PcmAudio | None = None
        self.utterances = 0
        self.forced_cuts = 0

    @property
    def in_speech(self) -> bool:
        return bool(self._speech) and self._voiced_run * 1000 >= self.config.min_speech_ms

    def process(self, item: PcmAudio) -> Iterable[Utterance]:
        config = self.config
        voiced = level_dbfs(item.samples) > config.threshold_dbfs
        if not self._speech:
            return self._listen(item, voiced)
        self._speech.append(item)
        self._speech_s += item.duration
        if voiced:
            self._voiced_run += item.duration
            self._silent_run = 0.0
            self._last_voiced = item
        else:
            self._silent_run += item.duration
            if not self.in_speech:
                # a blip too short to be speech: forget it, keep listening
                self._reset(keep_preroll=True)
                return ()
        if self.in_speech and self._silent_run * 1000 >= config.hangover_ms:
            return (self._emit(),)
        if self._speech_s >= config.max_utterance_s:
            self.forced_cuts += 1
            return (self._emit(),)
        return ()

    def _listen(self, item: PcmAudio, voiced: bool) -> Iterable[Utterance]:
        if voiced:
            self._speech = [item]
            self._speech_s = item.duration
            self._voiced_run = item.duration
            self._silent_run = 0.0
            self._last_voiced = item
            return ()
        self._preroll.append(item)
        self._preroll_s += item.duration
        preroll_s = self.config.preroll_ms / 1000
        while self._preroll and self._preroll_s > preroll_s + 1e-9:
            self._preroll_s -= self._preroll.popleft().duration
        return ()

    def _emit(self) -> Utterance:
        assert self._last_voiced is not None
        last = self._last_voiced
        tail_samples = int(self.config.tail_ms / 1000 * last.sample_rate)
        frames = [*self._preroll, *self._speech]
        start = frames[0].start_sample
        end = min(last.end_sample + tail_samples, self._speech[-1].end_sample)
        samples = np.concatenate([f.samples for f in frames])[: end - start]
        utterance = Utterance(
            samples=samples,
            start_sample=start,
            end_sample=end,
            sample_rate=last.sample_rate,
            captured_at=last.captured_at,
        )
        utterance.stamps = list(last.stamps)
        self.utterances += 1
        self._reset(keep_preroll=False)
        return utterance

    def _reset(self, *, keep_preroll: bool) -> None:
        if keep_preroll:
            self._preroll.extend(self._speech)
            self._preroll_s += self._speech_s
        else:
            self._preroll.clear()
            self._preroll_s = 0.0
        self._speech = []
        self._speech_s = 0.0
        self._voiced_run = self._silent_run = 0.0
        self._last_voiced = None

    def finish(self) -> Iterable[Utterance]:
        return (self._emit(),) if self.in_speech else ()

    def statistics(self) -> dict[str, Any]:
        return {"utterances": self.utterances, "forced_cuts": self.forced_cuts}
