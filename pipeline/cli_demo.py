"""Run the main job on the embedded defaults: a bot, a caller, a conversation, figures.

The bot is started in this process on a free loopback port; the call emulator dials
it exactly as the telephony platform would and speaks the caller turns shipped in
``pipeline/demo_audio`` (espeak-ng voices, 8 kHz μ-law, with their transcripts). The
conversation is printed with the voice-to-voice latency of each turn, and both sides
of the audio are written to a folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import trio

from .audiofile import load_audio
from .call import Bot
from .emulator import TurnReport, converse, open_call, save_call
from .server import ServerConfig, VoiceStreamServer

DEMO_AUDIO = resources.files("pipeline") / "demo_audio"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bot", choices=("parrot",), default="parrot", help="which bot to run")
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


def demo_turns() -> list[tuple[str, str, np.ndarray]]:
    """The shipped caller turns: (file name, what is said, 8 kHz samples)."""
    manifest = json.loads((DEMO_AUDIO / "turns.json").read_text())
    turns = []
    for entry in manifest:
        with resources.as_file(DEMO_AUDIO / entry["file"]) as path:
            turns.append((entry["file"], entry["text"], load_audio(path)))
    return turns


def make_bot(name: str) -> Bot:
    from .cli_serve import make_bot as make_served_bot

    return make_served_bot(name)


def main(args: argparse.Namespace) -> int:
    turns = demo_turns()
    reports, written, url = trio.run(_run, args, turns)
    if args.json:
        print(json.dumps({"url": url, "turns": [r.as_dict() for r in reports]}, indent=2))
    else:
        print(f"voicegraph demo: {args.bot} bot at {url}, dialled by the call emulator")
        for (_, text, _), report in zip(turns, reports, strict=True):
            _print_turn(text, report)
        names = ", ".join(p.name for p in written if not p.name.startswith("bot-"))
        print(f"audio of both sides in {args.out}/: {names}")
    answered = sum(1 for report in reports if report.voice_to_voice_ms is not None)
    if answered < len(reports):
        print(
            f"voicegraph demo: the bot answered {answered} of {len(reports)} turns", file=sys.stderr
        )
        return 1
    return 0


def _print_turn(text: str, report: TurnReport) -> None:
    print(f"turn {report.turn}  caller: {text!r} ({report.caller_seconds:.2f} s)")
    if report.voice_to_voice_ms is None:
        print("        bot:    (no answer)")
        return
    print(
        f"        bot:    {report.bot_audio_seconds:.2f} s of audio in {report.bot_messages} "
        f"message(s); voice-to-voice {report.voice_to_voice_ms:.0f} ms"
    )


async def _run(
    args: argparse.Namespace, turns: list[tuple[str, str, np.ndarray]]
) -> tuple[list[TurnReport], list[Path], str]:
    server = VoiceStreamServer(ServerConfig(host="127.0.0.1", port=0), make_bot(args.bot))
    async with trio.open_nursery() as nursery:
        ws_server = await nursery.start(server.serve)
        url = f"ws://127.0.0.1:{ws_server.port}/"
        spoken = [(name, samples) for name, _, samples in turns]
        async with open_call(url) as call:
            reports = await converse(call, spoken, pause=args.pause)
        written = save_call(args.out, call, spoken, reports)
        server.shutdown()
    return reports, written, url
