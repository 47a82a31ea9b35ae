"""What a transcript's own text says about it: a decoding loop, or Whisper's invention.

Whisper decoding a short window (:class:`stages.stt.SttService`) sometimes loops
("Yes. Yes. Yes.") or starts the utterance over; on near-silence it may invent a
phrase from its training data ("Thank you."). These checks read only the text and
the decoder's scores, so the local service and a remote server's answers
(:mod:`stages.stt_remote`) go through the same ones.
"""

from __future__ import annotations

import re

__all__ = ["hallucination", "repetition", "trim_loop"]


def _normal_words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def hallucination(
    text: str,
    *,
    avg_logprob: float,
    no_speech_prob: float,
    level_dbfs: float,
    no_speech_threshold: float,
    log_prob_threshold: float,
    silence_dbfs: float,
    phantom_phrases: frozenset[str] | set[str],
) -> str | None:
    """Why a transcript is Whisper's invention rather than speech, or None: the local
    service and a remote server's answers go through the same guard.

    Audio Whisper itself calls non-speech gives no speech when the words are unsure,
    or when they loop, however sure: on noise the decoder repeats the vocabulary
    prompt ("Rosie's Bakery, sourdough, sourdough, ...") with a high log-probability
    (faster-whisper's sampled fallback sometimes keeps such a result)."""
    if not text:
        return None
    if no_speech_prob > no_speech_threshold and (
        avg_logprob < log_prob_threshold or repetition(text) is not None
    ):
        return "no speech"
    phrase = " ".join(_normal_words(text))
    near_silent = level_dbfs < silence_dbfs + 15.0
    if phrase in phantom_phrases and (near_silent or no_speech_prob > 0.5):
        return "phantom phrase"
    return None


def repetition(text: str) -> str | None:
    """Why ``text`` looks like a decoding loop, or None."""
    words = _normal_words(text)
    for i in range(len(words) - 2):
        if words[i] == words[i + 1] == words[i + 2] and not _is_digit_word(words[i]):
            return "word repeated"
    for n in range(2, len(words) // 2 + 1):
        for i in range(len(words) - 2 * n + 1):
            if words[i : i + n] == words[i + n : i + 2 * n]:
                return "phrase repeated"
    if len(words) >= 4 and _restarts(text, words):
        return "opening repeated"
    return None


def _restarts(text: str, words: list[str]) -> bool:
    """Whether the decoder started the utterance over: its opening two words again at
    the start of a later sentence ("Please call me back. Please call"), or three of
    them again, or two at the very end (where the token budget cut a restart short).
    Two opening words again inside a sentence are speech: "I want to return the shoes
    I want ...", "I need to know if I need a visa" (that rule sent them to the 30 s
    window, ~0.6 s, for the same words)."""
    opening = words[:2]
    starts, count = set(), 0
    for sentence in re.split(r"(?<=[.?!])\s+", text.strip()):
        starts.add(count)
        count += len(_normal_words(sentence))
    for i in range(2, len(words) - 1):
        if words[i : i + 2] != opening:
            continue
        if i in starts or words[i : i + 3] == words[:3] or i + 2 == len(words):
            return True
    return False


_DIGIT_WORDS = frozenset({
    "zero", "oh", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "double", "triple",
})  # fmt: skip


def _is_digit_word(word: str) -> bool:
    """Numbers and number words repeat for real: "five five five", "0 0 7"."""
    return word.isdigit() or word in _DIGIT_WORDS


def trim_loop(text: str) -> str:
    """Cut a short-window decoding loop back to its first period.

    "Yes. Yes. Yes. Yes" -> "Yes."; "...my order. I" -> "...my order." The words must
    repeat with a fixed period up to the end (a partial last repeat is fine), and
    either repeat in full at least once or the first period must end in punctuation,
    so a real "no thanks, no" or "five five five two" is left alone. The token budget
    may cut the last word short: "sourdough, sourdough, sour" -> "sourdough".
    """
    raw = text.split()
    words = [" ".join(_normal_words(w)) for w in raw]
    n = len(words)
    for k in range(1, n):
        cut_short = words[-1] and words[n - 1 - k].startswith(words[-1])
        if all(words[i] == words[i - k] for i in range(k, n - 1)) and (
            words[-1] == words[n - 1 - k] or cut_short
        ):
            if n >= 2 * k or raw[k - 1][-1:] in ".?!,":
                return " ".join(raw[:k]).rstrip(",")
            break
    return text
