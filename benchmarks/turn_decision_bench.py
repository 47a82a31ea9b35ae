"""End-of-turn decisions without the clock: what each policy variant decides at every pause.

    python -m benchmarks.turn_decision_bench [--quick] [--evidence SAVED.json]

The live benchmark (:mod:`benchmarks.turn_taking_bench`) times the whole bot; on a
shared, busy machine its latencies, and even some decisions (a slow transcript lets
the caller go on before the judgement), move with the load. This one gathers, once,
the evidence the bot has at each pause of each item of :mod:`benchmarks.turn_corpus`
(audio from the onset, less nothing, to ``early_silence_ms`` into the silence, through
μ-law): the Smart Turn probability, Whisper's words and confidence (the bot's own STT
service), the terminal pitch (:func:`stages.voicing.terminal_pitch`). Then it replays
every policy variant on that same evidence: decisions only, no timing noise.

- At a pause inside an utterance (the caller goes on after ``pause_s``): a **cut-in**
  when the verdict is complete, or unsure with a wait shorter than the pause plus the
  bot's reaction (``min_speech_ms`` and a 32 ms VAD window: until then it cannot know
  the caller went on).
- At the utterance's end: the **end wait**, the silence the policy waits before it
  commits (complete: ``early_silence_ms``; unsure: its wait; incomplete:
  ``max_wait_ms``); processing time comes on top in the live bot.

Reported per variant, for all items and per half (``tune``: the voices the constants
were set on; ``held_out``). JSON to ``benchmarks/results/turn_decisions.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import trio

from benchmarks.report import RESULTS_DIR
from benchmarks.speech_corpus import telephony
from benchmarks.turn_corpus import HALVES, RenderedItem, corpus, render
from pipeline.bench import describe_run, distribution, progress, table, write_json
from pipeline.bot import load_config
from stages.end_of_turn import EndOfTurnPolicy, TurnCompletionModel, Verdict
from stages.smart_turn import SmartTurnService
from stages.stt import SpeechToText
from stages.stt_remote import create_stt
from stages.turns import TurnConfig
from stages.voicing import TerminalPitch, terminal_pitch

__all__ = ["VARIANTS", "PauseEvidence", "gather", "replay", "summarize"]

RATE = 8000
VAD_WINDOW_MS = 32.0
# name -> TurnConfig overrides; "semantic" is the default configuration
VARIANTS: dict[str, dict[str, Any]] = {
    "semantic": {},
    # the policy before the cues below were added: fixed 750 ms unsure wait, no
    # confidence, no pitch
    "plain": {
        "graded_wait": False,
        "use_confidence": False,
        "use_pitch": False,
        "unsure_wait_ms": 750.0,
    },
    "no_graded_wait": {"graded_wait": False},
    "no_confidence": {"use_confidence": False},
    "with_pitch": {"use_pitch": True},
    "words_only": {"turn_model": "none"},
    "model_only": {"use_words": False, "use_pitch": False},
}


@dataclasses.dataclass(frozen=True, slots=True)
class PauseEvidence:
    """What the bot knows at one pause of one item."""

    item: str
    kind: str
    half: str
    voice: str
    final: bool  # the utterance's end (else the caller goes on after pause_s)
    pause_s: float | None
    model_probability: float
    text: str
    stt_confidence: float | None
    pitch: TerminalPitch | None
    turn_ms: float | None = None  # the audio judged (evidence saved before it: None)


def _pause_ends(rendered: RenderedItem, early_ms: float) -> list[tuple[int, bool, float | None]]:
    """(sample the judgement sees audio up to, final?, the pause's length) per pause."""
    early = round(early_ms * RATE / 1000)
    pauses = rendered.item.pauses_s
    ends = []
    for index, (_, end) in enumerate(rendered.part_bounds):
        final = index == len(rendered.part_bounds) - 1
        ends.append((end + early, final, None if final else pauses[index]))
    return ends


async def gather(
    items: Sequence[RenderedItem],
    stt: SpeechToText,
    model: TurnCompletionModel,
    *,
    early_ms: float,
    preroll_ms: float,
) -> list[PauseEvidence]:
    """Every pause's evidence, from the real STT and turn model (served by the caller)."""
    evidence = []
    preroll = round(preroll_ms * RATE / 1000)
    for number, rendered in enumerate(items, start=1):
        line = telephony(rendered.samples)
        onset = max(0, rendered.part_bounds[0][0] - preroll)
        for end, final, pause in _pause_ends(rendered, early_ms):
            audio = line[onset:end]
            transcript = await stt.transcribe(audio, RATE)
            probability = await model.completion(audio, RATE)
            item = rendered.item
            evidence.append(
                PauseEvidence(
                    item=item.name,
                    kind=item.kind,
                    half=item.half,
                    voice=item.voice.label,
                    final=final,
                    pause_s=pause,
                    model_probability=round(float(probability), 4),
                    text=transcript.text.strip(),
                    stt_confidence=round(transcript.confidence, 3) if transcript.text else None,
                    pitch=terminal_pitch(audio, RATE),
                    turn_ms=len(audio) * 1000 / RATE,
                )
            )
        progress(
            f"  [{number}/{len(items)}] {rendered.item.name}: "
            + " | ".join(
                f"{e.text!r} p={e.model_probability:.2f} c={e.stt_confidence}"
                for e in evidence[-len(rendered.part_bounds) :]
            )
        )
    return evidence


def reaction_ms(turns: TurnConfig) -> float:
    """How long after the caller goes on the bot can know it: ``min_speech_ms`` of
    speech, on the VAD's 32 ms windows. A commit in that gap is already a cut-in."""
    return turns.min_speech_ms + VAD_WINDOW_MS


def replay(evidence: Sequence[PauseEvidence], turns: TurnConfig) -> list[dict[str, Any]]:
    """Each pause judged by ``turns``' policy: verdict, wait, cut-in (inner pauses) or
    end wait (final pauses)."""
    policy = EndOfTurnPolicy.of(turns)
    rows = []
    for pause in evidence:
        model = None if turns.turn_model == "none" else pause.model_probability
        judgement = policy.judge(
            model,
            pause.text,
            stt_confidence=pause.stt_confidence,
            pitch=pause.pitch,
            turn_ms=pause.turn_ms,
        )
        early = turns.early_silence_ms or 0.0
        if judgement.verdict is Verdict.COMPLETE:
            commit_ms = early
        elif judgement.verdict is Verdict.UNSURE:
            commit_ms = max(early, judgement.wait_ms or 0.0)
        else:
            commit_ms = turns.max_wait_ms
        row = {
            "item": pause.item,
            "kind": pause.kind,
            "half": pause.half,
            "final": pause.final,
            "pause_s": pause.pause_s,
            "verdict": judgement.verdict.value,
            "probability": judgement.probability,
            "commit_ms": commit_ms,
        }
        if not pause.final:
            assert pause.pause_s is not None
            row["cut_in"] = commit_ms < pause.pause_s * 1000 + reaction_ms(turns)
        rows.append(row)
    return rows


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Cut-ins on continued and hesitation items (any inner pause), apart from them on
    afterthoughts (a whole sentence, then more), end waits on complete and short ones."""
    cut_at: dict[str, dict[str, bool]] = {"continued": {}, "afterthought": {}}
    for row in rows:
        if not row["final"] and (row["pause_s"] or 0) <= 1.0:
            group = cut_at["afterthought" if row["kind"] == "afterthought" else "continued"]
            group[row["item"]] = group.get(row["item"], False) or row["cut_in"]
    ends = [row for row in rows if row["final"] and row["kind"] in ("complete", "short")]

    def rate(items: dict[str, bool]) -> dict[str, Any]:
        cut = sum(items.values())
        return {
            "items": len(items),
            "cut_ins": cut,
            "rate": round(cut / len(items), 3) if items else None,
            "which": sorted(item for item, was_cut in items.items() if was_cut),
        }

    return {
        "cut_ins_pauses_up_to_1s": rate(cut_at["continued"]),
        "afterthought_cut_ins": rate(cut_at["afterthought"]),
        "end_wait_ms": distribution(row["commit_ms"] for row in ends),
        "end_verdicts": dict(Counter(row["verdict"] for row in ends)),
        "slow_ends": sorted(row["item"] for row in ends if row["verdict"] != "complete"),
    }


def report(evidence: Sequence[PauseEvidence], base: TurnConfig) -> dict[str, Any]:
    results: dict[str, Any] = {"variants": {}, "by_half": {half: {} for half in HALVES}}
    for name, overrides in VARIANTS.items():
        rows = replay(evidence, dataclasses.replace(base, **overrides))
        results["variants"][name] = summarize(rows)
        for half in HALVES:
            results["by_half"][half][name] = summarize([r for r in rows if r["half"] == half])
    return results


def print_table(results: dict[str, Any]) -> None:
    lines = []
    groups = [("all", results["variants"]), *results["by_half"].items()]
    for group, variants in groups:
        for name, row in variants.items():
            cut = row["cut_ins_pauses_up_to_1s"]
            after = row["afterthought_cut_ins"]
            wait = row["end_wait_ms"]
            lines.append(
                [group, name, f"{cut['cut_ins']}/{cut['items']}"]
                + [f"{after['cut_ins']}/{after['items']}", wait["p50"], wait["p95"]]
                + [row["end_verdicts"].get(v.value, 0) for v in Verdict]
            )
    header = ["items", "variant", "cut-ins", "afterthought", "end wait p50", "p95"]
    print(table([*header, *(f"end {v.value}" for v in Verdict)], lines))


def load_evidence(path: str) -> list[PauseEvidence]:
    """The evidence a previous run saved (its JSON's ``results.evidence``)."""
    with open(path, encoding="utf-8") as file:
        saved = json.load(file)["results"]["evidence"]
    evidence = []
    for row in saved:
        pitch = TerminalPitch(**row["pitch"]) if row.get("pitch") else None
        evidence.append(PauseEvidence(**{**row, "pitch": pitch}))
    return evidence


async def main(args: argparse.Namespace) -> dict[str, Any]:
    config = load_config(args.config)
    turns = config.turns
    if args.evidence:
        evidence = load_evidence(args.evidence)
        progress(f"replaying {len(evidence)} pauses from {args.evidence} (no models)")
        results = report(evidence, turns)
        results["evidence"] = [dataclasses.asdict(pause) for pause in evidence]
        return results
    items = [render(item) for item in corpus(quick=args.quick)]
    stt = create_stt(config.stt)
    model = SmartTurnService(turns.turn_model or None)
    progress(f"gathering the evidence at every pause of {len(items)} items")
    async with stt.serving(), model.serving():
        evidence = await gather(
            items,
            stt,
            model,
            early_ms=turns.early_silence_ms or 0.0,
            preroll_ms=turns.preroll_ms,
        )
    results = report(evidence, turns)
    results["evidence"] = [dataclasses.asdict(pause) for pause in evidence]
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two items of each kind")
    parser.add_argument("--config", default=None, help="a bot.toml ([turns], [stt])")
    parser.add_argument(
        "--evidence", default=None, help="replay a saved run's evidence (JSON) instead"
    )
    arguments = parser.parse_args()
    results = trio.run(main, arguments)
    name = "turn_decisions_quick" if arguments.quick else "turn_decisions"
    parameters = {
        "variants": VARIANTS,
        "quick": arguments.quick,
        "evidence_from": arguments.evidence,
        "reaction_ms": reaction_ms(load_config(arguments.config).turns),
    }
    path = write_json(
        RESULTS_DIR / f"{name}.json", describe_run(name, results, parameters=parameters)
    )
    print_table(results)
    progress(f"wrote {path}")
