"""Reply guards for small models: no word-for-word repeats, no replies past a spoken length.

A tiny chat model (the bundled SmolLM2-135M) often answers a new caller turn with its
previous reply, word for word, whatever the sampling settings; it also runs on past
what a caller will listen to. The :class:`~stages.llm.Responder` applies these guards
to the reply as it streams, because its first words are spoken before it is complete.

**Repeats.** A reply *repeats* an earlier one when its opening matches that reply word
for word (compared as lower-case words, punctuation ignored) for at least
``repeat_ratio`` of that reply's words, and at least ``repeat_min_words`` words (so
"Goodbye!" twice is not a repeat, and neither is a reply that shares only "I'm
sorry," with an earlier one). :class:`RepeatWatch` follows the reply as it grows: while
it is still the opening of an earlier reply its text is *held* (not sent to the voice),
and released the moment it diverges, so a reply that does not repeat waits only while
its first words match an earlier reply's first words (usually none). A repeat is found
as soon as it covers that share, before the model finishes it, and the responder
regenerates once without the repeated replies in the prompt; if that repeats too, it
says a fallback line. Measured on the demo bakery dialogue (SmolLM2, temperature 0.3):
the model copied its previous reply 3 times in 3 with that reply in the prompt, also
when the system prompt or the caller's message told it not to repeat itself (both
made it copy more), and 0 times in 3 with that reply left out of the prompt, which is
why the regeneration drops it rather than adding an instruction.

**Length.** :class:`LengthLimit` ends the reply at the first sentence end once it has
``max_spoken_words`` words, or mid-sentence at ``max_spoken_words +
sentence_overrun_words``; the responder then closes the LLM stream, so nothing is
generated that nobody hears.

Unspeakable text (markdown, list markers, tables, emoji, URLs) is removed from every
piece by :func:`stages.sentences.speakable` before the voice.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pipeline.runtime.dialogue import Message
from stages.sentences import ABBREVIATIONS, CLOSERS, SENTENCE_END

__all__ = [
    "LengthLimit",
    "RepeatWatch",
    "ReplyConfig",
    "pick_fallback",
    "without_replies",
    "words_of",
]

Verdict = Literal["hold", "release", "repeat"]

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def words_of(text: str) -> list[str]:
    """``text`` as lower-case words, punctuation and markup ignored (what a caller hears)."""
    return _WORD.findall(text.lower().replace("’", "'"))


@dataclass(frozen=True, slots=True)
class ReplyConfig:
    """``[reply]`` of ``bot.toml``: the guards on every LLM reply.

    ``max_spoken_words``: end the reply at the first sentence end past this many words
    (0: no limit); ``sentence_overrun_words``: how far a sentence may run past it before
    the reply is cut mid-sentence. ``no_repeats``: never say an earlier reply of the call
    again (see the module's measure: ``repeat_ratio``, ``repeat_min_words``);
    ``repeat_fallback_lines``: said when the regenerated reply repeats too (the first one
    not said before in the call).
    """

    max_spoken_words: int = 40
    sentence_overrun_words: int = 15
    no_repeats: bool = True
    repeat_ratio: float = 0.8
    repeat_min_words: int = 3
    repeat_fallback_lines: tuple[str, ...] = (
        "Is there anything else I can help you with?",
        "Sorry, could you say that another way?",
    )

    def __post_init__(self) -> None:
        lines = self.repeat_fallback_lines
        if isinstance(lines, str) or not all(isinstance(line, str) for line in lines):
            raise ValueError("repeat_fallback_lines must be a list of strings")
        object.__setattr__(self, "repeat_fallback_lines", tuple(line.strip() for line in lines))
        if not 0 < self.repeat_ratio <= 1:
            raise ValueError(f"repeat_ratio must be in (0, 1], not {self.repeat_ratio}")
        if self.max_spoken_words < 0 or self.sentence_overrun_words < 0:
            raise ValueError("max_spoken_words and sentence_overrun_words must be >= 0")
        if self.repeat_min_words < 1:
            raise ValueError("repeat_min_words must be at least 1")


class RepeatWatch:
    """Follows a reply as it streams: is it (still) the opening of an earlier reply?

    ``earlier`` are the call's earlier assistant replies. :meth:`feed` takes the whole
    reply so far and says ``hold`` (it may yet repeat one: do not send it), ``release``
    (it cannot: send what was held and stop asking) or ``repeat``. :meth:`end` gives the
    verdict when the reply ends while held.
    """

    def __init__(self, earlier: Sequence[str], *, ratio: float = 0.8, min_words: int = 3):
        self._earlier: list[tuple[str, list[str], int]] = []
        for text in earlier:
            words = words_of(text)
            needed = max(min_words, math.ceil(ratio * len(words) - 1e-9))
            if len(words) >= needed:
                self._earlier.append((text, words, needed))
        self.repeated: list[str] = []  # the earlier replies a repeat matched

    @property
    def watching(self) -> bool:
        return bool(self._earlier)

    def feed(self, text: str) -> Verdict:
        """The verdict on the reply so far (its last word may be incomplete)."""
        return self._verdict(text, final=False)

    def end(self, text: str) -> Verdict:
        """The verdict on a reply that ended while held: ``repeat`` or ``release``."""
        return "repeat" if self._verdict(text, final=True) == "repeat" else "release"

    def _verdict(self, text: str, *, final: bool) -> Verdict:
        words = words_of(text)
        complete = final or not text or not (text[-1].isalnum() or text[-1] in "'’")
        whole = words if complete else words[:-1]
        repeated, alive = [], False
        for earlier, theirs, needed in self._earlier:
            common = _common_opening(whole, theirs)
            if common >= needed:
                repeated.append(earlier)
            elif common == len(whole) < len(theirs):  # still their opening, so far
                alive |= complete or theirs[common].startswith(words[-1])
        if repeated:
            self.repeated = repeated
            return "repeat"
        return "hold" if alive and not final else "release"


def _common_opening(ours: list[str], theirs: list[str]) -> int:
    """How many words ``ours`` and ``theirs`` share from the start."""
    count = 0
    for mine, other in zip(ours, theirs, strict=False):
        if mine != other:
            break
        count += 1
    return count


def pick_fallback(lines: Sequence[str], earlier: Sequence[str]) -> str:
    """The first of ``lines`` not said before in the call; else the least recently said."""
    said = [words_of(text) for text in earlier]
    for line in lines:
        if words_of(line) not in said:
            return line
    if not lines:
        return ""
    return min(lines, key=lambda line: max(i for i, w in enumerate(said) if w == words_of(line)))


def without_replies(messages: Sequence[Message], replies: Sequence[str]) -> list[Message]:
    """``messages`` without the assistant turns whose text is one of ``replies``."""
    drop = set(replies)
    return [m for m in messages if not (m.role == "assistant" and m.content in drop)]


class LengthLimit:
    """Cuts a streamed reply at the first sentence end past ``max_words`` words.

    :meth:`feed` takes each delta and returns ``(the part to say, done)``: once done,
    the reply is complete and the LLM should stop. A ``.`` at the very end of the text
    so far is judged by the next delta (``3.5``, ``Mr.``); with no sentence end by
    ``max_words + overrun`` words the reply is cut after the last whole word.
    """

    def __init__(self, max_words: int, overrun: int = 15) -> None:
        self.max_words = max_words
        self.overrun = overrun
        self.text = ""

    def feed(self, delta: str) -> tuple[str, bool]:
        before, text = self.text, self.text + delta
        if self.max_words <= 0:
            self.text = text
            return delta, False
        start = _end_of_word(text, self.max_words)
        if start is not None:
            end = _sentence_end(text, max(start, len(before) - 1))
            if end is None and len(words_of(text)) > self.max_words + self.overrun:
                end = _end_of_word(text, self.max_words + self.overrun)
            if end is not None:
                end = max(end, len(before))
                self.text = text[:end]
                return text[len(before) : end], True
        self.text = text
        return delta, False


def _end_of_word(text: str, n: int) -> int | None:
    """Index just past the ``n``-th complete word of ``text``, or None if it has fewer."""
    for count, match in enumerate(_WORD.finditer(text), 1):
        if count == n:
            return match.end() if match.end() < len(text) else None
    return None


def _sentence_end(text: str, start: int) -> int | None:
    """Index just past the first sentence end at or after ``start`` that the text confirms."""
    for i in range(max(start, 0), len(text)):
        ch = text[i]
        if ch not in SENTENCE_END:
            continue
        end = i + 1
        while end < len(text) and (text[end] in SENTENCE_END or text[end] in CLOSERS):
            end += 1
        if end == len(text):
            return end if ch in "?!…" else None  # a final "." waits for what follows it
        if not text[end].isspace():
            continue  # 3.5, example.com
        if ch == "." and end == i + 1:
            word = text[:i].split()[-1:] or [""]
            bare = word[0].lstrip("(\"'“‘").lower()
            if bare in ABBREVIATIONS or (len(bare) == 1 and bare.isalpha()) or bare.isdigit():
                continue  # Mr. Smith, J. Smith, "1." of a list
        return end
    return None
