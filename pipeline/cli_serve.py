"""Run a bot: accept calls from the telephony platform over WebSocket (WS or WSS)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

import trio

from .call import Bot
from .logs import configure_logging
from .server import ServerConfig, VoiceStreamServer

BOTS = ("parrot",)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port (0: any free port)")
    parser.add_argument("--bot", choices=BOTS, default="parrot", help="which bot answers calls")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("VOICEGRAPH_SERVE_API_KEY"),
        help="require this key (token query parameter, Bearer or x-api-key "
        "header); default from VOICEGRAPH_SERVE_API_KEY",
    )
    parser.add_argument("--certfile", default=None, help="TLS certificate (PEM) to serve wss://")
    parser.add_argument("--keyfile", default=None, help="TLS private key (PEM)")
    parser.add_argument("--redact", action="store_true", help="redact phone numbers in logs")
    parser.add_argument("--registration-timeout", type=float, default=10.0, help=argparse.SUPPRESS)
    parser.add_argument("--inactivity-timeout", type=float, default=300.0, help=argparse.SUPPRESS)
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))


def make_bot(name: str) -> Bot:
    if name == "parrot":
        from .parrot import ParrotBot

        return ParrotBot()
    raise ValueError(f"unknown bot {name!r}")


def main(args: argparse.Namespace) -> int:
    if bool(args.certfile) != bool(args.keyfile) and not args.certfile:
        print("voicegraph serve: --keyfile needs --certfile", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    config = ServerConfig(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        certfile=args.certfile,
        keyfile=args.keyfile,
        registration_timeout=args.registration_timeout,
        inactivity_timeout=args.inactivity_timeout,
        redact=args.redact,
    )
    trio.run(serve_until_signalled, config, make_bot(args.bot))
    return 0


async def serve_until_signalled(config: ServerConfig, bot: Bot) -> None:
    """Serve until SIGINT or SIGTERM, then close every call with 1001 and return."""
    server = VoiceStreamServer(config, bot)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            ws_server = await nursery.start(server.serve)
            scheme = "wss" if config.certfile else "ws"
            ready = {"event": "listening", "url": f"{scheme}://{config.host}:{ws_server.port}/"}
            print(json.dumps(ready), flush=True)
            async for _ in signals:
                server.shutdown()
                break
