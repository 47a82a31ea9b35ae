"""Your own speech recognizer in the voice bot: implement one method, pass it in.

    python -m examples.custom_stt            # transcribe a sentence with it, then exit

A voice bot takes any object with the :class:`~stages.stt.SpeechToText` shape:
``serving()`` (load once for the server's lifetime) and ``async transcribe(samples,
sample_rate)`` returning a :class:`~stages.stt.Transcript`. Here that is
faster-whisper's own ``transcribe()`` (beam search over the full 30 s window: slower
than the bot's default fast path, and the choice of someone who wants the library's
reference behaviour), run in a worker thread so the event loop never blocks, the
lazy segment generator consumed inside that thread::

    bot = VoiceBot(config, stt=PlainWhisperStt())

Every other service keeps its configured default. The same pattern swaps the VAD
(``vad=``), the LLM (``llm=``) or the voice (``tts=``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import trio

from pipeline import Service
from stages import SttError, Transcript, resample
from stages.stt import bundled_model_path


class PlainWhisperStt(Service):
    """faster-whisper's ``WhisperModel.transcribe`` as a :class:`~stages.stt.SpeechToText`."""

    name = "plain-whisper"

    def __init__(self, model: str | Path | None = None, *, beam_size: int = 5) -> None:
        self.model_source = str(model or bundled_model_path())
        self.beam_size = beam_size
        self._model = None
        self._limiter = trio.CapacityLimiter(1)  # one decode at a time on a small machine

    async def setup(self) -> None:
        from faster_whisper import WhisperModel

        def load() -> WhisperModel:
            try:
                return WhisperModel(self.model_source, device="cpu", compute_type="int8")
            except Exception as exc:
                raise SttError(f"cannot load {self.model_source!r}: {exc}") from exc

        self._model = await trio.to_thread.run_sync(load)

    async def transcribe(self, samples: np.ndarray, sample_rate: int = 8000) -> Transcript:
        if self._model is None:
            raise SttError("PlainWhisperStt is not loaded: enter serving() first")
        audio = resample(samples, sample_rate, 16000).astype(np.float32) / 32768.0

        def work() -> Transcript:
            started = time.perf_counter()
            segments, _ = self._model.transcribe(audio, language="en", beam_size=self.beam_size)
            segments = list(segments)  # the generator decodes: consume it here, in the thread
            logprob = float(np.mean([s.avg_logprob for s in segments])) if segments else -1.0
            return Transcript(
                text=" ".join(s.text.strip() for s in segments).strip(),
                confidence=math.exp(logprob),
                avg_logprob=logprob,
                no_speech_prob=max((s.no_speech_prob for s in segments), default=1.0),
                audio_s=len(samples) / sample_rate,
                infer_s=time.perf_counter() - started,
                path="plain",
            )

        return await trio.to_thread.run_sync(work, limiter=self._limiter)


async def transcribe_once(sentence: str = "Could I order two loaves of bread?") -> str:
    """Speak ``sentence`` (espeak-ng, 8 kHz), transcribe it with :class:`PlainWhisperStt`."""
    from benchmarks.speech_corpus import speech

    stt = PlainWhisperStt()
    async with stt.serving():
        return (await stt.transcribe(speech(sentence), 8000)).text


if __name__ == "__main__":
    print(trio.run(transcribe_once))
