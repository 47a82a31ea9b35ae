"""Speech to text on a model server: OpenAI-compatible ``POST /v1/audio/transcriptions``.

Served by faster-whisper-server, speaches, vLLM and whisper.cpp's server, among others.
Each caller turn goes up as a multipart form: ``file`` (a 16-bit PCM WAV), ``model``,
``language``, ``response_format=verbose_json`` (segments carry the log-probability and
no-speech probability that the hallucination guards need; a server that answers the
plain ``json`` shape, ``{"text": ...}``, is accepted too) and, when ``[stt] vocabulary``
is set, ``prompt`` (Whisper's previous-text context, as the local service uses it).

Telephone audio is 8 kHz; Whisper works at 16 kHz, so one side must resample. We send
16 kHz resampled with soxr (:mod:`stages.resample`, the same filter as the local
service) rather than leaving it to the server's decoder (faster-whisper's PyAV
resampler): README's "Remote speech services" gives the measurement. The cost is twice
the upload (32 kB per second of speech), small next to the model's time.

Quiet audio (loudest 100 ms under ``silence_dbfs``) is not sent: Whisper invents text
for silence. A known phantom phrase ("Thank you.") is dropped when the server says it
was probably not speech, as in :class:`~stages.stt.SttService`.

Failures (server down, slow, garbage, circuit open) raise :class:`SttError` through the
resilience layer of :mod:`stages.remote`, within ``timeout_s``.
"""

from __future__ import annotations

import io
import json
import math
import time
import wave
from typing import Any

import httpx
import numpy as np

from pipeline.runtime.errors import SttError
from pipeline.runtime.service import Service
from stages.energy import level_dbfs
from stages.remote import RemoteEndpoint, RemoteOptions, endpoint_url
from stages.resample import resample
from stages.stt import (
    PHANTOM_PHRASES,
    SpeechToText,
    SttConfig,
    SttService,
    Transcript,
    hallucination,
    vocabulary_prompt,
)

__all__ = ["UPLOAD_RATE", "RemoteStt", "create_stt", "pcm_wav"]

UPLOAD_RATE = 16000
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_MODEL = "whisper-1"


