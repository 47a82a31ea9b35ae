"""The decision benchmark's replay and scoring, on hand-made evidence (no models)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from benchmarks.speech_corpus import DEFAULT_VOICE
from benchmarks.turn_corpus import RenderedItem, TurnItem
from benchmarks.turn_decision_bench import (
    VARIANTS,
    PauseEvidence,
    gather,
    load_evidence,
    reaction_ms,
    replay,
    summarize,
)
from stages.stt import Transcript
from stages.turns import TurnConfig
from stages.voicing import TerminalPitch

TURNS = TurnConfig()


def pause(item: str, text: str, p: float, *, final: bool, pause_s: float | None = None, **kw):
    fields = {"kind": "continued", "half": "tune", "voice": "v", "stt_confidence": 0.9}
    fields |= {"pitch": None} | kw
    return PauseEvidence(
        item, final=final, pause_s=pause_s, model_probability=p, text=text, **fields
    )


def test_an_inner_pause_judged_complete_or_waited_out_is_a_cut_in():
    evidence = [
        pause("a", "My name is", 0.9, final=False, pause_s=0.8),  # held: no cut-in
        pause("a", "My name is John Smith.", 0.9, final=True),
        pause("b", "What time do you open?", 0.9, final=False, pause_s=0.8),  # complete: cut
        pause("b", "What time do you open? On Sunday?", 0.9, final=True),
    ]
    rows = replay(evidence, TURNS)
    assert [row.get("cut_in") for row in rows] == [False, None, True, None]
    summary = summarize(rows)
    assert summary["cut_ins_pauses_up_to_1s"]["which"] == ["b"]


def test_an_unsure_wait_shorter_than_the_pause_is_a_cut_in_longer_is_not():
    unsure = pause("c", "", 0.45, final=False, pause_s=0.5)  # no words: the model alone
    (row,) = replay([unsure], TURNS)
    assert row["verdict"] == "unsure"
    wait_s = row["commit_ms"] / 1000
    assert TURNS.early_silence_ms < row["commit_ms"] < TURNS.unsure_wait_ms
    # the bot knows the caller went on only min_speech_ms (and a VAD window) later
    heard_after_s = reaction_ms(TURNS) / 1000
    assert heard_after_s > TURNS.min_speech_ms / 1000
    short = dataclasses.replace(unsure, pause_s=wait_s - heard_after_s - 0.02)
    long = dataclasses.replace(unsure, pause_s=wait_s - heard_after_s + 0.02)
    assert replay([short], TURNS)[0]["cut_in"] is False  # heard going on in time
    assert replay([long], TURNS)[0]["cut_in"] is True


def test_end_waits_count_complete_and_short_items_only():
    evidence = [
        pause("q", "What time do you open?", 0.2, final=True, kind="complete"),
        pause("n", "My name is", 0.2, final=True, kind="short"),  # incomplete: max wait
        pause("x", "Hello there.", 0.9, final=True),  # a continued item's end: not counted
    ]
    summary = summarize(replay(evidence, TURNS))
    assert summary["end_wait_ms"]["count"] == 2
    assert summary["end_verdicts"] == {"complete": 1, "incomplete": 1}
    assert summary["end_wait_ms"]["max"] == TURNS.max_wait_ms
    assert summary["slow_ends"] == ["n"]


def test_every_variant_is_a_valid_configuration():
    for name, overrides in VARIANTS.items():
        assert dataclasses.replace(TURNS, **overrides), name


class FakeWordsStt:
    """Says the same words for any audio, and keeps the lengths it was given."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    async def transcribe(self, samples: np.ndarray, sample_rate: int = 8000) -> Transcript:
        self.seconds.append(len(samples) / sample_rate)
        return Transcript(
            text="My name is",
            confidence=0.8,
            avg_logprob=-0.2,
            no_speech_prob=0.0,
            audio_s=len(samples) / sample_rate,
            infer_s=0.0,
        )


class FakeFixedTurnModel:
    async def completion(self, samples: np.ndarray, sample_rate: int) -> float:
        return 0.7


async def test_gather_asks_at_each_pause_with_the_audio_up_to_it():
    item = TurnItem("i", "continued", ("My name is", "John"), (0.8,), DEFAULT_VOICE)
    samples = np.zeros(4 * 8000, dtype=np.int16)
    rendered = RenderedItem(item, samples, ((2400, 8000), (14400, 20000)))
    stt = FakeWordsStt()
    evidence = await gather([rendered], stt, FakeFixedTurnModel(), early_ms=160, preroll_ms=200)
    assert [e.final for e in evidence] == [False, True]
    assert [e.pause_s for e in evidence] == [0.8, None]
    # from the onset less the preroll (0.1 s) to 160 ms into each pause
    assert stt.seconds == [(8000 + 1280 - 800) / 8000, (20000 + 1280 - 800) / 8000]
    assert evidence[0].model_probability == 0.7


def test_saved_evidence_replays_to_the_same_decisions(tmp_path):
    evidence = [
        pause("a", "My name is", 0.9, final=False, pause_s=0.8),
        pause("a", "My name is John.", 0.9, final=True, pitch=TerminalPitch(-3.0, -8.0, 900, -4)),
    ]
    saved = tmp_path / "run.json"
    document = {"results": {"evidence": [dataclasses.asdict(e) for e in evidence]}}
    saved.write_text(json.dumps(document))
    loaded = load_evidence(str(saved))
    assert loaded == evidence
    assert replay(loaded, TURNS) == replay(evidence, TURNS)
