"""The end-of-turn decision: the audio model's probability and the words, combined."""

import json
import math

import pytest

from stages.end_of_turn import (
    FINISHED_STRONG,
    HEARD_POORLY,
    HEARD_WELL,
    MODEL_FLOOR,
    PITCH_FALL,
    PITCH_HELD,
    PITCH_MIN_VOICED_MS,
    UNFINISHED_STRONG,
    UNHEARD_LONG_TURN_MS,
    UNHEARD_SHORT_TURN_MS,
    EndOfTurnPolicy,
    Verdict,
    confidence_weight,
    pitch_evidence,
    word_evidence,
)
from stages.turns import TurnConfig
from stages.voicing import TerminalPitch

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
    assert word_evidence(text).reason in ("a closing courtesy", "a farewell")
    assert POLICY.judge(0.2, text).verdict is Verdict.COMPLETE


def test_a_farewell_ends_the_turn_against_the_surest_model():
    """Measured (`voicegraph bench e2e`): the demo's "Thank you. Goodbye." was judged
    unsure (Smart Turn low, a courtesy +2) and waited 660 ms; a farewell is final."""
    assert word_evidence("Thank you. Goodbye.").reason == "a farewell"
    assert POLICY.judge(0.01, "Thank you. Goodbye.").verdict is Verdict.COMPLETE
    assert POLICY.judge(0.01, "Okay, bye.").verdict is Verdict.COMPLETE


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


@pytest.mark.parametrize("text", ["Sorry.", "Sorry", "Excuse me.", "Um, sorry, wait", "Actually"])
def test_a_preface_alone_waits_for_the_point(text):
    """Measured in the suite: a caller barging in with "Sorry, [pause] I only wanted to
    know about Sunday." was answered in the comma's pause ("Sorry." judged complete by
    the voice), then interrupted again when the caller went on."""
    assert word_evidence(text).reason == "a preface: the point is still to come"
    assert POLICY.judge(0.9, text).verdict is not Verdict.COMPLETE


@pytest.mark.parametrize("text", ["Sorry?", "Okay.", "No, sorry.", "Oh, okay."])
def test_a_preface_word_in_a_whole_answer_is_not_one(text):
    assert word_evidence(text).log_odds >= 0  # "Sorry?" asks to hear it again


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


def test_a_name_still_to_be_given_holds_the_turn():
    """Measured: "Please put it under the name." was answered before "Maria Garcia"."""
    for text in ("Please put it under the name.", "The booking is in the name of"):
        assert word_evidence(text).log_odds == UNFINISHED_STRONG, text
        assert POLICY.judge(0.9, text).verdict is Verdict.INCOMPLETE
    assert POLICY.judge(0.3, "What is the name?").verdict is Verdict.COMPLETE


def test_poorly_heard_words_cannot_end_the_turn_as_a_sentence():
    """Measured: Whisper heard "The address is" as "The other happened." (a sentence),
    with low confidence; the turn ended in the caller's pause."""
    text = "The other happened."
    heard_well = POLICY.judge(0.55, text, stt_confidence=0.9)
    heard_poorly = POLICY.judge(0.55, text, stt_confidence=0.3)
    assert heard_well.verdict is Verdict.COMPLETE
    assert heard_poorly.verdict is Verdict.UNSURE
    assert heard_poorly.confidence_weight == 0.0
    assert heard_poorly.probability == pytest.approx(0.55, abs=1e-4)  # the model alone
    ignoring = EndOfTurnPolicy(use_confidence=False).judge(0.55, text, stt_confidence=0.3)
    assert ignoring.verdict is Verdict.COMPLETE


def test_the_confidence_of_a_word_or_two_is_not_held_against_it():
    """Measured: Whisper gave "Sure." 0.39 and "No" 0.47, both heard right."""
    assert confidence_weight(0.3, words=1) == 1.0
    assert POLICY.judge(0.06, "Sure.", stt_confidence=0.39).verdict is Verdict.COMPLETE
    assert POLICY.judge(0.5, "Two loaves please.", stt_confidence=0.3).confidence_weight == 0.0


