"""The voice bot: a real offline conversation on every call, as one graph of stages.

Per call, a chain of stages hears the caller::

    RTP depacketizer → jitter buffer → μ-law decode → [recorder] → VAD → endpointing

and the turn manager (:class:`~pipeline.bot.conversation.Conversation`) answers each
turn through the *reply path*, a chain built fresh for every reply::

    Transcriber (STT) → [FaqAnswerer] → Responder (LLM) → SpeechSplitter → Synthesizer (TTS)
    → media out

cancelling it on barge-in. Both chains are lists of stages a user edits in a line
(``inbound_edits``, ``reply_edits``: each gets the fresh list and returns the one to
run), and the speech services behind them are swappable (``vad=``, ``stt=``,
``llm=``, ``tts=``, ``turn=``, the end-of-turn model; :mod:`pipeline.bot.services`).
The services are entered once in :meth:`VoiceBot.serving` and shared by every call, so
a call costs no model load and a bad model path fails at start-up.

Every call is a channel of :attr:`VoiceBot.messages` (:mod:`pipeline.bot.messages`):
its state changes and each finished turn are published there, and an operator's
``send_message`` reaches the call's conversation through it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from pipeline.bot.config import BotConfig, ConfigError
from pipeline.bot.conversation import Conversation, TurnRecord
from pipeline.bot.messages import CallState, ConversationBus
from pipeline.bot.playback import Playout
from pipeline.bot.recorder import CallRecorder
from pipeline.bot.services import SpeechServices, serving_all
from pipeline.runtime.dialogue import Message
from pipeline.runtime.editing import StageEdit, edited
from pipeline.runtime.stage import Stage
from pipeline.server.call import Call
from stages import mulaw
from stages.end_of_turn import TurnCompletionModel
from stages.faq import FaqAnswerer
from stages.llm import LlmBackend, LlmError, Responder
from stages.playout import JitterStage
from stages.rtp import RtpDepacketizer
from stages.sentences import SpeechSplitter
from stages.stt import SpeechToText, Transcriber
from stages.tts import Synthesizer, TextToSpeech
from stages.turns import TurnStage
from stages.vad import VadStage, VoiceActivityDetector
from stages.voicing import VoicingGate
from stages.wav import WavError

__all__ = ["SpeechServices", "VoiceBot"]

logger = logging.getLogger("voicegraph.bot")


class VoiceBot:
    """STT → LLM → TTS with barge-in, on every call. ``record_dir`` keeps every call.

    ``vad``, ``stt``, ``llm``, ``tts``, ``turn`` (the end-of-turn model of
    ``[turns] mode = "semantic"``): services to use instead of the configured defaults.
    ``inbound_edits`` / ``reply_edits``: functions that get each fresh stage list of the
    inbound chain / reply path and return the list to run, in order (e.g.
    ``lambda stages: insert_after(stages, Transcriber, MyStage())``).
    """

    def __init__(
        self,
        config: BotConfig | None = None,
        *,
        vad: VoiceActivityDetector | None = None,
        stt: SpeechToText | None = None,
        llm: LlmBackend | None = None,
        tts: TextToSpeech | None = None,
        turn: TurnCompletionModel | None = None,
        inbound_edits: Sequence[StageEdit] = (),
        reply_edits: Sequence[StageEdit] = (),
        record_dir: Path | None = None,
        messages: ConversationBus | None = None,
    ) -> None:
        self.config = config or BotConfig()
        self.messages = messages or ConversationBus()
        self._given = {"vad": vad, "stt": stt, "llm": llm, "tts": tts, "turn": turn}
        self.inbound_edits = list(inbound_edits)
        self.reply_edits = list(reply_edits)
        self.record_dir = record_dir
        self.services: SpeechServices | None = None
        self.conversations: dict[str, Conversation] = {}
        self.finished: deque[tuple[str, list[TurnRecord]]] = deque(maxlen=100)
        self.greeting: tuple[str, bytes] | None = None
        # called with every finished turn of every call (metrics: pipeline.bot.turn_metrics)
        self.turn_observers: list[Callable[[TurnRecord], None]] = []

    async def prepare_greeting(self, tts: TextToSpeech) -> tuple[str, bytes] | None:
        """The same greeting opens every call: make its audio once, at start-up."""
        conversation = self.config.conversation
        if conversation.greeting_wav:
            path = trio.Path(conversation.greeting_wav)
            try:
                audio = mulaw.mulaw_from_wav(await path.read_bytes())
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
        """Load and run the shared services for as long as the server runs."""
        mulaw.warm_up()
        services = SpeechServices.from_config(self.config, **self._given)
        async with serving_all(services):
            self.services = services
            try:
                self.greeting = await self.prepare_greeting(services.tts)
                await self.prime_llm(services.llm)
                yield
            finally:
                self.services = None

    def inbound_stages(self, recorder: CallRecorder | None, playout: Playout) -> list[Stage]:
        """A call's inbound chain: the caller's packets to turn events, edited."""
        services = self._serving()
        stages: list[Stage[Any, Any]] = [
            RtpDepacketizer(),
            JitterStage(self.config.jitter),
            mulaw.MulawDecoder(),
        ]
        if recorder is not None:
            stages.append(recorder.caller_tap())
        turns = self.config.turns
        gate = VoicingGate() if turns.barge_in_voicing else None  # no barge-in from a cough
        stages += [VadStage(services.vad), TurnStage(turns, bot=playout.bot, barge_in_gate=gate)]
        return edited(stages, self.inbound_edits)

    def reply_stages(self) -> list[Stage]:
        """A fresh reply path: a caller turn to the bot's audio, edited."""
        services = self._serving()
        conversation = self.config.conversation
        faq = [FaqAnswerer(self.config.faq)] if self.config.faq.facts else []
        stages: list[Stage[Any, Any]] = [
            Transcriber(services.stt, fallback_line=conversation.fallback_line),
            *faq,
            Responder(
                services.llm,
                timeout_s=self.config.llm.timeout_s,
                fallback_line=conversation.fallback_line,
                guards=self.config.reply,
            ),
            SpeechSplitter(),
            Synthesizer(services.tts, fallback_line=conversation.fallback_line),
        ]
        return edited(stages, self.reply_edits)

    def _serving(self) -> SpeechServices:
        if self.services is None:
            raise RuntimeError("VoiceBot: calls are handled only inside serving()")
        return self.services

    async def handle_call(self, call: Call) -> None:
        services, playout = self._serving(), Playout()
        conversation = Conversation(
            call,
            config=self.config.conversation,
            reply_stages=self.reply_stages,
            playout=playout,
            greeting=self.greeting,
            turns=self.config.turns,
            turn_model=services.turn,
        )
        recorder = None
        if self.record_dir is not None:
            recorder = CallRecorder.for_call(self.record_dir, call.call_id, call.started_at)
            recorder.attach(conversation)
        stages = self.inbound_stages(recorder, playout)
        self.conversations[call.call_id] = conversation
        with self.messages.open_channel(call.call_id, conversation, call.started_at) as channel:
            channel.state(CallState.CONNECTING)
            conversation.observers.append(channel.turn_finished)
            conversation.observers.extend(self.turn_observers)
            ending, reason = CallState.DISCONNECTED, None
            try:
                async with call.open_pipeline(*stages) as chain:
                    channel.state(CallState.CONNECTED)
                    await conversation.run(chain.outputs)
            except Exception as exc:
                ending, reason = CallState.ERROR, str(exc) or type(exc).__name__
                raise
            finally:
                if self.conversations.get(call.call_id) is conversation:  # not a re-dial's
                    del self.conversations[call.call_id]
                self.finished.append((call.call_id, conversation.turns))
                if recorder is not None:
                    recorder.close()
                channel.state(ending, reason)
