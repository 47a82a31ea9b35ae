"""Named fakes for each speech-service interface: deterministic, instant, no model loaded.

They let turn-manager tests run the whole voice bot (real WebSockets, real stages,
real barge-in) in well under a second of compute. Each one implements the same
interface as the real service (:class:`~stages.vad.VoiceActivityDetector`,
:class:`~stages.stt.SpeechToText`, :class:`~stages.tts.TextToSpeech`; the LLM's fake
is :class:`stages.llm.EchoLlm`), so a bot takes them with ``vad=``, ``stt=``, ``tts=``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import numpy as np
import trio

from pipeline.runtime.dialogue import Message
from pipeline.runtime.service import Service
from stages import mulaw
from stages.stt import Transcript

__all__ = [
    "REPEAT_PREVIOUS",
    "FakeEnergyVad",
    "FakeScriptedLlm",
    "FakeScriptedStt",
    "FakeToneTts",
    "tone_burst",
]

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


REPEAT_PREVIOUS = "<the previous reply, word for word>"
"""A :class:`FakeScriptedLlm` script line: say the prompt's last assistant message again."""


class FakeScriptedLlm(Service):
    """A fake LLM: its n-th reply is the n-th line of its script, streamed word by word.

    :data:`REPEAT_PREVIOUS` repeats the latest assistant message it was shown (in this
    prompt or, if it has none, an earlier one), as a small model does; past the script's
    end it says nothing. It keeps every prompt
    (``prompts``), how many words each reply yielded (``words_yielded``) and how many
    replies were closed before their end (``closed_early``), so tests see what the model
    was asked and that a stream was stopped.
    """

    name = "fake-scripted-llm"

    def __init__(self, script: Iterable[str], *, token_delay: float = 0.0) -> None:
        self.script = list(script)
        self.token_delay = token_delay
        self.prompts: list[list[Message]] = []
        self.words_yielded: list[int] = []
        self.closed_early = 0
        self._shown = ""  # the latest assistant message of any prompt

    def line_for(self, messages: Sequence[Message], index: int) -> str:
        said = [m.content for m in messages if m.role == "assistant"]
        self._shown = said[-1] if said else self._shown
        line = self.script[index] if index < len(self.script) else ""
        return self._shown if line == REPEAT_PREVIOUS else line

    async def stream(self, messages: Sequence[Message]) -> AsyncIterator[str]:
        self.prompts.append(list(messages))
        words = self.line_for(messages, len(self.prompts) - 1).split(" ")
        self.words_yielded.append(0)
        finished = False
        try:
            for index, word in enumerate(words):
                if self.token_delay > 0:
                    await trio.sleep(self.token_delay)
                else:
                    await trio.lowlevel.checkpoint()
                self.words_yielded[-1] += 1
                yield word if index == 0 else f" {word}"
            finished = True
        finally:
            if not finished:
                self.closed_early += 1
