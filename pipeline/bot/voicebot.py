"""The voice bot: a real offline conversation on every call.

Per call, one chain of stages hears the caller::

    RTP depacketizer → jitter buffer → μ-law decode → [recorder] → VAD → endpointing

and a :class:`~pipeline.bot.conversation.Conversation` answers each turn with
STT → LLM → TTS → media out, cancelling the reply on barge-in. The models are shared
services entered once in :meth:`VoiceBot.serving`: one batched VAD, one STT worker
pool, one TTS voice, one LLM, so a call costs no model load and a bad model path
fails at start-up.

Every call is a channel of :attr:`VoiceBot.messages` (:mod:`pipeline.bot.messages`): its
state changes and each finished turn are published there, and an operator's
``send_message`` reaches the call's conversation through it.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from pipeline.bot.config import BotConfig, ConfigError, LlmConfig
from pipeline.bot.conversation import Conversation, TurnRecord
from pipeline.bot.messages import CallState, ConversationBus
from pipeline.bot.playback import Playout
from pipeline.bot.recorder import CallRecorder
from pipeline.server.call import Call
from stages import mulaw
from stages.llm import LlmBackend, LlmError, Message, create_llm
from stages.playout import JitterStage
from stages.rtp import RtpDepacketizer
from stages.stt import SttConfig, SttService, open_stt_service
from stages.tts import PiperTts
from stages.turns import TurnStage
from stages.vad import SileroModel, VadService, VadStage, open_vad_service
from stages.wav import WavError, mulaw_from_wav

__all__ = ["SpeechServices", "VoiceBot", "build_llm"]

logger = logging.getLogger("voicegraph.bot")


@dataclass(slots=True)
class SpeechServices:
    """The models every call shares."""

    vad: VadService
    stt: SttService
    tts: PiperTts
    llm: LlmBackend


def build_llm(config: LlmConfig) -> LlmBackend:
    """The configured LLM backend, with only the options that backend takes."""
    if config.backend == "echo":
        return create_llm("echo")
    if config.backend == "local":
        options: dict[str, object] = {
            "max_tokens": config.max_tokens,
            "temperature": config.temperature,
        }
        if config.model:
            options["model_path"] = config.model
        if config.threads > 0:
            options["threads"] = config.threads
        return create_llm("local", **options)
    if config.backend == "openai":
        return create_llm(
            "openai",
            url=config.url,
            model=config.model or "default",
            api_key=config.api_key or None,
            max_tokens=config.max_tokens,
            temperature=config.temperature,
            read_timeout=config.timeout_s,
        )
    return create_llm(config.backend)  # raises with the list of known backends


class VoiceBot:
    """STT → LLM → TTS with barge-in, on every call. ``record_dir`` keeps every call."""

    def __init__(
        self,
        config: BotConfig | None = None,
        *,
        llm: LlmBackend | None = None,
        record_dir: Path | None = None,
        messages: ConversationBus | None = None,
    ) -> None:
        self.config = config or BotConfig()
        self.messages = messages or ConversationBus()
        self._llm = llm
        self.record_dir = record_dir
        self.services: SpeechServices | None = None
        self.conversations: dict[str, Conversation] = {}
        self.finished: deque[tuple[str, list[TurnRecord]]] = deque(maxlen=100)
        self.greeting: tuple[str, bytes] | None = None

    async def prepare_greeting(self, tts: PiperTts) -> tuple[str, bytes] | None:
        """The same greeting opens every call: make its audio once, at start-up."""
        conversation = self.config.conversation
        if conversation.greeting_wav:
            path = trio.Path(conversation.greeting_wav)
            try:
                audio = mulaw_from_wav(await path.read_bytes())
            except (OSError, WavError) as exc:
                raise ConfigError(f"greeting_wav {str(path)!r} cannot be used: {exc}") from exc
            return conversation.greeting, audio
        if conversation.greeting:
            return conversation.greeting, await tts.synthesize(conversation.greeting)
        return None

    async def prime_llm(self, llm: LlmBackend) -> None:
        """Put the system prompt into a local model's cache before the first caller turn.

        Optional for a backend (a remote server keeps its own cache): only those with a
        ``prime`` method are primed. A failure here is the first call's problem, not a
        reason to refuse serving, so it is logged, not raised.
        """
        prime = getattr(llm, "prime", None)
        if prime is None:
            return
        opening = [
            Message("system", self.config.conversation.system_prompt),
            Message("user", "Hello?"),
        ]
        try:
            await prime(opening)
        except LlmError as exc:
            logger.warning("could not prime the LLM", extra={"error": str(exc)})

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """Load and run the shared models for as long as the server runs."""
        models = self.config.models
        mulaw.warm_up()
        vad_model = SileroModel(models.vad_model or None)
        tts = PiperTts(
            models.tts_voice or None,
            length_scale=models.tts_length_scale,
            threads=models.tts_threads or (os.cpu_count() or 1),
        )
        llm = self._llm or build_llm(self.config.llm)
        async with (
            open_vad_service(vad_model) as vad,
            open_stt_service(SttConfig(model=models.stt_model or None)) as stt,
        ):
            async with trio.open_nursery() as nursery:  # load TTS and LLM side by side
                nursery.start_soon(tts.setup)
                nursery.start_soon(llm.setup)
            self.services = SpeechServices(vad=vad, stt=stt, tts=tts, llm=llm)
            self.greeting = await self.prepare_greeting(tts)
            await self.prime_llm(llm)
            try:
                yield
            finally:
                self.services = None
                with trio.move_on_after(5, shield=True):
                    await llm.aclose()

    async def handle_call(self, call: Call) -> None:
        services = self.services
        if services is None:
            raise RuntimeError("VoiceBot.handle_call outside serving()")
        playout = Playout()
        conversation = Conversation(
            call,
            config=self.config.conversation,
            stt=services.stt,
            llm=services.llm,
            tts=services.tts,
            playout=playout,
            greeting=self.greeting,
            llm_timeout=self.config.llm.timeout_s,
        )
        recorder = None
        if self.record_dir is not None:
            recorder = CallRecorder.for_call(self.record_dir, call.call_id, call.started_at)
        stages = [RtpDepacketizer(), JitterStage(self.config.jitter), mulaw.MulawDecoder()]
        if recorder is not None:
            stages.append(recorder.caller_tap())
            recorder.attach(conversation)
        stages += [VadStage(services.vad), TurnStage(self.config.turns, bot=playout.bot)]
        self.conversations[call.call_id] = conversation
        with self.messages.open_channel(call.call_id, conversation, call.started_at) as channel:
            channel.state(CallState.CONNECTING)
            conversation.observers.append(channel.turn_finished)
            ending, reason = CallState.DISCONNECTED, None
            try:
                async with call.open_pipeline(*stages) as chain:
                    channel.state(CallState.CONNECTED)
                    await conversation.run(chain.outputs)
            except Exception as exc:
                ending, reason = CallState.ERROR, str(exc) or type(exc).__name__
                raise
            finally:
                self.conversations.pop(call.call_id, None)
                self.finished.append((call.call_id, conversation.turns))
                if recorder is not None:
                    recorder.close()
                channel.state(ending, reason)
