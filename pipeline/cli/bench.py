"""Measure a pipeline: per-stage latency, voice-to-voice, barge-in, capacity; compare runs.

    voicegraph bench stages   [--pipeline module:factory] [--config bot.toml] [--audio F ...]
                              [--turns N] [--json OUT] [--plot OUT.png]
    voicegraph bench e2e      [--turns N] [--barge-ins M] [--config bot.toml] [--json] [--plot]
    voicegraph bench capacity [--bot parrot|voice] [--config bot.toml] [--max-calls N]
                              [--step K] [--seconds S] [--target-p95 1.5]
                              [--server-cpus 0] [--caller-cpus 1]
    voicegraph bench compare  A.json B.json

Every run goes through the real transport on loopback (server + call emulator),
shows progress on stderr, prints tables on stdout, and with ``--json``/``--plot``
writes a document naming the machine, the models and the parameters, and a PNG.
The logic lives in :mod:`pipeline.bench`; this module only wires the flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from pipeline.bench import capacity, compare
from pipeline.bench.e2e import print_e2e, results_of, run_e2e
from pipeline.bench.instrument import InstrumentedBot
from pipeline.bench.models import describe_models
from pipeline.bench.report import cpu_model, describe_run, progress, save_figure, write_json
from pipeline.bench.stage_latency import measure, plot, print_report, summarize, turn_progress
from pipeline.bench.subject import Subject, caller_turns, make_subject
from pipeline.cli.serve import add_bot_arguments, run_reporting_startup_errors
from pipeline.runtime.errors import VoicegraphError


def configure(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    stages = commands.add_parser(
        "stages", help="per-stage latency of a pipeline (the default bot or yours)"
    )
    _conversation_arguments(stages, turns=8)
    stages.add_argument(
        "--pipeline",
        metavar="MODULE:FACTORY",
        help="your pipeline: FACTORY(config: BotConfig) returns a Bot (see README)",
    )
    stages.add_argument(
        "--app-dir", default=".", help="folder searched first for --pipeline's module (default .)"
    )
    stages.set_defaults(bench_main=_stages)

    e2e = commands.add_parser(
        "e2e", help="voice-to-voice and barge-in at the caller, per-stage breakdown, peak RSS"
    )
    _conversation_arguments(e2e, turns=20)
    e2e.add_argument(
        "--barge-ins", type=int, default=8, help="barge-ins to time (default 8; 0: none)"
    )
    e2e.add_argument(
        "--talk-over-after",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds of bot audio before the caller talks over it (default 1.0)",
    )
    e2e.set_defaults(bench_main=_e2e, bot="voice")

    capacity.configure(
        commands.add_parser("capacity", help="ramp concurrent calls; the most that meet a target")
    )
    compare.configure(commands.add_parser("compare", help="two runs side by side, with ratios"))


def _conversation_arguments(parser: argparse.ArgumentParser, *, turns: int) -> None:
    add_bot_arguments(parser)
    parser.add_argument(
        "--audio",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="caller turns (any format and rate); default: the shipped demo turns",
    )
    parser.add_argument(
        "--turns", type=int, default=turns, help=f"caller turns, files cycled (default {turns})"
    )
    parser.add_argument(
        "--turns-per-call",
        type=int,
        default=None,
        help="turns in one call before the next call (default: the number of audio files)",
    )
    parser.add_argument(
        "--pause", type=float, default=0.5, help="caller's pause after each answer (s)"
    )
    parser.add_argument(
        "--reply-timeout", type=float, default=20.0, help="wait this long for an answer (s)"
    )
    parser.add_argument(
        "--no-warm-up",
        dest="warm_up",
        action="store_false",
        help="count the first call too (by default one uncounted call warms the models up)",
    )
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON")
    parser.add_argument("--plot", type=Path, metavar="OUT.png", help="write the plots as PNG")


def main(args: argparse.Namespace) -> int:
    return int(args.bench_main(args) or 0)


def _subject(args: argparse.Namespace) -> Subject:
    return make_subject(
        bot=args.bot,
        config_path=args.config,
        overrides={"backend": args.llm, "url": args.llm_url, "model": args.llm_model},
        pipeline=getattr(args, "pipeline", None),
        app_dir=getattr(args, "app_dir", "."),
        shipped_audio=not args.audio,
        record=args.record,
    )


def _parameters(args: argparse.Namespace, subject: Subject, per_call: int) -> dict[str, Any]:
    return {
        **subject.description,
        "audio": [str(path) for path in args.audio] if args.audio else "shipped demo turns",
        "turns": args.turns,
        "turns_per_call": per_call,
        "pause_s": args.pause,
        "reply_timeout_s": args.reply_timeout,
        "warm_up_call": args.warm_up,
        "bot_config": dataclasses.asdict(subject.config),
    }


def _prepare(args: argparse.Namespace, name: str) -> tuple[Subject, list[Any], int] | None:
    try:
        subject = _subject(args)
        turns = caller_turns(args.audio, args.turns)
    except VoicegraphError as exc:  # a bad --pipeline, bot.toml or audio file
        print(f"voicegraph bench {name}: {exc}", file=sys.stderr)
        return None
    per_call = args.turns_per_call or (len(args.audio) if args.audio else 4)
    return subject, turns, max(1, per_call)


def _title(name: str, subject: Subject, turns: int) -> str:
    who = subject.description.get("pipeline") or f"{subject.kind} bot"
    return (
        f"voicegraph bench {name}: {who}, {turns} caller turns over loopback, "
        f"{os.cpu_count()} cores ({cpu_model()})"
    )


def _write(args: argparse.Namespace, document: dict[str, Any], figure: Any) -> None:
    if args.json:
        progress(f"wrote {write_json(args.json, document)}")
    if args.plot:
        progress(f"wrote {save_figure(figure, args.plot)}")
    elif figure is not None:
        import matplotlib.pyplot as plt

        plt.close(figure)


def _stages(args: argparse.Namespace) -> int:
    prepared = _prepare(args, "stages")
    if prepared is None:
        return 2
    subject, turns, per_call = prepared
    bot = InstrumentedBot(subject.bot)
    outcome: dict[str, Any] = {}

    async def run() -> None:
        progress(f"bench stages: {len(turns)} turns, {per_call} per call")
        outcome["calls"] = await measure(
            bot,
            turns,
            per_call=per_call,
            pause=args.pause,
            reply_timeout=args.reply_timeout,
            on_turn=turn_progress(len(turns)),
            warm_up=args.warm_up,
        )

    message = run_reporting_startup_errors(run)
    if message:
        print(f"voicegraph bench stages: {message}", file=sys.stderr)
        return 2
    results = summarize(bot.frames, outcome["calls"])
    title = _title("stages", subject, len(turns))
    print_report(results, title)
    document = describe_run(
        "stages",
        results,
        models=describe_models(subject.config, subject.kind),
        parameters=_parameters(args, subject, per_call),
    )
    figure = plot(results, bot.frames, title) if args.plot else None
    _write(args, document, figure)
    return 0 if results["voice_to_voice_ms"]["count"] else 1


def _e2e(args: argparse.Namespace) -> int:
    prepared = _prepare(args, "e2e")
    if prepared is None:
        return 2
    subject, turns, per_call = prepared
    if args.turns < 20:
        progress("note: issue 5's benchmark asks for at least 20 caller turns")
    outcome: dict[str, Any] = {}
    message = run_reporting_startup_errors(
        lambda: run_e2e(
            subject.config,
            turns,
            per_call=per_call,
            barge_ins=args.barge_ins,
            talk_over_after=args.talk_over_after,
            pause=args.pause,
            reply_timeout=args.reply_timeout,
            record_dir=args.record,
            outcome=outcome,
            warm_up=args.warm_up,
        )
    )
    if message:
        print(f"voicegraph bench e2e: {message}", file=sys.stderr)
        return 2
    results = results_of(outcome)
    title = _title("e2e", subject, len(turns))
    print_report(results, title)
    print_e2e(results)
    parameters = {
        **_parameters(args, subject, per_call),
        "barge_ins": args.barge_ins,
        "talk_over_after_s": args.talk_over_after,
    }
    document = describe_run(
        "e2e", results, models=describe_models(subject.config), parameters=parameters
    )
    figure = None
    if args.plot:
        reactions = [e["reaction_ms"] for e in results["barge_in"]["events"] if e["reaction_ms"]]
        figure = plot(results, outcome["frames"], title, {"barge-in reaction": reactions})
    _write(args, document, figure)
    return 0
