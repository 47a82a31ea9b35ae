"""Named fakes for each speech-service interface: deterministic, instant, no model loaded.

They let turn-manager tests run the whole voice bot (real WebSockets, real stages,
real barge-in) in well under a second of compute. Each one implements the same
interface as the real service (:class:`~stages.vad.VoiceActivityDetector`,
:class:`~stages.stt.SpeechToText`, :class:`~stages.tts.TextToSpeech`; the LLM's fake
is :class:`stages.llm.EchoLlm`), so a bot takes them with ``vad=``, ``stt=``, ``tts=``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from pipeline.runtime.service import Service
from stages import mulaw
from stages.stt import Transcript

__all__ = ["FakeEnergyVad", "FakeScriptedStt", "FakeToneTts", "tone_burst"]

RATE = 8000


def tone_burst(seconds: float, *, level: float = 8000.0, hz: float = 440.0) -> np.ndarray:
    """A caller 'utterance' the fake VAD hears as speech: a steady tone."""
    t = np.arange(int(seconds * RATE)) / RATE
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.int16)


class _EnergyStream:
    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def __enter__(self) -> _EnergyStream:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    async def probability(self, window: np.ndarray) -> float:
        rms = float(np.sqrt(np.mean(window.astype(np.float64) ** 2)))
        return 0.99 if rms > self.threshold else 0.01


class FakeEnergyVad(Service):
    """A fake VAD: loud windows are speech (p=0.99), quiet ones are not (p=0.01)."""

    name = "fake-energy-vad"
    sample_rate = RATE
    window_size = 256

    def __init__(self, threshold: float = 300.0) -> None:
        self.threshold = threshold

    def open_stream(self) -> _EnergyStream:
        return _EnergyStream(self.threshold)


class FakeScriptedStt(Service):
    """A fake STT: the n-th turn it hears 'says' the n-th line of its script."""

    name = "fake-scripted-stt"

    def __init__(self, lines: Iterable[str]) -> None:
        self.lines = list(lines)
        self.heard: list[float] = []  # seconds of audio of each turn

    async def transcribe(self, samples: np.ndarray, sample_rate: int = RATE) -> Transcript:
        seconds = len(samples) / sample_rate
        text = self.lines[len(self.heard)] if len(self.heard) < len(self.lines) else ""
        self.heard.append(seconds)
        return Transcript(
            text=text,
            confidence=1.0,
            avg_logprob=0.0,
            no_speech_prob=0.0,
            audio_s=seconds,
            infer_s=0.0,
        )


class FakeToneTts(Service):
    """A fake voice: ``seconds_per_char`` of a low tone per character, μ-law 8 kHz."""

    name = "fake-tone-tts"

    def __init__(self, seconds_per_char: float = 0.03) -> None:
        self.seconds_per_char = seconds_per_char
        self.spoken: list[str] = []

    async def synthesize(self, text: str) -> bytes:
        self.spoken.append(text)
        samples = tone_burst(len(text) * self.seconds_per_char, level=2000.0, hz=200.0)
        return mulaw.encode(samples)

    def statistics(self) -> dict[str, Any]:
        return {"pieces": len(self.spoken)}
