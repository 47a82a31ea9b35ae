"""The call client against our own server: connection states, reconnects, a refused
key, mute, push-to-talk. In virtual time over in-memory streams: each connection is a
fresh memory stream pair served by the real :class:`VoiceStreamServer`, so a test can
break one the way a network does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import pytest
import trio
import trio.testing
from trio_websocket import WebSocketConnection, wrap_client_stream

from pipeline.caller.client import (
    LOST_CONNECTION,
    AuthenticationError,
    ConnectionChange,
    ConnectionState,
    Disconnect,
    InvalidAuthenticationToken,
    ReconnectPolicy,
    open_client,
)
from pipeline.caller.devices import GeneratorInput
from pipeline.server.call import Call
from pipeline.server.voice_stream import ServerConfig, VoiceStreamServer
from stages import mulaw
from stages.rtp import RtpPacket

from .conftest import speechlike

S = ConnectionState
SILENCE = bytes([mulaw.SILENCE_BYTE]) * 160


class RecordingBot:
    """Keeps each call's caller audio exactly as received (μ-law per packet, in arrival
    order) and says whatever a test puts in ``lines``."""

    def __init__(self) -> None:
        self.calls: list[list[bytes]] = []
        self.lines, self._lines = trio.open_memory_channel[bytes](16)

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        yield

    async def handle_call(self, call: Call) -> None:
        packets: list[bytes] = []
        self.calls.append(packets)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._speak, call)
            async for raw in call.media:
                packets.append(RtpPacket.parse(raw.data).payload)
            nursery.cancel_scope.cancel()

    async def _speak(self, call: Call) -> None:
        async for line in self._lines:
            await call.send_speech(line)


class MemoryNetwork:
    """A connector for the client: every dial is a new in-memory connection to ``server``."""

    def __init__(self, nursery: trio.Nursery, server: VoiceStreamServer) -> None:
        self.nursery = nursery
        self.server = server
        self.server_ends: list[trio.abc.Stream] = []
        self.headers: list[list[tuple[bytes, bytes]] | None] = []

    @asynccontextmanager
    async def connect(
        self, url: str, headers: list[tuple[bytes, bytes]] | None
    ) -> AsyncIterator[WebSocketConnection]:
        client_end, server_end = trio.testing.memory_stream_pair()
        self.server_ends.append(server_end)
        self.headers.append(headers)
        self.nursery.start_soon(self.server.handle_stream, server_end)
        ws = await wrap_client_stream(
            self.nursery, client_end, "localhost", "/", extra_headers=headers
        )
        try:
            yield ws
        finally:
            with trio.move_on_after(1, shield=True):
                await ws.aclose()

    async def drop(self) -> None:
        """The network breaks under the latest connection (no close frame)."""
        await self.server_ends[-1].aclose()


@pytest.fixture
def bot() -> RecordingBot:
    return RecordingBot()


@pytest.fixture
def network(nursery: trio.Nursery, bot: RecordingBot) -> MemoryNetwork:
    return MemoryNetwork(nursery, VoiceStreamServer(ServerConfig(), bot))


def details(client, kind: type) -> list[dict]:
    return [event.detail for event in client.history if isinstance(event, kind)]


async def test_normal_call_goes_through_the_states_and_disconnects_cleanly(
    network, bot, autojump_clock
):
    async with open_client("ws://bot/", connector=network.connect) as client:
        await client.connect()
        assert client.state is S.CONNECTED
        await trio.sleep(1.0)
        await client.disconnect()
    assert client.states() == [S.ACQUIRING_ACCESS, S.CONNECTING, S.CONNECTED, S.DISCONNECTED]
    assert details(client, Disconnect) == [{"state": "DISCONNECTED"}]
    assert 45 <= len(bot.calls[0]) <= 55  # a packet every 20 ms, silence included
    assert all(packet == SILENCE for packet in bot.calls[0])


async def test_dropped_connection_is_redialled_after_the_backoff(network, bot, autojump_clock):
    async with open_client("ws://bot/", connector=network.connect, call_id="call-7") as client:
        await client.connect()
        await trio.sleep(0.5)
        dropped_at = trio.current_time()
        await network.drop()
        since = await client.wait_for_state(S.RECONNECT_PENDING)
        await client.wait_for_state(S.CONNECTED, since)
        reconnected_at = trio.current_time()
        await trio.sleep(0.5)
        await client.disconnect()
    assert client.states() == [
        S.ACQUIRING_ACCESS,
        S.CONNECTING,
        S.CONNECTED,
        S.ERROR,
        S.RECONNECT_PENDING,
        S.CONNECTING,
        S.CONNECTED,
        S.DISCONNECTED,
    ]
    pending = [e for e in client.history if isinstance(e, ConnectionChange)][4]
    assert pending.pending_restart_seconds == 1.0
    assert pending.detail == {"state": "RECONNECT_PENDING", "pendingRestartSeconds": 1.0}
    assert 1.0 <= reconnected_at - dropped_at < 1.2
    assert details(client, Disconnect) == [
        {"state": "ERROR", "message": LOST_CONNECTION},
        {"state": "DISCONNECTED"},
    ]
    assert client.connections == 2
    assert len(bot.calls) == 2  # the same call id, registered again
    assert len(bot.calls[1]) >= 20  # and audio flows on the new connection


async def test_backoff_grows_and_force_reconnect_skips_the_wait(nursery, autojump_clock):
    bot = RecordingBot()
    server = VoiceStreamServer(ServerConfig(), bot)
    network = MemoryNetwork(nursery, server)
    refusing = {"on": False}

    @asynccontextmanager
    async def flaky(url, headers):
        if refusing["on"]:
            raise OSError("connection refused")
        async with network.connect(url, headers) as ws:
            yield ws

    policy = ReconnectPolicy(initial_delay=2.0, factor=3.0, max_delay=60.0)
    async with open_client("ws://bot/", connector=flaky, reconnect=policy) as client:
        await client.connect()
        refusing["on"] = True
        await network.drop()
        since = await client.wait_for_state(S.RECONNECT_PENDING)  # 2 s, then refused
        since = await client.wait_for_state(S.RECONNECT_PENDING, since)  # 6 s
        waits = [
            e.pending_restart_seconds
            for e in client.history
            if isinstance(e, ConnectionChange) and e.state is S.RECONNECT_PENDING
        ]
        assert waits == [2.0, 6.0]
        refusing["on"] = False
        start = trio.current_time()
        assert client.force_reconnect_when_pending()
        await client.wait_for_state(S.CONNECTED, since)
        assert trio.current_time() - start < 0.5  # not the 6 s
        assert not client.force_reconnect_when_pending()  # nothing pending now
        await client.disconnect()
    errors = [e.message for e in client.history if isinstance(e, ConnectionChange) and e.message]
    assert errors[0] == LOST_CONNECTION
    assert "connection refused" in errors[1]


async def test_refused_key_reports_an_invalid_token_and_a_new_token_connects(
    nursery, autojump_clock
):
    server = VoiceStreamServer(ServerConfig(api_key="s3cret"), RecordingBot())
    network = MemoryNetwork(nursery, server)
    async with open_client("ws://bot/", connector=network.connect, token="expired") as client:
        with pytest.raises(AuthenticationError, match="1008"):
            await client.connect()
        assert client.states() == [S.ACQUIRING_ACCESS, S.CONNECTING, S.ERROR]
        (invalid,) = [e for e in client.history if isinstance(e, InvalidAuthenticationToken)]
        assert "authentication failed" in invalid.message
        assert details(client, Disconnect)[0]["state"] == "ERROR"
        assert len(network.server_ends) == 1  # no automatic retry with a refused key
        client.set_user_auth_token("s3cret")
        await client.connect()
        assert client.state is S.CONNECTED
        assert network.headers[-1] == [(b"x-api-key", b"s3cret")]


async def test_server_hanging_up_normally_ends_without_reconnecting(network, bot, autojump_clock):
    async with open_client("ws://bot/", connector=network.connect) as client:
        await client.connect()
        await trio.sleep(0.2)
        network.server._end_call(client.call_id, 1000, "goodbye")
        await client.wait_for_state(S.DISCONNECTED)
        await trio.sleep(5)
    assert client.states()[-1] is S.DISCONNECTED
    assert S.RECONNECT_PENDING not in client.states()
    assert details(client, Disconnect) == [
        {"state": "DISCONNECTED", "message": "call ended by the server: goodbye"}
    ]


def tone(seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(seconds * 8000)) / 8000
    return (8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


async def test_muted_client_sends_only_silence_packets(network, bot, autojump_clock):
    voice = speechlike(3.0)
    async with open_client(
        "ws://bot/", connector=network.connect, audio_input=GeneratorInput([voice])
    ) as client:
        client.mute()
        await client.connect()
        await trio.sleep(1.0)
        assert client.toggle_mute() is False
        await trio.sleep(0.5)
        assert client.toggle_mute() is True
        await trio.sleep(1.0)
        await client.disconnect()
    packets = bot.calls[0]
    loud = [index for index, packet in enumerate(packets) if packet != SILENCE]
    assert 120 <= len(packets) <= 130  # never a gap in the 20 ms stream
    assert 24 <= len(loud) <= 26  # only the 0.5 s unmuted
    assert loud == list(range(loud[0], loud[0] + len(loud)))
    # what went out while unmuted is the voice at that moment: the input played on muted
    heard = b"".join(packets[i] for i in loud)
    start = loud[0] * 160
    assert heard == mulaw.encode(voice[start : start + len(heard)])
    assert client.audio_packets - len(loud) in (0, 1)  # the last one may not have arrived


async def test_push_to_talk_sends_only_the_held_audio(network, bot, autojump_clock):
    voice = speechlike(3.0)
    async with open_client(
        "ws://bot/",
        connector=network.connect,
        audio_input=GeneratorInput([voice]),
        push_to_talk=True,
    ) as client:
        await client.connect()
        await trio.sleep(0.6)
        assert client.ptt_start() is True
        await trio.sleep(0.8)
        client.ptt_end()
        await trio.sleep(0.6)
        await client.disconnect()
    packets = bot.calls[0]
    held = [index for index, packet in enumerate(packets) if packet != SILENCE]
    assert 39 <= len(held) <= 41  # 0.8 s of 20 ms packets
    assert held == list(range(held[0], held[0] + len(held)))
    assert 29 <= held[0] <= 31  # not before the button
    heard = b"".join(packets[i] for i in held)
    assert heard == mulaw.encode(voice[held[0] * 160 : held[0] * 160 + len(heard)])


async def test_push_to_talk_must_be_chosen(network, autojump_clock):
    async with open_client("ws://bot/", connector=network.connect) as client:
        with pytest.raises(RuntimeError, match="push_to_talk=True"):
            client.ptt_start()
