"""Has the caller finished? The audio turn model and the words heard, combined.

At a short pause (:class:`~stages.turns.SpeechPaused`, ~200 ms of silence) two kinds of
evidence exist: an audio model's probability that the turn is complete (a
:class:`TurnCompletionModel`, e.g. Smart Turn, from the intonation and rhythm of the
last seconds) and the words heard so far (the speculative transcript the reply path
makes at the pause). Neither is enough alone. The audio model misses plain questions
(Pipecat's Smart Turn called a third of complete, plainly finished questions
"incomplete" and waited for its 3 s fallback); the words miss what only the voice
carries (a list read out with a rising tone; a fragment Whisper closed with a period).

The combination is a sum of log-odds, as for two independent pieces of evidence
(naive Bayes)::

    logit(P) = logit(clip(p_model, MODEL_FLOOR, 1 - MODEL_FLOOR)) + word_evidence

- The model's probability is clipped to [0.1, 0.9] (±2.2 in log-odds): no single
  model answer can outvote strong word evidence, because the model is the part known
  to be wrong a third of the time on finished questions (and, measured here, says
  0.01 for a plain "No." and 0.03 for "I would like a loaf of rye bread"). Without a
  model its term is 0 (even odds), and the words decide alone.
- Words (:func:`word_evidence`) add log-odds: a question or a short answer ("yes",
  "no", a number, "thank you") +3 (it ends the turn even against the surest
  "incomplete": P = 0.69); a clause from its subject to a content word ("I would like
  a loaf of rye bread") +1.5 (against that model: unsure, so a bounded wait); a
  sentence closed by a period +0.4 (weak: Whisper closes fragments with one too, so it
  only tips a model on the fence); an ending that cannot end a sentence (a
  conjunction, preposition, article or possessive, an "um"/"uh", "my name is", "I
  would like") -6, which holds the turn open against the surest model (P <= 0.02); a
  trailing "...", a number being dictated, "I'd like to order" with nothing ordered
  yet, "Can you?" with its verb still to come (measured: Whisper wrote "Can you?" at
  the pause in "Can you ... uh ... deliver on Sunday?") -3; "Could you tell me?" (an
  indirect question's opening, with Whisper's "?") -6.
- The verdict: P >= ``complete_threshold`` commits at once; P < ``incomplete_threshold``
  keeps listening (the turn is then committed by the endpointer's ``max_wait_ms``);
  between them the turn is committed after ``unsure_wait_ms`` of silence.

Everything here is pure and synchronous except the model's interface: easy to test,
and cheap to call at every pause.
"""

from __future__ import annotations

import math
import re
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import Enum
from itertools import dropwhile, takewhile
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "EndOfTurnPolicy",
    "Judgement",
    "TurnCompletionModel",
    "Verdict",
    "WordEvidence",
    "word_evidence",
]

MODEL_FLOOR = 0.1  # the model's probability is clipped to [MODEL_FLOOR, 1 - MODEL_FLOOR]
FINISHED_STRONG = 3.0  # a question, a short answer
FINISHED_CLAUSE = 1.5  # subject ... content word: "I would like a loaf of rye bread"
FINISHED_WEAK = 0.4  # a clause closed by sentence punctuation (Whisper closes most)
UNFINISHED_WEAK = -3.0  # trailing "...", a number still being dictated
UNFINISHED_STRONG = -6.0  # an ending no sentence has: "and", "the", "my", "um", "my name is"


@runtime_checkable
class TurnCompletionModel(Protocol):
    """An audio end-of-turn model, shared by all calls (a service)."""

    def serving(self) -> AbstractAsyncContextManager[None]: ...

    async def completion(self, samples: np.ndarray, sample_rate: int) -> float:
        """P(the caller has finished the turn) in [0, 1], from the turn's audio so far
        (int16 mono; the model uses the last 8 s)."""
        ...


class Verdict(Enum):
    COMPLETE = "complete"  # commit now
    UNSURE = "unsure"  # commit after unsure_wait_ms of silence
    INCOMPLETE = "incomplete"  # keep listening, up to max_wait_ms


