"""The turn manager: caller turns in, spoken replies out, barge-in cancelling them.

For every caller turn it runs the bot's *reply path*, a chain of stages built fresh
for the reply (:mod:`pipeline.runtime.dialogue`): by default STT → LLM (streamed) →
speakable pieces → TTS, and sends each piece's audio the moment it is ready (media
out). What the path holds is the bot's to choose: a stage between STT and the LLM
may answer itself, a text filter may sit before the voice. A turn may start
speculatively on a :class:`~stages.turns.SpeechPaused`: it transcribes and thinks
while the end-of-turn hangover runs, and sends nothing until the
:class:`~stages.turns.SpeechSegment` commits it (a :class:`~stages.turns.SpeechResumed`
cancels it instead).

Each reply runs inside one cancel scope. A barge-in cancels that scope (the LLM
stream, TTS, unsent pieces all at once), sends ``interrupt`` and keeps in the
history only what the caller heard, estimated from the playout of what was sent
(:mod:`pipeline.bot.playback`). Caller speech over the bot that is too short for the
barge-in gate (a backchannel, a cough) is ignored. A caller who starts talking again
before the bot said anything has the reply restarted with both utterances.

Every finished turn becomes a :class:`TurnRecord` with per-stage timings, logged and
handed to observers (recording, conversation events).

An operator's line (:meth:`Conversation.say`) is a reply without a caller turn: it is
split, synthesized and sent like one, is cut by a barge-in like one, and ends up in
the history and the records like one (``source="operator"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from pipeline.bot.config import ConversationConfig
from pipeline.bot.messages import ConversationEnded
from pipeline.bot.playback import PlayedPiece, Playout
from pipeline.runtime.dialogue import BotText, CallerTurn, Message, Reply, SpeechAudio
from pipeline.runtime.frames import TELEPHONE_RATE
from pipeline.runtime.graph import open_chain
from pipeline.runtime.stage import Stage
from pipeline.server.call import Call
from stages.turns import BargeIn, SpeechPaused, SpeechResumed, SpeechSegment
from stages.wav import encode_mulaw_wav

__all__ = ["Conversation", "ConversationEnded", "ReplyStages", "TurnRecord"]

RATE = TELEPHONE_RATE

ReplyStages = Callable[[], list[Stage[Any, Any]]]
"""Builds a fresh reply path (its stages) for each reply: stages may hold state."""


@dataclass(slots=True)
class TurnRecord:
    """One exchange: what the caller said, what the bot said and what was heard, timings.

    Timings are milliseconds from the end of the caller's speech (server clock): when
    the turn was committed (endpointing), STT done, first LLM token, first speakable
    piece, first TTS audio, first audio sent. For an operator's line they count from
    the request. ``source``: ``caller`` (an answer), ``greeting`` or ``operator``.
    """

    index: int
    caller_text: str = ""
    answered_by: str = ""  # llm, a stage's name, operator, greeting
    guarded: str = ""  # what the reply guards did: repeat, repeat_fallback, length
    caller_start_s: float | None = None
    caller_end_s: float | None = None
    stt_confidence: float | None = None
    reply_text: str = ""
    heard_text: str = ""
    interrupted: bool = False
    llm_failed: bool = False
    timings_ms: dict[str, float] = field(default_factory=dict)
    bot_started_at: float | None = None  # Trio clock: estimated playout of the reply
    bot_ended_at: float | None = None
    source: str = "caller"
    caller_started_at: float | None = None  # Trio clock: the caller's speech
    caller_ended_at: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # an operator's, with the line

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(eq=False)
class _Reply:
    """A reply in flight: its cancel scope, its commit gate, what it has sent."""

    record: TurnRecord
    segment: SpeechSegment | None
    audio: np.ndarray
    committed: trio.Event
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    pieces: list[PlayedPiece] = field(default_factory=list)
    speech_end_at: float = 0.0
    interrupted_at: float | None = None
    superseded: bool = False
    greeting: bool = False
    done: trio.Event = field(default_factory=trio.Event)
    context: Reply | None = None  # what its reply path knows (words heard and said)

    def mark(self, name: str, now: float) -> None:
        if name not in self.record.timings_ms:
            self.record.timings_ms[name] = round((now - self.speech_end_at) * 1000, 1)

    def open_context(self, instructions: str, history: list[Message]) -> Reply:
        """The reply path's view of this reply, sharing its timings."""
        self.context = Reply(
            turn=self.record.index,
            speech_ended_at=self.speech_end_at,
            instructions=instructions,
            history=list(history),
            timings_ms=self.record.timings_ms,
        )
        return self.context


