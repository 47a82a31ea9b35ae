"""The reply path's frames: what flows from a caller's turn to the bot's speech.

A voice bot answers each caller turn by running a short chain of stages, the *reply
path*::

    CallerTurn ─▶ Transcriber ─▶ [your stages] ─▶ Responder ─▶ SpeechSplitter
               ─▶ [your text filters] ─▶ Synthesizer ─▶ SpeechAudio (media out)

Every frame on that path carries the :class:`Reply` it belongs to: the one mutable
record of the reply in flight (the words heard, the words said, per-step timings, the
conversation history the LLM sees). Stages read it and add to it; the turn manager
turns it into the turn's record when the reply ends, however it ended.

Rule of the reply path: a stage handles the frame types it knows and passes every
other frame on unchanged. That is what lets a user put a stage anywhere: a FAQ stage
answers a :class:`CallerText` with a :class:`BotText` (the responder passes a
``BotText`` through instead of asking the LLM), and an operator's line enters as a
``BotText`` and goes through the same text filters and voice as an answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import trio

from pipeline.runtime.frames import Frame

__all__ = [
    "BotText",
    "CallerText",
    "CallerTurn",
    "Message",
    "Reply",
    "Role",
    "SpeakableText",
    "SpeechAudio",
]

Role = Literal["system", "user", "assistant"]


def _set_event() -> trio.Event:
    event = trio.Event()
    event.set()
    return event


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of the conversation, in the roles every chat model understands."""

    role: Role
    content: str

    def as_dict(self) -> dict[str, str]:
        """The OpenAI / llama.cpp chat-message shape."""
        return {"role": self.role, "content": self.content}


@dataclass(eq=False)
class Reply:
    """One reply in flight, shared by every frame of its path.

    ``instructions`` is the system prompt and ``history`` the earlier turns, both copied
    when the reply starts; ``notes`` are what a stage tells the LLM for this reply only
    (the facts closest to the question), placed after the history. ``text`` is what the bot says
    (grown by the responder or set by a stage that answers itself); ``answered_by``
    names who answered (``llm``, a stage's name, ``operator``). Timings are
    milliseconds from ``speech_ended_at`` (the end of the caller's speech, Trio clock).
    """

    turn: int
    speech_ended_at: float
    instructions: str = ""
    history: list[Message] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # for the LLM, this reply only
    caller_text: str = ""
    confidence: float | None = None
    text: str = ""
    answered_by: str = ""
    llm_failed: bool = False
    error: str = ""  # what failed, "service: why" parts joined by "; " (see note_failure)
    guarded: str = ""  # what reply guards did, comma-separated: repeat, repeat_fallback, length
    timings_ms: dict[str, float] = field(default_factory=dict)
    pieces_queued: int = 0
    first_audio: trio.Event = field(default_factory=trio.Event)
    # set once the STT has run on the turn, words or none (``caller_text`` is then final):
    # the end-of-turn judgement reads the words heard at a pause
    transcribed: trio.Event = field(default_factory=trio.Event)
    # set once the caller's turn is committed (its end decided): until then the reply is
    # speculative (started at a pause), and model services serve it after committed work
    committed: trio.Event = field(default_factory=_set_event)
    llm_shed: int = 0  # times its speculative LLM request was shed under load
    # nothing more is said: the voice failed before any of it was heard, and the
    # fallback line was said instead (the responder stops, later pieces are dropped)
    ended: bool = False

    def note_failure(self, service: str, why: str) -> None:
        """Add ``service: why`` to :attr:`error`, keeping what failed earlier in the turn
        (an STT timeout, then the LLM): metrics count each service from these prefixes."""
        part = f"{service}: {why}"
        self.error = f"{self.error}; {part}" if self.error else part

    def mark(self, name: str, now: float | None = None) -> None:
        """Note when a step first happened (later calls for the same step are ignored)."""
        if name not in self.timings_ms:
            at = trio.current_time() if now is None else now
            self.timings_ms[name] = round((at - self.speech_ended_at) * 1000, 1)

    def prompt(self, text: str) -> list[Message]:
        """The messages an LLM answers for caller words ``text``: the instructions, the
        history, this reply's notes, the caller's words. Notes go last so the start of
        the prompt is the same every turn and a local model reuses its cache for it."""
        system = [Message("system", self.instructions)] if self.instructions else []
        notes = [Message("system", note) for note in self.notes]
        return [*system, *self.history, *notes, Message("user", text)]


@dataclass(slots=True, kw_only=True)
class CallerTurn(Frame):
    """A committed (or speculative) caller turn: the audio to transcribe."""

    reply: Reply
    samples: np.ndarray
    sample_rate: int = 8000


@dataclass(slots=True, kw_only=True)
class CallerText(Frame):
    """What the caller said, as the STT heard it (a stage may rewrite ``text``)."""

    reply: Reply
    text: str
    confidence: float = 1.0


@dataclass(slots=True, kw_only=True)
class BotText(Frame):
    """Text the bot will say: an LLM delta, or a whole answer from a stage or an operator."""

    reply: Reply
    text: str


@dataclass(slots=True, kw_only=True)
class SpeakableText(Frame):
    """One piece of bot text ready for the voice: a clause or sentence, no markup."""

    reply: Reply
    text: str


@dataclass(slots=True, kw_only=True)
class SpeechAudio(Frame):
    """One piece of bot speech, μ-law 8 kHz, with the text it says."""

    reply: Reply
    text: str
    mulaw: bytes