@dataclass(frozen=True, slots=True)
class WordEvidence:
    """Log-odds the words add for "finished" (negative: unfinished), and why."""

    log_odds: float = 0.0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: Verdict
    probability: float  # the combined P(finished)
    model_probability: float | None
    words: WordEvidence


def _word_set(words: str) -> frozenset[str]:
    return frozenset(words.split())


_CONJUNCTIONS = _word_set(
    "and but or nor because cause cuz if although though unless until whereas plus than"
)
_PREPOSITIONS = _word_set(
    "to of for with at in on from by about into onto like after before under over "
    "between through during without per via around near towards toward"
)
_DETERMINERS = _word_set("a an the this these those some any every each another")
_POSSESSIVES = _word_set("my your his our their its")
_FILLERS = _word_set("um umm uh uhh uhm er erm")  # hesitations; "mm", "hmm" are backchannels
# a contraction cannot end a sentence ("Yes, I am." can; "Yes, I'm." cannot)
_LEAD_INS = re.compile(
    r"\b(?:(?:name|number|address|email|postcode|code|date|time|order|phone) (?:is|was)"
    r"|(?:i|we)(?: would|'d) like|(?:i|we) (?:want|need)|i'm|it's|there's|we're"
    r"|(?:can|could|may) (?:i|we)(?: (?:get|have|order))?"
    r"|i was wondering(?: if)?|i'm looking for|i think|let me)$"
)
_OBJECT_WANTED = re.compile(
    r"\b(?:(?:would|'d) like|want|need|wanted|going) to (?:order|book|get|buy|have|make"
    r"|reserve|know|ask|check|change|cancel|pick up|pay for)$"
)
_VERB_TO_COME = re.compile(
    r"\b(?:can|could|would|will|do|does|did|should|may|might|shall) (?:i|you|we|they|he|she)$"
)
_TELL_ME = re.compile(r"\b(?:tell|show|give|send|ask) me$")
_DISCOURSE = _word_set("so well and but oh okay ok um uh yeah yes no right then")
_SUBJECTS = _word_set("i we you they he she it this that there my our i'm i'd we're it's")
_FUNCTION_WORDS = _CONJUNCTIONS | _PREPOSITIONS | _DETERMINERS | _POSSESSIVES | _SUBJECTS
_FUNCTION_WORDS |= _word_set("is are was were be been am would will can could should do to not")
_QUESTION_STARTS = _word_set(
    "what when where who whom whose why how which do does did is are was were can could "
    "would will shall should may might have has had am"
)
_SHORT_ANSWERS = frozenset(
    {
        *_word_set("yes yeah yep yup no nope nah sure okay ok alright right correct exactly"),
        *_word_set("thanks bye goodbye hello hi please great perfect fine fantastic lovely"),
        "thank you", "no thanks", "no thank you", "yes please", "that's right",
        "that's all", "that's it", "of course", "not really", "sounds good",
        "mm", "mhm", "hmm", "mm hm", "uh huh", "got it", "i see",
    }
)  # fmt: skip
_YES_NO = _word_set("yes yeah yep yup no nope nah")
_DIGIT_WORDS = _word_set("zero oh one two three four five six seven eight nine ten eleven twelve")
_DICTATION = re.compile(r"\b(?:number|phone|card|code|zip|postcode|account|extension|pin)\b")
_WORD = re.compile(r"[a-z0-9']+")


def _is_number(word: str) -> bool:
    return word.isdigit() or word in _DIGIT_WORDS