class Conversation:
    """One call's dialogue. ``run(events)`` until the caller's audio ends."""

    def __init__(
        self,
        call: Call,
        *,
        config: ConversationConfig,
        reply_stages: ReplyStages,
        playout: Playout,
        greeting: tuple[str, bytes] | None = None,
    ) -> None:
        self.call = call
        self.config = config
        self.reply_stages = reply_stages
        self.playout = playout
        self.greeting = greeting
        self.history: list[Message] = []
        self.turns: list[TurnRecord] = []
        self.observers: list[Callable[[TurnRecord], None]] = []
        self.bot_audio_observers: list[Callable[[bytes, PlayedPiece], None]] = []
        self.ignored_backchannels = 0
        self._reply: _Reply | None = None
        self._announcements: set[_Reply] = set()  # operator lines in flight
        self._turn_index = 0
        self._nursery: trio.Nursery | None = None
        self._running = False
        self._handlers: dict[type, Callable[[Any], None]] = {
            SpeechPaused: self._on_paused,
            SpeechResumed: self._on_resumed,
            SpeechSegment: self._on_segment,
            BargeIn: self._on_barge_in,
        }

    async def run(self, events: trio.MemoryReceiveChannel[Any]) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._running = True
                nursery.start_soon(self.playout.track)
                if self.greeting is not None:
                    record = TurnRecord(0, source="greeting")
                    greeting = _Reply(record, None, _EMPTY, _set_event(), greeting=True)
                    self._start(self._greet, greeting)
                async for event in events:
                    handler = self._handlers.get(type(event))
                    if handler is not None:
                        handler(event)
                self._running = False
                nursery.cancel_scope.cancel()
        finally:
            self._running = False

    async def say(self, text: str, metadata: Mapping[str, Any] | None = None) -> TurnRecord:
        """Speak ``text`` into the call now (an operator's line); return its record once
        it has been sent or cut. Raises :class:`ConversationEnded` after the call ended.

        It does not wait for or cancel a reply in flight: the platform plays it after
        whatever it is playing. A barge-in cuts it like any reply.
        """
        if not self._running or self._nursery is None:
            raise ConversationEnded(f"call {self.call.call_id!r} has ended")
        self._turn_index += 1
        record = TurnRecord(
            self._turn_index, source="operator", reply_text=text, metadata=dict(metadata or {})
        )
        reply = _Reply(record, None, _EMPTY, _set_event())
        reply.speech_end_at = trio.current_time()
        self._announcements.add(reply)
        self._nursery.start_soon(self._run_reply, self._announce, reply)
        await reply.done.wait()
        if not reply.pieces and not self._running:
            raise ConversationEnded(f"call {self.call.call_id!r} ended before the line was said")
        return record

    # --- events ---------------------------------------------------------------------

    def _on_paused(self, event: SpeechPaused) -> None:
        self._begin_turn(event.segment, committed=False)

    def _on_resumed(self, event: SpeechResumed) -> None:
        reply = self._reply
        if reply is not None and not reply.committed.is_set():
            reply.superseded = True
            reply.scope.cancel()
            self._release_index(reply)

    def _on_segment(self, segment: SpeechSegment) -> None:
        reply = self._reply
        if (
            reply is not None
            and reply.segment is not None
            and not reply.committed.is_set()
            and reply.segment.speech_start == segment.speech_start
            and not reply.superseded
        ):
            reply.segment = segment
            reply.mark("endpointing", trio.current_time())
            reply.committed.set()
            return
        self._begin_turn(segment, committed=True)

    def _on_barge_in(self, event: BargeIn) -> None:
        now = trio.current_time()
        if not self.config.barge_in or not self.playout.speaking(now):
            return
        for reply in (self._reply, *self._announcements):
            if reply is not None:
                reply.interrupted_at = now
                reply.scope.cancel()
        self.playout.interrupt(now)
        assert self._nursery is not None
        self._nursery.start_soon(self.call.send_interrupt)
        self.call.log.info("barge-in", extra={"sample": event.sample})

    def _begin_turn(self, segment: SpeechSegment, *, committed: bool) -> None:
        now = trio.current_time()
        if self.playout.speaking(now):
            # Speech over the bot that did not pass the barge-in gate (or half duplex):
            # a backchannel, a cough, the line; the bot keeps talking.
            self.ignored_backchannels += 1
            return
        audio = segment.samples
        started_at = segment.time_of(segment.speech_start)
        previous = self._reply
        if previous is not None and not previous.greeting:
            if not previous.pieces:
                # nothing said yet: the caller simply went on; answer both utterances
                audio = np.concatenate([previous.audio, audio])
                previous.superseded = True
                self._release_index(previous)
                started_at = previous.record.caller_started_at or started_at
            previous.scope.cancel()
        self._turn_index += 1
        record = TurnRecord(
            self._turn_index,
            caller_start_s=round(segment.speech_start / RATE, 3),
            caller_end_s=round(segment.speech_end / RATE, 3),
            caller_started_at=started_at,
            caller_ended_at=segment.time_of(segment.speech_end),
        )
        reply = _Reply(record, segment, audio, trio.Event())
        reply.speech_end_at = segment.time_of(segment.speech_end)
        if committed:
            reply.mark("endpointing", now)
            reply.committed.set()
        self._start(self._answer, reply)

    def _release_index(self, reply: _Reply) -> None:
        """A superseded turn leaves no record: give its number to the next one, so turn
        numbers count the caller's turns, not the tentative starts."""
        if reply.record.index == self._turn_index and not reply.greeting:
            self._turn_index -= 1

    def _start(self, body: Callable[[_Reply], Any], reply: _Reply) -> None:
        self._reply = reply
        assert self._nursery is not None
        self._nursery.start_soon(self._run_reply, body, reply)

    # --- a reply --------------------------------------------------------------------

    async def _run_reply(self, body: Callable[[_Reply], Any], reply: _Reply) -> None:
        try:
            with reply.scope:
                await body(reply)
                if reply.pieces:
                    # Everything is sent, but the caller is still hearing it: a barge-in
                    # now must still mark the reply interrupted and trim the history.
                    await trio.sleep_until(reply.pieces[-1].ends)
        finally:
            if self._reply is reply:
                self._reply = None
            self._announcements.discard(reply)
            self._finish(reply)
            reply.done.set()

    async def _greet(self, reply: _Reply) -> None:
        """The protocol's ``greeting`` event: audio the platform plays on answer."""
        assert self.greeting is not None
        text, audio = self.greeting
        reply.speech_end_at = trio.current_time()
        reply.record.reply_text = text
        reply.record.answered_by = "greeting"
        await self.call.send_greeting(encode_mulaw_wav(audio))
        self._played(reply, text, audio)

    async def _answer(self, reply: _Reply) -> None:
        """A caller turn through the reply path; its audio out once the turn is committed."""
        context = reply.open_context(self.config.system_prompt, self.history)
        turn = CallerTurn(
            reply=context, samples=reply.audio, sample_rate=RATE, captured_at=reply.speech_end_at
        )
        await self._run_path(reply, turn)
        if not context.caller_text and not reply.pieces:
            reply.superseded = True  # noise or an empty turn: nothing to answer
            self._release_index(reply)
        elif context.llm_failed:
            self.call.log.warning("llm failed", extra={"error": context.error})

    async def _announce(self, reply: _Reply) -> None:
        """An operator's line: through the reply path's text filters and voice."""
        context = reply.open_context(self.config.system_prompt, self.history)
        context.text = reply.record.reply_text
        context.answered_by = "operator"
        line = BotText(reply=context, text=context.text, captured_at=reply.speech_end_at)
        await self._run_path(reply, line)

    async def _run_path(self, reply: _Reply, first: Any) -> None:
        """Run a fresh reply path on one frame; send its audio as it comes (media out).

        The whole path runs inside the reply's cancel scope: a barge-in stops the LLM,
        the voice and the unsent pieces at once.
        """
        send, receive = trio.open_memory_channel[Any](1)
        send.send_nowait(first)
        send.close()
        async with open_chain(*self.reply_stages(), source=receive) as path:
            async for frame in path.outputs:
                if isinstance(frame, SpeechAudio):
                    await self._send_audio(reply, frame)

    async def _send_audio(self, reply: _Reply, audio: SpeechAudio) -> None:
        """One piece of speech to the caller, once the turn is committed."""
        await reply.committed.wait()
        await self.call.send_speech(audio.mulaw)
        reply.mark("first_send", trio.current_time())
        self._played(reply, audio.text, audio.mulaw)

    def _played(self, reply: _Reply, text: str, audio: bytes) -> None:
        now = trio.current_time()
        piece = self.playout.sent(text, len(audio) / RATE, now)
        reply.pieces.append(piece)
        for observer in self.bot_audio_observers:
            observer(audio, piece)

    def _finish(self, reply: _Reply) -> None:
        """Settle history and records once a reply ends, however it ended."""
        if reply.superseded:
            return
        record = reply.record
        if reply.context is not None:  # what the reply path heard and said, however far
            context = reply.context
            record.caller_text = context.caller_text
            record.stt_confidence = context.confidence
            record.reply_text = context.text
            record.answered_by = context.answered_by
            record.guarded = context.guarded
            record.llm_failed = context.llm_failed
        cut_at = reply.interrupted_at if reply.interrupted_at is not None else math.inf
        record.interrupted = reply.interrupted_at is not None
        spoken = " ".join(piece.text for piece in reply.pieces)
        record.heard_text = self.playout.heard_text(reply.pieces, cut_at)
        if not record.interrupted and not reply.scope.cancelled_caught:
            record.heard_text = spoken
        if reply.pieces:
            record.bot_started_at = reply.pieces[0].starts
            record.bot_ended_at = reply.pieces[-1].ends
        if record.caller_text:
            self.history.append(Message("user", record.caller_text))
        heard_all = not record.interrupted and not reply.scope.cancelled_caught
        if heard_all and reply.pieces and not record.llm_failed and record.reply_text.strip():
            # all of it was heard: keep the model's own words, which its cache already
            # holds, so the next turn's prompt is evaluated from where this one ended
            self.history.append(Message("assistant", record.reply_text.strip()))
        elif record.heard_text:
            self.history.append(Message("assistant", record.heard_text))
        excess = len(self.history) - self.config.max_history_messages
        if excess > 0:
            del self.history[:excess]
        self.turns.append(record)
        self.call.log.info("turn", extra=record.as_dict())
        for observer in self.observers:
            observer(record)


def _set_event() -> trio.Event:
    event = trio.Event()
    event.set()
    return event


_EMPTY = np.zeros(0, dtype=np.int16)
