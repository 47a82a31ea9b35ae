"""Named fakes for each speech-service interface: deterministic, instant, no model loaded.

They let turn-manager tests run the whole voice bot (real WebSockets, real stages,
real barge-in) in well under a second of compute. Each one implements the same
interface as the real service (:class:`~stages.vad.VoiceActivityDetector`,
:class:`~stages.stt.SpeechToText`, :class:`~stages.tts.TextToSpeech`,
:class:`~stages.end_of_turn.TurnCompletionModel`; the LLM's fake is
:class:`stages.llm.EchoLlm`), so a bot takes them with ``vad=``, ``stt=``, ``tts=``,
``turn=``.
"""

from __future__ import annotations

import math
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
    "FakeCall",
    "FakeEnergyVad",
    "FakeScriptedLlm",
    "FakeScriptedStt",
    "FakeToneStt",
    "FakeToneTts",
    "FakeTurnModel",
    "tone_burst",
    "tone_pitches",
]

RATE = 8000


def tone_burst(seconds: float, *, level: float = 8000.0, hz: float = 440.0) -> np.ndarray:
    """A caller 'utterance' the fake VAD hears as speech: a steady tone."""
    t = np.arange(int(seconds * RATE)) / RATE
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def tone_pitches(samples: np.ndarray, rate: int = RATE) -> list[float]:
    """The pitch (Hz, from zero crossings) of each tone burst in ``samples``, in order:
    loud 20 ms blocks, bursts split by 100 ms or more of quiet."""
    block = rate // 50
    loud = [
        float(np.sqrt(np.mean(samples[i : i + block].astype(np.float64) ** 2))) > 300.0
        for i in range(0, len(samples) - block + 1, block)
    ]
    bursts: list[tuple[int, int]] = []
    for index, is_loud in enumerate(loud):
        if not is_loud:
            continue
        if bursts and index - bursts[-1][1] <= 5:
            bursts[-1] = (bursts[-1][0], index + 1)
        else:
            bursts.append((index, index + 1))
    pitches = []
    for first, end in bursts:
        part = samples[first * block : end * block].astype(np.float64)
        crossings = np.count_nonzero(np.diff(np.signbit(part)))
        pitches.append(float(crossings * rate / (2 * len(part))))
    return pitches


def _nearest(table: dict[float, Any], pitch: float) -> Any:
    return table[min(table, key=lambda hz: abs(hz - pitch))]


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


class FakeCall:
    """A call's sending side, as the turn manager uses it, without a socket: it keeps
    each speech chunk sent (Trio time, μ-law bytes), each ``interrupt`` and each log
    line, so turn-manager tests run in virtual time."""

    def __init__(self, call_id: str = "fake-call") -> None:
        self.call_id = call_id
        self.started_at = trio.current_time()
        self.speech: list[tuple[float, bytes]] = []
        self.interrupts: list[float] = []
        self.greetings: list[bytes] = []
        self.log = self
        self.lines: list[tuple[str, str, dict[str, Any]]] = []
        self._sent = trio.Event()

    async def send_speech(self, mulaw: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.speech.append((trio.current_time(), mulaw))
        self._sent.set()
        self._sent = trio.Event()

    async def speech_sent(self, since: float) -> float:
        """Wait for a chunk sent at or after ``since``; when the first such was sent."""
        while not any(at >= since for at, _ in self.speech):
            await self._sent.wait()
        return min(at for at, _ in self.speech if at >= since)

    async def send_greeting(self, wav: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.greetings.append(wav)

    async def send_interrupt(self) -> None:
        await trio.lowlevel.checkpoint()
        self.interrupts.append(trio.current_time())

    def speech_since(self, at: float) -> list[bytes]:
        return [audio for sent, audio in self.speech if sent >= at]

    def info(self, message: str, *, extra: dict[str, Any] | None = None) -> None:
        self.lines.append(("info", message, dict(extra or {})))

    def warning(self, message: str, *, extra: dict[str, Any] | None = None) -> None:
        self.lines.append(("warning", message, dict(extra or {})))


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


class FakeToneStt(Service):
    """A fake STT for turns made of tone bursts: each burst 'says' the words of the
    nearest pitch in ``words`` (``{440: "My name is", 660: "John Smith."}``), so the
    same audio always reads the same, however it is cut. It notes each audio's length."""

    name = "fake-tone-stt"

    def __init__(
        self, words: dict[float, str], *, delay: float = 0.0, confidence: float = 1.0
    ) -> None:
        self.words = dict(words)
        self.delay = delay
        self.confidence = confidence  # how well it says it heard (exp avg log-prob)
        self.heard: list[float] = []
        self.texts: list[str] = []

    async def transcribe(self, samples: np.ndarray, sample_rate: int = RATE) -> Transcript:
        if self.delay:
            await trio.sleep(self.delay)
        seconds = len(samples) / sample_rate
        text = " ".join(_nearest(self.words, p) for p in tone_pitches(samples, sample_rate))
        self.heard.append(seconds)
        self.texts.append(text)
        return Transcript(
            text=text,
            confidence=self.confidence,
            avg_logprob=math.log(self.confidence) if self.confidence > 0 else -10.0,
            no_speech_prob=0.0,
            audio_s=seconds,
            infer_s=self.delay,
        )


class FakeTurnModel(Service):
    """A fake end-of-turn model: P(complete) by the pitch of the turn's last tone burst
    (``{440: 0.1, 660: 0.9}``; ``default`` for no burst), after ``delay`` seconds (an
    inference). It keeps how much audio each request had."""

    name = "fake-turn-model"

    def __init__(
        self, by_pitch: dict[float, float], *, default: float = 0.5, delay: float = 0.05
    ) -> None:
        self.by_pitch = dict(by_pitch)
        self.default = default
        self.delay = delay
        self.requests: list[float] = []  # seconds of audio of each request

    async def completion(self, samples: np.ndarray, sample_rate: int) -> float:
        self.requests.append(len(samples) / sample_rate)
        await trio.sleep(self.delay)
        pitches = tone_pitches(samples, sample_rate)
        return _nearest(self.by_pitch, pitches[-1]) if pitches and self.by_pitch else self.default


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
