"""``voicegraph bench``: a user's pipeline through --pipeline, compare, a short capacity ramp.

The pipeline under test is the parrot bot with a stage of the test's own inserted
after the μ-law decoder (no speech models), so the whole tool runs in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import soundfile

from pipeline import PcmAudio, Stage, insert_after
from pipeline.bench.compare import compare_documents
from pipeline.bench.report import describe_run, write_json
from pipeline.bench.stage_latency import critical_path
from pipeline.bot.config import BotConfig
from pipeline.bot.parrot import ParrotBot
from pipeline.cli.main import main
from pipeline.server import Bot, with_stages
from stages.mulaw import MulawDecoder

from .conftest import speechlike

STAGE_FIELDS = {"count", "p50_ms", "p95_ms", "p99_ms", "max_ms"}


class FrameCounter(Stage[PcmAudio, PcmAudio]):
    """A user-defined pass-through stage."""

    def __init__(self) -> None:
        super().__init__()
        self.frames = 0

    def process(self, item: PcmAudio) -> Iterable[PcmAudio]:
        self.frames += 1
        yield item


def tiny_pipeline(config: BotConfig) -> Bot:
    """The factory named on the command line: the parrot with the counter inserted."""
    parrot = ParrotBot(jitter=config.jitter)
    return with_stages(parrot, lambda stages: insert_after(stages, MulawDecoder, FrameCounter()))


def caller_files(folder: Path) -> list[Path]:
    paths = []
    for index, seconds in enumerate((0.6, 0.8)):
        quiet = np.zeros(1600, dtype=np.int16)
        samples = np.concatenate([quiet, speechlike(seconds, seed=index), quiet])
        path = folder / f"turn{index}.wav"
        soundfile.write(str(path), samples, 8000, subtype="PCM_16")
        paths.append(path)
    return paths


def test_stages_benchmarks_a_user_pipeline(tmp_path, capsys):
    out, png = tmp_path / "stages.json", tmp_path / "stages.png"
    argv = ["bench", "stages", "--pipeline", f"{__name__}:tiny_pipeline"]
    argv += ["--audio", *map(str, caller_files(tmp_path)), "--turns", "3", "--no-warm-up"]
    argv += ["--pause", "0.2", "--json", str(out), "--plot", str(png)]
    assert main(argv) == 0
    document = json.loads(out.read_text())
    results = document["results"]
    stages = results["stages"]
    expected = ["rtp_depacketizer", "jitter", "mulaw_decoder", "frame_counter", "energy_segmenter"]
    assert list(stages) == expected
    for row in stages.values():
        assert set(row) == STAGE_FIELDS
        assert row["count"] == 3  # one utterance per turn left the chain
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
    # the energy gate holds each utterance for its end-of-turn hangover
    assert stages["energy_segmenter"]["p50_ms"] > 100
    assert [turn["source"] for turn in results["turns"]] == ["turn0.wav", "turn1.wav", "turn0.wav"]
    assert all(turn["voice_to_voice_ms"] > 0 for turn in results["turns"])
    assert set(results["turns"][0]["chain_ms"]) == set(expected)
    assert results["voice_to_voice_ms"]["count"] == 3
    assert document["machine"]["cores"] >= 1
    assert document["machine"]["cpu_model"]
    assert document["parameters"]["pipeline"].endswith(":tiny_pipeline")
    assert document["parameters"]["turns"] == 3
    assert png.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "frame_counter" in printed
    assert "voice-to-voice at the caller" in printed


def not_a_bot(config: BotConfig) -> list[Stage]:
    return [FrameCounter()]


def test_a_factory_that_returns_no_bot_is_refused(capsys):
    argv = ["bench", "stages", "--pipeline", f"{__name__}:not_a_bot"]
    assert main(argv) == 2
    assert "not a bot" in capsys.readouterr().err


def test_critical_path_counts_overlapping_steps_once():
    timings = {"endpointing": 600.0, "stt": 450.0, "llm_first_token": 700.0, "first_send": 900.0}
    adds = critical_path(timings)
    assert adds == {"endpointing": 600.0, "stt": 0.0, "llm_first_token": 100.0, "first_send": 200.0}
    assert sum(adds.values()) == timings["first_send"]


def test_compare_gives_ratios_and_what_differs(tmp_path, capsys):
    a = describe_run(
        "stages",
        {"summary": {"voice_to_voice_p50_ms": 800.0, "turns": 20}},
        parameters={"turns": 20, "llm": "local"},
    )
    b = describe_run(
        "stages",
        {"summary": {"voice_to_voice_p50_ms": 600.0, "turns": 20, "extra": 1.0}},
        parameters={"turns": 20, "llm": "echo"},
    )
    comparison = compare_documents(a, b)
    ratios = {row["metric"]: row["ratio"] for row in comparison["rows"]}
    assert ratios == {"voice_to_voice_p50_ms": pytest.approx(0.75), "turns": 1.0}
    assert comparison["only_in"] == {"a": [], "b": ["extra"]}
    assert comparison["differences"]["parameters.llm"] == {"a": "local", "b": "echo"}
    paths = [write_json(tmp_path / name, doc) for name, doc in (("a.json", a), ("b.json", b))]
    assert main(["bench", "compare", *map(str, paths)]) == 0
    printed = capsys.readouterr().out
    assert "0.75×" in printed
    assert "parameters.llm" in printed


def test_capacity_ramps_parrot_calls(tmp_path):
    out = tmp_path / "capacity.json"
    argv = ["bench", "capacity", "--bot", "parrot", "--start", "2", "--step", "2"]
    argv += ["--max-calls", "4", "--seconds", "4", "--ramp", "0.5", "--json", str(out)]
    assert main(argv) == 0
    results = json.loads(out.read_text())["results"]
    rows = results["rows"]
    assert [row["calls_placed"] for row in rows] == [2, 4]
    for row in rows:
        assert row["calls_answered"] == row["calls_placed"]
        assert row["calls_ended_logged"] == row["calls_placed"]
        assert row["server_cpu_ms_per_call_second"] > 0
        assert row["packets_dropped"] == 0
        assert row["turns_answered"] >= 1
    assert results["summary"]["max_calls_meeting_target"] in (None, 2, 4)
