"""Cut streaming LLM text into pieces a TTS can speak, as the text arrives.

Waiting for the whole reply before speaking costs the caller the LLM's entire
generation time; speaking every token costs prosody. The middle ground: hand the
TTS the first *clause* as soon as it is complete, then sentence by sentence.

A piece ends at

- a sentence end (``.``, ``?``, ``!``, ``…``, possibly followed by closing quotes
  or brackets) followed by whitespace — so ``3.5``, ``10:30``, ``1,000``, ``e.g.``
  inside a word and URLs never cut, and a ``.`` at the very end of the text so
  far waits for the next delta to show what follows it (``?``, ``!`` and ``…``
  do not: nothing but more punctuation ever continues a word after them);
- a clause boundary (``,``, ``;``, ``:`` followed by whitespace, or a dash; a ``,``
  or ``;`` right after a letter needs no whitespace to follow) once
  the piece holds at least ``first_clause_words`` words (the first piece: one
  by default, so "Sure," or "I'm sorry," is spoken while the model writes on,
  the way a person starts an answer) or ``clause_words`` words (later pieces,
  which have the time the earlier ones take to play);
- a line break (markdown lists, paragraphs);
- ``max_chars`` without any boundary, cut at the last space.

A period after a known abbreviation (``Mr.``, ``Dr.``, ``e.g.``, a single initial)
does not end a sentence; after ``etc.``, ``a.m.`` and other dotted words it does
only when the next word starts with a capital letter; ``No.`` only when no number
follows.

Pieces come out through :func:`speakable`, which removes what an LLM writes for a
screen and a TTS would read aloud badly: markdown emphasis, headings, bullets and
numbered-list markers, tables and rules, code fences, link targets, bare URLs, HTML
tags, emoji and emoticons.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any

from pipeline.runtime.dialogue import BotText, Reply, SpeakableText
from pipeline.runtime.stage import Stage

__all__ = ["SentenceSplitter", "SpeechSplitter", "speakable", "speakable_pieces"]

SENTENCE_END = ".?!…"
CLAUSE_END = ",;:"
DASHES = "—–"
CLOSERS = "\"')]}”’»"

# Never end a sentence: titles and "for example"-style abbreviations.
ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "ft", "vs", "gen", "col", "lt",
    "sgt", "capt", "rev", "hon", "fig", "approx", "dept", "est", "e.g", "i.e", "cf", "al",
})  # fmt: skip
# End a sentence only when followed by a digit-free word (No. 5 vs "I said no. Then").
BEFORE_NUMBER = frozenset({"no", "nos", "vol", "pp"})

_EMOJI = re.compile(
    "["
    "\U0001f000-\U0001faff"  # emoticons, pictographs, transport, flags, supplemental symbols
    "\U00002600-\U000027bf"  # miscellaneous symbols, dingbats
    "\U00002b00-\U00002bff"  # arrows and stars (⭐)
    "\U0000fe00-\U0000fe0f"  # variation selectors
    "\U000e0020-\U000e007f"  # tag characters (subdivision flags)
    "\U00002190-\U000021ff"  # arrows (→)
    "\U00002300-\U000023ff"  # technical symbols (⌚, ⏰)
    "\U000025a0-\U000025ff"  # geometric shapes (▶, ●)
    "\u200d\u20e3"  # zero-width joiner, combining keycap
    "]+"
)
_EMOTICON = re.compile(r"(?<![\w:])[:;]-?[()DPp](?!\w)")
# A URL is read aloud character by character: drop it (its sentence's "." stays).
_URL = re.compile(r"<?(?:https?://|www\.)[^\s<>]*[^\s<>.,;:!?'\")\]]>?", re.IGNORECASE)
_HTML_TAG = re.compile(r"</?[A-Za-z][^>\n]*>")
_NUMBERED = re.compile(r"^\s*\d{1,3}[.)]\s+", re.MULTILINE)
_RULE = re.compile(r"^\s*([-*_=])(?:\s*\1){2,}\s*$", re.MULTILINE)  # ---, ***, table ===
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(?:\|\s*:?-{3,}:?\s*)*\|?\s*$", re.MULTILINE)
_TABLE_CELL = re.compile(r"\s*\|\s*")
_CODE_FENCE = re.compile(r"```[^\n`]*")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s*", re.MULTILINE)
_BULLET = re.compile(r"^\s*[-*+•●▪◦]\s+", re.MULTILINE)
_QUOTE = re.compile(r"^\s*>\s?", re.MULTILINE)
_EMPHASIS = re.compile(r"\*+|~~|`+|(?<!\w)_+|_+(?!\w)")
_SPACES = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")
# Edges a piece should not start or end with; the leading set includes what a cut
# made right after a "?" can leave over for the next piece ("?!", "?)").
_ORPHAN_EDGE = re.compile(r"^[\s,;:\-—–.?!…)\]}”’»]+|[\s,;\-—–]+$")


def speakable(text: str) -> str:
    """``text`` without markup or emoji, whitespace collapsed; ``""`` if nothing speakable.

    A piece ending at a clause boundary keeps its ``:`` but loses a trailing ``,``
    or dash: the TTS pauses at the end of the piece anyway.
    """
    text = _CODE_FENCE.sub(" ", text)
    text = _LINK.sub(r"\1", text)
    text = _URL.sub("", text)
    text = _HTML_TAG.sub(" ", text)
    text = _TABLE_RULE.sub("", text)
    text = _RULE.sub("", text)
    text = _TABLE_CELL.sub(", ", text)
    text = _HEADING.sub("", text)
    text = _BULLET.sub("", text)
    text = _NUMBERED.sub("", text)
    text = _QUOTE.sub("", text)
    text = _EMPHASIS.sub("", text)
    text = _EMOJI.sub("", text)
    text = _EMOTICON.sub("", text)
    text = _SPACES.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _ORPHAN_EDGE.sub("", text)
    return text if any(ch.isalnum() for ch in text) else ""


def _in_url(text: str, i: int) -> bool:
    """Whether ``text[i]`` is inside a URL (its ``?`` starts a query, not a question)."""
    word = text[: i + 1].rsplit(None, 1)[-1].lstrip("<(")
    return word.lower().startswith(("http://", "https://", "www."))


def _word_count(text: str) -> int:
    return sum(1 for word in text.split() if any(ch.isalnum() for ch in word))


class SentenceSplitter:
    """Feed text deltas in, get speakable pieces out as soon as each is complete.

    One splitter serves one reply; :meth:`flush` at the end of the reply returns
    the rest and makes the splitter ready for the next one.
    """

    def __init__(
        self, *, first_clause_words: int = 1, clause_words: int = 8, max_chars: int = 200
    ) -> None:
        if max_chars < 20:
            raise ValueError("max_chars below 20 would cut most words apart")
        self.first_clause_words = first_clause_words
        self.clause_words = clause_words
        self.max_chars = max_chars
        self._buffer = ""
        self._pieces_out = 0

    def feed(self, delta: str) -> list[str]:
        """Add a delta; return the pieces it completed (often none)."""
        self._buffer += delta
        return self._drain(final=False)

    def flush(self) -> list[str]:
        """End of the reply: return whatever is left as pieces, and reset."""
        pieces = self._drain(final=True)
        rest = speakable(self._buffer)
        if rest:
            pieces.append(rest)
        self._buffer = ""
        self._pieces_out = 0
        return pieces

    def _drain(self, *, final: bool) -> list[str]:
        pieces = []
        while (cut := self._next_cut(self._buffer, final)) is not None:
            piece, self._buffer = speakable(self._buffer[:cut]), self._buffer[cut:]
            if piece:
                pieces.append(piece)
                self._pieces_out += 1
        return pieces

    def _next_cut(self, text: str, final: bool) -> int | None:
        """End index of the first complete piece in ``text``, or None if there is none yet."""
        min_words = self.first_clause_words if self._pieces_out == 0 else self.clause_words
        n = len(text)
        for i, ch in enumerate(text):
            if ch == "\n":
                if speakable(text[:i]):
                    return i + 1
            elif ch in SENTENCE_END:
                end = i + 1
                while end < n and (text[end] in SENTENCE_END or text[end] in CLOSERS):
                    end += 1
                if end == n:
                    done = final or (ch in "?!…" and not _in_url(text, i))
                    return n if done and speakable(text) else None
                if not text[end].isspace():
                    continue  # 3.5, e.g.x, example.com, "?!" runs handled above
                if ch == "." and end == i + 1:
                    verdict = self._period_ends_sentence(text, i, end, final)
                    if verdict is None:
                        return None
                    if not verdict:
                        continue
                return end
            elif ch in CLAUSE_END or ch in DASHES or (ch == "-" and self._spaced(text, i)):
                if ch in CLAUSE_END:
                    if i + 1 == n:
                        if ch == ":" or not text[i - 1 : i].isalpha():
                            return None  # "1,000" or "yes, ..."? "10:30"? the next delta tells
                    elif not text[i + 1].isspace():
                        continue
                if _word_count(text[:i]) >= min_words:
                    return i + 1
        if n >= self.max_chars:
            space = text.rfind(" ", 0, self.max_chars)
            return space + 1 if space > 0 else self.max_chars
        return None

    @staticmethod
    def _spaced(text: str, i: int) -> bool:
        return 0 < i < len(text) - 1 and text[i - 1] == " " and text[i + 1] == " "

    @staticmethod
    def _period_ends_sentence(text: str, dot: int, end: int, final: bool) -> bool | None:
        """Whether the ``.`` at ``dot`` ends a sentence; None until the next word shows."""
        start = dot
        while start > 0 and not text[start - 1].isspace() and text[start - 1] not in "(\"'“‘":
            start -= 1
        word = text[start:dot].lower()
        if not word:
            return True
        if word in ABBREVIATIONS:
            return False
        if len(word) == 1 and word.isalpha():
            return False  # an initial: "J. Smith"
        line_start = text.rfind("\n", 0, start) + 1
        if word.isdigit() and not text[line_start:start].strip():
            return False  # "1. " opening a numbered list item
        if not (word in BEFORE_NUMBER or word == "etc" or "." in word):
            return True
        rest = text[end:].lstrip()
        if not rest:
            return True if final else None
        if word in BEFORE_NUMBER:
            return not rest[0].isdigit()
        return rest[0].isupper()  # etc., a.m., U.S.: a capital starts the next sentence


async def speakable_pieces(
    deltas: AsyncIterable[str], splitter: SentenceSplitter | None = None
) -> AsyncIterator[str]:
    """The pieces of a streamed reply, each yielded the moment it is complete."""
    splitter = splitter or SentenceSplitter()
    async for delta in deltas:
        for piece in splitter.feed(delta):
            yield piece
    for piece in splitter.flush():
        yield piece


class SpeechSplitter(Stage[Any, Any]):
    """The reply path's cut into speakable pieces: :class:`~pipeline.runtime.dialogue.BotText`
    deltas in, a :class:`~pipeline.runtime.dialogue.SpeakableText` out for each piece the
    moment it is complete (the first at its first comma), the rest at the end of the reply.

    A pure transform, so it runs in the responder's task with no channel hop; other
    frames pass through.
    """

    def __init__(self, splitter: SentenceSplitter | None = None, *, name: str | None = None):
        super().__init__(name=name)
        self.splitter = splitter or SentenceSplitter()
        self._reply: Reply | None = None
        self._captured_at = 0.0

    def process(self, item: Any) -> Iterable[Any]:
        if not isinstance(item, BotText):
            return (item,)
        if self._reply is not item.reply:
            pieces = self._flush()  # a new reply: what is left of the last one first
            self._reply, self._captured_at = item.reply, item.captured_at
            return [*pieces, *self._pieces(self.splitter.feed(item.text))]
        return self._pieces(self.splitter.feed(item.text))

    def finish(self) -> Iterable[Any]:
        return self._flush()

    def _flush(self) -> list[SpeakableText]:
        if self._reply is None:
            return []
        pieces = self._pieces(self.splitter.flush())
        self._reply = None
        return pieces

    def _pieces(self, texts: list[str]) -> list[SpeakableText]:
        reply = self._reply
        assert reply is not None
        for _ in texts:
            reply.mark("first_clause")
            reply.pieces_queued += 1
        return [
            SpeakableText(reply=reply, text=text, captured_at=self._captured_at) for text in texts
        ]
