"""The examples in examples/ run as shipped, on the real models."""

from __future__ import annotations

import re

import trio

from examples.custom_stt import transcribe_once
from examples.faq_answerer import FAQ, call_the_bakery, faq_config
from stages import FaqMatcher


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def test_faq_matching_takes_paraphrases_and_refuses_other_questions():
    faq = FaqMatcher(faq_config(FAQ))

    def answer_for(text: str) -> str | None:
        match = faq.answer(text)
        return None if match is None else match.entry.answer

    assert answer_for("when are you open today") == FAQ["When are you open?"]
    assert answer_for("how much does a loaf of bread cost") == FAQ["How much is a loaf of bread?"]
    assert answer_for("do you sell wedding cakes") is None


async def test_faq_answerer_example_answers_a_real_call():
    with trio.fail_after(120):
        (first, second) = await call_the_bakery()
    _, heard, answer = first
    assert "open" in words(heard)
    assert answer == FAQ["When are you open?"]  # from the FAQ, word for word
    assert second[2]  # the LLM answered the other question
    assert second[2] not in FAQ.values()


async def test_custom_stt_example_transcribes_with_its_own_backend():
    with trio.fail_after(120):
        text = await transcribe_once("Could I order two loaves of bread?")
    assert {"order", "loaves", "bread"} <= set(words(text))
