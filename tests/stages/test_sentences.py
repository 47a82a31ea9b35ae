"""Sentence chunking of streamed LLM text: early first clause, no false cuts, clean text."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from stages.sentences import SentenceSplitter, speakable, speakable_pieces


def feed_all(text: str, step: int = 1, **options: int) -> list[tuple[int | None, str]]:
    """Feed ``text`` ``step`` characters at a time; (characters fed so far, piece) per piece."""
    splitter = SentenceSplitter(**options)
    out: list[tuple[int | None, str]] = []
    for i in range(0, len(text), step):
        out += [(i + step, piece) for piece in splitter.feed(text[i : i + step])]
    out += [(None, piece) for piece in splitter.flush()]
    return out


def pieces(text: str, step: int = 1, **options: int) -> list[str]:
    return [piece for _, piece in feed_all(text, step, **options)]


def test_first_clause_comes_out_before_the_reply_ends() -> None:
    reply = "Our store opens at nine in the morning, and it closes at five in the evening."
    out = feed_all(reply)
    first_at, first = out[0]
    assert first == "Our store opens at nine in the morning"
    # Out as soon as the comma arrived (after a word: not "1,000"), long before the end.
    assert first_at == reply.index(",") + 1
    assert [piece for _, piece in out[1:]] == ["and it closes at five in the evening."]


def test_sentences_are_emitted_as_soon_as_the_next_word_starts() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("Hello there.") == []  # "3." or "there." - not known yet
    assert splitter.feed(" How") == ["Hello there."]
    # Nothing but more punctuation continues after "?" or "!": no need to wait.
    assert splitter.feed(" are you?") == ["How are you?"]
    assert splitter.feed("!") == []  # "?!" - what a cut after "?" leaves over is dropped
    assert splitter.feed(" Fine") == []
    assert splitter.flush() == ["Fine"]


def test_a_comma_after_a_number_waits_for_the_next_delta() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("It costs 1") == []
    assert splitter.feed(",") == []  # "1,000" or "1, 2, 3"?
    assert splitter.feed("000 dollars, I think.") == ["It costs 1,000 dollars"]


def test_a_short_leading_clause_is_spoken_at_once() -> None:
    # "Sure," is what the caller hears while the model writes the rest.
    assert pieces("Sure, I can help. Thanks!") == ["Sure", "I can help.", "Thanks!"]
    # A deployment that prefers whole-sentence prosody raises the threshold.
    assert pieces("Sure, I can help. Thanks!", first_clause_words=4) == [
        "Sure, I can help.",
        "Thanks!",
    ]


def test_later_clauses_need_more_words_than_the_first() -> None:
    reply = "One two three four, five six seven, eight nine ten eleven twelve thirteen, end."
    assert pieces(reply) == [
        "One two three four",
        "five six seven, eight nine ten eleven twelve thirteen",
        "end.",
    ]


@pytest.mark.parametrize(
    "sentence",
    [
        "Dr. Smith and Mr. Jones will see you.",
        "It costs 3.50 dollars or 1,000 yen in total.",
        "We open at 10:30 tomorrow and close at 17:45 sharp.",
        "Bring something small like e.g. a pen or a card.",
        "Ask for J. R. Tolkien at the desk.",
        "Room No. 5 is on the left.",
        "Go to example.com to see more.",
    ],
)
def test_abbreviations_decimals_times_and_numbers_are_not_split(sentence: str) -> None:
    for step in (1, 3, len(sentence)):
        assert pieces(sentence, step) == [sentence], f"fed {step} characters at a time"


def test_dotted_abbreviations_end_a_sentence_before_a_capital() -> None:
    assert pieces("Come at 9 a.m. Bring your card. I said no. Then he left.") == [
        "Come at 9 a.m.",
        "Bring your card.",
        "I said no.",
        "Then he left.",
    ]


def test_line_breaks_and_numbered_lists() -> None:
    reply = "We offer:\n1. Delivery to your door\n2) Pick up in store"
    assert pieces(reply) == ["We offer:", "Delivery to your door", "Pick up in store"]


def test_overlong_run_is_cut_at_a_space() -> None:
    reply = " ".join(["word"] * 100)
    out = pieces(reply, max_chars=60)
    assert len(out) > 5
    assert all(len(piece) <= 60 for piece in out)
    assert " ".join(out) == reply


def test_flush_returns_the_rest_and_resets() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("No punctuation at all") == []
    assert splitter.flush() == ["No punctuation at all"]
    assert splitter.flush() == []
    # The next reply starts over: its first clause uses the first-clause threshold
    # (two words would be far too few for a later piece).
    assert splitter.feed("Okay then, here we go again, ") == ["Okay then"]


def test_markdown_and_emoji_are_removed() -> None:
    reply = (
        "## Opening hours 🕘\n**Monday:** 9 to 5 😀\n- *Tuesday*: closed\n"
        "See [our page](https://shop.example/hours) for `details`. 👍"
    )
    assert pieces(reply) == [
        "Opening hours",
        "Monday: 9 to 5",
        "Tuesday: closed",
        "See our page for details.",
    ]


def test_urls_tables_rules_html_and_emoticons_are_removed() -> None:
    reply = (
        "Order at https://rosies.example/order?x=1. Or see www.rosies.example!\n"
        "| Day | Hours |\n|:---|---:|\n| Sun | 8 to 1 |\n***\n"
        "Turn → left<br>at the <b>bakery</b> :) ⏰"
    )
    assert pieces(reply) == [
        "Order at.",
        "Or see!",
        "Day, Hours",
        "Sun, 8 to 1",
        "Turn left at the bakery",
    ]


def test_nothing_speakable_gives_no_piece() -> None:
    assert pieces("🙂 👍\n\n**  **") == []
    assert speakable(" --- ") == ""


def test_speakable_keeps_plain_text() -> None:
    text = "It's 3.5 km away; about 10 minutes, I'd say."
    assert speakable(text) == text


async def test_speakable_pieces_streams_from_an_async_source() -> None:
    async def deltas() -> AsyncIterator[str]:
        for word in ["Hi", "there,", "my", "friend.", "This", "is", "it"]:
            yield word + " "

    assert [piece async for piece in speakable_pieces(deltas())] == [
        "Hi there",
        "my friend.",
        "This is it",
    ]
