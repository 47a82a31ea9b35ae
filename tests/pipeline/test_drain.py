"""Graceful drain (:mod:`pipeline.server.drain`): new calls refused with 503 before the
upgrade, ``/health`` 503 draining, live calls going on to their end or to the deadline
(then 1001), a second signal stopping at once, the process exiting 0; with ``--workers``
too. In-process parts run in virtual time over in-memory streams; the signal parts are
real ``voicegraph serve`` processes."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionRejected, open_websocket_url, wrap_client_stream

from pipeline import cli
from pipeline.caller.emulator import EmulatedCall, Impairments, open_call, register
from pipeline.protocol.platform_side import ClientProtocol
from pipeline.server.drain import DRAIN_PATH, Drain
from pipeline.server.voice_stream import ServerConfig, VoiceStreamServer

from .conftest import quiet, serve_process, speechlike, steady_parrot

KEY = "drain-test-key"


# --- in-process, virtual time -----------------------------------------------------------


@asynccontextmanager
async def draining_server(
    timeout_s: float = 30.0, **config: Any
) -> AsyncIterator[tuple[VoiceStreamServer, Drain, trio.Event]]:
    """A parrot server with a drain; the event is set once ``serve`` has returned."""
    server = VoiceStreamServer(ServerConfig(port=0, **config), steady_parrot())
    drain = Drain(server, timeout_s)
    drain.install()
    stopped = trio.Event()

    async def serve_then_mark(task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as inner:
            await inner.start(server.serve)
            task_status.started()
        stopped.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_then_mark)
        nursery.start_soon(drain.run)
        yield server, drain, stopped
        drain.stop_now()


@asynccontextmanager
async def dial(server: VoiceStreamServer, call_id: str) -> AsyncIterator[EmulatedCall]:
    """An emulated call on an in-memory stream the server handles as a connection."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_stream, server_stream)
        ws = await wrap_client_stream(nursery, client_stream, "localhost", "/")
        protocol = ClientProtocol(call_id, "9876543210")
        await register(ws, protocol)
        call = EmulatedCall(ws, protocol, payload_format="buffer", impairments=Impairments())
        nursery.start_soon(call._run)
        yield call
        if call.close_code is None:
            await ws.aclose(1000, "caller hung up")
        nursery.cancel_scope.cancel()


async def http(
    server: VoiceStreamServer, method: str, path: str, key: str | None = None
) -> tuple[int, dict[str, Any]]:
    """One plain HTTP request over an in-memory stream: status and JSON body."""
    client, server_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_stream, server_side)
        auth = f"x-api-key: {key}\r\n" if key else ""
        head = f"{method} {path} HTTP/1.1\r\nhost: x\r\n{auth}content-length: 0\r\n"
        await client.send_all(f"{head}connection: close\r\n\r\n".encode())
        response = b""
        while chunk := await client.receive_some(65536):
            response += chunk
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


