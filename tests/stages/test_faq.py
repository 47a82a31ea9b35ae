"""The FAQ stage: a bot's facts answered without the LLM, robust to STT errors."""

from __future__ import annotations

import pytest

from pipeline.bot.config import ConfigError, load_config
from pipeline.runtime.dialogue import BotText, CallerText, Message, Reply
from stages.faq import FaqAnswerer, FaqConfig, FaqEntry, FaqMatcher

HOURS = FaqEntry(
    ("When are you open?", "What are your opening hours?", "What time do you close?"),
    "We are open Monday to Saturday from 7 am to 6 pm, and Sunday from 8 am to 1 pm.",
)
PRICE = FaqEntry(("How much is a loaf of bread?",), "A loaf of bread costs 4 dollars.")
SOURDOUGH = FaqEntry(
    ("Do you have sourdough?", "Do you sell sourdough bread?"),
    "Yes, we bake sourdough every morning.",
)
ADDRESS = FaqEntry(("Where are you?", "What is your address?"), "We are at 12 Mill Street.")
FACTS = FaqConfig(facts=(HOURS, PRICE, SOURDOUGH, ADDRESS))


@pytest.mark.parametrize(
    ("heard", "fact"),
    [
        ("What are your opening hours?", HOURS),  # as written
        ("are you open on saturday", HOURS),  # paraphrase; Saturday is in the answer
        ("how much does a loaf cost", PRICE),  # other words
        ("how much are loafs of bread", PRICE),  # an STT misspelling
        ("do you do sour dough", SOURDOUGH),  # a compound split in two
        ("what's your adress", ADDRESS),  # misspelt
        ("Where is the shop?", ADDRESS),
    ],
)
def test_a_question_matches_its_fact_through_paraphrase_and_stt_errors(heard, fact):
    match = FaqMatcher(FACTS).answer(heard)
    assert match is not None
    assert match.entry == fact


@pytest.mark.parametrize(
    "heard",
    [
        "do you sell cakes",
        "Thank you, goodbye.",
        "Hello, in this mamae, can we",
        "Can I freeze the sourdough bread for a month?",  # about a fact, not asking it
        "",
    ],
)
def test_other_questions_are_left_to_the_llm(heard):
    assert FaqMatcher(FACTS).answer(heard) is None


def test_a_tie_between_two_facts_is_left_to_the_llm():
    twins = FaqConfig(
        facts=(
            FaqEntry(("Do you sell bread?",), "Yes, bread."),
            FaqEntry(("Do you bake bread?",), "Yes, we bake."),
        )
    )
    ranked = FaqMatcher(twins).ranked("bread")
    assert ranked[0].score == ranked[1].score
    assert FaqMatcher(twins).answer("bread") is None  # no margin: the model decides


def heard(text: str) -> CallerText:
    return CallerText(reply=Reply(turn=1, speech_ended_at=0.0), text=text, captured_at=0.0)


async def test_the_stage_answers_a_match_itself():
    stage = FaqAnswerer(FACTS)
    (out,) = stage.process(heard("how much is a loaf"))
    assert isinstance(out, BotText)
    assert out.text == PRICE.answer
    assert (out.reply.text, out.reply.answered_by) == (PRICE.answer, "faq")
    assert stage.statistics() == {"answered": 1, "passed": 0}


def test_the_stage_passes_other_questions_on_with_the_closest_facts():
    stage = FaqAnswerer(FACTS)
    question = heard("Is your sourdough made with rye flour?")
    question.reply.instructions = "You answer the phone."
    (out,) = stage.process(question)
    assert out is question  # the LLM answers it
    assert out.reply.instructions == "You answer the phone."  # the cached prefix is kept
    (note,) = out.reply.notes
    assert SOURDOUGH.answer in note
    assert ADDRESS.answer not in note  # not relevant to this question
    system, last_note, user = out.reply.prompt(question.text)
    assert (system.content, last_note.content, user.content) == (
        "You answer the phone.",
        note,
        question.text,
    )
    assert stage.statistics() == {"answered": 0, "passed": 1}


def test_other_frames_pass_through():
    text = BotText(reply=Reply(turn=1, speech_ended_at=0.0), text="hi", captured_at=0.0)
    assert list(FaqAnswerer(FACTS).process(text)) == [text]


def test_facts_load_from_bot_toml(tmp_path):
    path = tmp_path / "bot.toml"
    path.write_text(
        """
[faq]
min_score = 0.7
[[faq.facts]]
questions = ["When are you open?", "Opening hours?"]
answer = "Seven to six."
[[faq.facts]]
questions = ["Where are you?"]
answer = "  Mill Street.  "
"""
    )
    config = load_config(path)
    assert config.faq.min_score == 0.7
    assert config.faq.facts == (
        FaqEntry(("When are you open?", "Opening hours?"), "Seven to six."),
        FaqEntry(("Where are you?",), "Mill Street."),
    )


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[[faq.facts]]\nanswer = "x"', r"#1: questions must be a non-empty list"),
        ('[[faq.facts]]\nquestions = ["q"]', r"#1: answer must be a non-empty string"),
        ('[[faq.facts]]\nquestions = ["q"]\nanswer = "a"\nmood = 1', r"unknown key\(s\) mood"),
        ('[faq]\nfacts = "x"', r"facts must be \[\[faq.facts\]\] tables"),
    ],
)
def test_a_bad_fact_is_named(tmp_path, toml, message):
    path = tmp_path / "bot.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_the_demo_bot_answers_its_callers_from_its_facts():
    """The shipped demo turns, as written, each match the fact they ask for."""
    from pipeline.demo import DEMO_AUDIO

    config = load_config(str(DEMO_AUDIO / "bot.toml"))
    matcher = FaqMatcher(config.faq)
    answers = {
        "Hello, is this the bakery?": "Rosie's Bakery",
        "What time do you open on Saturday?": "7 am",
        "I would like to order two loaves of bread.": "take your order",
        "Thank you, goodbye.": "Goodbye",
    }
    for question, expected in answers.items():
        match = matcher.answer(question)
        assert match is not None, question
        assert expected in match.entry.answer


async def test_a_fact_asked_twice_in_a_row_is_not_said_word_for_word_again():
    question = heard("how much is a loaf of bread")
    question.reply.history = [Message("user", "bread price?"), Message("assistant", PRICE.answer)]
    (out,) = FaqAnswerer(FACTS).process(question)
    assert out.text == "As I said, a loaf of bread costs 4 dollars."
    question = heard("how much is a loaf of bread")
    question.reply.history = [Message("assistant", HOURS.answer)]
    (out,) = FaqAnswerer(FACTS).process(question)
    assert out.text == PRICE.answer  # said before, but not last: no need to say so
