"""Run a bot: accept calls from the telephony platform over WebSocket (WS or WSS)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import trio

from stages.llm import LlmError
from stages.stt import SttError
from stages.tts import TtsError
from stages.vad import VadError

from .botconfig import BotConfig, ConfigError, load_config
from .call import Bot
from .logs import configure_logging
from .server import ServerConfig, VoiceStreamServer

BOTS = ("voice", "parrot")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port (0: any free port)")
    add_bot_arguments(parser)
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


def add_bot_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that choose and configure the bot (shared by ``serve`` and ``demo``)."""
    parser.add_argument(
        "--bot",
        choices=BOTS,
        default="voice",
        help="voice: STT → LLM → TTS (default); parrot: echoes caller speech",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="BOT.TOML",
        help="bot configuration (prompt, greeting, models, turn-taking)",
    )
    parser.add_argument(
        "--llm",
        choices=("local", "echo", "openai"),
        default=None,
        help="LLM backend (overrides the config)",
    )
    parser.add_argument("--llm-url", default=None, help="OpenAI-compatible server base URL")
    parser.add_argument(
        "--llm-model", default=None, help="GGUF path (local) or model name (openai)"
    )
    parser.add_argument(
        "--record",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep each call's transcript (JSONL) and both audio sides (WAV)",
    )


def bot_config(args: argparse.Namespace) -> BotConfig:
    """The bot configuration: the file (if any), then the command line on top."""
    config = load_config(args.config)
    return config.with_overrides(
        llm={"backend": args.llm, "url": args.llm_url, "model": args.llm_model}
    )


def make_bot(args: argparse.Namespace) -> Bot:
    if args.bot == "parrot":
        from .parrot import ParrotBot

        return ParrotBot(jitter=bot_config(args).jitter)
    from .voicebot import VoiceBot

    return VoiceBot(bot_config(args), record_dir=args.record)


def main(args: argparse.Namespace) -> int:
    if bool(args.certfile) != bool(args.keyfile) and not args.certfile:
        print("voicegraph serve: --keyfile needs --certfile", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    try:
        bot = make_bot(args)
    except ConfigError as exc:
        print(f"voicegraph serve: {exc}", file=sys.stderr)
        return 2
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
    message = run_reporting_startup_errors(serve_until_signalled, config, bot)
    if message:
        print(f"voicegraph serve: {message}", file=sys.stderr)
        return 2
    return 0


STARTUP_ERRORS = (ConfigError, VadError, SttError, TtsError, LlmError, OSError)


def run_reporting_startup_errors(function, *args: object) -> str | None:
    """Run ``function`` under Trio; a model or config that cannot be used at start-up
    (missing file, bad value, port in use) becomes one clear line instead of a traceback."""
    try:
        trio.run(function, *args)
    except BaseExceptionGroup as group:
        matched, rest = group.split(STARTUP_ERRORS)
        if matched is None or rest is not None:
            raise
        return "; ".join(str(exc) for exc in _leaves(matched))
    except STARTUP_ERRORS as exc:
        return str(exc)
    return None


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


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
