"""The turn-taking benchmark's harness, kept from rotting: its scoring on scripted calls,
and two items through the real bot on the named fakes (real WebSocket, real endpointing)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from benchmarks import turn_corpus
from benchmarks.speech_corpus import DEFAULT_VOICE
from benchmarks.turn_corpus import HALVES, KINDS, TUNE_VOICES, RenderedItem, TurnItem, corpus
from benchmarks.turn_taking_bench import (
    POLICIES,
    Observation,
    account,
    has_semantic_mode,
    policy_configs,
    run_items,
    summarize,
)
from pipeline.bot import BotConfig, VoiceBot
from stages.turns import TurnConfig
from tests.fakes import FakeEnergyVad, FakeScriptedStt, FakeToneTts, tone_burst

RATE = 8000


def tone_item(name: str, kind: str, parts_s: list[float], pauses_s: list[float]) -> RenderedItem:
    """An item the fake VAD hears: tones for the parts, exact silence around and between."""
    item = TurnItem(
        name,
        kind,  # type: ignore[arg-type]
        tuple(f"part {i}" for i in range(len(parts_s))),
        tuple(pauses_s),
        DEFAULT_VOICE,
    )
    pieces = [np.zeros(int(0.2 * RATE), dtype=np.int16)]
    bounds = []
    position = len(pieces[0])
    for index, seconds in enumerate(parts_s):
        tone = tone_burst(seconds)
        pieces.append(tone)
        bounds.append((position, position + len(tone)))
        position += len(tone)
        if index < len(pauses_s):
            gap = np.zeros(int(pauses_s[index] * RATE), dtype=np.int16)
            pieces.append(gap)
            position += len(gap)
    pieces.append(np.zeros(int(0.2 * RATE), dtype=np.int16))
    return RenderedItem(item, np.concatenate(pieces), tuple(bounds))


COMPLETE = tone_item("complete", "complete", [0.4], [])
CONTINUED = tone_item("continued", "continued", [0.3, 0.3], [0.9])


def test_corpus_has_every_kind_and_enough_items():
    items = corpus()
    assert len(items) >= 40
    assert {item.kind for item in items} == set(KINDS)
    assert len({item.voice for item in items}) >= 4
    pauses = [p for item in items if item.kind == "continued" for p in item.pauses_s]
    assert min(pauses) >= 0.5
    assert max(pauses) <= 1.2
    quick = corpus(quick=True)
    assert [item.kind for item in quick] == [kind for kind in KINDS for _ in range(2)]


def test_the_corpus_is_split_by_voice_and_keeps_fresh_items_apart():
    items = corpus()
    assert {item.half for item in items} == set(HALVES)
    for half in ("tune", "held_out"):
        mine = [item for item in items if item.half == half]
        # afterthoughts came late: one in the tuning voices, the rest fresh
        assert {item.kind for item in mine} >= set(KINDS) - {"afterthought"}, half
        assert {item.voice.engine for item in mine} == {"piper", "espeak"}, half
        assert len(mine) >= len(items) // 4, half
    tuned = {item.voice.label for item in items if item.half == "tune"}
    held_out = {item.voice.label for item in items if item.half == "held_out"}
    assert tuned == set(TUNE_VOICES)
    assert not tuned & held_out
    fresh = [item for item in items if item.half == "fresh"]
    assert {item.kind for item in fresh} >= {"complete", "continued"}
    assert all(not item.tuned for item in fresh)
    assert all(item.joined for item in fresh if item.kind in ("continued", "afterthought"))
    assert len([item for item in fresh if item.kind == "afterthought"]) >= 4


def test_a_joined_item_is_cut_at_its_comma_and_the_gap_stretched_to_the_pause(monkeypatch):
    """One sentence synthesized whole: tone, a 200 ms gap (the comma), tone; the pause
    replaces the gap exactly, and each part keeps its own audio."""
    said = []

    def fake_speech(text, voice, rate):
        said.append(text)
        return np.concatenate([tone_burst(0.6), np.zeros(1600, np.int16), tone_burst(0.4)])

    monkeypatch.setattr(turn_corpus, "speech", fake_speech)
    item = TurnItem("j", "continued", ("My name is", "John Smith."), (0.8,), DEFAULT_VOICE)
    rendered = turn_corpus.render(dataclasses.replace(item, joined=True))
    assert said == ["My name is, John Smith."]
    (first_start, first_end), (second_start, second_end) = rendered.part_bounds
    assert first_end - first_start == pytest.approx(0.6 * RATE, abs=40)
    assert second_start - first_end == pytest.approx(0.8 * RATE, abs=1)
    assert second_end - second_start == pytest.approx(0.4 * RATE, abs=40)
    monkeypatch.setattr(turn_corpus, "speech", lambda text, voice, rate: tone_burst(1.0))
    with pytest.raises(ValueError, match="no gap"):
        turn_corpus.render(dataclasses.replace(item, joined=True))


def test_the_plain_semantic_variant_is_the_policy_without_the_later_cues():
    configs = policy_configs(BotConfig(), list(POLICIES))
    plain, semantic = configs["semantic-plain"].turns, configs["semantic"].turns
    assert plain.mode == semantic.mode == "semantic"
    cues = ("graded_wait", "use_confidence")
    assert [getattr(plain, cue) for cue in cues] == [False, False]
    assert [getattr(semantic, cue) for cue in cues] == [True, True]
    assert plain.unsure_wait_ms == 750.0  # the first build's
    assert plain.turn_model_deadline_ms > semantic.max_wait_ms  # in effect, none


def test_an_item_needs_one_pause_between_each_two_parts():
    with pytest.raises(ValueError, match="one pause"):
        TurnItem("bad", "continued", ("My name is", "John"), (), DEFAULT_VOICE)


def test_an_answer_after_the_end_is_voice_to_voice_and_no_cut_in():
    seen = Observation(10.0, 11.0, media_at=[11.4, 11.9], interrupts=[], replies=["hello"])
    outcome = account(COMPLETE, "hangover", seen)
    assert outcome.answered
    assert not outcome.cut_in
    assert outcome.voice_to_voice_ms == pytest.approx(400.0)
    assert outcome.half == COMPLETE.item.half


def test_each_pause_judgement_is_kept_with_the_item():
    judged = [{"verdict": "incomplete", "probability": 0.1}, {"verdict": "complete"}]
    seen = Observation(10.0, 12.0, [12.4], [], ["my name is john"], ["complete"], judged)
    assert account(CONTINUED, "semantic", seen).judgements == judged


def test_speech_in_the_pause_an_interrupt_and_two_replies_are_a_cut_in():
    seen = Observation(
        10.0, 12.0, media_at=[11.2, 12.5], interrupts=[11.6], replies=["my name is", "john"]
    )
    outcome = account(CONTINUED, "hangover", seen)
    assert outcome.cut_in
    assert outcome.cut_in_reasons == ["spoke_before_end", "interrupt", "split"]
    assert outcome.answered
    assert outcome.voice_to_voice_ms is None


def test_no_audio_after_the_end_is_unanswered():
    outcome = account(CONTINUED, "semantic", Observation(10.0, 12.0, [], [], []))
    assert not outcome.answered
    assert not outcome.cut_in
    assert outcome.voice_to_voice_ms is None


def test_summary_counts_cut_ins_on_continued_items_and_unanswered_ones():
    outcomes = [
        account(COMPLETE, "p", Observation(0.0, 1.0, [1.3], [], ["a"])),
        account(CONTINUED, "p", Observation(0.0, 2.0, [1.5, 2.4], [], ["a", "b"])),
        account(dataclasses.replace(CONTINUED), "p", Observation(0.0, 2.0, [2.6], [], ["ab"])),
        account(COMPLETE, "p", Observation(0.0, 1.0, [], [], [])),
    ]
    summary = summarize(outcomes, "p")
    assert summary["cut_in_continued"] == {"items": 2, "cut_ins": 1, "rate": 0.5}
    assert summary["unanswered"] == 1
    assert summary["voice_to_voice_ms"]["count"] == 1
    assert summary["voice_to_voice_ms"]["p50"] == pytest.approx(300.0)
    assert summary["items_with_split_replies"] == 1


def test_afterthoughts_are_reported_apart_with_how_fast_the_bot_stopped():
    """A whole sentence, a pause, more: answered in the pause (a cut-in, counted apart
    from the continued items'), stopped when the caller went on, the whole answered."""
    afterthought = tone_item("after", "afterthought", [0.3, 0.3], [0.6])
    went_on_at = 12.0 - 0.3  # the second part's 0.3 s ends at the speech end
    cut = Observation(
        10.0, 12.0, [11.5, 12.4], [went_on_at + 0.15], ["part zero", "part zero part one"]
    )
    outcome = account(afterthought, "p", cut)
    assert outcome.cut_in
    assert outcome.stopped_after_ms == pytest.approx(150.0)
    one_reply = Observation(10.0, 12.0, [12.4], [], ["part zero"])  # never heard the rest
    outcomes = [
        outcome,
        account(afterthought, "p", one_reply),
        account(CONTINUED, "p", Observation(0.0, 2.0, [2.6], [], ["ab"])),
    ]
    summary = summarize(outcomes, "p")
    assert summary["cut_in_continued"] == {"items": 1, "cut_ins": 0, "rate": 0.0}
    afterthoughts = summary["afterthoughts"]
    assert (afterthoughts["items"], afterthoughts["cut_ins"]) == (2, 1)
    assert afterthoughts["answered_whole"] == 1
    assert afterthoughts["stopped_after_ms"]["p50"] == pytest.approx(150.0)
    assert summary["cut_in_every_pause_up_to_1s"] == {"items": 3, "cut_ins": 1, "rate": 0.333}


def test_the_semantic_policy_is_refused_only_where_turn_config_lacks_it():
    base = BotConfig()
    if has_semantic_mode():
        configs = policy_configs(base, ["hangover", "semantic"])
        assert configs["hangover"].turns.mode == "hangover"
        assert configs["semantic"].turns.mode == "semantic"
    else:
        with pytest.raises(ValueError, match="mode"):
            policy_configs(base, ["semantic"])
    with pytest.raises(ValueError, match="unknown policy"):
        policy_configs(base, ["telepathy"])


async def test_two_items_through_the_bot_on_fakes_are_scored():
    """A 250 ms hangover answers the first half of the continued item in its 0.9 s pause
    (a cut-in and a second reply); the complete item gets one clean answer."""
    base = BotConfig(turns=TurnConfig(min_silence_ms=250)).with_overrides(
        llm={"backend": "echo"}, conversation={"greeting": ""}
    )
    configs = policy_configs(base, ["hangover"])
    bot = VoiceBot(
        configs["hangover"],
        vad=FakeEnergyVad(),
        stt=FakeScriptedStt([f"line {n}" for n in range(10)]),
        tts=FakeToneTts(),
    )
    outcomes = await run_items(
        bot, configs, [COMPLETE, CONTINUED], reply_timeout=2.0, grace=0.3, warm_up=False
    )
    complete, continued = outcomes
    assert complete.answered
    assert not complete.cut_in
    assert complete.replies == 1
    assert complete.voice_to_voice_ms is not None
    assert complete.voice_to_voice_ms > 0
    assert continued.cut_in
    assert continued.replies == 2
    assert {"spoke_before_end", "split"} <= set(continued.cut_in_reasons)
