"""The fleet's event bus against a real ``redis-server``: two workers' buses in one process
(two links, two holder ids), the call directory, sendMessage routing and its failures,
Redis down at start and lost during a run. End to end with ``serve`` processes:
tests/pipeline/test_bus_fleet.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
import trio
from glide import GlideClient, GlideClientConfiguration, NodeAddress

from pipeline.bot.call_directory import CallDirectory, Holder
from pipeline.bot.conversation import TurnRecord
from pipeline.bot.event_codec import event_from_json, result_from_json
from pipeline.bot.messages import (
    CallState,
    CallStateChange,
    ChatMessage,
    ConversationBus,
    MessageNew,
    SendResult,
)
from pipeline.bot.redis_bus import (
    BusAddress,
    RedisBus,
    open_redis_bus,
    serve_on_bus,
)
from pipeline.cli.serve import run_reporting_startup_errors
from pipeline.runtime.errors import ConfigError

from .conftest import RedisServer

SENT_AT = datetime(2026, 12, 3, 12, 0, 0, 123000, tzinfo=UTC)
FAST = {"ttl_s": 1.0, "heartbeat_s": 0.2}  # a killed worker is gone within a second


class FakeSpeaker:
    """A conversation that 'says' each line at once, heard in full."""

    def __init__(self) -> None:
        self.said: list[str] = []

    async def say(self, text: str, metadata: Mapping[str, Any] | None = None) -> TurnRecord:
        self.said.append(text)
        now = trio.current_time()
        return TurnRecord(
            len(self.said),
            source="operator",
            reply_text=text,
            heard_text=text,
            bot_started_at=now,
            bot_ended_at=now + 1.0,
            metadata=dict(metadata or {}),
        )


@asynccontextmanager
async def workers(url: str, count: int, **options: Any) -> AsyncIterator[list[RedisBus]]:
    """``count`` workers' buses joined on ``url``."""
    async with AsyncExitStack() as stack:
        links = [
            await stack.enter_async_context(open_redis_bus(url, ConversationBus(), **options))
            for _ in range(count)
        ]
        yield links


async def raw_client(redis: RedisServer) -> GlideClient:
    return await GlideClient.create(
        GlideClientConfiguration([NodeAddress("127.0.0.1", redis.port)])
    )


async def next_event(subscription: Any, seconds: float = 5.0) -> Any:
    with trio.fail_after(seconds):
        return await subscription.__anext__()


async def until(predicate: Any, seconds: float = 10.0) -> None:
    with trio.fail_after(seconds):
        while not await predicate():  # noqa: ASYNC110 - state in Redis or another task
            await trio.sleep(0.05)


def message(channel_id: str, content: str) -> MessageNew:
    metadata = {"role": "bot", "turn": 1}
    return MessageNew(ChatMessage("m-" + content, channel_id, content, metadata, None, SENT_AT))


# --- the wire form --------------------------------------------------------------------


def test_events_and_results_read_back_from_their_json_are_equal() -> None:
    events = [
        message("call-1", "hello"),
        CallStateChange("call-1", CallState.DISCONNECTED, "bye"),
        CallStateChange("call-2", CallState.CONNECTED),
    ]
    for event in events:
        assert event_from_json(json.loads(json.dumps(event.as_json()))) == event
    results = [SendResult.ok(message("c", "x").message), SendResult.failed(404, "no call")]
    for result in results:
        assert result_from_json(json.loads(json.dumps(result.as_json()))) == result
    for bad in [{}, {"type": "message.new", "data": {}}, {"type": "nope", "data": {}}, [1]]:
        with pytest.raises(ValueError, match="not a conversation event"):
            event_from_json(bad)
    with pytest.raises(ValueError, match="not a send result"):
        result_from_json({"status": {"error": True, "errorData": None}})


def test_bus_addresses_are_parsed_and_bad_ones_named() -> None:
    address = BusAddress.parse("redis://:s3cret@cache.internal:6380/2?prefix=bots")
    assert (address.host, address.port, address.db, address.password) == (
        "cache.internal",
        6380,
        2,
        "s3cret",
    )
    assert address.prefix == "bots"
    assert not address.tls
    assert "s3cret" not in str(address)
    assert BusAddress.parse("rediss://h").tls
    assert BusAddress.parse("valkey://h").port == 6379
    for bad in ["http://h:1", "redis://:1", "redis://h:port", "redis://h/x", "h:6379"]:
        with pytest.raises(ConfigError, match="--bus"):
            BusAddress.parse(bad)


# --- events ---------------------------------------------------------------------------


