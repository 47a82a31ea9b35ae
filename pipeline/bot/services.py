"""The speech services a voice bot's calls share: VAD, STT, LLM, TTS and the turn model.

Each is a small interface (:class:`~stages.vad.VoiceActivityDetector`,
:class:`~stages.stt.SpeechToText`, :class:`~stages.llm.LlmBackend`,
:class:`~stages.tts.TextToSpeech`, :class:`~stages.end_of_turn.TurnCompletionModel`);
the defaults are the offline models of the design card (Silero, faster-whisper
tiny.en, SmolLM2 through llama.cpp, Piper joe, Smart Turn v3.2), built from
``bot.toml``. The turn model is only built for ``[turns] mode = "semantic"`` with a
``turn_model`` other than ``"none"`` (otherwise ``turn`` is None and nothing loads).
A user passes any of their own to the voice bot instead (``VoiceBot(config,
stt=MyStt())``) and the rest keep their defaults.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, fields

import trio

from pipeline.bot.config import BotConfig
from stages.end_of_turn import TurnCompletionModel
from stages.llm import LlmBackend, create_llm
from stages.stt import SpeechToText
from stages.stt_remote import create_stt
from stages.tts import TextToSpeech
from stages.tts_remote import create_tts
from stages.turns import TurnConfig
from stages.vad import VadService, VoiceActivityDetector

__all__ = ["SpeechServices", "configured_turn_model", "serving_all"]


@dataclass(slots=True)
class SpeechServices:
    """The models every call of a bot shares."""

    vad: VoiceActivityDetector
    stt: SpeechToText
    llm: LlmBackend
    tts: TextToSpeech
    turn: TurnCompletionModel | None = None  # None: hangover mode, or words only

    @classmethod
    def from_config(
        cls,
        config: BotConfig,
        *,
        vad: VoiceActivityDetector | None = None,
        stt: SpeechToText | None = None,
        llm: LlmBackend | None = None,
        tts: TextToSpeech | None = None,
        turn: TurnCompletionModel | None = None,
    ) -> SpeechServices:
        """The services given, and the configured defaults for the others (nothing loads
        yet: that happens in :func:`serving_all`)."""
        return cls(
            vad=vad or VadService.from_config(config.vad),
            stt=stt or create_stt(config.stt),
            llm=llm or create_llm(config.llm),
            tts=tts or create_tts(config.tts, cached_lines=[config.conversation.fallback_line]),
            turn=turn if turn is not None else configured_turn_model(config.turns),
        )

    def each(self) -> list[tuple[str, object]]:
        """The services present (``turn`` may be None), by name."""
        present = [(field.name, getattr(self, field.name)) for field in fields(self)]
        return [(name, service) for name, service in present if service is not None]


def configured_turn_model(config: TurnConfig) -> TurnCompletionModel | None:
    """Smart Turn for semantic mode (``turn_model``: a path, "" = the vendored file),
    or None (hangover mode, or ``turn_model = "none"``: the words alone decide)."""
    if not config.semantic or config.turn_model == "none":
        return None
    # imported here: onnxruntime and the model file are needed only when it is used
    from stages.smart_turn import SmartTurnService

    return SmartTurnService(config.turn_model or None)


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
