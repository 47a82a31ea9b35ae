"""The end-of-turn decision: the audio model's probability and the words, combined."""

import math

import pytest

from stages.end_of_turn import (
    FINISHED_STRONG,
    MODEL_FLOOR,
    UNFINISHED_STRONG,
    EndOfTurnPolicy,
    Verdict,
    word_evidence,
)

POLICY = EndOfTurnPolicy()


@pytest.mark.parametrize(
    "text",
    [
        "I would like to order two loaves of bread for",
        "My name is",
        "I'd like",
        "Can I get the",
        "I want to pick it up on my",
        "So I was thinking, um",
        "Two loaves and",
        "Could you tell me, uh",
    ],
)
def test_an_ending_no_sentence_has_holds_the_turn_even_against_a_sure_model(text):
    assert word_evidence(text).log_odds == UNFINISHED_STRONG
    assert POLICY.judge(0.99, text).verdict is Verdict.INCOMPLETE
    assert POLICY.judge(None, text).verdict is Verdict.INCOMPLETE


@pytest.mark.parametrize(
    "text",
    [
        "What time do you open?",
        "Where are you from?",  # a preposition, but a question mark: finished
        "Yes.",
        "no",
        "Thank you.",
        "Two.",
        "42",
        "Is the shop open on Sunday",
    ],
)
def test_a_question_or_short_answer_overrides_an_unsure_model(text):
    """Pipecat's model called a third of plain questions incomplete: words win."""
    assert word_evidence(text).log_odds > 0
    for unsure in (0.2, 0.35, 0.5):
        assert POLICY.judge(unsure, text).verdict is Verdict.COMPLETE, unsure
    assert POLICY.judge(None, text).verdict is Verdict.COMPLETE


@pytest.mark.parametrize("text", ["Thank you. Goodbye.", "Okay, thanks.", "Thank you very much."])
def test_a_goodbye_after_another_sentence_is_still_a_goodbye(text):
    """Measured: the demo's "Thank you. Goodbye." was taken for a plain sentence and,
    with an unsure model, waited 2 s for max_wait before the bot said goodbye."""
    assert word_evidence(text).reason == "a closing courtesy"
    assert POLICY.judge(0.2, text).verdict is Verdict.COMPLETE


def test_a_question_or_short_answer_wins_even_against_the_surest_model():
    """Measured: Smart Turn said 0.011 for an espeak voice's plain "No."."""
    for text in ("What time do you open?", "No", "Yes."):
        assert POLICY.judge(0.01, text).verdict is Verdict.COMPLETE, text


def test_a_complete_clause_makes_a_sure_model_unsure_not_held_to_max_wait():
    """Measured: Smart Turn said 0.033 for "I would like a loaf of rye bread"."""
    text = "I would like a loaf of right bread"
    assert word_evidence(text).reason == "a complete clause"
    assert POLICY.judge(0.03, text).verdict is Verdict.UNSURE
    assert POLICY.judge(0.5, "My name is John Smith.").verdict is Verdict.COMPLETE


def test_an_object_not_yet_said_holds_a_sure_model_back():
    """Measured: Smart Turn said 0.79 for "I would like to order." before "two loaves"."""
    assert word_evidence("I would like to order.").log_odds < 0
    assert POLICY.judge(0.79, "I would like to order.").verdict is Verdict.INCOMPLETE
    assert POLICY.judge(0.95, "I want to book.").verdict is not Verdict.COMPLETE


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("My number is 555 12", "dictated"),
        ("five five five one", "dictated"),
        ("I was thinking...", "trails off"),
    ],
)
def test_weak_unfinished_cues(text, reason):
    evidence = word_evidence(text)
    assert evidence.log_odds < 0
    assert reason in evidence.reason
    assert POLICY.judge(0.5, text).verdict is Verdict.INCOMPLETE


def test_a_backchannel_is_finished_a_hesitation_is_not():
    assert POLICY.judge(0.5, "Mm-hm.").verdict is Verdict.COMPLETE
    assert POLICY.judge(0.5, "Uh-huh.").verdict is Verdict.COMPLETE
    assert POLICY.judge(0.5, "Uh...").verdict is Verdict.INCOMPLETE


def test_a_question_whose_verb_is_still_to_come_is_not_finished():
    """Measured: Whisper wrote "Can you?" at the pause of "Can you ... uh ... deliver"."""
    assert POLICY.judge(0.6, "Can you?").verdict is Verdict.INCOMPLETE
    assert POLICY.judge(0.6, "What time do you?").verdict is Verdict.INCOMPLETE
    assert POLICY.judge(0.3, "How are you?").verdict is Verdict.COMPLETE


@pytest.mark.parametrize("text", ["Can I get?", "Could I?", "Can you tell me?"])
def test_measured_cut_ins_a_question_mark_does_not_excuse(text):
    """Whisper's "?" on these fragments ended the turn early in the turn-taking bench."""
    assert POLICY.judge(0.93, text).verdict is not Verdict.COMPLETE


def test_a_clause_after_a_discourse_marker_still_counts():
    """Measured: Smart Turn 0.21 for "So I was thinking, maybe the carrot cake."."""
    text = "So I was thinking, maybe the carrot cake."
    assert word_evidence(text).reason == "a complete clause"
    assert POLICY.judge(0.21, text).verdict is Verdict.UNSURE


def test_a_full_form_can_end_an_answer_a_contraction_cannot():
    assert POLICY.judge(0.5, "Yes, I am.").verdict is Verdict.COMPLETE
    assert POLICY.judge(0.5, "No, not today.").verdict is Verdict.COMPLETE
    assert POLICY.judge(0.9, "Yes, I'm").verdict is Verdict.INCOMPLETE


def test_a_whole_phone_number_is_not_held_open():
    assert word_evidence("My number is 555 123 4567.").log_odds >= 0


def test_without_words_the_model_decides_with_its_thresholds():
    assert POLICY.judge(0.9, None).verdict is Verdict.COMPLETE
    assert POLICY.judge(0.45, "").verdict is Verdict.UNSURE
    assert POLICY.judge(0.1, None).verdict is Verdict.INCOMPLETE
    assert POLICY.judge(None, None).verdict is Verdict.UNSURE  # nothing known: wait a bit


def test_combination_is_a_sum_of_log_odds():
    judgement = POLICY.judge(0.2, "What time is it?")
    expected = 1 / (1 + math.exp(-(math.log(0.2 / 0.8) + FINISHED_STRONG)))
    assert judgement.probability == pytest.approx(expected, abs=1e-4)
    clipped = POLICY.judge(0.0, None).probability
    assert clipped == pytest.approx(MODEL_FLOOR, abs=1e-4)


def test_use_words_false_is_the_model_alone():
    alone = EndOfTurnPolicy(use_words=False)
    assert alone.judge(0.2, "What time do you open?").verdict is Verdict.INCOMPLETE
    assert alone.judge(0.9, "My name is").verdict is Verdict.COMPLETE


def test_plain_statement_only_tips_the_model():
    # Whisper closes fragments with a period too: a period alone decides nothing
    assert POLICY.judge(None, "Two loaves of bread.").verdict is Verdict.UNSURE
    assert POLICY.judge(0.55, "Two loaves of bread.").verdict is Verdict.COMPLETE


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="not in"):
        POLICY.judge(1.5, "yes")
    with pytest.raises(ValueError, match="incomplete_threshold"):
        EndOfTurnPolicy(complete_threshold=0.2, incomplete_threshold=0.5)
