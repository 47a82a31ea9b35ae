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
  indirect question's opening, with Whisper's "?") -6. A "?" excuses a final
  preposition only in a wh-question ("Where are you from?", not "Can you send it
  to?"), and never a final conjunction ("Could you check whether?").
- How well the words were heard (``use_confidence``): a "finished" reading counts in
  proportion to the STT's confidence (exp of its average token log-probability), in
  full from ``HEARD_WELL`` (0.6), not at all at ``HEARD_POORLY`` (0.35), for three
  words or more (a word or two: the average is noise). Words not made out at all
  (weight under ``UNHEARD_WEIGHT``) leave the turn *unsure* whatever the model says:
  a cut-off fragment is what Whisper hears worst ("The other happened." for "The
  address is", with the model at 0.96), and the voice alone is the cue known to be
  wrong. How long the caller has spoken is then the evidence left: a short turn (the
  length of a lead-in, up to ``UNHEARD_SHORT_TURN_MS`` of audio) waits the full
  ``unsure_wait_ms``; a long one (``UNHEARD_LONG_TURN_MS`` or more, a whole request)
  waits as the fixed hangover would (``hangover_ms``), linearly between. Measured on
  the benchmark's voices: the unheard fragments before a pause were 0.7-1.1 s of
  speech (1.1-1.5 s of turn audio), the unheard finished questions 2.2-2.3 s (2.5-2.7
  s). An unfinished reading keeps its weight: a wrong wait is bounded, a wrong cut-in
  is not.
- The voice's ending (``use_pitch``, off by default): a fall to the bottom of the
  phrase's register +0.7, a level or rising end on a non-question -0.7
  (:func:`stages.voicing.terminal_pitch`). Off because on the benchmark's synthetic
  voices it did not separate held phrases from ends (it added a cut-in and slowed two
  answers); real voices may differ, and Smart Turn already hears intonation.
- The verdict: P >= ``complete_threshold`` commits at once; P < ``incomplete_threshold``
  keeps listening (the turn is then committed by the endpointer's ``max_wait_ms``);
  between them the turn is committed after a silence that grows with the doubt
  (``graded_wait``): silence is evidence too, each millisecond adding the same
  log-odds, at the rate that takes P from ``incomplete_threshold`` at the pause to
  ``complete_threshold`` at ``unsure_wait_ms``; a turn judged just short of complete
  waits ~200 ms, one barely above incomplete the whole ``unsure_wait_ms``.

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
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from stages.voicing import TerminalPitch

if TYPE_CHECKING:
    from stages.turns import TurnConfig

__all__ = [
    "EndOfTurnPolicy",
    "Judgement",
    "TurnCompletionModel",
    "Verdict",
    "WordEvidence",
    "confidence_weight",
    "pitch_evidence",
    "word_evidence",
]

MODEL_FLOOR = 0.1  # the model's probability is clipped to [MODEL_FLOOR, 1 - MODEL_FLOOR]
FINISHED_STRONG = 3.0  # a question, a short answer
FINISHED_CLAUSE = 1.5  # subject ... content word: "I would like a loaf of rye bread"
FINISHED_WEAK = 0.4  # a clause closed by sentence punctuation (Whisper closes most)
UNFINISHED_WEAK = -3.0  # trailing "...", a number still being dictated
UNFINISHED_STRONG = -6.0  # an ending no sentence has: "and", "the", "my", "um", "my name is"
HEARD_WELL = 0.6  # STT confidence (exp avg log-prob) at which the words count in full
HEARD_POORLY = 0.35  # ... at or below which a "finished" reading counts for nothing
CONFIDENCE_MIN_WORDS = 3  # shorter transcripts: their confidence says little
UNHEARD_WEIGHT = 0.25  # under this weight the words were not made out (confidence < 0.41)
# unheard words: a turn's audio (onset with its preroll, to the judgement) this short is
# a lead-in's length and waits unsure_wait_ms; this long, a request's: the hangover
UNHEARD_SHORT_TURN_MS = 1600.0
UNHEARD_LONG_TURN_MS = 2400.0
PITCH_FALL = 0.7  # the voice fell to the bottom of its register: a statement's end
PITCH_HELD = -0.7  # level or rising at the top: a phrase held open
PITCH_LOW_END_ST = -2.0  # semitones under the phrase's median that count as "low"
PITCH_HELD_END_ST = -0.5  # at or above it the end is "level or high"
PITCH_MIN_VOICED_MS = 400.0  # less voicing than this: the pitch says nothing


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
    """The verdict at one pause and everything it rested on (kept on the turn's record)."""

    verdict: Verdict
    probability: float  # the combined P(finished)
    model_probability: float | None
    words: WordEvidence
    wait_ms: float | None = 0.0  # silence after the voice before committing; None: never
    text: str | None = None
    stt_confidence: float | None = None
    confidence_weight: float = 1.0  # how much a "finished" reading of the words counted
    pitch: TerminalPitch | None = None
    pitch_log_odds: float = 0.0
    model_late: bool = False  # the model missed its deadline: judged without it
    model_skipped: bool = False  # the words decided whatever the model said: not asked
    turn_ms: float | None = None  # the turn's audio judged (onset with preroll, to the pause)

    def as_dict(self) -> dict[str, Any]:
        """A plain, JSON-ready account of the judgement."""
        return {
            "verdict": self.verdict.value,
            "probability": self.probability,
            "model_probability": self.model_probability,
            "model_late": self.model_late,
            "model_skipped": self.model_skipped,
            "words_log_odds": self.words.log_odds,
            "words_reason": self.words.reason,
            "text": self.text,
            "stt_confidence": self.stt_confidence,
            "confidence_weight": self.confidence_weight,
            "pitch_end_st": self.pitch.end_st if self.pitch else None,
            "pitch_slope_st_per_s": self.pitch.slope_st_per_s if self.pitch else None,
            "pitch_voiced_ms": self.pitch.voiced_ms if self.pitch else None,
            "end_level_db": self.pitch.end_level_db if self.pitch else None,
            "pitch_log_odds": self.pitch_log_odds,
            "wait_ms": self.wait_ms,
            "turn_ms": self.turn_ms,
        }


def _word_set(words: str) -> frozenset[str]:
    return frozenset(words.split())


_CONJUNCTIONS = _word_set(
    "and but or nor because cause cuz if although though unless until whereas plus than whether"
)
_WH_WORDS = _word_set("what when where who whom whose which why how")
_REQUEST_VERBS = _word_set(
    "cancel book send tell give change check call put add make bring deliver reserve "
    "order repeat connect transfer remove update help email text confirm keep hold let"
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
    r"|i was wondering(?: if)?|i'm looking for|i think|let me"
    r"|(?:under|in|for|by) the name(?: of)?)$"
)
_OBJECT_WANTED = re.compile(
    r"\b(?:(?:would|'d) like|want|need|wanted|going) to (?:order|book|get|buy|have|make"
    r"|reserve|know|ask|check|change|cancel|pick up|pay for)$"
)
_VERB_TO_COME = re.compile(
    r"\b(?:can|could|would|will|do|does|did|should|may|might|shall) (?:i|you|we|they|he|she)$"
)
_TELL_ME = re.compile(r"\b(?:tell|show|give|send|ask) me$")
# a turn made only of these opens what the caller wants to say ("Sorry, I only wanted
# ...", "Hold on, ..."): said over the bot, it is the barge-in's first breath
_PREFACES = re.compile(
    r"(?:(?:um|uh|oh|okay|ok|so|well|actually|sorry|excuse me|pardon me|wait|hold on"
    r"|one (?:moment|second|sec)|listen|look|hang on) ?)+"
)
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
    # A preposition can end a question only when a wh-word was moved out of its phrase
    # ("Where are you from?", "Who is it for?"): "Can you send the invoice to?" waits
    # for its object. No question ends with a conjunction ("Could you check whether?").
    stranded = question_mark and bool(_WH_WORDS.intersection(words))
    if last in _CONJUNCTIONS or (last in _PREPOSITIONS and not stranded):
        return WordEvidence(UNFINISHED_STRONG, f"ends with {last!r}")
    if _LEAD_INS.search(phrase):
        return WordEvidence(UNFINISHED_STRONG, "ends with a lead-in")
    if raw.endswith(("...", "\u2026", "-", "\u2014", ",")):
        return WordEvidence(UNFINISHED_WEAK, "trails off")
    if not question_mark and _OBJECT_WANTED.search(phrase):
        return WordEvidence(UNFINISHED_WEAK, "what is wanted is not said yet")
    if _VERB_TO_COME.search(phrase):  # "Can you?" (Whisper's "?"), then "... deliver"
        return WordEvidence(UNFINISHED_WEAK, "the verb is still to come")
    preface = _PREFACES.fullmatch(phrase) and words[-1] not in {"okay", "ok"}
    if preface and not question_mark:  # "Sorry?" asks to hear it again: finished
        return WordEvidence(UNFINISHED_WEAK, "a preface: the point is still to come")
    if _TELL_ME.search(phrase):  # "Could you tell me?" opens a question: "when you close"
        return WordEvidence(UNFINISHED_STRONG, "what to tell is still to come")
    numbers_only = len(words) <= 3 and all(_is_number(word) for word in words)
    yes_or_no = len(words) <= 4 and words[0] in _YES_NO  # "Yes, I am." "No, not today."
    if phrase in _SHORT_ANSWERS or numbers_only or yes_or_no:
        return WordEvidence(FINISHED_STRONG, "a short answer")
    trailing = list(takewhile(_is_number, reversed(words)))
    # a number being dictated follows its label ("my card number is 4 4"), not any word
    # ("I lost my card and need a new one")
    before = words[-len(trailing) - 1] if 0 < len(trailing) < len(words) else ""
    labelled = before in {"is", "was", "it's"} or bool(_DICTATION.fullmatch(before))
    if trailing and (len(trailing) == len(words) or (labelled and _DICTATION.search(phrase))):
        digits = sum(len(word) if word.isdigit() else 1 for word in trailing)
        if digits < 7:  # fewer than a phone number's: more digits are coming
            return WordEvidence(UNFINISHED_WEAK, "a number being dictated")
    if question_mark:
        return WordEvidence(FINISHED_STRONG, "a question")
    if last in {"bye", "goodbye"}:  # a farewell ends the turn (and the call)
        return WordEvidence(FINISHED_STRONG, "a farewell")
    if last in {"thanks", "please"} or phrase.endswith(
        ("thank you", "thank you very much", "thanks a lot")
    ):
        return WordEvidence(FINISHED_STRONG - 1.0, "a closing courtesy")
    if words[0] in _QUESTION_STARTS and len(words) >= 3:
        return WordEvidence(FINISHED_STRONG - 1.0, "worded as a question")
    clause = list(dropwhile(lambda word: word in _DISCOURSE, words))  # "So I was ..."
    if len(clause) >= 4 and clause[0] in _SUBJECTS and last not in _FUNCTION_WORDS:
        return WordEvidence(FINISHED_CLAUSE, "a complete clause")
    # a request is often an imperative, with no subject: "(Please) cancel my order."
    request = clause[1:] if clause[:1] == ["please"] else clause
    if len(request) >= 3 and request[0] in _REQUEST_VERBS and last not in _FUNCTION_WORDS:
        return WordEvidence(FINISHED_CLAUSE, "a request")
    if raw.endswith((".", "!")) and len(words) >= 3:
        return WordEvidence(FINISHED_WEAK, "a sentence")
    return WordEvidence()


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def confidence_weight(confidence: float | None, words: int = CONFIDENCE_MIN_WORDS) -> float:
    """How much a "finished" reading of ``words`` words counts, from the STT's
    confidence in them (exp of Whisper's average token log-probability): in full at or
    above ``HEARD_WELL``, not at all at or below ``HEARD_POORLY``, linearly between. A
    fragment Whisper barely heard ("The other happened." for "The address is") must not
    end the turn as a sentence would; an unfinished reading keeps its full weight (a
    wrong wait is bounded, a wrong cut-in is not). Under ``CONFIDENCE_MIN_WORDS`` words
    it counts in full: an average over two or three tokens is noise (measured: "No",
    "Sure.", "Okay" all came out at 0.39-0.49, well heard)."""
    if confidence is None or words < CONFIDENCE_MIN_WORDS:
        return 1.0
    span = HEARD_WELL - HEARD_POORLY
    return min(1.0, max(0.0, (confidence - HEARD_POORLY) / span))


def pitch_evidence(pitch: TerminalPitch | None, text: str | None) -> float:
    """Log-odds from how the voice ended (:func:`stages.voicing.terminal_pitch`): a fall
    to the bottom of the phrase's register says "finished" (a statement's final fall);
    a level or rising end says "more to come" (a held phrase, a list item), unless the
    words are a question, whose rise is its end. Too little voicing says nothing."""
    if pitch is None or pitch.voiced_ms < PITCH_MIN_VOICED_MS:
        return 0.0
    question = bool(text) and text.strip().endswith("?")
    if pitch.end_st <= PITCH_LOW_END_ST and pitch.slope_st_per_s < 0:
        return PITCH_FALL
    if not question and pitch.end_st >= PITCH_HELD_END_ST and pitch.slope_st_per_s >= 0:
        return PITCH_HELD
    return 0.0


@dataclass(frozen=True, slots=True)
class EndOfTurnPolicy:
    """The decision at a pause; the thresholds are :class:`~stages.turns.TurnConfig`'s.

    ``early_ms`` / ``unsure_wait_ms``: with ``graded_wait``, an unsure verdict waits
    according to how unsure it is (linear in log-odds): from ``early_ms`` (the pause
    itself) just under ``complete_threshold`` up to ``unsure_wait_ms`` just over
    ``incomplete_threshold``; without it, always ``unsure_wait_ms``. ``hangover_ms``:
    the wait of a long turn whose words were not made out (the fixed hangover's
    ``min_silence_ms``)."""

    complete_threshold: float = 0.6
    incomplete_threshold: float = 0.3
    use_words: bool = True
    use_confidence: bool = True
    use_pitch: bool = False
    graded_wait: bool = True
    early_ms: float = 160.0
    unsure_wait_ms: float = 1200.0
    hangover_ms: float = 600.0

    @classmethod
    def of(cls, turns: TurnConfig) -> EndOfTurnPolicy:
        """The policy a ``[turns]`` configuration asks for."""
        return cls(
            complete_threshold=turns.complete_threshold,
            incomplete_threshold=turns.incomplete_threshold,
            use_words=turns.use_words,
            use_confidence=turns.use_confidence,
            use_pitch=turns.use_pitch,
            graded_wait=turns.graded_wait,
            early_ms=turns.early_silence_ms or 0.0,
            unsure_wait_ms=turns.unsure_wait_ms,
            hangover_ms=turns.min_silence_ms,
        )

    def __post_init__(self) -> None:
        if not 0.0 <= self.incomplete_threshold <= self.complete_threshold <= 1.0:
            raise ValueError("need 0 <= incomplete_threshold <= complete_threshold <= 1")
        if not 0.0 <= self.early_ms <= self.unsure_wait_ms:
            raise ValueError("need 0 <= early_ms <= unsure_wait_ms")
        if self.hangover_ms < 0.0:
            raise ValueError("need hangover_ms >= 0")

    def judge(
        self,
        model_probability: float | None,
        text: str | None,
        *,
        stt_confidence: float | None = None,
        pitch: TerminalPitch | None = None,
        turn_ms: float | None = None,
    ) -> Judgement:
        """Combine the model's P(complete) (None: no model) with the words (None: no
        transcript yet), the STT's confidence in them and the terminal pitch into a
        verdict and the silence to wait before committing. ``turn_ms``: the turn's
        audio so far (from its onset with the preroll); it sets the wait when the words
        were not made out (None: the full ``unsure_wait_ms``)."""
        if model_probability is not None and not 0.0 <= model_probability <= 1.0:
            raise ValueError(f"model probability {model_probability!r} is not in [0, 1]")
        if stt_confidence is not None and not 0.0 <= stt_confidence <= 1.0:
            raise ValueError(f"STT confidence {stt_confidence!r} is not in [0, 1]")
        words = word_evidence(text) if self.use_words else WordEvidence()
        heard = len(_WORD.findall(text.lower())) if text else 0
        weighing = self.use_words and self.use_confidence
        weight = confidence_weight(stt_confidence, heard) if weighing else 1.0
        log_odds = words.log_odds * weight if words.log_odds > 0 else words.log_odds
        tone = pitch_evidence(pitch, text if self.use_words else None) if self.use_pitch else 0.0
        log_odds += tone
        if model_probability is not None:
            log_odds += _logit(min(max(model_probability, MODEL_FLOOR), 1.0 - MODEL_FLOOR))
        probability = 1.0 / (1.0 + math.exp(-log_odds))
        wait_ms: float | None
        unheard = weighing and weight < UNHEARD_WEIGHT and heard >= CONFIDENCE_MIN_WORDS
        if unheard and words.log_odds >= 0:
            # words not made out: the voice alone decides nothing either way (it is the
            # cue known to be wrong a third of the time); the turn's length does
            verdict, wait_ms = Verdict.UNSURE, self._unheard_wait(turn_ms)
        elif probability >= self.complete_threshold:
            verdict, wait_ms = Verdict.COMPLETE, 0.0
        elif probability < self.incomplete_threshold:
            verdict, wait_ms = Verdict.INCOMPLETE, None
        else:
            verdict, wait_ms = Verdict.UNSURE, self._unsure_wait(probability)
        return Judgement(
            verdict,
            round(probability, 4),
            model_probability,
            words,
            wait_ms=wait_ms,
            text=text,
            stt_confidence=stt_confidence,
            confidence_weight=round(weight, 3),
            pitch=pitch,
            pitch_log_odds=tone,
            turn_ms=turn_ms,
        )

    def _unheard_wait(self, turn_ms: float | None) -> float:
        """The wait of a turn whose words were not made out: a short turn is what a
        cut-off lead-in looks like ("The address is", heard as "The other happened."):
        the full ``unsure_wait_ms``; a long one is more likely a whole request, and
        waits the hangover's ``hangover_ms`` (never more than ``unsure_wait_ms``)."""
        longest = self.unsure_wait_ms
        if turn_ms is None or turn_ms <= UNHEARD_SHORT_TURN_MS:
            return longest
        share = min(
            1.0, (turn_ms - UNHEARD_SHORT_TURN_MS) / (UNHEARD_LONG_TURN_MS - UNHEARD_SHORT_TURN_MS)
        )
        shortest = min(self.hangover_ms, longest)
        return round(longest - share * (longest - shortest), 1)

    def _unsure_wait(self, probability: float) -> float:
        """Silence from the end of the voice after which an unsure turn is committed.

        Graded: silence is evidence too. Each millisecond of it adds the same log-odds
        for "finished", at the rate that takes a turn judged at ``incomplete_threshold``
        at the pause (``early_ms``) to ``complete_threshold`` at ``unsure_wait_ms``; the
        turn is committed when it gets there. So a turn judged just short of complete
        waits a little, one judged barely above incomplete the whole ``unsure_wait_ms``.
        """
        if not self.graded_wait or self.complete_threshold <= self.incomplete_threshold:
            return self.unsure_wait_ms
        low = _logit(max(self.incomplete_threshold, 1e-6))
        high = _logit(min(self.complete_threshold, 1 - 1e-6))
        doubt = (high - _logit(min(max(probability, 1e-6), 1 - 1e-6))) / (high - low)
        doubt = min(1.0, max(0.0, doubt))
        return round(self.early_ms + doubt * (self.unsure_wait_ms - self.early_ms), 1)
