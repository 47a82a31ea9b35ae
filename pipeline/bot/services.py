"""The speech services a voice bot's calls share: VAD, STT, LLM and TTS, each swappable.

Each is a small interface (:class:`~stages.vad.VoiceActivityDetector`,
:class:`~stages.stt.SpeechToText`, :class:`~stages.llm.LlmBackend`,
:class:`~stages.tts.TextToSpeech`); the defaults are the offline models of the design
card (Silero, faster-whisper tiny.en, SmolLM2 through llama.cpp, Piper joe), built
from ``bot.toml``. A user passes any of their own to the voice bot instead
(``VoiceBot(config, stt=MyStt())``) and the rest keep their defaults.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, fields

import trio

from pipeline.bot.config import BotConfig
from stages.llm import LlmBackend, create_llm
from stages.stt import SpeechToText, SttService
from stages.tts import PiperTts, TextToSpeech
from stages.vad import VadService, VoiceActivityDetector

__all__ = ["SpeechServices", "serving_all"]


@dataclass(slots=True)
class SpeechServices:
    """The models every call of a bot shares."""

    vad: VoiceActivityDetector
    stt: SpeechToText
    llm: LlmBackend
    tts: TextToSpeech

    @classmethod
    def from_config(
        cls,
        config: BotConfig,
        *,
        vad: VoiceActivityDetector | None = None,
        stt: SpeechToText | None = None,
        llm: LlmBackend | None = None,
        tts: TextToSpeech | None = None,
    ) -> SpeechServices:
        """The services given, and the configured defaults for the others (nothing loads
        yet: that happens in :func:`serving_all`)."""
        return cls(
            vad=vad or VadService.from_config(config.vad),
            stt=stt or SttService(config.stt),
            llm=llm or create_llm(config.llm),
            tts=tts or PiperTts.from_config(config.tts),
        )

    def each(self) -> list[tuple[str, object]]:
        return [(field.name, getattr(self, field.name)) for field in fields(self)]


@asynccontextmanager
async def serving_all(services: SpeechServices) -> AsyncIterator[None]:
    """Enter every service's ``serving()`` side by side (the models load in parallel
    threads), for the block's duration. A service that cannot start fails the block
    with its own error, at start-up."""
    ready = trio.Event()
    waiting = len(services.each())

    async def hold(service: object) -> None:
        nonlocal waiting
        serving: AbstractAsyncContextManager[None] = service.serving()  # type: ignore[attr-defined]
        async with serving:
            waiting -= 1
            if waiting == 0:
                ready.set()
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        for _, service in services.each():
            nursery.start_soon(hold, service)
        await ready.wait()
        try:
            yield
        finally:
            nursery.cancel_scope.cancel()
