"""Run the main job on the embedded defaults: a bot, a caller, a conversation, figures.

The voice bot (Silero VAD, Whisper tiny.en, SmolLM2, Piper, all offline) is started
in this process on a free loopback port; the call emulator dials it exactly as the
telephony platform would and speaks the caller turns shipped in
``pipeline/demo`` (a neural voice made by ``benchmarks/demo_turns.py``, 8 kHz μ-law,
with their transcripts). The
conversation is printed (what the caller said, what the bot heard, what it answered)
with the voice-to-voice latency of each turn, and both sides of the audio are written
to a folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import trio

from pipeline.bot.config import ConfigError
from pipeline.bot.conversation import TurnRecord
from pipeline.caller.emulator import TurnReport, converse, open_call, save_call
from pipeline.cli.serve import add_bot_arguments, make_bot, run_reporting_startup_errors
from pipeline.demo import DEMO_AUDIO, demo_turns
from pipeline.server.call import Bot
from pipeline.server.voice_stream import ServerConfig, VoiceStreamServer


def configure(parser: argparse.ArgumentParser) -> None:
    add_bot_arguments(parser)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("voicegraph-demo"),
        help="folder for the audio of both sides (default ./voicegraph-demo)",
    )
    parser.add_argument(
        "--pause", type=float, default=0.5, help="caller's pause after each bot answer, seconds"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def main(args: argparse.Namespace) -> int:
    if args.config is None:
        with resources.as_file(DEMO_AUDIO / "bot.toml") as path:
            args.config = path  # the bakery the demo caller phones
    try:
        bot = make_bot(args)
    except ConfigError as exc:
        print(f"voicegraph demo: {exc}", file=sys.stderr)
        return 2
    turns = demo_turns()
    outcome: dict[str, object] = {}
    message = run_reporting_startup_errors(_run, args, bot, turns, outcome)
    if message:
        print(f"voicegraph demo: {message}", file=sys.stderr)
        return 2
    reports: list[TurnReport] = outcome["reports"]  # type: ignore[assignment]
    records = _bot_records(bot)
    lines = _conversation(turns, reports, records)
    if args.json:
        print(json.dumps({"url": outcome["url"], "bot": args.bot, "turns": lines}, indent=2))
    else:
        print(f"voicegraph demo: {args.bot} bot at {outcome['url']}, dialled by the call emulator")
        for line in lines:
            _print_line(line)
        names = ", ".join(p.name for p in outcome["written"] if not p.name.startswith("bot-"))
        print(f"audio of both sides in {args.out}/: {names}")
    answered = sum(1 for report in reports if report.voice_to_voice_ms is not None)
    if answered < len(reports):
        print(
            f"voicegraph demo: the bot answered {answered} of {len(reports)} turns", file=sys.stderr
        )
        return 1
    return 0


def _bot_records(bot: Bot) -> list[TurnRecord]:
    finished = getattr(bot, "finished", None)
    return list(finished[-1][1]) if finished else []


def _conversation(
    turns: list[tuple[str, str, np.ndarray]],
    reports: list[TurnReport],
    records: list[TurnRecord],
) -> list[dict[str, object]]:
    """One entry per exchange: the greeting, then each caller turn with the bot's answer."""
    lines: list[dict[str, object]] = []
    by_index = {record.index: record for record in records}
    if 0 in by_index:
        lines.append({"turn": 0, "bot": by_index[0].heard_text})
    for (_, said, _), report in zip(turns, reports, strict=True):
        record = by_index.get(report.turn)
        lines.append(
            {
                "turn": report.turn,
                "caller": said,
                "bot_heard": record.caller_text if record else None,
                "bot": record.heard_text if record else None,
                **report.as_dict(),
                "server_timings_ms": record.timings_ms if record else None,
            }
        )
    return lines


def _print_line(line: dict[str, object]) -> None:
    if line["turn"] == 0:
        print(f"greeting  bot:    {line['bot']!r}")
        return
    print(f"turn {line['turn']}    caller: {line['caller']!r} ({line['caller_seconds']:.2f} s)")
    if line["bot_heard"] is not None:
        print(f"          heard:  {line['bot_heard']!r}")
    if line["voice_to_voice_ms"] is None:
        print("          bot:    (no answer)")
        return
    said = repr(line["bot"]) if line["bot"] is not None else "(audio)"
    print(f"          bot:    {said}")
    print(
        f"          {line['bot_audio_seconds']:.2f} s of bot audio in {line['bot_messages']} "
        f"message(s); voice-to-voice {line['voice_to_voice_ms']:.0f} ms"
    )


async def _run(
    args: argparse.Namespace,
    bot: Bot,
    turns: list[tuple[str, str, np.ndarray]],
    outcome: dict[str, object],
) -> None:
    server = VoiceStreamServer(ServerConfig(host="127.0.0.1", port=0), bot)
    async with trio.open_nursery() as nursery:
        ws_server = await nursery.start(server.serve)
        url = f"ws://127.0.0.1:{ws_server.port}/"
        spoken = [(name, samples) for name, _, samples in turns]
        async with open_call(url) as call:
            if args.bot == "voice":  # let the greeting play before the caller speaks
                with trio.move_on_after(10):
                    await call.wait_for_greeting()
                await call.listen_until_quiet(args.pause)
            reports = await converse(call, spoken, pause=args.pause, reply_timeout=20)
        outcome.update(url=url, reports=reports, written=save_call(args.out, call, spoken, reports))
        server.shutdown()
