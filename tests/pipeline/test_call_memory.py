"""What a finished call leaves behind: nothing per call but bounded summaries.

The soak (``benchmarks/soak.py``) measures growth per call over minutes; this is its
fast, exact form for the one thing that leaked there: the server's connection objects.
"""

from __future__ import annotations

import gc
from typing import Any

import trio
import trio.testing
from trio_websocket import WebSocketConnection, wrap_client_stream

from pipeline.bot.parrot import ParrotBot
from pipeline.caller.emulator import register
from pipeline.protocol.platform_side import ClientProtocol
from pipeline.server.voice_stream import ServerConfig, VoiceStreamServer

CALLS = 12


async def one_call(server: VoiceStreamServer, call_id: str) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_stream, server_stream)
        ws = await wrap_client_stream(nursery, client_stream, "localhost", "/")
        protocol = ClientProtocol(call_id, "5550100")
        await register(ws, protocol)
        await ws.send_message(protocol.media(bytes(12) + b"\xff" * 160))
        await ws.aclose(1000, "caller hung up")


def live_websockets() -> int:
    gc.collect()
    return sum(isinstance(thing, WebSocketConnection) for thing in gc.get_objects())


async def test_finished_calls_leave_no_websocket_behind(autojump_clock: Any) -> None:
    server = VoiceStreamServer(ServerConfig(port=0), ParrotBot())
    await one_call(server, "warm-up")
    before = live_websockets()
    for index in range(CALLS):
        await one_call(server, f"call-{index}")
    assert live_websockets() - before < CALLS // 2