def test_confidence_weighs_only_a_finished_reading():
    assert confidence_weight(None) == 1.0
    assert confidence_weight(HEARD_WELL) == 1.0
    assert confidence_weight(HEARD_POORLY) == 0.0
    assert 0.0 < confidence_weight((HEARD_WELL + HEARD_POORLY) / 2) < 1.0
    # an unfinished reading keeps its weight however poorly heard: waiting is bounded
    assert POLICY.judge(0.9, "My name is", stt_confidence=0.1).verdict is Verdict.INCOMPLETE
    with pytest.raises(ValueError, match="confidence"):
        POLICY.judge(0.5, "yes", stt_confidence=1.5)


FALL = TerminalPitch(end_st=-3.5, slope_st_per_s=-9.0, voiced_ms=900)
HELD = TerminalPitch(end_st=0.5, slope_st_per_s=1.0, voiced_ms=900)
RISE = TerminalPitch(end_st=3.0, slope_st_per_s=12.0, voiced_ms=900)


def test_a_final_fall_says_finished_a_held_level_says_more_to_come():
    assert pitch_evidence(FALL, "I need a new booking.") == PITCH_FALL > 0
    assert pitch_evidence(HELD, "We are having a party on Saturday") == PITCH_HELD < 0
    assert pitch_evidence(RISE, "Is it open on Sunday?") == 0.0  # a question's rise is its end
    assert pitch_evidence(None, "anything") == 0.0
    brief = TerminalPitch(end_st=-4.0, slope_st_per_s=-9.0, voiced_ms=PITCH_MIN_VOICED_MS - 10)
    assert pitch_evidence(brief, "No.") == 0.0  # too little voice to tell


def test_pitch_tips_an_unsure_model_both_ways_where_enabled():
    text = "Two loaves of bread."  # a period alone decides nothing
    tuned_in = EndOfTurnPolicy(use_pitch=True)
    assert tuned_in.judge(0.45, text).verdict is Verdict.UNSURE
    assert tuned_in.judge(0.45, text, pitch=FALL).verdict is Verdict.COMPLETE
    assert tuned_in.judge(0.3, text, pitch=HELD).verdict is Verdict.INCOMPLETE
    # off by default: on synthetic voices it did not separate held phrases from ends
    assert POLICY.judge(0.45, text, pitch=FALL).verdict is Verdict.UNSURE


def test_words_not_made_out_wait_however_sure_the_voice():
    """Measured: "The address is" heard as "The other happened." (0.27) and "Is it
    possible to" as "in its personal" (0.17), with Smart Turn at 0.96 and 0.74: both
    answered in the caller's pause."""
    for text, confidence in (("The other happened.", 0.27), ("in its personal", 0.17)):
        judgement = POLICY.judge(0.96, text, stt_confidence=confidence)
        assert judgement.verdict is Verdict.UNSURE, text
        assert judgement.wait_ms == POLICY.unsure_wait_ms
        assert POLICY.judge(0.96, text, stt_confidence=0.8).verdict is Verdict.COMPLETE
    # a word or two: its confidence is noise, so a sure model still ends the turn
    assert POLICY.judge(0.96, "Bree.", stt_confidence=0.24).verdict is Verdict.COMPLETE


def test_words_not_made_out_do_not_leave_the_turn_to_the_model_either_way():
    """Measured (a fresh item): "Which documents do I need to bring?" heard as "which not
    human to my needs are ring" (0.36), Smart Turn 0.14: held to max_wait (2 s)."""
    text = "which not human to my needs are ring"
    judgement = POLICY.judge(0.14, text, stt_confidence=0.36)  # just over HEARD_POORLY
    assert judgement.verdict is Verdict.UNSURE
    assert judgement.wait_ms == POLICY.unsure_wait_ms
    # but an unfinished ending stays unfinished however poorly heard
    assert POLICY.judge(0.14, "My name is", stt_confidence=0.1).verdict is Verdict.INCOMPLETE