async def refused_status(server: VoiceStreamServer) -> int | None:
    """The HTTP status a new call's upgrade gets (None: it was accepted)."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    status: int | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle_stream, server_stream)
            ws = await wrap_client_stream(nursery, client_stream, "localhost", "/")
            await ws.aclose()
    except* ConnectionRejected as rejected:
        status = rejected.exceptions[0].status_code  # type: ignore[attr-defined]
    return status


async def echoes(call: EmulatedCall) -> bool:
    """The caller says something; True once the parrot has said it back."""
    spoken = await call.speak(speechlike(0.6))
    with trio.move_on_after(10):
        await call.wait_for_bot_audio(spoken.speech_end_at)
        return True
    return False


async def test_a_drain_refuses_new_calls_and_waits_for_the_live_one(autojump_clock: Any) -> None:
    async with draining_server() as (server, drain, stopped), dial(server, "live") as call:
        assert await http(server, "GET", "/health") == (
            200,
            {"status": "ok", "calls": 1, "bots": ["*"]},
        )
        drain.request("test")
        await trio.sleep(0.01)
        assert server.draining
        assert await refused_status(server) == 503
        assert server.counters["refused_draining"] == 1
        status, health = await http(server, "GET", "/health")
        assert (status, health["status"], health["calls"]) == (503, "draining", 1)
        started = trio.current_time()
        assert await echoes(call), "the live call goes on while draining"
        await trio.sleep(5)
        assert not stopped.is_set(), "a live call holds the drain"
        await call.ws.aclose(1000, "caller hung up")
        with trio.fail_after(1):
            await stopped.wait()
        assert trio.current_time() - started < 30
    assert drain.outcome == "idle"
    assert [c["code"] for c in server.finished_calls] == [1000]


async def test_at_the_deadline_live_calls_are_closed_with_1001(autojump_clock: Any) -> None:
    async with draining_server(timeout_s=30) as (server, drain, stopped), dial(server, "a") as call:
        started = trio.current_time()
        drain.request("test")
        assert await call.wait_closed() == 1001
        assert call.close_reason == "server going away"
        assert 30 <= trio.current_time() - started < 30.5
        await stopped.wait()
    assert drain.outcome == "deadline"


async def test_a_second_signal_stops_at_once(autojump_clock: Any) -> None:
    async with draining_server(600) as (server, drain, stopped), dial(server, "a") as call:
        drain.on_signal(signal.SIGTERM)
        await trio.sleep(10)
        assert call.close_code is None, "the first signal only drains"
        started = trio.current_time()
        drain.on_signal(signal.SIGINT)
        assert await call.wait_closed() == 1001
        assert trio.current_time() - started < 0.5
        await stopped.wait()
    assert drain.outcome == "stopped"


async def test_a_zero_deadline_closes_at_once(autojump_clock: Any) -> None:
    async with draining_server(timeout_s=0) as (server, drain, stopped), dial(server, "a") as call:
        started = trio.current_time()
        drain.on_signal(signal.SIGTERM)
        assert await call.wait_closed() == 1001
        assert trio.current_time() - started < 0.5
        await stopped.wait()


async def test_admin_drain_needs_the_key_and_health_hides_the_count_from_others(
    autojump_clock: Any,
) -> None:
    async with draining_server(api_key=KEY) as (server, drain, stopped):
        assert await http(server, "POST", DRAIN_PATH) == (403, {"error": "forbidden"})
        assert await http(server, "POST", DRAIN_PATH, key="wrong") == (403, {"error": "forbidden"})
        assert await http(server, "GET", "/health") == (200, {"status": "ok"})
        async with dial_with_key(server, "held") as call:
            assert not drain.requested.is_set()
            status, answer = await http(server, "POST", DRAIN_PATH, key=KEY)
            assert (status, answer["status"], answer["calls"]) == (202, "draining", 1)
            await trio.sleep(1)
            assert await http(server, "GET", "/health") == (503, {"status": "draining"})
            status, health = await http(server, "GET", "/health", key=KEY)
            assert (status, health["status"], health["calls"]) == (503, "draining", 1)
            assert not stopped.is_set()
            await call.aclose(1000, "caller hung up")
            with trio.fail_after(1):
                await stopped.wait()
    assert drain.outcome == "idle"


@asynccontextmanager
async def dial_with_key(server: VoiceStreamServer, call_id: str) -> AsyncIterator[Any]:
    """A registered call that sends nothing (the key as a query parameter)."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_stream, server_stream)
        ws = await wrap_client_stream(nursery, client_stream, "localhost", f"/?token={KEY}")
        await register(ws, ClientProtocol(call_id, "9876543210"))
        yield ws
        nursery.cancel_scope.cancel()


def test_a_negative_deadline_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="0 or more"):
        Drain(VoiceStreamServer(ServerConfig(), steady_parrot()), -1)
    assert cli.main(["serve", "--bot", "parrot", "--drain-timeout", "-1"]) == 2
    assert "--drain-timeout must be 0 or more" in capsys.readouterr().err


# --- real processes: signals --------------------------------------------------------------


async def http_get(url: str, path: str) -> tuple[int, dict[str, Any]]:
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        await stream.send_all(request.encode())
        response = b""
        while chunk := await stream.receive_some(65536):
            response += chunk
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


async def health_until_draining(url: str) -> dict[str, Any]:
    """``/health`` once it says draining (the signal has been handled)."""
    while True:
        status, health = await http_get(url, "/health")
        if status == 503:
            return health
        await trio.sleep(0.05)


async def upgrade_status(url: str) -> int | None:
    """What a new call's WebSocket upgrade gets: the refusal's status, None if accepted."""
    try:
        async with open_websocket_url(url):
            return None
    except ConnectionRejected as rejected:
        return rejected.status_code


