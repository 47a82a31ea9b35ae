"""``voicegraph serve --bus`` as real processes on a real ``redis-server``: two hosts' calls
seen on one ``/events`` socket, ``sendMessage`` across hosts, a host killed (SIGKILL)
without touching the other's calls, ``--workers 2`` in the fleet view.
The bus's parts one by one, and Redis down or lost: tests/pipeline/test_redis_bus.py."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from glide import GlideClient, GlideClientConfiguration, NodeAddress
from trio_websocket import WebSocketConnection, open_websocket_url

from pipeline.caller.emulator import open_call

from .conftest import RedisServer, serve_process
from .test_workers import held_calls, http_get, port_of

LIGHT_VOICE_BOT = """
# The voice bot with nothing to load but the voice: these calls never speak, so STT is a
# server that is never asked, turns end on silence alone, and the LLM echoes.
[stt]
backend = "openai"
url = "http://127.0.0.1:9"
[turns]
mode = "hangover"
turn_model = "none"
[llm]
backend = "echo"
"""
FAST_TTL = "?ttl=2"  # a killed worker leaves the directory within 2 s


class EventsSocket:
    """A dashboard on one worker's ``/events``: every message it received, in order."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []

    async def send(self, request: dict[str, Any]) -> None:
        await self.ws.send_message(json.dumps(request))

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], seconds: float = 20
    ) -> dict[str, Any]:
        """The first message (already seen or still to come) that ``predicate`` accepts."""
        for message in self.seen:
            if predicate(message):
                return message
        with trio.fail_after(seconds):
            while True:
                message = json.loads(await self.ws.get_message())
                self.seen.append(message)
                if predicate(message):
                    return message

    async def send_message(self, request_id: str, channel_id: str, content: str) -> dict:
        request = {"requestId": request_id, "channelId": channel_id, "content": content}
        await self.send({"type": "sendMessage", **request})
        return await self.wait_for(
            lambda m: m["type"] == "sendMessage.result" and m["requestId"] == request_id, 30
        )


def new_message(channel_id: str, **metadata: Any) -> Callable[[dict[str, Any]], bool]:
    def matches(event: dict[str, Any]) -> bool:
        if event["type"] != "message.new":
            return False
        message = event["data"]["message"]
        return message["channelId"] == channel_id and all(
            message["metadata"].get(key) == value for key, value in metadata.items()
        )

    return matches


