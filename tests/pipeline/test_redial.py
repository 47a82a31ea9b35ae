"""A platform re-dialling a live callId: the new connection replaces the old one (closed
1008 "replaced by a new connection"), the server and the conversation bus track the
new one, and shutdown still closes every live connection with 1001. Real WebSockets
on loopback, the parrot bot (or a parrot that opens a conversation channel)."""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from pipeline.bot.conversation import TurnRecord
from pipeline.bot.events_socket import serve_events
from pipeline.bot.messages import CallState, CallStateChange, ConversationBus, Subscription
from pipeline.bot.parrot import ParrotBot
from pipeline.caller.emulator import converse, open_call
from pipeline.server.call import Call
from pipeline.server.voice_stream import ServerConfig, VoiceStreamServer
from stages import mulaw

from .conftest import quiet, serve_process, speechlike, start_server, steady_parrot

REPLACED = "replaced by a new connection"


async def health_calls(url: str) -> int:
    address = url.removeprefix("ws://").rstrip("/")
    async with httpx.AsyncClient() as client:
        return (await client.get(f"http://{address}/health")).json()["calls"]


async def close_code(ws: WebSocketConnection) -> int | None:
    """Read until the server closes ``ws``; its close code."""
    try:
        while True:
            await ws.get_message()
    except ConnectionClosed as closed:
        return closed.reason.code


async def test_a_redial_replaces_the_live_call_and_the_old_connection_hears_why(parrot):
    server, url = parrot
    with trio.fail_after(20):
        async with open_call(url, call_id="re-1") as first:
            first_call = server.calls["re-1"]
            async with open_call(url, call_id="re-1") as second:
                assert await first.wait_closed() == 1008
                assert first.close_reason == REPLACED
                assert server.calls["re-1"] is not first_call
                (report,) = await converse(second, [("again", speechlike(0.6))], pause=0.2)
                assert report.bot_messages == 1  # the new connection is a working call
                assert second.close_code is None
    await trio.sleep(0.1)
    assert server.counters["replaced"] == 1
    assert [(c["code"], c["reason"]) for c in server.finished_calls] == [
        (1008, REPLACED),
        (1000, "closed by peer"),
    ]


async def test_ending_the_first_connection_leaves_the_second_tracked(parrot, nursery):
    server, url = parrot
    registered, hang_up, hung_up = trio.Event(), trio.Event(), trio.Event()

    async def first_connection() -> None:
        async with open_call(url, call_id="re-2"):
            registered.set()
            await hang_up.wait()  # then the platform hangs the old connection up too
        hung_up.set()

    with trio.fail_after(20):
        nursery.start_soon(first_connection)
        await registered.wait()
        async with open_call(url, call_id="re-2") as second:
            second_call = server.calls["re-2"]
            hang_up.set()
            await hung_up.wait()
            await trio.sleep(0.2)
            assert server.calls == {"re-2": second_call}
            assert await health_calls(url) == 1
            (report,) = await converse(second, [("still", speechlike(0.6))], pause=0.2)
            assert report.bot_messages == 1
            assert second_call.statistics()["speech_messages_sent"] == 1
            assert server.calls == {"re-2": second_call}
        await trio.sleep(0.2)
    assert server.calls == {}
    assert await health_calls(url) == 0