def word_evidence(text: str | None) -> WordEvidence:
    """What the words heard so far say about the turn being finished.

    Unfinished endings are checked first: the end of a phrase is what matters, and a
    question that trails into "and" or "um" is not finished.
    """
    if not text or not text.strip():
        return WordEvidence()
    raw = text.strip()
    lower = raw.lower().replace("\u2019", "'")
    words = _WORD.findall(lower)
    if not words:
        return WordEvidence()
    last = words[-1]
    question_mark = raw.endswith("?")
    if last in _FILLERS:
        return WordEvidence(UNFINISHED_STRONG, f"ends with the filler {last!r}")
    if last in _DETERMINERS or last in _POSSESSIVES:
        return WordEvidence(UNFINISHED_STRONG, f"ends with {last!r}, which needs a noun")
    phrase = " ".join(words)
    # "Where are you from?" ends with a preposition and is done; "Can I get?" is not
    if not question_mark and (last in _CONJUNCTIONS or last in _PREPOSITIONS):
        return WordEvidence(UNFINISHED_STRONG, f"ends with {last!r}")
    if _LEAD_INS.search(phrase):
        return WordEvidence(UNFINISHED_STRONG, "ends with a lead-in")
    if raw.endswith(("...", "\u2026", "-", "\u2014", ",")):
        return WordEvidence(UNFINISHED_WEAK, "trails off")
    if not question_mark and _OBJECT_WANTED.search(phrase):
        return WordEvidence(UNFINISHED_WEAK, "what is wanted is not said yet")
    if _VERB_TO_COME.search(phrase):  # "Can you?" (Whisper's "?"), then "... deliver"
        return WordEvidence(UNFINISHED_WEAK, "the verb is still to come")
    if _TELL_ME.search(phrase):  # "Could you tell me?" opens a question: "when you close"
        return WordEvidence(UNFINISHED_STRONG, "what to tell is still to come")
    numbers_only = len(words) <= 3 and all(_is_number(word) for word in words)
    yes_or_no = len(words) <= 4 and words[0] in _YES_NO  # "Yes, I am." "No, not today."
    if phrase in _SHORT_ANSWERS or numbers_only or yes_or_no:
        return WordEvidence(FINISHED_STRONG, "a short answer")
    trailing = list(takewhile(_is_number, reversed(words)))
    if trailing and (len(trailing) == len(words) or _DICTATION.search(phrase)):
        digits = sum(len(word) if word.isdigit() else 1 for word in trailing)
        if digits < 7:  # fewer than a phone number's: more digits are coming
            return WordEvidence(UNFINISHED_WEAK, "a number being dictated")
    if question_mark:
        return WordEvidence(FINISHED_STRONG, "a question")
    if last in {"thanks", "please", "bye", "goodbye"} or phrase.endswith(
        ("thank you", "thank you very much", "thanks a lot")
    ):
        return WordEvidence(FINISHED_STRONG - 1.0, "a closing courtesy")
    if words[0] in _QUESTION_STARTS and len(words) >= 3:
        return WordEvidence(FINISHED_STRONG - 1.0, "worded as a question")
    clause = list(dropwhile(lambda word: word in _DISCOURSE, words))  # "So I was ..."
    if len(clause) >= 4 and clause[0] in _SUBJECTS and last not in _FUNCTION_WORDS:
        return WordEvidence(FINISHED_CLAUSE, "a complete clause")
    if raw.endswith((".", "!")) and len(words) >= 3:
        return WordEvidence(FINISHED_WEAK, "a sentence")
    return WordEvidence()


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


@dataclass(frozen=True, slots=True)
class EndOfTurnPolicy:
    """The decision at a pause; the thresholds are :class:`~stages.turns.TurnConfig`'s."""

    complete_threshold: float = 0.6
    incomplete_threshold: float = 0.3
    use_words: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.incomplete_threshold <= self.complete_threshold <= 1.0:
            raise ValueError("need 0 <= incomplete_threshold <= complete_threshold <= 1")

    def judge(self, model_probability: float | None, text: str | None) -> Judgement:
        """Combine the model's P(complete) (None: no model) with the words (None: no
        transcript yet) into a verdict."""
        if model_probability is not None and not 0.0 <= model_probability <= 1.0:
            raise ValueError(f"model probability {model_probability!r} is not in [0, 1]")
        words = word_evidence(text) if self.use_words else WordEvidence()
        log_odds = words.log_odds
        if model_probability is not None:
            log_odds += _logit(min(max(model_probability, MODEL_FLOOR), 1.0 - MODEL_FLOOR))
        probability = 1.0 / (1.0 + math.exp(-log_odds))
        if probability >= self.complete_threshold:
            verdict = Verdict.COMPLETE
        elif probability < self.incomplete_threshold:
            verdict = Verdict.INCOMPLETE
        else:
            verdict = Verdict.UNSURE
        return Judgement(verdict, round(probability, 4), model_probability, words)
