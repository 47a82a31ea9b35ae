"""Answers from the bot's own facts: a stage between STT and the LLM.

A bot's facts are question-answer pairs (``[faq]`` in ``bot.toml``). A caller question
that matches one is answered with its answer, word for word, at once: the LLM never
runs, so the answer cannot be wrong and costs no generation. Any other question goes
on to the LLM with the facts closest to it in the reply's notes (after the history, so
a local model's cached prompt stays valid), so a small model answers from them rather
than from its imagination.

How a question matches, and why this way: a telephone bot's questions come through
Whisper tiny at 8 kHz, so words arrive misspelt ("loafs", "sour dough", "croissance")
and phrased in many ways. Matching is lexical but tolerant:

- both sides are cut into content words (stop words dropped) and lightly stemmed;
- a caller word counts for a fact's word when it is the same stem, or close in
  spelling (character-trigram similarity ≥ ``fuzzy``), which absorbs most STT errors;
- words are weighted by how rare they are among the facts (a rare word like
  "sourdough" identifies a fact, "bread" barely does);
- the score is the F-measure of the weighted share of the fact's words that the
  caller said (recall, against each phrasing given for the fact) and the share of the
  caller's words the fact explains, in a phrasing or in its answer (precision: "are
  you open on Sunday?" is explained by an answer that names Sunday);
- the best fact must score ``min_score`` and beat the runner-up by ``min_margin``, or
  the LLM answers.

An embedding model would catch paraphrases with no shared word, but it would add a
model to load and 10-50 ms per turn; giving each fact a few phrasings covers those
cheaply and predictably.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.runtime.dialogue import BotText, CallerText, Message
from pipeline.runtime.stage import Stage

__all__ = ["FaqAnswerer", "FaqConfig", "FaqEntry", "FaqMatch", "FaqMatcher"]

_STOP_TEXT = """a an the is are am was were be been do does did you your yours we our ours i me my
    mine of to for at in on it its this that these those what whats which who whom how
    can could would will shall should may might must please hi hello hey there and or but
    so if then than just also too very really um uh oh okay ok well yes no any some have
    has had get got tell like want know need about with from by up out here thanks thank
    many im id ill ive dont youre theres"""
STOP_WORDS = frozenset(_STOP_TEXT.split())
"""Words that say nothing about which fact is asked. Not "when", "where", "much" or
"time": those tell opening hours from an address from a price."""

_NUMBER_WORDS = {
    "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
}  # fmt: skip


def _stem(word: str) -> str:
    if word.endswith("ves") and len(word) > 4:
        return word[:-3] + "f"  # loaves, halves
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _tokens(text: str) -> list[str]:
    words = re.findall(r"[a-z0-9]+", text.lower().replace("'", ""))
    return [_NUMBER_WORDS.get(word, word) for word in words]


def content_words(text: str) -> list[str]:
    """The words that carry meaning, normalised (lower case, numbers as digits, stemmed)."""
    return [_stem(word) for word in _tokens(text) if word not in STOP_WORDS]


@dataclass(frozen=True, slots=True)
class Heard:
    """A caller's content words, and each adjacent pair of words joined: STT splits
    compounds ("sour dough") that a fact spells as one word."""

    words: tuple[str, ...]
    pairs: tuple[tuple[str, int, int], ...]  # (joined stem, index of each half in words or -1)

    @classmethod
    def of(cls, text: str) -> Heard:
        tokens = _tokens(text)
        index, positions = 0, []
        for token in tokens:
            positions.append(-1 if token in STOP_WORDS else index)
            index += token not in STOP_WORDS
        words = tuple(_stem(token) for token in tokens if token not in STOP_WORDS)
        pairs = tuple(
            (_stem(tokens[i] + tokens[i + 1]), positions[i], positions[i + 1])
            for i in range(len(tokens) - 1)
        )
        return cls(words, pairs)


def _trigrams(word: str) -> set[str]:
    padded = f"  {word} "
    return {padded[i : i + 3] for i in range(len(padded) - 2)}


def _similarity(a: str, b: str) -> float:
    if a == b:
        return 1.0
    ta, tb = _trigrams(a), _trigrams(b)
    return len(ta & tb) / len(ta | tb)


@dataclass(frozen=True, slots=True)
class FaqEntry:
    """One fact: the ways a caller may ask for it, and the answer the bot gives."""

    questions: tuple[str, ...]
    answer: str


@dataclass(frozen=True, slots=True)
class FaqConfig:
    """``[faq]`` of ``bot.toml``: the facts, and how sure a match must be.

    ``min_score`` / ``min_margin``: a direct answer needs the best fact to score this
    (0..1) and beat the runner-up by this; ``context_facts``: how many of the closest
    facts go into the LLM's instructions when none matched (those scoring at least
    ``context_score``); ``fuzzy``: the spelling similarity at which two words count as
    one (0..1).
    """

    facts: tuple[FaqEntry, ...] = ()
    min_score: float = 0.6
    min_margin: float = 0.1
    context_facts: int = 3
    context_score: float = 0.15
    fuzzy: float = 0.5


@dataclass(frozen=True, slots=True)
class FaqMatch:
    entry: FaqEntry
    score: float


@dataclass(slots=True)
class FaqMatcher:
    """Scores caller words against every fact (see the module docstring for how)."""

    config: FaqConfig
    _phrasings: list[tuple[int, list[str]]] = field(default_factory=list)
    _answers: list[list[str]] = field(default_factory=list)
    _weight: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        documents: list[set[str]] = []
        for index, entry in enumerate(self.config.facts):
            self._answers.append(content_words(entry.answer))
            words: set[str] = set()
            for question in entry.questions:
                phrasing = content_words(question)
                self._phrasings.append((index, phrasing))
                words |= set(phrasing)
            documents.append(words)
        count = max(1, len(documents))
        for words in documents:
            for word in words:
                self._weight[word] = self._weight.get(word, 0.0) + 1.0
        self._weight = {w: math.log(1 + count / n) for w, n in self._weight.items()}

    def ranked(self, text: str) -> list[FaqMatch]:
        """Every fact with its best score for ``text``, best first."""
        heard = Heard.of(text)
        best: dict[int, float] = {}
        for index, phrasing in self._phrasings:
            score = self._score(phrasing, self._answers[index], heard)
            best[index] = max(best.get(index, 0.0), score)
        entries = self.config.facts
        matches = [FaqMatch(entries[index], score) for index, score in best.items()]
        return sorted(matches, key=lambda match: match.score, reverse=True)

    def answer(self, text: str) -> FaqMatch | None:
        """The fact ``text`` asks for, if it is clear enough to answer without the LLM."""
        ranked = self.ranked(text)
        if not ranked or ranked[0].score < self.config.min_score:
            return None
        runner_up = ranked[1].score if len(ranked) > 1 else 0.0
        return ranked[0] if ranked[0].score - runner_up >= self.config.min_margin else None

    def _score(self, phrasing: Sequence[str], answer: Sequence[str], heard: Heard) -> float:
        if not phrasing or not heard.words:
            return 0.0
        # A caller word that no fact has tells no fact apart ("now", "during", a misheard
        # word): it weighs as the commonest word does, so it lowers every fact's score
        # alike. Not less: "can I freeze the sourdough?" must not get the sourdough fact.
        common = min(self._weight.values(), default=1.0)
        weight = self._weight.get
        explained = [0.0] * len(heard.words)
        covered = 0.0
        for word in phrasing:
            best, halves = 0.0, ()
            for index, said in enumerate(heard.words):
                similarity = self._similar(word, said)
                if similarity > best:
                    best, halves = similarity, (index,)
            for joined, first, second in heard.pairs:
                similarity = self._similar(word, joined)
                if similarity > best:
                    best, halves = similarity, (first, second)
            covered += weight(word, common) * best
            for index in halves:
                if index >= 0:
                    explained[index] = max(explained[index], best)
        for index, said in enumerate(heard.words):  # "open on Sunday?": the answer says Sunday
            if not explained[index]:
                explained[index] = max((self._similar(said, w) for w in answer), default=0.0)
        fact_total = sum(weight(word, common) for word in phrasing)
        said_weights = [weight(word, common) for word in heard.words]
        recall = covered / fact_total
        precision = sum(w * e for w, e in zip(said_weights, explained, strict=True)) / sum(
            said_weights
        )
        return 0.0 if recall + precision == 0 else 2 * recall * precision / (recall + precision)

    def _similar(self, a: str, b: str) -> float:
        similarity = _similarity(a, b)
        return similarity if similarity >= self.config.fuzzy else 0.0


class FaqAnswerer(Stage[Any, Any]):
    """The reply path's FAQ step: answers a :class:`CallerText` that matches a fact with
    a :class:`BotText`; otherwise passes it on with the closest facts in the reply's
    notes for the LLM. Other frames pass through."""

    name = "faq"

    def __init__(self, config: FaqConfig, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.matcher = FaqMatcher(config)
        self.answered = 0
        self.passed = 0

    def process(self, item: Any) -> Iterable[Any]:
        if not isinstance(item, CallerText):
            return (item,)
        reply = item.reply
        ranked = self.matcher.ranked(item.text)
        match = self.matcher.answer(item.text)
        if match is not None:
            self.answered += 1
            answer = _not_again(match.entry.answer, reply.history)
            reply.text, reply.answered_by = answer, self.name
            reply.mark("faq")
            return (BotText(reply=reply, text=answer, captured_at=item.captured_at),)
        self.passed += 1
        config = self.matcher.config
        facts = [m.entry for m in ranked[: config.context_facts] if m.score >= config.context_score]
        if facts:
            lines = "\n".join(f"- {entry.questions[0]} {entry.answer}" for entry in facts)
            reply.notes.append(f"Facts for this answer:\n{lines}")
        return (item,)

    def statistics(self) -> dict[str, Any]:
        return {"answered": self.answered, "passed": self.passed}


def _not_again(answer: str, history: Sequence[Message]) -> str:
    """``answer``, or ``As I said, answer`` when it is what the bot said last: a caller
    who asks twice hears the fact again, not the same sentence as if from a recording."""
    said_last = next((m.content for m in reversed(history) if m.role == "assistant"), "")
    if said_last.strip() != answer.strip():
        return answer
    first, _, rest = answer.partition(" ")
    keep = first == "I" or first.startswith("I'") or first[1:2].isupper()
    return f"As I said, {first if keep else first.lower()} {rest}".rstrip()