async def test_shutdown_closes_every_live_connection_with_1001(nursery):
    server = VoiceStreamServer(ServerConfig(port=0), steady_parrot())
    events_route = partial(serve_events, bus=ConversationBus(), api_key=None)
    server.add_websocket_route("/events", events_route)
    stopped = trio.Event()

    async def serve(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        await server.serve(task_status=task_status)
        stopped.set()

    listening = await nursery.start(serve)
    url = f"ws://127.0.0.1:{listening.port}/"
    with trio.fail_after(20):
        async with (
            open_call(url, call_id="other") as other,
            open_call(url, call_id="re-3") as replaced,
            open_call(url, call_id="re-3") as redialled,
            open_websocket_url(url) as unregistered,  # connected, never said "connected"
            open_websocket_url(url + "events") as events,
        ):
            assert await replaced.wait_closed() == 1008
            await redialled.speak(quiet(0.2))
            server.shutdown()
            with trio.fail_after(5):  # not the 10 s registration deadline
                assert await other.wait_closed() == 1001
                assert await redialled.wait_closed() == 1001
                assert await close_code(unregistered) == 1001
                assert await close_code(events) == 1001
                await stopped.wait()
    assert server.calls == {}
    assert sorted(c["code"] for c in server.finished_calls) == [1001, 1001, 1008]


async def test_sigterm_after_a_redial_closes_the_live_call_with_1001_and_exits_0():
    with trio.fail_after(60):
        async with serve_process("--bot", "parrot", "--drain-timeout", "0") as (process, ready):
            async with (
                open_call(ready["url"], call_id="re-5") as first,
                open_call(ready["url"], call_id="re-5") as second,
            ):
                assert await first.wait_closed() == 1008
                await second.speak(quiet(0.2))
                process.send_signal(signal.SIGTERM)
                assert await second.wait_closed() == 1001
            assert await process.wait() == 0


# --- the conversation bus -------------------------------------------------------------


class CallSpeaker:
    """An operator's line, 'spoken' straight into the call as a short tone."""

    def __init__(self, call: Call) -> None:
        self.call = call

    async def say(self, text: str, metadata: Mapping[str, Any] | None = None) -> TurnRecord:
        started = trio.current_time()
        await self.call.send_speech(mulaw.encode(speechlike(0.3)))
        return TurnRecord(
            1,
            source="operator",
            reply_text=text,
            heard_text=text,
            bot_started_at=started,
            bot_ended_at=trio.current_time(),
            metadata=dict(metadata or {}),
        )


@dataclass
class ChannelParrot(ParrotBot):
    """The parrot, with each call open as a conversation channel, the way the voice bot does."""

    bus: ConversationBus = field(default_factory=ConversationBus)

    async def handle_call(self, call: Call) -> None:
        with self.bus.open_channel(call.call_id, CallSpeaker(call), call.started_at) as channel:
            channel.state(CallState.CONNECTED)
            try:
                await super().handle_call(call)
            finally:
                channel.state(CallState.DISCONNECTED)


def states(events: Subscription) -> list[CallState]:
    seen = []
    while True:
        try:
            event = events.receive_nowait()
        except trio.WouldBlock:
            return seen
        if isinstance(event, CallStateChange):
            seen.append(event.state)


async def test_the_bus_ends_the_replaced_channel_and_keeps_the_new_one_live(nursery):
    bot = ChannelParrot(jitter=steady_parrot().jitter)
    bus = bot.bus
    _, url = await start_server(nursery, bot)
    with bus.subscribe(["re-4"]) as events, trio.fail_after(20):
        async with open_call(url, call_id="re-4") as first:
            async with open_call(url, call_id="re-4") as second:
                assert await first.wait_closed() == 1008
                await trio.sleep(0.2)
                assert states(events) == [
                    CallState.CONNECTED,
                    CallState.DISCONNECTED,  # the replaced connection's channel ended
                    CallState.CONNECTED,  # and the callId's channel is live again
                ]
                assert bus.live_channels() == ["re-4"]
                asked_at = trio.current_time()
                result = await bus.send_message("re-4", "Are you back?")
                assert result.status.error is False, result.as_json()
                await second.wait_for_bot_audio(asked_at)  # the operator reaches the new one
                assert first.bot_audio_since(asked_at) == []
        await trio.sleep(0.2)
        assert states(events) == [CallState.DISCONNECTED]
    assert bus.live_channels() == []
    ended = await bus.send_message("re-4", "Hello?")
    assert ended.status.error_data is not None
    assert ended.status.error_data.status_code == 410
