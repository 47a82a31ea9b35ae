"""Run a bot: accept calls from the telephony platform over WebSocket (WS or WSS).

One bot answers every path, or ``--route PATH=BOT.TOML`` (repeated) puts one bot per
WebSocket path, as the platform assigns one voicebot URL per number; other paths are
refused with 404. The same port answers the platform's call webhooks
(``--webhook-path``), ``GET /health`` and ``GET /metrics`` (Prometheus).

Safe by default (:func:`check_exposure`): without a key it listens on loopback only,
``--record`` needs a webhook secret, and ``--insecure-open`` is the one way to run
without them, announced at start-up. Bounded (:func:`apply_limits`): the soft limit on
open files is raised to the hard one and the connection cap kept below it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import trio

from pipeline.bot.config import BotConfig, ConfigError, load_config
from pipeline.bot.events_socket import serve_events
from pipeline.bot.messages import ConversationBus
from pipeline.bot.redis_bus import serve_on_bus
from pipeline.bot.sharing import share_models
from pipeline.bot.turn_metrics import TurnMetrics, voice_bot_of
from pipeline.runtime.errors import VoicegraphError
from pipeline.server.auth import is_loopback
from pipeline.server.call import Bot
from pipeline.server.drain import DEFAULT_DRAIN_TIMEOUT, Drain
from pipeline.server.http_front import normalize_path
from pipeline.server.limits import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
    connections_within_fd_limit,
    raise_fd_limit,
)
from pipeline.server.logs import configure_logging
from pipeline.server.prometheus import Metrics, serve_metrics
from pipeline.server.voice_stream import ServerConfig, VoiceStreamServer
from pipeline.server.workers import Supervisor, serve_as_worker, worker_index

BOTS = ("voice", "parrot")

logger = logging.getLogger("voicegraph.serve")


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
    add_security_arguments(parser)
    parser.add_argument("--registration-timeout", type=float, default=10.0, help=argparse.SUPPRESS)
    parser.add_argument("--inactivity-timeout", type=float, default=300.0, help=argparse.SUPPRESS)
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=DEFAULT_DRAIN_TIMEOUT,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT or POST /admin/drain: refuse new calls (503), let live "
        "calls go on this long, then close them with 1001 and exit (0: close at once; "
        f"a second signal: at once; default {DEFAULT_DRAIN_TIMEOUT:g})",
    )
    parser.add_argument(
        "--bus",
        default=os.environ.get("VOICEGRAPH_BUS"),
        metavar="redis://HOST:PORT",
        help="share conversation events (/events), the call directory (sendMessage) and "
        "GET /health/fleet with every worker and host on this Redis/Valkey; default "
        "from VOICEGRAPH_BUS, else in-process only",
    )
    add_worker_arguments(parser)


def add_security_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of :func:`check_exposure` and :func:`apply_limits`."""
    parser.add_argument(
        "--insecure-open",
        action="store_true",
        help="run open on purpose: listen beyond loopback without --api-key, or --record "
        "without a webhook secret (a warning is printed at start-up)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help=f"open connections of every kind; more get 503 (default {DEFAULT_MAX_CONNECTIONS})",
    )
    parser.add_argument(
        "--max-connections-per-source",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
        metavar="N",
        help="open connections from one address; more get 503 "
        f"(default {DEFAULT_MAX_CONNECTIONS_PER_SOURCE})",
    )


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
    refusal = check_exposure(args)
    if refusal:
        print(f"voicegraph serve: {refusal}", file=sys.stderr)
        return 2
    if args.max_connections < 1 or args.max_connections_per_source < 1:
        print("voicegraph serve: connection limits must be at least 1", file=sys.stderr)
        return 2
    if args.drain_timeout < 0:
        print("voicegraph serve: --drain-timeout must be 0 or more", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    if args.workers != 1 and worker_index() is None:
        return serve_with_workers(args)
    warn_if_open(args)
    max_connections = apply_limits(args.max_connections)
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
        max_connections=max_connections,
        max_connections_per_source=args.max_connections_per_source,
        freeze_start_up_heap=True,  # this process is the server: nothing else shares it
    )
    server = VoiceStreamServer(config, bot, bots=bots)
    metrics = add_metrics(server, messages)
    if args.bot == "voice":  # conversation events of every call, same key as the calls
        server.add_websocket_route(
            "/events", partial(serve_events, bus=messages, api_key=config.api_key)
        )
    serve = partial(serve_until_signalled, drain_timeout=args.drain_timeout)
    if args.bus:  # the fleet's events, call directory and sendMessage on Redis
        serve = serve_on_bus(serve, args.bus, messages)
    message = run_reporting_startup_errors(serve_as_worker(metrics.around(serve)), server)
    if message:
        print(f"voicegraph serve: {message}", file=sys.stderr)
        return 2
    return 0