async def test_each_subscriber_sees_every_workers_events_once(redis_server: RedisServer) -> None:
    async with workers(redis_server.url, 2) as (a, b):
        with (
            a.bus.subscribe() as on_a,
            b.bus.subscribe() as on_b,
            a.bus.subscribe(["call-b"]) as only_b_on_a,
        ):
            with b.bus.open_channel("call-b", FakeSpeaker(), 0.0) as channel:
                channel.state(CallState.CONNECTED)
                b.bus.publish(message("call-b", "from b"))
                connected = await next_event(on_b)
                assert connected.state is CallState.CONNECTED
                assert await next_event(on_a) == connected
                assert (
                    await next_event(on_a) == await next_event(on_b) == message("call-b", "from b")
                )
                a.bus.publish(message("call-a", "from a"))  # after b's, on Redis too
                assert await next_event(on_b) == message("call-a", "from a")
                assert await next_event(on_a) == message("call-a", "from a")
                assert [type(await next_event(only_b_on_a)) for _ in range(2)] == [
                    CallStateChange,
                    MessageNew,
                ]
            # b's own events came back from Redis before a's: none was delivered twice
            with pytest.raises(trio.WouldBlock):
                on_b.receive_nowait()
            with pytest.raises(trio.WouldBlock):
                only_b_on_a.receive_nowait()
    assert (a.bus.received, b.bus.received) == (2, 1)


async def test_a_slow_subscriber_loses_fleet_events_counted(redis_server: RedisServer) -> None:
    async with workers(redis_server.url, 2) as (a, b):
        with a.bus.subscribe(capacity=2) as slow, a.bus.subscribe() as fast:
            for index in range(5):
                b.bus.publish(message("call-b", f"line {index}"))
            for _ in range(5):
                await next_event(fast)
            assert (slow.delivered, slow.dropped, a.bus.dropped) == (2, 3, 3)


# --- the directory --------------------------------------------------------------------


async def test_the_directory_lists_live_calls_and_forgets_a_silent_worker(
    redis_server: RedisServer,
) -> None:
    client = await raw_client(redis_server)
    try:
        async with workers(redis_server.url, 1, **FAST) as (a,):
            with a.bus.open_channel("call-1", FakeSpeaker(), 0.0):
                await until(lambda: _is(a.directory.holder_of("call-1"), a.holder.id))
                await until(lambda: _is(_fleet_calls(a), 1))  # from the next heartbeat
                fleet = await a.directory.fleet()
                assert [w["holder"] for w in fleet["detail"]] == [a.holder.id]
            await until(lambda: _is(a.directory.holder_of("call-1"), None))
            assert await a.directory.has_ended("call-1")
            assert not await a.directory.has_ended("never")
        # a worker that stops leaves at once; a killed one leaves its entries to expire
        silent = CallDirectory(client, Holder.this_process(7), prefix="voicegraph", ttl_s=0.5)
        assert await silent.holders() == []
        await silent.heartbeat(["orphan"], {"calls": 1})
        assert await silent.holder_of("orphan") == silent.holder.id
        assert [w["worker"] for w in await silent.holders()] == [7]
        await until(lambda: _is(silent.holder_of("orphan"), None), seconds=5)
        assert await silent.holders() == []
    finally:
        await client.close()


async def test_a_redial_on_another_worker_moves_the_call(redis_server: RedisServer) -> None:
    async with workers(redis_server.url, 2) as (a, b):
        with a.bus.open_channel("call-1", FakeSpeaker(), 0.0) as old:
            await until(lambda: _is(a.directory.holder_of("call-1"), a.holder.id))
            with b.bus.open_channel("call-1", FakeSpeaker(), 0.0):
                await until(lambda: _is(b.directory.holder_of("call-1"), b.holder.id))
                await until(lambda: _true("call-1" not in a.bus.live_channels()))
                assert old.replaced
                await trio.sleep(0.3)  # a's heartbeat does not take it back
                assert await b.directory.holder_of("call-1") == b.holder.id
            await until(lambda: _is(b.directory.holder_of("call-1"), None))


async def test_a_call_ended_here_and_redialled_elsewhere_is_reached_there(
    redis_server: RedisServer,
) -> None:
    async with workers(redis_server.url, 2) as (a, b):
        with a.bus.open_channel("call-2", FakeSpeaker(), 0.0):
            await until(lambda: _is(a.directory.holder_of("call-2"), a.holder.id))
        ended = await a.bus.send_message("call-2", "hello")
        assert ended.status.error_data.status_code == 410
        speaker = FakeSpeaker()
        with b.bus.open_channel("call-2", speaker, 0.0):
            await until(lambda: _is(a.directory.holder_of("call-2"), b.holder.id))
            result = await a.bus.send_message("call-2", "hello again")
        assert not result.status.error, result
        assert speaker.said == ["hello again"]


async def _fleet_calls(link: RedisBus) -> int:
    return (await link.directory.fleet())["calls"]


async def _is(value: Any, expected: Any) -> bool:
    return await value == expected


async def _true(value: bool) -> bool:
    return value


# --- sendMessage routing --------------------------------------------------------------


