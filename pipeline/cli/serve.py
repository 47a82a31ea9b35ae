"""Run a bot: accept calls from the telephony platform over WebSocket (WS or WSS).

One bot answers every path, or ``--route PATH=BOT.TOML`` (repeated) puts one bot per
WebSocket path, as the platform assigns one voicebot URL per number; other paths are
refused with 404. The same port answers the platform's call webhooks
(``--webhook-path``) and ``GET /health``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Any

import trio

from pipeline.bot.config import BotConfig, ConfigError, load_config
from pipeline.bot.events_socket import serve_events
from pipeline.bot.messages import ConversationBus
from pipeline.bot.sharing import share_models
from pipeline.runtime.errors import VoicegraphError
from pipeline.server.call import Bot
from pipeline.server.http_front import normalize_path
from pipeline.server.logs import configure_logging
from pipeline.server.voice_stream import ServerConfig, VoiceStreamServer

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
    parser.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="PATH=BOT.TOML",
        help="serve this bot config on this WebSocket path (repeat for several bots; "
        "other paths get 404)",
    )
    parser.add_argument(
        "--webhook-path", default="/callbacks", help="where platform webhooks are received"
    )
    parser.add_argument(
        "--webhook-header", default=None, metavar="NAME", help="header webhooks must carry"
    )
    parser.add_argument(
        "--webhook-value",
        default=os.environ.get("VOICEGRAPH_WEBHOOK_VALUE"),
        metavar="VALUE",
        help="its value (default from VOICEGRAPH_WEBHOOK_VALUE)",
    )
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


def bot_config(args: argparse.Namespace, path: Path | None = None) -> BotConfig:
    """A bot configuration: the file (``path``, else ``--config``), then the flags on top."""
    config = load_config(path if path is not None else args.config)
    return config.with_overrides(
        llm={"backend": args.llm, "url": args.llm_url, "model": args.llm_model}
    )


def make_bot(
    args: argparse.Namespace,
    config_path: Path | None = None,
    messages: ConversationBus | None = None,
) -> Bot:
    """The bot ``--bot`` names, configured from ``config_path`` (else ``--config``);
    voice bots publish their conversations on ``messages`` (one bus per server)."""
    config = bot_config(args, config_path)
    if args.bot == "parrot":
        from pipeline.bot.parrot import ParrotBot

        return ParrotBot(jitter=config.jitter)
    from pipeline.bot.voicebot import VoiceBot

    return VoiceBot(config, record_dir=args.record, messages=messages)


def parse_routes(specs: list[str]) -> dict[str, Path]:
    """``["/media/sales=sales.toml", ...]`` → ``{"/media/sales": Path("sales.toml")}``."""
    routes: dict[str, Path] = {}
    for spec in specs:
        path, sep, config = spec.partition("=")
        if not sep or not path.startswith("/") or not config or "?" in path:
            raise ConfigError(
                f"--route {spec!r}: expected PATH=BOT.TOML with PATH like /media/sales"
            )
        path = normalize_path(path)
        if path in routes:
            raise ConfigError(f"--route {path} is given twice")
        routes[path] = Path(config)
    return routes


def make_routed_bots(
    args: argparse.Namespace, routes: dict[str, Path], messages: ConversationBus | None = None
) -> dict[str, Bot]:
    """One bot per path. Voice bots with the same model and LLM settings share one set
    of loaded models (:func:`~pipeline.bot.sharing.share_models`)."""
    return share_models(
        {path: make_bot(args, config_path, messages) for path, config_path in routes.items()}
    )


def main(args: argparse.Namespace) -> int:
    if bool(args.certfile) != bool(args.keyfile) and not args.certfile:
        print("voicegraph serve: --keyfile needs --certfile", file=sys.stderr)
        return 2
    if bool(args.webhook_header) != bool(args.webhook_value):
        print(
            "voicegraph serve: --webhook-header and --webhook-value go together",
            file=sys.stderr,
        )
        return 2
    configure_logging(args.log_level)
    try:
        if args.route and args.config is not None:
            raise ConfigError("--config and --route do not mix: give each route its own file")
        routes = parse_routes(args.route)
        messages = ConversationBus()
        bot = None if routes else make_bot(args, messages=messages)
        bots = make_routed_bots(args, routes, messages) if routes else None
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
        webhook_path=args.webhook_path,
        webhook_header=args.webhook_header,
        webhook_value=args.webhook_value,
        record_dir=args.record,
    )
    server = VoiceStreamServer(config, bot, bots=bots)
    if args.bot == "voice":  # conversation events of every call, same key as the calls
        server.add_websocket_route(
            "/events", partial(serve_events, bus=messages, api_key=config.api_key)
        )
    message = run_reporting_startup_errors(serve_until_signalled, server)
    if message:
        print(f"voicegraph serve: {message}", file=sys.stderr)
        return 2
    return 0


STARTUP_ERRORS = (VoicegraphError, OSError)
"""What start-up may fail with and the user can fix: anything the library raised on purpose,
and the operating system's refusals (the port is taken, a certificate file is missing)."""


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


async def serve_until_signalled(server: VoiceStreamServer) -> None:
    """Serve until SIGINT or SIGTERM, then close every call with 1001 and return.

    The first stdout line says where: the WebSocket URL (and one per route), the
    webhook URL and the health URL.
    """
    config = server.config
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            listening = await nursery.start(server.serve)
            scheme = "wss" if config.certfile else "ws"
            base = f"{config.host}:{listening.port}"
            ready: dict[str, Any] = {"event": "listening", "url": f"{scheme}://{base}/"}
            if server.bots:
                ready["routes"] = {path: f"{scheme}://{base}{path}" for path in server.bots}
            http = "https" if config.certfile else "http"
            ready["webhooks"] = f"{http}://{base}{normalize_path(config.webhook_path)}"
            ready["health"] = f"{http}://{base}/health"
            print(json.dumps(ready), flush=True)
            async for _ in signals:
                server.shutdown()
                break
