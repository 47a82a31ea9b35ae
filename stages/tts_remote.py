"""Text to speech on a model server: OpenAI-compatible ``POST /v1/audio/speech``.

Served by speaches, Kokoro-FastAPI, local-tts-studio (Piper) and others. Each piece of
a reply goes up as JSON (``model``, ``input``, ``voice``, ``response_format``, and
``speed`` when ``[tts] length_scale`` is not 1) and comes back as audio:

- ``wav`` (the default): the rate is in the file's header; 16-bit PCM or 32-bit float,
  any channel count (mixed down to mono);
- ``pcm``: raw 16-bit little-endian mono at ``pcm_rate`` (OpenAI's is 24 kHz; the
  server's documentation says which).

The audio is peak-normalised to ``volume``, resampled to 8 kHz with the anti-aliasing
resampler of :mod:`stages.resample` and μ-law encoded, as :class:`~stages.tts.PiperTts`
does: the reply path sees the same telephone audio whichever voice made it. A body that
is not audio (JSON or HTML with a 200, a WAV that does not parse) is a malformed answer.

The fallback line must be speakable when the server is not: ``cached_lines`` (the bot's
fallback line) are synthesized at start-up (best effort: a server that is down then does
not stop the bot) and again after the server next answers, and served from memory ever
after, whether or not the server is up. Every other failure raises :class:`TtsError`
through the resilience layer of :mod:`stages.remote`, within ``timeout_s``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
import trio

from pipeline.runtime.errors import TtsError
from pipeline.runtime.frames import TELEPHONE_RATE
from pipeline.runtime.service import CLEANUP_TIMEOUT, Service
from stages.mulaw import encode
from stages.remote import RemoteEndpoint, RemoteOptions, endpoint_url
from stages.resample import resample, to_int16
from stages.tts import PiperTts, TextToSpeech, TtsConfig
from stages.wav import WAVE_FORMAT_PCM, WavError, decode_wav

__all__ = ["FORMATS", "RemoteTts", "create_tts", "speech_samples"]

FORMATS = ("wav", "pcm")
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_MODEL = "tts-1"
DEFAULT_VOICE = "alloy"
_IEEE_FLOAT = 0x0003


def speech_samples(body: bytes, content_type: str, response_format: str, pcm_rate: int):
    """(float32 mono samples, their rate) of a speech answer; ``ValueError`` if it is not
    audio of the format asked for."""
    if content_type.startswith(("application/json", "text/")):
        raise ValueError(f"not audio ({content_type}): {body[:120]!r}")
    if response_format == "pcm":
        if len(body) % 2:
            raise ValueError(f"odd length for 16-bit PCM: {len(body)} bytes")
        return np.frombuffer(body, dtype="<i2").astype(np.float32) / 32768.0, pcm_rate
    try:
        wav = decode_wav(body)
    except WavError as exc:
        raise ValueError(f"not a WAV file: {exc}") from exc
    if wav.format_tag == WAVE_FORMAT_PCM and wav.bits_per_sample == 16:
        samples = np.frombuffer(wav.data, dtype="<i2").astype(np.float32) / 32768.0
    elif wav.format_tag == _IEEE_FLOAT and wav.bits_per_sample == 32:
        samples = np.frombuffer(wav.data, dtype="<f4").astype(np.float32)
    else:
        raise ValueError(f"WAV of {wav.bits_per_sample}-bit {wav.format_name}: not supported")
    usable = len(samples) - len(samples) % wav.channels
    mono = samples[:usable].reshape(-1, wav.channels).mean(axis=1)
    return mono.astype(np.float32), wav.sample_rate


class RemoteTts(Service):
    """A :class:`~stages.tts.TextToSpeech` over an OpenAI-compatible speech server,
    producing μ-law 8 kHz telephone audio.

    ``url``: the server root, its ``/v1`` base or the full endpoint (None: ``options.url``);
    ``options``: deadline, retries and circuit breaker. ``model`` and
    ``voice`` are the server's names. ``speed`` (None: not sent) is OpenAI's.
    """

    name = "openai-tts"

    def __init__(
        self,
        url: str | None = None,
        *,
        model: str = DEFAULT_MODEL,
        voice: str = DEFAULT_VOICE,
        response_format: str = "wav",
        pcm_rate: int = 24000,
        speed: float | None = None,
        volume: float = 0.9,
        options: RemoteOptions | None = None,
        cached_lines: Iterable[str] = (),
    ) -> None:
        if response_format not in FORMATS:
            raise ValueError(f"response_format must be one of {', '.join(FORMATS)}")
        if not 0 < volume <= 1:
            raise ValueError(f"volume must be in (0, 1], not {volume}")
        options = options or RemoteOptions(backend="openai", url=url or DEFAULT_URL)
        url = url or options.url
        self.endpoint = RemoteEndpoint(
            endpoint_url(url, "audio/speech"), options, error=TtsError, what="TTS server"
        )
        self.model = model or DEFAULT_MODEL
        self.voice = voice or DEFAULT_VOICE
        self.response_format = response_format
        self.pcm_rate = pcm_rate
        self.speed = speed
        self.volume = volume
        self.sample_rate = TELEPHONE_RATE
        self.cached_lines = tuple(line.strip() for line in cached_lines if line.strip())
        self.cache: dict[str, bytes] = {}
        self.lines_cached = trio.Event()  # set once every fixed line is in the cache
        self._answered = trio.Event()
        self.sentences = 0
        self.audio_s = 0.0
        self.from_cache = 0

    @classmethod
    def from_config(cls, config: TtsConfig, *, cached_lines: Iterable[str] = ()) -> RemoteTts:
        """The server ``[tts]`` names (``backend = "openai"``)."""
        scale = config.length_scale
        return cls(
            config.url,
            model=config.model,
            voice=config.voice,
            response_format=config.response_format,
            pcm_rate=config.pcm_rate,
            speed=1.0 / scale if scale > 0 and scale != 1.0 else None,
            volume=config.volume,
            options=config,
            cached_lines=cached_lines,
        )

    async def setup(self) -> None:
        """Open the connection pool, and try once to cache the fixed lines."""
        await self.endpoint.open()
        await self.cache_lines()

    async def aclose(self) -> None:
        await self.endpoint.aclose()

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """Set up; while serving, cache the fixed lines once the server answers again."""
        await self.setup()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keep_lines_cached)
                try:
                    yield
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            with trio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                await self.aclose()

    async def cache_lines(self) -> bool:
        """Synthesize the fixed lines not cached yet; True when all are."""
        for line in self.cached_lines:
            if line not in self.cache:
                try:
                    self.cache[line] = await self._request(line)
                except TtsError:
                    return False
        self.lines_cached.set()
        return True

    async def _keep_lines_cached(self) -> None:
        while not self.lines_cached.is_set():
            self._answered = trio.Event()
            await self._answered.wait()  # the server is back: a request just succeeded
            await self.cache_lines()

    def request_body(self, text: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "input": text,
            "voice": self.voice,
            "response_format": self.response_format,
        }
        if self.speed is not None:
            body["speed"] = self.speed
        return body

    async def synthesize(self, text: str) -> bytes:
        """``text`` as μ-law 8 kHz bytes (``b""`` if blank); raises :class:`TtsError`."""
        text = text.strip()
        if not text:
            return b""
        cached = self.cache.get(text)
        if cached is not None:
            self.from_cache += 1
            return cached
        return await self._request(text)

    async def _request(self, text: str) -> bytes:
        body = json.dumps(self.request_body(text)).encode()
        headers = {"Content-Type": "application/json"}

        async def send(client: httpx.AsyncClient) -> httpx.Response:
            return await client.post(self.endpoint.url, content=body, headers=headers)

        payload = await self.endpoint.call(send, self._telephone_audio)
        self._answered.set()
        self.sentences += 1
        self.audio_s += len(payload) / self.sample_rate
        return payload

    def _telephone_audio(self, response: httpx.Response) -> bytes:
        content_type = response.headers.get("content-type", "")
        samples, rate = speech_samples(
            response.content, content_type, self.response_format, self.pcm_rate
        )
        if len(samples) == 0:
            raise ValueError("no audio in the answer")
        peak = float(np.max(np.abs(samples)))
        samples = samples * (self.volume / peak) if peak > 1e-6 else np.zeros_like(samples)
        return encode(to_int16(resample(samples, rate, self.sample_rate)))

    def statistics(self) -> dict[str, Any]:
        return {
            "sentences": self.sentences,
            "audio_s": round(self.audio_s, 3),
            "from_cache": self.from_cache,
            **self.endpoint.statistics(),
        }


def create_tts(config: TtsConfig, *, cached_lines: Iterable[str] = ()) -> TextToSpeech:
    """The voice ``[tts]`` describes: the local Piper voice, or a remote server (which
    keeps ``cached_lines``, the bot's fallback line, speakable while it is down)."""
    if config.backend == "openai":
        return RemoteTts.from_config(config, cached_lines=cached_lines)
    return PiperTts.from_config(config)
