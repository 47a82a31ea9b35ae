"""Run a local stand-in for the telephony platform: REST API, dialing, webhooks.

``voicegraph dial --base-url http://127.0.0.1:PORT ...`` places a call on it; it then
dials the bot's ``ws_url`` speaking the caller audio (default: the shipped demo
turns) and posts lifecycle webhooks. Prints one JSON line when listening, then one
per lifecycle event and one summary per finished call. SIGINT/SIGTERM stop it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import ssl
import sys
from typing import Any

import trio

from pipeline.caller.audiofile import AudioFileError, load_audio
from pipeline.platform.emulator import EmulatorConfig, PlatformEmulator
from pipeline.platform.rest import CALL_PATH
from pipeline.server.logs import configure_logging


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8090, help="port (0: any free port)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("VOICEGRAPH_EMULATOR_API_KEY"),
        help="the only x-metro-api-key accepted (default: any non-empty key; "
        "or VOICEGRAPH_EMULATOR_API_KEY)",
    )
    parser.add_argument(
        "--caller-audio",
        nargs="+",
        default=None,
        metavar="FILE",
        help="what the caller says, one file per turn (default: the shipped demo turns)",
    )
    parser.add_argument("--pause", type=float, default=0.5, help="caller pause after answers")
    parser.add_argument("--reply-timeout", type=float, default=20.0, help="seconds per answer")
    parser.add_argument(
        "--greeting-timeout", type=float, default=5.0, help="seconds to wait for a greeting"
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="dial wss:// bots without certificate verification (self-signed test certs)",
    )
    parser.add_argument("--log-level", default="warning", choices=("debug", "info", "warning"))


def main(args: argparse.Namespace) -> int:
    try:
        turns = tuple((path, load_audio(path)) for path in args.caller_audio or ())
    except AudioFileError as exc:
        print(f"voicegraph emulator: {exc}", file=sys.stderr)
        return 2
    ssl_context = None
    if args.insecure:
        ssl_context = ssl.create_default_context()
        ssl_context.check_hostname = False
        ssl_context.verify_mode = ssl.CERT_NONE
    config = EmulatorConfig(
        api_key=args.api_key,
        caller_turns=turns,
        pause=args.pause,
        reply_timeout=args.reply_timeout,
        greeting_timeout=args.greeting_timeout,
        ssl_context=ssl_context,
    )
    configure_logging(args.log_level)
    try:
        trio.run(_serve_until_signalled, args.host, args.port, config)
    except OSError as exc:
        print(f"voicegraph emulator: {exc}", file=sys.stderr)
        return 2
    return 0


def _print(document: dict[str, Any]) -> None:
    print(json.dumps(document), flush=True)


async def _serve_until_signalled(host: str, port: int, config: EmulatorConfig) -> None:
    emulator = PlatformEmulator(
        config,
        on_event=_print,
        on_done=lambda call: _print({"event": "call_summary", **call.summary()}),
    )
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            listening = await nursery.start(emulator.serve, host, port)
            base = f"http://{host}:{listening.port}"
            _print({"event": "listening", "url": base, "endpoint": base + CALL_PATH})
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