def add_metrics(server: VoiceStreamServer, messages: ConversationBus) -> Metrics:
    """``GET /metrics`` (the calls' key): the server's calls and transport, the voice bots'
    turns (:mod:`pipeline.server.prometheus`, :mod:`pipeline.bot.turn_metrics`)."""
    metrics = serve_metrics(server)
    bots = list(server.bots.values()) if server.bots else [server.bot]
    voice_bots = [bot for bot in bots if voice_bot_of(bot) is not None]
    if voice_bots:  # the parrot has no turns: no empty turn series
        turns = TurnMetrics(metrics)
        for bot in voice_bots:
            turns.watch(bot)
        turns.watch_bus(messages)
    return metrics


def listens_beyond_loopback(host: str) -> bool:
    """True unless ``host`` is a loopback address or ``localhost`` ("" and 0.0.0.0 are every
    interface)."""
    return host.lower() != "localhost" and not (host and is_loopback(host))


def check_exposure(args: argparse.Namespace) -> str | None:
    """Why ``serve`` must not start as asked (None: it may). Open by mistake is the
    failure this prevents: without a key, whoever reaches the port can follow every
    call's conversation on ``/events`` and make the bot say anything (``sendMessage``);
    with ``--record`` and no webhook secret, anyone can make it create folders."""
    if args.insecure_open:
        return None
    if listens_beyond_loopback(args.host) and not args.api_key:
        return (
            f"refusing to listen on {args.host} without an API key: anyone who reaches "
            "the port could join calls, follow them on /events and make the bot speak. "
            "Give --api-key (or VOICEGRAPH_SERVE_API_KEY), or --insecure-open to run "
            "open on purpose"
        )
    if args.record is not None and not (args.webhook_header and args.webhook_value):
        return (
            "--record needs a webhook secret (--webhook-header and --webhook-value): "
            "every accepted webhook writes into the call's folder. Or --insecure-open "
            "to record with webhooks open on purpose"
        )
    return None


def warn_if_open(args: argparse.Namespace) -> None:
    """With ``--insecure-open``, say loudly what is open, on stderr and in the log."""
    if not args.insecure_open:
        return
    open_parts = []
    if listens_beyond_loopback(args.host) and not args.api_key:
        open_parts.append(f"calls, /events and sendMessage on {args.host} need no key")
    if not (args.webhook_header and args.webhook_value):
        open_parts.append("webhooks need no secret")
    if not open_parts:
        return
    what = "; ".join(open_parts)
    warning = f"voicegraph serve: WARNING: running open on purpose (--insecure-open): {what}"
    print(warning, file=sys.stderr)
    logger.warning("running open on purpose", extra={"open": open_parts})


def apply_limits(max_connections: int) -> int:
    """Raise the open-files limit (logged) and return the connection cap that fits it."""
    limits = raise_fd_limit()
    if limits is None:
        return max_connections
    before, after = limits
    fitting = connections_within_fd_limit(max_connections, after)
    logger.info(
        "open files limit",
        extra={"soft_before": before, "soft_now": after, "max_connections": fitting},
    )
    if fitting < max_connections:
        logger.warning(
            "connection cap lowered to fit the open files limit",
            extra={"asked": max_connections, "cap": fitting, "fd_limit": after},
        )
    return fitting


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


async def serve_until_signalled(server: VoiceStreamServer, drain_timeout: float = 0.0) -> None:
    """Serve until SIGINT or SIGTERM (or ``POST /admin/drain``), drain for at most
    ``drain_timeout`` seconds (:mod:`pipeline.server.drain`), close what is left with 1001
    and return; a second signal closes at once.

    The first stdout line says where: the WebSocket URL (and one per route), the
    webhook URL and the health URL.
    """
    config = server.config
    in_fleet = worker_index() is not None
    drain = Drain(server, drain_timeout, supervisor_pid=os.getppid() if in_fleet else None)
    drain.install()
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
            await drain.run(signals)


# --- several worker processes (--workers) ---------------------------------------------


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """``--workers N``: see :mod:`pipeline.server.workers`."""
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="server processes sharing the port (SO_REUSEPORT), supervised by this one; "
        "each loads its own models (default 1; see README, Sizing a machine)",
    )


DRAIN_MARGIN_S = 10.0
"""How long the parent of ``--workers`` waits past the drain deadline before it kills a
worker: closing the last calls (5 s at most each, in parallel) and the bots' shutdown."""


def serve_with_workers(args: argparse.Namespace) -> int:
    """Be the parent of ``--workers N``: run this same command line N times as workers
    on one reserved port, restart any that crash, stop them all on SIGTERM/SIGINT."""
    if args.workers < 1:
        print("voicegraph serve: --workers must be at least 1", file=sys.stderr)
        return 2
    argv = [sys.executable, "-m", "pipeline", *sys.argv[1:]]
    with tempfile.TemporaryDirectory(prefix="voicegraph-fleet-") as fleet:
        try:
            supervisor = Supervisor(
                argv,
                args.workers,
                host=args.host,
                port=args.port,
                fleet_dir=Path(fleet),
                stop_grace_s=args.drain_timeout + DRAIN_MARGIN_S,
            )
        except OSError as exc:
            print(f"voicegraph serve: cannot reserve port {args.port}: {exc}", file=sys.stderr)
            return 2
        return trio.run(supervisor.run)
