"""Dial a bot the way the platform does and report each turn (the call emulator)."""

from __future__ import annotations

import argparse
import json
import ssl
import sys
from pathlib import Path

import numpy as np
import trio

from .audiofile import AudioFileError, load_audio
from .emulator import (
    Impairments,
    RegistrationError,
    TurnReport,
    converse,
    open_call,
    save_call,
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="the bot's WebSocket URL, ws:// or wss://")
    parser.add_argument(
        "--audio",
        nargs="+",
        required=True,
        metavar="FILE",
        help="caller audio, one file per turn (any common format and rate)",
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=1.0,
        help="seconds of silence after the bot's answer (default 1.0)",
    )
    parser.add_argument(
        "--reply-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the bot's answer to a turn (default 10)",
    )
    parser.add_argument(
        "--jitter-ms", type=float, default=0.0, help="random extra delay per packet"
    )
    parser.add_argument("--loss", type=float, default=0.0, help="probability a packet is lost")
    parser.add_argument(
        "--reorder",
        type=float,
        default=0.0,
        help="probability a packet is overtaken by the next one",
    )
    parser.add_argument(
        "--duplicate", type=float, default=0.0, help="probability a packet is sent twice"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for the impairments")
    parser.add_argument(
        "--payload",
        choices=("buffer", "base64", "binary"),
        default="buffer",
        help="media payload format (default: Node Buffer object, as the platform)",
    )
    parser.add_argument("--api-key", default=None, help="sent as the x-api-key header")
    parser.add_argument("--mobile", default="9876543210", help="caller number in 'connected'")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="wss:// without certificate verification (self-signed test certs)",
    )
    parser.add_argument(
        "--save",
        type=Path,
        default=None,
        metavar="DIR",
        help="save caller and bot audio as WAV plus report.json",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per turn")


def main(args: argparse.Namespace) -> int:
    try:
        turns = [(str(path), load_audio(path)) for path in args.audio]
        impairments = Impairments(
            args.jitter_ms, args.loss, args.reorder, args.duplicate, args.seed
        )
    except (AudioFileError, ValueError) as exc:
        print(f"voicegraph call: {exc}", file=sys.stderr)
        return 2
    try:
        return trio.run(_call, args, turns, impairments)
    except RegistrationError as exc:
        print(f"voicegraph call: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"voicegraph call: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1


async def _call(
    args: argparse.Namespace, turns: list[tuple[str, np.ndarray]], impairments: Impairments
) -> int:
    ssl_context = None
    if args.url.startswith("wss://"):
        ssl_context = ssl.create_default_context()
        if args.insecure:
            ssl_context.check_hostname = False
            ssl_context.verify_mode = ssl.CERT_NONE
    async with open_call(
        args.url,
        api_key=args.api_key,
        mobile_no=args.mobile,
        payload_format=args.payload,
        impairments=impairments,
        ssl_context=ssl_context,
    ) as call:
        reports = await converse(call, turns, pause=args.pause, reply_timeout=args.reply_timeout)
    for report in reports:
        print(json.dumps(report.as_dict()) if args.json else _describe(report))
    summary = {
        "callId": call.call_id,
        "packets_sent": call.packets_sent,
        "packets_lost": call.packets_lost,
        "packets_reordered": call.packets_reordered,
        "packets_duplicated": call.packets_duplicated,
        "close_code": call.close_code,
    }
    print(json.dumps(summary) if args.json else f"call {call.call_id}: {summary}")
    if args.save:
        save_call(args.save, call, turns, reports)
    return 0


def _describe(report: TurnReport) -> str:
    latency = (
        f"{report.voice_to_voice_ms:.0f} ms" if report.voice_to_voice_ms is not None else "no reply"
    )
    return (
        f"turn {report.turn} ({report.source}, {report.caller_seconds:.2f} s): "
        f"bot {report.bot_audio_seconds:.2f} s in {report.bot_messages} message(s), "
        f"voice-to-voice {latency}, interrupts {report.interrupts}"
    )
