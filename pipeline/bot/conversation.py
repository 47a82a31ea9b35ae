"""The turn manager: caller turns in, spoken replies out, barge-in cancelling them.

For every caller turn it runs the bot's *reply path*, a chain of stages built fresh
for the reply (:mod:`pipeline.runtime.dialogue`): by default STT → LLM (streamed) →
speakable pieces → TTS, and sends each piece's audio the moment it is ready (media
out). What the path holds is the bot's to choose: a stage between STT and the LLM
may answer itself, a text filter may sit before the voice. A turn may start
speculatively on a :class:`~stages.turns.SpeechPaused`: it transcribes and thinks
while the end of the turn is being decided, and sends nothing until it is committed
(a :class:`~stages.turns.SpeechResumed` cancels it instead). Who commits depends on
``[turns] mode``: ``hangover``, the endpointer's :class:`~stages.turns.SpeechSegment`
after ``min_silence_ms``; ``semantic``, a judgement at the pause (the audio turn model
and the words the speculative reply heard), and what happens when the caller goes on
after it, are told in :mod:`pipeline.bot.turn_judge`.

Each reply runs inside one cancel scope. A barge-in cancels that scope (the LLM
stream, TTS, unsent pieces all at once), sends ``interrupt`` and keeps in the
history only what the caller heard, estimated from the playout of what was sent
(:mod:`pipeline.bot.playback`). Caller speech over the bot that is too short for the
barge-in gate (a backchannel, a cough) is ignored. A barge-in whose turn turns out to
carry no words ("mm", a cough) gives the bot its reply back: its record waits for
those words, and it goes on from the sentence that was cut
(:mod:`pipeline.bot.resumption`). A caller who starts talking again before the bot
said anything has the reply restarted with both utterances.

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
from pipeline.bot.resumption import FalseInterrupts, Resumption, carries_words
from pipeline.bot.turn_judge import TurnJudge
from pipeline.runtime.dialogue import BotText, CallerTurn, Message, Reply, SpeechAudio
from pipeline.runtime.frames import TELEPHONE_RATE
from pipeline.runtime.graph import open_chain
from pipeline.runtime.stage import Stage
from pipeline.server.call import Call
from stages.end_of_turn import TurnCompletionModel, Verdict
from stages.turns import BargeIn, SpeechPaused, SpeechResumed, SpeechSegment, TurnConfig
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
    ``end_of_turn``: what committed the turn: ``hangover``, ``complete``, ``unsure``,
    ``max_wait`` (semantic, the endpointer's bound), ``withdrawn`` (committed early, the
    caller went on); ``turn_probability`` is the judged P(finished), if judged;
    ``turn_judgements`` each pause's judgement of the turn and what it rested on.
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
    error: str = ""  # which service failed in this turn and why ("stt: ...", "tts: ...")
    timings_ms: dict[str, float] = field(default_factory=dict)
    bot_started_at: float | None = None  # Trio clock: estimated playout of the reply
    bot_ended_at: float | None = None
    source: str = "caller"
    caller_started_at: float | None = None  # Trio clock: the caller's speech
    caller_ended_at: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # an operator's, with the line
    resumed: int = 0  # times it went on after a false interruption (pipeline.bot.resumption)
    end_of_turn: str = ""
    turn_probability: float | None = None
    llm_shed: int = 0  # its speculative LLM request was shed under load (then asked again)
    turn_judgements: list[dict[str, Any]] = field(default_factory=list)  # each pause's

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
    withdrawn: bool = False  # committed at a pause, then the caller went on
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
            committed=self.committed,  # speculative until then: served after committed work
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
        turns: TurnConfig | None = None,
        turn_model: TurnCompletionModel | None = None,
    ) -> None:
        self.call = call
        self.turn_config = turns or TurnConfig()
        # semantic mode: the end of turn is judged at the pause; hangover: not at all
        self.judge = TurnJudge(self.turn_config, turn_model) if self.turn_config.semantic else None
        self._early: _Reply | None = None  # committed at a pause; the endpointer's turn is open
        self._withdraw_on_barge_in: _Reply | None = None  # playing; the caller may be going on
        self._continued_from: tuple[int, int] | None = None  # (turn's onset, resumed at)
        self._judged_so_far: list[dict[str, Any]] = []  # a resumed turn's earlier pauses
        self.duplicate_segments = 0
        self.withdrawn_replies = 0
        self.config = config
        self.reply_stages = reply_stages
        self.playout = playout
        self.greeting = greeting
        self.history: list[Message] = []
        self.turns: list[TurnRecord] = []
        self.observers: list[Callable[[TurnRecord], None]] = []
        self.bot_audio_observers: list[Callable[[bytes, PlayedPiece], None]] = []
        self.ignored_backchannels = 0
        gap = self.turn_config.resume_gap_ms / 1000
        resume = self.turn_config.resume_false_interrupts
        self.false_interrupts = FalseInterrupts(gap if resume else None, self.history, self._finish)
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
            self.false_interrupts.drop()  # a reply still held ends as it was cut

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
            self._judged_so_far = reply.record.turn_judgements  # the same turn goes on
            reply.scope.cancel()
            self._release_index(reply)
            return
        early, self._early = self._early, None
        if early is None or early.segment is None:
            return
        silence_ms = (event.sample - early.segment.speech_end) * 1000 / RATE
        going_on = silence_ms <= self.turn_config.continuation_ms  # else: a reply to the bot
        half_duplex_playing = not self.config.barge_in and bool(early.pieces)
        if early.done.is_set() or half_duplex_playing or not going_on:
            # it stands: what follows is a new turn (a barge-in, if the bot is speaking)
            self._continued_from = (early.segment.speech_start, event.sample)
        elif early.pieces and self.playout.speaking(trio.current_time()):
            # playing: a cough must not stop it, so the barge-in gate decides (its
            # BargeIn for this turn withdraws the reply); the turn stays the same
            self._early = self._withdraw_on_barge_in = early
        else:
            self._withdraw(early)

    def _withdraw(self, reply: _Reply) -> None:
        """The caller went on after a turn was committed at its pause: stop its reply at
        once (``interrupt`` if any of it is playing); the whole sentence comes next."""
        now = trio.current_time()
        reply.withdrawn = True
        reply.scope.cancel()
        self.withdrawn_replies += 1
        if not reply.pieces:  # nothing said: as if never committed
            reply.superseded = True
            self._release_index(reply)
            return
        reply.record.end_of_turn = "withdrawn"
        if self.playout.speaking(now):
            reply.interrupted_at = now
            self.playout.interrupt(now)
            assert self._nursery is not None
            self._nursery.start_soon(self.call.send_interrupt)
        self.call.log.info("reply withdrawn", extra={"turn": reply.record.index})

    def _on_segment(self, segment: SpeechSegment) -> None:
        early = self._early
        if early is not None and early.segment is not None:
            if early.segment.speech_start == segment.speech_start:
                # the endpointer's own end of a turn committed at its pause: already answered
                self._early = self._withdraw_on_barge_in = None
                self._continued_from = None
                self.duplicate_segments += 1
                return
            self._early = self._withdraw_on_barge_in = None
        reply = self._reply
        how = "max_wait" if self.judge is not None else "hangover"
        if (
            reply is not None
            and reply.segment is not None
            and not reply.committed.is_set()
            and reply.segment.speech_start == segment.speech_start
            and not reply.superseded
        ):
            reply.segment = segment
            self._commit(reply, how, early=False)
        else:
            self._begin_turn(segment, committed=True)
        self._continued_from = None

    def _commit(self, reply: _Reply, how: str, *, early: bool) -> None:
        """Let the reply speak. ``early``: before the endpointer closed the turn (a
        semantic judgement), so the caller may still go on (see :meth:`_on_resumed`)."""
        if reply.committed.is_set() or reply.superseded:
            return
        reply.record.end_of_turn = how
        reply.mark("endpointing", trio.current_time())
        reply.committed.set()
        if early:
            self._early = reply

    def _on_barge_in(self, event: BargeIn) -> None:
        now = trio.current_time()
        if not self.config.barge_in or not self.playout.speaking(now):
            return
        going_on, self._withdraw_on_barge_in = self._withdraw_on_barge_in, None
        if (
            going_on is not None
            and going_on is self._early
            and going_on.segment is not None
            and event.sample == going_on.segment.speech_start
        ):
            self._early = None  # the caller's sentence goes on: answered whole next
            self._withdraw(going_on)
            return
        self.false_interrupts.hold(self._reply, now)  # until the barge-in's words are known
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
        audio, speech_start = self._turn_audio(segment)
        started_at = segment.time_of(speech_start)
        previous = self._reply
        if previous is not None and not previous.greeting and not previous.superseded:
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
            caller_start_s=round(speech_start / RATE, 3),
            caller_end_s=round(segment.speech_end / RATE, 3),
            caller_started_at=started_at,
            caller_ended_at=segment.time_of(segment.speech_end),
            turn_judgements=self._judged_so_far,
        )
        self._judged_so_far = []
        reply = _Reply(record, segment, audio, trio.Event())
        reply.speech_end_at = segment.time_of(segment.speech_end)
        if committed:
            reply.record.end_of_turn = "max_wait" if self.judge is not None else "hangover"
            reply.mark("endpointing", now)
            reply.committed.set()
        self._start(self._answer, reply)

    def _turn_audio(self, segment: SpeechSegment) -> tuple[np.ndarray, int]:
        """The turn's audio and its speech start: the whole segment, or only what the
        caller said after resuming, when an earlier part was already answered."""
        if self._continued_from is None or self._continued_from[0] != segment.speech_start:
            return segment.samples, segment.speech_start
        resumed = self._continued_from[1]
        preroll = round(self.turn_config.preroll_ms * RATE / 1000)
        offset = max(0, resumed - preroll - segment.start_sample)
        return segment.samples[offset:], resumed

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
        if self.judge is None or reply.committed.is_set():
            await self._run_path(reply, turn)
        else:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._judge_turn, reply, context)
                await self._run_path(reply, turn)
                nursery.cancel_scope.cancel()  # nothing left to commit
        if context.error:  # a service failed (STT, LLM, TTS): this turn went on without it
            self.call.log.warning("service failed", extra={"error": context.error})
        if self.false_interrupts.pending and not carries_words(context.caller_text):
            await self._resume_held(reply)
        elif not context.caller_text and not reply.pieces:
            reply.superseded = True  # noise or an empty turn: nothing to answer
            self._release_index(reply)

    async def _judge_turn(self, reply: _Reply, context: Reply) -> None:
        """Semantic mode: is the paused turn finished? Commit now, after the unsure
        wait, or not at all (the endpointer's segment at max_wait_ms will)."""
        assert self.judge is not None
        judgement = await self.judge.judge(reply.audio, context)
        reply.mark("judged", trio.current_time())
        reply.record.turn_probability = judgement.probability
        reply.record.turn_judgements.append(judgement.as_dict())
        if judgement.verdict is Verdict.INCOMPLETE:
            return
        if judgement.verdict is Verdict.UNSURE:  # the less unsure, the shorter the wait
            await trio.sleep_until(reply.speech_end_at + (judgement.wait_ms or 0.0) / 1000)
        self._commit(reply, judgement.verdict.value, early=True)

    async def _resume_held(self, turn: _Reply) -> None:
        """The barge-in's turn had no words: once it is committed (the caller may still go
        on) and ``resume_gap_ms`` after it, it leaves no record and the held reply goes on
        (:mod:`pipeline.bot.resumption`). A turn that said something (a failed STT's
        fallback line) ends the hold instead."""
        if turn.pieces:
            self.false_interrupts.drop()
            return
        await turn.committed.wait()
        await trio.sleep_until(turn.speech_end_at + (self.false_interrupts.gap_s or 0.0))
        turn.superseded = True
        self._release_index(turn)
        plan = self.false_interrupts.release()
        if plan is not None:
            held = plan.reply
            going_on = _Reply(held.record, None, _EMPTY, _set_event(), context=held.context)
            going_on.speech_end_at, going_on.pieces = held.speech_end_at, plan.kept
            self._start(lambda reply: self._go_on(reply, plan), going_on)

    async def _go_on(self, reply: _Reply, plan: Resumption) -> None:
        """A held reply goes on: its audio again from the cut sentence, then the rest."""
        for piece in plan.resend:
            await self.call.send_speech(piece.audio)
            self._played(reply, piece.text, piece.audio)
        if plan.rest and reply.context is not None:
            line = BotText(reply=reply.context, text=plan.rest, captured_at=trio.current_time())
            await self._run_path(reply, line)

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
        stages = self.false_interrupts.screened(self.reply_stages())
        async with open_chain(*stages, source=receive) as path:
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
        piece = self.playout.sent(text, len(audio) / RATE, now, audio=audio)
        reply.pieces.append(piece)
        for observer in self.bot_audio_observers:
            observer(audio, piece)

    def _finish(self, reply: _Reply) -> None:
        """Settle history and records once a reply ends, however it ended."""
        if reply.superseded or self.false_interrupts.holding(reply):
            return  # held: settled when the barge-in's words are known
        record = reply.record
        if reply.context is not None:  # what the reply path heard and said, however far
            context = reply.context
            record.caller_text = context.caller_text
            record.stt_confidence = context.confidence
            record.reply_text = context.text
            record.answered_by = context.answered_by
            record.guarded = context.guarded
            record.llm_failed = context.llm_failed
            record.error = context.error
            record.llm_shed = context.llm_shed
        cut_at = reply.interrupted_at if reply.interrupted_at is not None else math.inf
        record.interrupted = reply.interrupted_at is not None
        spoken = " ".join(piece.text for piece in reply.pieces)
        record.heard_text = self.playout.heard_text(reply.pieces, cut_at)
        if not record.interrupted and not reply.scope.cancelled_caught:
            record.heard_text = spoken
        if reply.pieces:
            record.bot_started_at = reply.pieces[0].starts
            record.bot_ended_at = reply.pieces[-1].ends
        if record.caller_text and not reply.withdrawn:
            self.history.append(Message("user", record.caller_text))
        heard_all = not record.interrupted and not reply.scope.cancelled_caught
        if reply.withdrawn:
            pass  # it answered half a sentence: the history keeps none of it (module doc)
        elif heard_all and reply.pieces and not record.llm_failed and record.reply_text.strip():
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