def test_words_not_made_out_wait_by_the_length_of_the_turn():
    """Measured: the unheard fragments before a caller's pause had 1.1-1.5 s of turn
    audio ("The other happened." for "The address is"); the unheard finished questions
    2.5-2.7 s. A short one waits the whole unsure wait, a long one the hangover's."""
    text = "is a sharp open on public hardly name"
    policy = EndOfTurnPolicy(unsure_wait_ms=1200.0, hangover_ms=600.0)

    def wait(turn_ms: float | None) -> float | None:
        judgement = policy.judge(0.96, text, stt_confidence=0.3, turn_ms=turn_ms)
        assert judgement.verdict is Verdict.UNSURE
        assert judgement.turn_ms == turn_ms
        return judgement.wait_ms

    assert wait(None) == wait(1100.0) == wait(UNHEARD_SHORT_TURN_MS) == 1200.0
    assert wait(UNHEARD_LONG_TURN_MS) == wait(2600.0) == wait(20_000.0) == 600.0
    middle = (UNHEARD_SHORT_TURN_MS + UNHEARD_LONG_TURN_MS) / 2
    assert wait(middle) == pytest.approx(900.0)
    assert wait(middle) > wait(middle + 100.0)
    # a hangover longer than the unsure wait never lengthens it
    longer = EndOfTurnPolicy(unsure_wait_ms=700.0, hangover_ms=900.0)
    assert longer.judge(0.9, text, stt_confidence=0.3, turn_ms=3000.0).wait_ms == 700.0
    # heard words are judged as before, however long the turn
    heard = policy.judge(0.96, "What time do you open?", stt_confidence=0.9, turn_ms=3000.0)
    assert heard.verdict is Verdict.COMPLETE


def test_the_policy_waits_the_configured_hangover_for_long_unheard_turns():
    turns = TurnConfig(min_silence_ms=450.0)
    assert EndOfTurnPolicy.of(turns).hangover_ms == 450.0
    with pytest.raises(ValueError, match="hangover_ms"):
        EndOfTurnPolicy(hangover_ms=-1.0)


@pytest.mark.parametrize(
    "text",
    [
        "Can you send the invoice to?",  # a yes/no question cannot strand a preposition
        "Could you check whether?",  # nor end with a conjunction, "?" or not
        "Is it okay if?",
    ],
)
def test_a_question_mark_does_not_finish_a_dangling_preposition_or_conjunction(text):
    assert word_evidence(text).log_odds == UNFINISHED_STRONG
    assert POLICY.judge(0.95, text).verdict is Verdict.INCOMPLETE


def test_a_wh_question_may_end_with_its_preposition():
    for text in ("Where are you from?", "Who is it for?", "What is that for?"):
        assert POLICY.judge(0.3, text).verdict is Verdict.COMPLETE, text


def test_a_number_word_after_any_word_is_not_dictation():
    """Measured: "I lost my card and need a new one." held open as a card number."""
    assert word_evidence("I lost my card and need a new one.").log_odds > 0
    assert "dictated" in word_evidence("My card number is 4 4").reason
    assert "dictated" in word_evidence("five five five one").reason


@pytest.mark.parametrize("text", ["Please cancel my order.", "Send me the bill.", "Book it now."])
def test_a_request_without_a_subject_is_a_clause(text):
    """Measured: "Please cancel my order." with Smart Turn at 0.23 waited 2 s."""
    assert word_evidence(text).reason == "a request"
    assert POLICY.judge(0.23, text).verdict is not Verdict.INCOMPLETE
    assert word_evidence("Please send the").log_odds < 0  # still unfinished


def test_the_unsure_wait_grows_with_the_doubt():
    graded = EndOfTurnPolicy(early_ms=160.0, unsure_wait_ms=760.0)
    nearly_sure = graded.judge(0.58, None)
    very_unsure = graded.judge(0.32, None)
    assert nearly_sure.verdict is very_unsure.verdict is Verdict.UNSURE
    assert 160.0 <= nearly_sure.wait_ms < 220.0
    assert 700.0 < very_unsure.wait_ms <= 760.0
    fixed = EndOfTurnPolicy(graded_wait=False, unsure_wait_ms=760.0)
    assert fixed.judge(0.58, None).wait_ms == 760.0
    assert graded.judge(0.9, "Yes.").wait_ms == 0.0
    assert graded.judge(0.1, "My name is").wait_ms is None


def test_a_judgement_is_kept_as_plain_data():
    judgement = POLICY.judge(0.4, "The other happened.", stt_confidence=0.3, pitch=FALL)
    kept = json.loads(json.dumps(judgement.as_dict()))
    assert kept["verdict"] == judgement.verdict.value
    assert kept["stt_confidence"] == 0.3
    assert kept["pitch_end_st"] == FALL.end_st
    assert kept["wait_ms"] == judgement.wait_ms