async def fleet_until(port: int, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """``/health/fleet`` once ``predicate`` accepts it (30 s at most; the last one then)."""
    fleet: dict[str, Any] = {}
    with trio.move_on_after(30):
        while not predicate(fleet):
            try:
                fleet = await http_get(port, "/health/fleet")
            except (OSError, ValueError, trio.BrokenResourceError):  # a worker just killed
                fleet = {}
            await trio.sleep(0.2)
    return fleet


async def directory_entry(redis: RedisServer, call_id: str) -> str | None:
    config = GlideClientConfiguration([NodeAddress("127.0.0.1", redis.port)])
    client = await GlideClient.create(config)
    try:
        holder = await client.get(f"voicegraph:call:{call_id}")
        return None if holder is None else holder.decode()
    finally:
        await client.close()


@asynccontextmanager
async def hosts(count: int, *arguments: str) -> AsyncIterator[list[tuple[trio.Process, dict]]]:
    """``count`` ``serve`` processes started side by side (each loads its models)."""
    started: list[Any] = [None] * count
    async with AsyncExitStack() as stack:

        async def start(index: int) -> None:
            started[index] = await stack.enter_async_context(serve_process(*arguments))

        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(start, index)
        yield started


async def test_two_hosts_share_events_and_messages_and_survive_a_killed_one(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    config = tmp_path / "bot.toml"
    config.write_text(LIGHT_VOICE_BOT)
    bus = redis_server.url + FAST_TTL
    arguments = ["--config", str(config), "--bus", bus, "--log-level", "warning"]
    with trio.fail_after(120):
        async with (
            hosts(2, *arguments) as [(host_a, ready_a), (host_b, ready_b)],
            open_websocket_url(ready_a["url"] + "events") as ws,
        ):
            events = EventsSocket(ws)
            await events.send({"type": "subscribe", "channelIds": ["*"]})
            await events.wait_for(lambda m: m["type"] == "subscribed")
            async with (
                open_call(ready_a["url"], call_id="call-on-a") as call_a,
                open_call(ready_b["url"], call_id="call-on-b") as call_b,
            ):
                # the greetings of both hosts' calls, on host a's socket
                await events.wait_for(new_message("call-on-a", source="greeting"))
                await events.wait_for(new_message("call-on-b", source="greeting"))
                fleet = await fleet_until(port_of(ready_a), lambda f: f.get("calls") == 2)
                assert fleet["workers"] == 2, fleet
                assert {w["pid"] for w in fleet["detail"]} == {host_a.pid, host_b.pid}

                # an operator on host a speaks into host b's call
                heard_before = len(call_b.received)
                result = await events.send_message("r1", "call-on-b", "Your table is ready.")
                assert result["status"]["error"] is False, result
                said = result["response"]["message"]
                assert (said["channelId"], said["metadata"]["source"]) == ("call-on-b", "operator")
                await events.wait_for(new_message("call-on-b", source="operator"))
                with trio.fail_after(10):
                    while len(call_b.received) == heard_before:  # noqa: ASYNC110 - emulator's
                        await trio.sleep(0.05)
                unknown = await events.send_message("r2", "nobody", "hello")
                assert unknown["status"]["errorData"]["statusCode"] == 404

                # host b dies; host a's call, socket and bus go on
                os.kill(host_b.pid, signal.SIGKILL)
                with trio.fail_after(10):
                    await call_b.wait_closed()
                assert call_a.close_code is None
                fleet = await fleet_until(port_of(ready_a), lambda f: f.get("workers") == 1)
                assert [w["pid"] for w in fleet["detail"]] == [host_a.pid], fleet
                assert fleet["calls"] == 1
                assert await directory_entry(redis_server, "call-on-b") is None
                assert await directory_entry(redis_server, "call-on-a") is not None
                gone = await events.send_message("r3", "call-on-b", "anyone there?")
                assert gone["status"]["errorData"]["statusCode"] == 404
                still = await events.send_message("r4", "call-on-a", "Still here for you.")
                assert still["status"]["error"] is False, still
                assert call_a.close_code is None
            host_a.send_signal(signal.SIGTERM)
            assert await host_a.wait() == 0
    assert await directory_entry(redis_server, "call-on-a") is None  # it left on its way out


async def test_a_fleet_of_workers_shows_a_killed_worker_gone_and_its_restart(
    redis_server: RedisServer,
) -> None:
    arguments = ["--bot", "parrot", "--workers", "2", "--bus", redis_server.url + FAST_TTL]
    with trio.fail_after(90):
        async with serve_process(*arguments) as (process, ready):
            port = port_of(ready)
            async with held_calls(ready["url"], 6) as calls:
                fleet = await fleet_until(port, lambda f: f.get("calls") == 6)
                assert fleet["workers"] == 2, fleet
                assert sorted(w["worker"] for w in fleet["detail"]) == [0, 1]
                victim = max(fleet["detail"], key=lambda w: w["calls"])
                survivor = next(w for w in fleet["detail"] if w is not victim)
                os.kill(victim["pid"], signal.SIGKILL)
                fleet = await fleet_until(
                    port,
                    lambda f: (
                        "detail" in f and victim["holder"] not in {w["holder"] for w in f["detail"]}
                    ),
                )
                listed = {w["holder"]: w for w in fleet["detail"]}
                assert victim["holder"] not in listed, fleet
                assert listed.pop(survivor["holder"])["calls"] == survivor["calls"], fleet
                for restarted in listed.values():  # the supervisor's restart, if up already
                    assert restarted["worker"] == victim["worker"], fleet
                    assert restarted["pid"] != victim["pid"], fleet
                assert fleet["calls"] == survivor["calls"], fleet
                alive = [call for call in calls if call.close_code is None]
                assert len(alive) == survivor["calls"]
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