async def test_send_message_reaches_the_worker_that_holds_the_call(
    redis_server: RedisServer,
) -> None:
    async with workers(redis_server.url, 2) as (a, b):
        speaker = FakeSpeaker()
        with a.bus.subscribe(["call-b"]) as on_a, b.bus.open_channel("call-b", speaker, 0.0):
            await until(lambda: _is(a.directory.holder_of("call-b"), b.holder.id))
            result = await a.bus.send_message("call-b", "  Your table is ready. ", {"by": "op"})
            assert not result.status.error, result
            assert speaker.said == ["Your table is ready."]
            sent = result.response.message
            assert sent is not None
            assert (sent.channel_id, sent.metadata["by"]) == ("call-b", "op")
            assert sent.metadata["source"] == "operator"
            assert await next_event(on_a) == MessageNew(sent)  # and the fleet saw it said
        unknown = await a.bus.send_message("nobody", "hello")
        assert unknown.status.error_data.status_code == 404
        await until(lambda: _is(a.directory.holder_of("call-b"), None))
        ended = await a.bus.send_message("call-b", "too late")
        assert ended.status.error_data.status_code == 410
        assert a.router.statistics()["failed"] == {"404": 1, "410": 1}
        assert b.router.answered == 1


async def test_a_holder_that_is_gone_or_silent_gives_a_clear_failure(
    redis_server: RedisServer,
) -> None:
    client = await raw_client(redis_server)
    try:
        async with workers(redis_server.url, 1, send_timeout_s=1.2, **FAST) as (a,):
            # listed, but nobody listens on its inbox: 503 at once
            gone = CallDirectory(client, Holder.this_process(), prefix="voicegraph", ttl_s=30)
            await gone.claim("call-g")
            result = await a.bus.send_message("call-g", "hello")
            assert result.status.error_data.status_code == 503
            assert "not listening" in result.status.error_data.message
            # listening and alive, never answering: 504 after the timeout
            silent = CallDirectory(client, Holder.this_process(), prefix="voicegraph", ttl_s=30)
            await silent.heartbeat(["call-s"], {"calls": 1})
            async with _listener(redis_server, a.address.inbox_of(silent.holder.id)):
                result = await a.bus.send_message("call-s", "hello")
                assert result.status.error_data.status_code == 504
                # alive when asked, then its record expires: 503 before the timeout
                dying = CallDirectory(client, silent.holder, prefix="voicegraph", ttl_s=0.3)
                await dying.heartbeat([], {"calls": 1})
                result = await a.bus.send_message("call-s", "hello")
                assert result.status.error_data.status_code == 503
                assert "stopped" in result.status.error_data.message
    finally:
        await client.close()


@asynccontextmanager
async def _listener(redis: RedisServer, channel: str) -> AsyncIterator[None]:
    """A subscriber on ``channel`` that never answers."""
    modes = GlideClientConfiguration.PubSubChannelModes
    subscriptions = GlideClientConfiguration.PubSubSubscriptions(
        {modes.Exact: {channel}}, lambda message, context: None, None
    )
    config = GlideClientConfiguration(
        [NodeAddress("127.0.0.1", redis.port)], pubsub_subscriptions=subscriptions
    )
    subscriber = await GlideClient.create(config)
    try:
        yield
    finally:
        await subscriber.close()


# --- Redis down -----------------------------------------------------------------------


async def test_calls_go_on_while_redis_is_lost_and_the_bus_recovers(
    redis_server: RedisServer,
) -> None:
    async with workers(redis_server.url, 2, **FAST) as (a, b):
        with a.bus.subscribe() as on_a, b.bus.subscribe() as on_b:
            with b.bus.open_channel("call-b", FakeSpeaker(), 0.0) as channel:
                redis_server.stop()
                b.bus.publish(message("call-b", "while down"))
                assert await next_event(on_b) == message("call-b", "while down")  # local: at once
                said = await channel.say("still speaking", {})
                assert not said.status.error  # the call itself needs no bus
                await until(lambda: _true(not b.healthy and b.mirror_failed >= 1))
                assert b.errors >= 1
                redis_server.start()
                await until(lambda: _true(b.healthy and a.healthy), seconds=20)
                # the directory is listed again by the heartbeat, events flow again
                await until(lambda: _is(a.directory.holder_of("call-b"), b.holder.id))
                # Redis pub/sub is at most once: until a's subscription is back, what b
                # publishes is not heard there. Publish until it is.
                with trio.fail_after(15):
                    while True:
                        b.bus.publish(message("call-b", "after"))
                        with trio.move_on_after(0.3):
                            if await on_a.__anext__() == message("call-b", "after"):
                                break
            assert b.recoveries >= 1


def test_serve_with_its_bus_down_says_so_in_one_line_and_serves_nothing(
    redis_server: RedisServer,
) -> None:
    """What ``voicegraph serve --bus`` prints before it exits 2 (``main``: one line): a
    :class:`BusUnavailable` (``ServiceError``) or a ``ConfigError``, and no serving."""
    redis_server.stop()
    served: list[object] = []

    async def serve(server: object) -> None:
        served.append(server)

    on_bus = serve_on_bus(serve, redis_server.url, ConversationBus())
    message = run_reporting_startup_errors(on_bus, object())
    assert message is not None
    assert message.startswith(
        f"cannot reach the event bus at redis://127.0.0.1:{redis_server.port}"
    )
    assert served == []
    bad = run_reporting_startup_errors(serve_on_bus(serve, "http://x", ConversationBus()), None)
    assert bad == "--bus 'http://x': expected redis://HOST:PORT"
