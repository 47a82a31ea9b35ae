"""False interruptions: a barge-in that carried no words gives the bot its reply back.

A cough, "mm" or a knock over the bot's speech can pass the barge-in gate; the bot
then sends ``interrupt`` and the platform drops everything it was playing. Whether
the sound was an interruption is known only once the caller's turn is transcribed:
if it carries no words (:func:`carries_words`: empty, or only fillers and
backchannels from :data:`FILLERS`), the bot goes on with what the caller did not
hear, ``resume_gap_ms`` after the sound ended.

How (the choice, and why): the reply is cancelled at the barge-in as before, and
only its *record* is held (:class:`FalseInterrupts`). The alternative, LiveKit's,
keeps the LLM and the voice running and only pauses the sends until the words are
known; here that would hold the shared LLM (one stream at a time for every call on
the server, :mod:`stages.llm_local`) and the cores (two) while the caller's words are
transcribed, slowing the answer to a real interruption, the common case, for the
sake of the rare false one. A reply is also usually generated and voiced in full
long before it has been heard, so cancelling loses little. On resumption the bot
sends again, from the start of the sentence that was cut (:func:`resend_from`), the
μ-law audio it had already sent (kept on each
:class:`~pipeline.bot.playback.PlayedPiece`: no synthesis), then voices the reply's
text the LLM had written but the voice had not yet reached (:func:`unsent_text`,
whole sentences only: a sentence the LLM had not finished is dropped) through the
reply path, as an operator's line is.

The held reply's record and history entry wait for the decision: the words of the
barge-in's turn (the reply-path stage :class:`WordScreen`, before the LLM, so a
filler is never answered), or the end of the call. A false interruption leaves one
record: the reply's own, ``resumed`` counting the times it went on, ``heard_text``
what the caller finally heard; the filler turn leaves none and nothing in the
history. A barge-in with words ends the held reply as it was cut, as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.bot.playback import PlayedPiece
from pipeline.runtime.dialogue import CallerText, Message
from pipeline.runtime.stage import Stage
from stages.transcriber import Transcriber

__all__ = [
    "FILLERS",
    "FalseInterrupts",
    "Resumption",
    "WordScreen",
    "carries_words",
    "resend_from",
    "unsent_text",
]

FILLERS: frozenset[str] = frozenset(
    {"m", "mh", "hm", "mhm", "hmm", "uh", "huh", "um", "uhm", "er", "erm", "ah", "oh", "eh"}
)
"""Sounds, not words: a caller's turn made only of these (letter runs collapsed, so
"Mmmm", "Mm-hmm" and "Uh-huh" count) did not interrupt. Acknowledgements that are
words ("yeah", "okay", "right") do: they may answer a question."""

_ANNOTATION = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*")  # Whisper's "[cough]", "(laughs)"
_TOKEN = re.compile(r"[a-z']+")
_SENTENCE_END = (".", "!", "?", "…")


def carries_words(text: str) -> bool:
    """Whether a transcript has a word that is not a filler (:data:`FILLERS`)."""
    for token in _TOKEN.findall(_ANNOTATION.sub(" ", text.lower())):
        collapsed = re.sub(r"(.)\1+", r"\1", token.strip("'"))
        if collapsed and collapsed not in FILLERS:
            return True
    return False


def resend_from(pieces: Sequence[PlayedPiece], cut_at: float) -> int:
    """Index of the first piece to send again after a cut at ``cut_at``: the start of
    the sentence of the first piece not heard in full (``len(pieces)``: all heard)."""
    first = next((i for i, piece in enumerate(pieces) if piece.planned_ends > cut_at), len(pieces))
    while 0 < first < len(pieces) and not pieces[first - 1].text.rstrip().endswith(_SENTENCE_END):
        first -= 1
    return first


def unsent_text(text: str, pieces: Sequence[PlayedPiece]) -> tuple[str, str]:
    """(the reply's words after those the sent pieces say, in whole sentences; the
    reply's text up to there). Pieces are aligned on the text by word count (the text
    filters between the LLM and the voice mask words, they do not add or drop them)."""
    words = text.split()
    sent = sum(len(piece.text.split()) for piece in pieces)
    unsent = words[sent:]
    rest = list(unsent)
    while rest and not rest[-1].endswith(_SENTENCE_END):
        rest.pop()
    if len(rest) == len(unsent):
        return " ".join(rest), text
    return " ".join(rest), " ".join(words[: sent + len(rest)])


@dataclass(slots=True)
class Resumption:
    """How a held reply goes on: ``kept`` pieces were heard in full before the cut,
    ``resend`` are sent again, then ``rest`` is voiced."""

    reply: Any
    kept: list[PlayedPiece]
    resend: list[PlayedPiece]
    rest: str


class WordScreen(Stage[Any, Any]):
    """Reply-path step after the STT while a reply is held: a caller's text with words
    ends the hold (``on_words``) and goes on to be answered; one without (a filler) is
    swallowed, so the LLM never answers an "mm". Other frames pass through."""

    name = "false-interrupt-screen"

    def __init__(self, on_words: Callable[[CallerText], None], *, name: str | None = None):
        super().__init__(name=name)
        self.on_words = on_words
        self.swallowed = 0

    def process(self, item: Any) -> Iterable[Any]:
        if not isinstance(item, CallerText):
            return (item,)
        if carries_words(item.text):
            self.on_words(item)
            return (item,)
        self.swallowed += 1
        return ()


@dataclass(eq=False)
class FalseInterrupts:
    """One call's held reply (at most one), and what became of the holds.

    ``finish`` settles a reply's record and history (the turn manager's); it is
    called when a hold ends without resuming. ``gap_s`` None: never hold (the reply
    is cut for good at every barge-in, as without this module).
    """

    gap_s: float | None
    history: list[Message]
    finish: Callable[[Any], None]
    held: Any = None
    cut_at: float = 0.0
    counts: dict[str, int] = field(default_factory=lambda: {"held": 0, "resumed": 0, "dropped": 0})

    @property
    def pending(self) -> bool:
        return self.held is not None

    def holding(self, reply: Any) -> bool:
        """Whether ``reply``'s record waits for the decision (the turn manager defers it)."""
        return reply is not None and reply is self.held

    def hold(self, reply: Any, now: float) -> bool:
        """At a barge-in: keep ``reply`` (the turn manager's reply in flight, about to
        be cancelled) for a possible resumption, if it is a caller's answer with
        audio the caller has not heard yet. A reply already held ends as cut."""
        self.drop()
        if (
            self.gap_s is None
            or reply is None
            or reply.greeting
            or reply.context is None
            or not reply.committed.is_set()
            or getattr(reply, "withdrawn", False)
            or not any(piece.planned_ends > now and piece.audio for piece in reply.pieces)
        ):
            return False
        self.held, self.cut_at = reply, now
        self.counts["held"] += 1
        return True

    def drop(self) -> None:
        """The barge-in had words (or the call ended): the held reply ends as it was cut."""
        held, self.held = self.held, None
        if held is not None:
            self.counts["dropped"] += 1
            if held.done.is_set():  # else its own task settles it on the way out
                self.finish(held)

    def release(self) -> Resumption | None:
        """The barge-in had no words: the held reply's plan to go on, or None."""
        held, self.held = self.held, None
        if held is None:
            return None
        self.counts["resumed"] += 1
        held.superseded = True  # its record goes on with the resumed reply, settled there
        held.record.resumed += 1
        first = resend_from(held.pieces, self.cut_at)
        rest, said = unsent_text(held.context.text, held.pieces)
        held.context.text = said  # a sentence the LLM had not finished is not said
        return Resumption(held, held.pieces[:first], held.pieces[first:], rest)

    def screened(self, stages: list[Stage[Any, Any]]) -> list[Stage[Any, Any]]:
        """A reply path with a :class:`WordScreen` after its STT while a reply is held."""
        if not self.pending:
            return stages
        at = next((i + 1 for i, s in enumerate(stages) if isinstance(s, Transcriber)), 0)
        return [*stages[:at], WordScreen(self._words), *stages[at:]]

    def _words(self, heard: CallerText) -> None:
        self.drop()
        # the held reply's turn is now in the history: the answer to these words sees it
        heard.reply.history = list(self.history)
