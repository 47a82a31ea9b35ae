"""``voicegraph serve --workers 2`` as real processes: one port, two parrot workers,
a crash restarted without touching the other worker's calls, SIGTERM stopping all."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from pipeline.bench.load_caller import noise_turns
from pipeline.caller.emulator import EmulatedCall, open_call
from pipeline.server.workers import fleet_health

from .conftest import serve_process

pytestmark = pytest.mark.skipif(not hasattr(__import__("socket"), "SO_REUSEPORT"), reason="Linux")

CALLS = 12


async def http_get(port: int, path: str) -> dict[str, Any]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        await stream.send_all(request.encode())
        response = b""
        while chunk := await stream.receive_some(65536):
            response += chunk
    return json.loads(response.partition(b"\r\n\r\n")[2])


async def fleet_until(port: int, predicate: Any) -> dict[str, Any]:
    """Poll ``/health/workers`` until ``predicate(fleet)`` (30 s: a restart on busy cores);
    the last answer otherwise. A connection reset by a worker that just died is retried."""
    fleet: dict[str, Any] = {}
    with trio.move_on_after(30):
        while True:
            try:
                fleet = await http_get(port, "/health/workers")
            except (OSError, ValueError):
                fleet = {}
            if predicate(fleet):
                break
            await trio.sleep(0.2)
    return fleet


@asynccontextmanager
async def held_calls(url: str, count: int) -> AsyncIterator[list[EmulatedCall]]:
    """``count`` registered calls, held open for the block (a call the bot drops ends)."""
    calls: list[EmulatedCall] = []
    release = trio.Event()

    async def hold(index: int) -> None:
        async with open_call(url, call_id=f"held-{index:02d}") as call:
            calls.append(call)
            with trio.move_on_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_cancel_when, release, nursery.cancel_scope)
                    await call.wait_closed()
                    nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for index in range(count):
            nursery.start_soon(hold, index)
        with trio.fail_after(20):
            while len(calls) < count:  # noqa: ASYNC110 - tasks of their own
                await trio.sleep(0.05)
        yield calls
        release.set()


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def echoed(call: EmulatedCall, turn: Any) -> bool:
    spoken = await call.speak(turn)
    with trio.move_on_after(20):
        await call.wait_for_bot_audio(spoken.speech_end_at)
        return True
    return False


def port_of(ready: dict[str, Any]) -> int:
    return int(ready["url"].rstrip("/").rsplit(":", 1)[1])


async def test_two_workers_share_the_port_and_a_crashed_one_is_restarted_alone() -> None:
    turn = noise_turns(1, seed=3)[0]
    with trio.fail_after(150):
        async with serve_process("--bot", "parrot", "--workers", "2") as (process, ready):
            assert ready["workers"] == 2
            assert len(ready["pids"]) == 2
            port = port_of(ready)
            async with held_calls(ready["url"], CALLS) as calls:
                fleet = await fleet_until(port, lambda f: f.get("calls") == CALLS)
                assert fleet["calls"] == CALLS, fleet
                per_worker = {w["index"]: w["calls"] for w in fleet["detail"]}
                assert all(count > 0 for count in per_worker.values()), per_worker
                victim = fleet["detail"][0]
                os.kill(victim["pid"], signal.SIGKILL)
                with trio.fail_after(10):  # the victim's calls end, the others' do not
                    while sum(c.close_code is not None for c in calls) < per_worker[0]:  # noqa: ASYNC110
                        await trio.sleep(0.05)
                await trio.sleep(0.5)
                alive = [call for call in calls if call.close_code is None]
                assert len(alive) == per_worker[1]
                results: list[bool] = []

                async def check(call: EmulatedCall) -> None:
                    results.append(await echoed(call, turn))

                async with trio.open_nursery() as nursery:
                    for call in alive:
                        nursery.start_soon(check, call)
                assert results == [True] * len(alive), "the other worker's calls go on"
                fleet = await fleet_until(port, lambda f: f.get("alive") == 2)
            assert fleet["restarts"] == 1, fleet
            assert fleet["alive"] == 2, fleet
            restarted = fleet["detail"][0]
            assert restarted["pid"] != victim["pid"]
            assert restarted["restarts"] == 1
            async with open_call(ready["url"], call_id="after-restart") as call:
                assert await echoed(call, turn)
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0


async def test_sigterm_stops_every_worker_gracefully() -> None:
    fleet_closing_at_once = ("--bot", "parrot", "--workers", "2", "--drain-timeout", "0")
    with trio.fail_after(60):
        async with serve_process(*fleet_closing_at_once) as (process, ready):
            async with held_calls(ready["url"], 4) as calls:
                await fleet_until(port_of(ready), lambda f: f.get("calls") == 4)
                process.send_signal(signal.SIGTERM)
                assert await process.wait() == 0
                with trio.fail_after(5):
                    for call in calls:
                        await call.wait_closed()
            assert [call.close_code for call in calls] == [1001] * 4, "going away, not dropped"
            for pid in ready["pids"]:
                with pytest.raises(ProcessLookupError):
                    os.kill(pid, 0)


def test_fleet_health_trusts_only_fresh_heartbeats_of_the_current_pids(tmp_path: Path) -> None:
    workers = [
        {"index": 0, "pid": 100, "restarts": 0, "started_at": 0.0},
        {"index": 1, "pid": 201, "restarts": 2, "started_at": 0.0},
        {"index": 2, "pid": 300, "restarts": 0, "started_at": 0.0},
    ]
    (tmp_path / "fleet.json").write_text(json.dumps({"port": 1, "workers": workers}))
    beats = [(0, 100, 3, 99.5), (1, 200, 5, 99.5), (2, 300, 4, 90.0)]  # fresh, old pid, stale
    for index, pid, calls, at in beats:
        beat = {"index": index, "pid": pid, "calls": calls, "at": at}
        (tmp_path / f"worker-{index}.json").write_text(json.dumps(beat))
    fleet = fleet_health(tmp_path, now=100.0)
    assert [worker["alive"] for worker in fleet["detail"]] == [True, False, False]
    assert (fleet["status"], fleet["alive"], fleet["calls"], fleet["restarts"]) == (
        "degraded",
        1,
        3,
        2,
    )
    assert fleet_health(tmp_path / "nowhere")["status"] == "degraded"