async def test_sigterm_drains_and_a_second_one_closes_what_is_left_then_exits_0() -> None:
    """The first SIGTERM: new calls 503, /health 503 draining, live calls go on, one
    ends normally (the caller hangs up). The second: the other is closed with 1001."""
    with trio.fail_after(60):
        async with serve_process("--bot", "parrot", "--drain-timeout", "600") as (process, ready):
            url = ready["url"]
            async with open_call(url, call_id="stays") as stays:
                async with open_call(url, call_id="ends") as ends:
                    await ends.speak(quiet(0.2))
                    process.send_signal(signal.SIGTERM)
                    health = await health_until_draining(url)
                    assert health == {"status": "draining", "calls": 2, "bots": ["*"]}
                    assert await upgrade_status(url) == 503
                    assert await all_echo(ends, stays), "the live calls go on"
                assert ends.close_code is None, "it ended by the caller, not cut off"
                await trio.sleep(0.5)
                assert process.returncode is None, "the drain waits for the other call"
                assert (await http_get(url, "/health"))[1]["calls"] == 1
                process.send_signal(signal.SIGTERM)
                assert await stays.wait_closed() == 1001
            assert await process.wait() == 0


async def all_echo(*calls: EmulatedCall) -> bool:
    results: list[bool] = []

    async def check(call: EmulatedCall) -> None:
        results.append(await echoes(call))

    async with trio.open_nursery() as nursery:
        for call in calls:
            nursery.start_soon(check, call)
    return results == [True] * len(calls)


# --- real processes: a fleet (--workers 2) --------------------------------------------------


async def http_post(url: str, path: str) -> tuple[int, dict[str, Any]]:
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        request = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n"
        await stream.send_all(f"{request}Connection: close\r\n\r\n".encode())
        response = b""
        while chunk := await stream.receive_some(65536):
            response += chunk
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


@pytest.mark.skipif(not hasattr(__import__("socket"), "SO_REUSEPORT"), reason="Linux")
async def test_a_fleet_drains_as_one_and_a_second_signal_closes_what_is_left() -> None:
    """``/admin/drain`` on whichever worker answers drains the whole fleet (through the
    supervisor); live calls on every worker go on, the ones that end are not replaced,
    and a SIGTERM to the parent then (the second signal) closes the rest with 1001."""
    arguments = ("--bot", "parrot", "--workers", "2", "--drain-timeout", "600")
    with trio.fail_after(90):
        async with serve_process(*arguments) as (process, ready):
            url = ready["url"]
            async with trio.open_nursery() as nursery:
                calls: dict[int, EmulatedCall] = {}
                hang_up = [trio.Event() for _ in range(4)]

                async def hold(index: int) -> None:
                    async with open_call(url, call_id=f"fleet-{index}") as call:
                        calls[index] = call
                        with trio.move_on_after(80):
                            async with trio.open_nursery() as waiting:
                                waiting.start_soon(_cancel_when, hang_up[index], waiting)
                                await call.wait_closed()
                                waiting.cancel_scope.cancel()

                for index in range(4):
                    nursery.start_soon(hold, index)
                while len(calls) < 4:  # noqa: ASYNC110 - tasks of their own
                    await trio.sleep(0.05)
                status, answer = await http_post(url, DRAIN_PATH)
                assert (status, answer["status"], answer.get("fleet")) == (202, "draining", True)
                for _ in range(4):  # each connection to whichever worker the kernel picks
                    await health_until_draining(url)
                    assert await upgrade_status(url) == 503
                    status, answer = await http_post(url, DRAIN_PATH)  # again: still a drain
                    assert (status, answer["status"]) == (202, "draining")
                assert await all_echo(*calls.values()), "the live calls go on"
                for index in (0, 1):
                    hang_up[index].set()
                await trio.sleep(1)
                assert process.returncode is None, "two live calls still hold the drain"
                process.send_signal(signal.SIGTERM)
                with trio.fail_after(10):
                    codes = [await calls[index].wait_closed() for index in (2, 3)]
                assert codes == [1001, 1001]
            assert await process.wait() == 0
            assert [calls[index].close_code for index in (0, 1)] == [None, None], "not cut off"
            for pid in ready["pids"]:  # the workers are gone too, none left behind
                with pytest.raises(ProcessLookupError):
                    os.kill(pid, 0)


async def _cancel_when(event: trio.Event, nursery: trio.Nursery) -> None:
    await event.wait()
    nursery.cancel_scope.cancel()