def pcm_wav(samples: np.ndarray, sample_rate: int) -> bytes:
    """int16 mono samples as a complete 16-bit PCM WAV file."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(np.ascontiguousarray(samples, dtype="<i2").tobytes())
    return buffer.getvalue()


def _loudest_dbfs(samples: np.ndarray, sample_rate: int) -> float:
    """Level of the loudest 100 ms: a near-silence detector that one click cannot fool
    as easily as a peak, nor a long pause hide like a whole-clip average."""
    block = max(1, sample_rate // 10)
    return max(
        (level_dbfs(samples[i : i + block]) for i in range(0, len(samples), block)),
        default=-math.inf,
    )


class RemoteStt(Service):
    """A :class:`~stages.stt.SpeechToText` over an OpenAI-compatible transcription server.

    ``url``: the server root, its ``/v1`` base or the full endpoint (None: ``options.url``);
    ``options``: deadline, retries and circuit breaker. ``model`` is sent as
    is (single-model servers ignore it). ``upload_rate``: the WAV's rate (16 kHz, see the
    module's notes; 8000 sends the telephone audio untouched).
    """

    name = "openai-stt"

    def __init__(
        self,
        url: str | None = None,
        *,
        model: str = DEFAULT_MODEL,
        language: str = "en",
        options: RemoteOptions | None = None,
        vocabulary: tuple[str, ...] = (),
        upload_rate: int = UPLOAD_RATE,
        silence_dbfs: float = -55.0,
        no_speech_threshold: float = 0.6,
        log_prob_threshold: float = -1.0,
        phantom_phrases: frozenset[str] = PHANTOM_PHRASES,
    ) -> None:
        options = options or RemoteOptions(backend="openai", url=url or DEFAULT_URL)
        url = url or options.url
        self.endpoint = RemoteEndpoint(
            endpoint_url(url, "audio/transcriptions"), options, error=SttError, what="STT server"
        )
        self.model = model or DEFAULT_MODEL
        self.language = language
        self.prompt = vocabulary_prompt(tuple(vocabulary))
        self.upload_rate = upload_rate
        self.silence_dbfs = silence_dbfs
        self.no_speech_threshold = no_speech_threshold
        self.log_prob_threshold = log_prob_threshold
        self.phantom_phrases = phantom_phrases
        self.transcribed = 0
        self.silent = 0
        self.dropped = 0

    @classmethod
    def from_config(cls, config: SttConfig) -> RemoteStt:
        """The server ``[stt]`` names (``backend = "openai"``)."""
        return cls(
            config.url,
            model=str(config.model or DEFAULT_MODEL),
            language=config.language,
            options=config,
            vocabulary=config.vocabulary,
            silence_dbfs=config.silence_dbfs,
            no_speech_threshold=config.no_speech_threshold,
            log_prob_threshold=config.log_prob_threshold,
            phantom_phrases=config.phantom_phrases,
        )

    async def setup(self) -> None:
        """Open the connection pool (the server is not contacted: it may start later)."""
        await self.endpoint.open()

    async def aclose(self) -> None:
        await self.endpoint.aclose()

    def form(self) -> dict[str, str]:
        """The multipart form fields sent with each file."""
        fields = {
            "model": self.model,
            "language": self.language,
            "response_format": "verbose_json",
        }
        if self.prompt:
            fields["prompt"] = self.prompt
        return fields

    async def transcribe(self, samples: np.ndarray, sample_rate: int = 8000) -> Transcript:
        """One caller turn (int16) to a :class:`Transcript`; raises :class:`SttError`."""
        started = time.perf_counter()
        duration = len(samples) / sample_rate
        level = _loudest_dbfs(samples, sample_rate)
        if level < self.silence_dbfs:
            self.silent += 1
            return Transcript("", 0.0, 0.0, 1.0, duration, 0.0, path="silent")
        audio = resample(np.asarray(samples, dtype=np.int16), sample_rate, self.upload_rate)
        upload = {"file": ("turn.wav", pcm_wav(audio, self.upload_rate), "audio/wav")}

        async def send(client: httpx.AsyncClient) -> httpx.Response:
            return await client.post(self.endpoint.url, data=self.form(), files=upload)

        text, avg_logprob, no_speech_prob = await self.endpoint.call(send, _parse_transcription)
        self.transcribed += 1
        dropped = self._hallucination(text, avg_logprob, no_speech_prob, level)
        self.dropped += dropped is not None
        return Transcript(
            text="" if dropped else text,
            confidence=math.exp(min(0.0, avg_logprob)),
            avg_logprob=avg_logprob,
            no_speech_prob=no_speech_prob,
            audio_s=duration,
            infer_s=time.perf_counter() - started,
            path="remote",
            dropped=dropped,
        )

    def _hallucination(
        self, text: str, avg_logprob: float, no_speech_prob: float, level_dbfs: float
    ) -> str | None:
        return hallucination(
            text,
            avg_logprob=avg_logprob,
            no_speech_prob=no_speech_prob,
            level_dbfs=level_dbfs,
            no_speech_threshold=self.no_speech_threshold,
            log_prob_threshold=self.log_prob_threshold,
            silence_dbfs=self.silence_dbfs,
            phantom_phrases=self.phantom_phrases,
        )

    def statistics(self) -> dict[str, Any]:
        return {
            "transcribed": self.transcribed,
            "silent": self.silent,
            "dropped": self.dropped,
            **self.endpoint.statistics(),
        }


def _parse_transcription(response: httpx.Response) -> tuple[str, float, float]:
    """(text, mean avg_logprob, lowest no_speech_prob) of a ``json`` or ``verbose_json``
    answer; a server that gives no segments gives no confidence (0.0 and 0.0)."""
    try:
        document = json.loads(response.content)
    except ValueError as exc:
        raise ValueError(f"not JSON: {response.content[:120]!r}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("text"), str):
        raise ValueError(f"no 'text' string in {response.content[:120]!r}")
    segments = document.get("segments") or []
    if not isinstance(segments, list) or not all(isinstance(s, dict) for s in segments):
        raise ValueError("'segments' is not a list of objects")
    logprobs = [s["avg_logprob"] for s in segments if _is_number(s.get("avg_logprob"))]
    no_speech = [s["no_speech_prob"] for s in segments if _is_number(s.get("no_speech_prob"))]
    avg_logprob = float(np.mean(logprobs)) if logprobs else 0.0
    return document["text"].strip(), avg_logprob, float(min(no_speech, default=0.0))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def create_stt(config: SttConfig) -> SpeechToText:
    """The STT service ``[stt]`` describes: the local model, or a remote server."""
    if config.backend == "openai":
        return RemoteStt.from_config(config)
    return SttService(config)
