"""Shared helpers for transport tests: a bot server on a free loopback port, caller audio."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from pipeline.bot.config import BotConfig, ConversationConfig
from pipeline.bot.parrot import ParrotBot
from pipeline.bot.voicebot import VoiceBot
from pipeline.runtime.editing import StageEdit
from pipeline.server.call import Bot
from pipeline.server.voice_stream import ServerConfig, VoiceStreamServer
from stages.jitter import JitterConfig
from stages.llm import EchoLlm
from tests.fakes import FakeEnergyVad, FakeScriptedStt, FakeToneTts, FakeTurnModel, tone_burst

RATE = 8000


def speechlike(seconds: float, *, pitch: float = 140.0, seed: int = 0) -> np.ndarray:
    """A voiced, syllable-modulated harmonic signal: loud enough for any energy gate."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    voice = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 8))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, np.pi))
    signal = 0.25 * voice * envelope / 1.5
    return (signal * 32767).astype(np.int16)


def steady_parrot() -> ParrotBot:
    """A parrot whose playout delay is pinned at 120 ms: on a clean network it never
    skips or stretches a frame, so its echo must be byte-exact (adaptation is tested
    on its own, with impairments)."""
    return ParrotBot(jitter=JitterConfig(min_delay=0.12, initial_delay=0.12, max_delay=0.12))


def quiet(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.int16)


async def start_server(
    nursery: trio.Nursery, bot: Bot | None = None, **config: object
) -> tuple[VoiceStreamServer, str]:
    server = VoiceStreamServer(ServerConfig(port=0, **config), bot or ParrotBot())
    ws_server = await nursery.start(server.serve)
    scheme = "wss" if config.get("certfile") else "ws"
    return server, f"{scheme}://127.0.0.1:{ws_server.port}/"


@pytest.fixture
async def parrot(nursery: trio.Nursery) -> tuple[VoiceStreamServer, str]:
    return await start_server(nursery, steady_parrot())


@asynccontextmanager
async def serve_process(*arguments: str) -> AsyncIterator[tuple[trio.Process, dict[str, Any]]]:
    """``voicegraph serve --port 0 ARGUMENTS`` as a real process: yields it and the JSON
    line it prints once it listens; killed on the way out if it is still running."""
    command = [sys.executable, "-m", "pipeline", "serve", "--port", "0", *arguments]
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        line = b""
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(1)
            if not chunk:  # the server exited before it listened: say so, do not spin
                raise RuntimeError(f"{' '.join(command)} exited before listening: {line!r}")
            line += chunk
        yield process, json.loads(line)
    finally:
        if process.returncode is None:
            process.kill()


def utterance(seconds: float = 0.8) -> np.ndarray:
    """A caller turn the fake VAD hears: half a second of quiet, a tone, quiet again."""
    quiet_part = np.zeros(4000, dtype=np.int16)
    return np.concatenate([quiet_part, tone_burst(seconds), quiet_part])


@asynccontextmanager
async def fake_bot(
    script: Sequence[str],
    *,
    llm: EchoLlm | None = None,
    stt: FakeScriptedStt | None = None,
    tts: FakeToneTts | None = None,
    turn: FakeTurnModel | None = None,
    reply_edits: Sequence[StageEdit] = (),
    greeting: str = "",
    **conversation: Any,
) -> AsyncIterator[tuple[VoiceBot, str]]:
    """The real voice bot on the named fakes (no model loads) on a free port: the STT
    'hears' ``script`` line by line; the end-of-turn model calls every turn complete
    unless its words say otherwise. Leaving the block shuts the server down."""
    config = BotConfig(conversation=ConversationConfig(greeting=greeting, **conversation))
    bot = VoiceBot(
        config,
        vad=FakeEnergyVad(),
        stt=stt or FakeScriptedStt(script),
        llm=llm or EchoLlm(),
        tts=tts or FakeToneTts(),
        turn=turn or FakeTurnModel({}, default=0.9),
        reply_edits=reply_edits,
    )
    server = VoiceStreamServer(ServerConfig(port=0), bot)
    async with trio.open_nursery() as nursery:
        listener = await nursery.start(server.serve)
        yield bot, f"ws://127.0.0.1:{listener.port}/"
        server.shutdown()


class RedisServer:
    """A private ``redis-server`` on a free loopback port, no persistence: the event bus of
    ``serve --bus`` tests. :meth:`stop` and :meth:`start` again (same port) play an outage."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        arguments = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        self.process = subprocess.Popen(
            [self.binary, *arguments, "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A running ``redis-server`` (Debian's package; CI's .ci/run installs it)."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()
