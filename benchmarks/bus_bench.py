"""The fleet's event bus (``serve --bus``) on a real ``redis-server`` on loopback: what
sharing an event or routing an operator's line across workers costs, against the same
thing in one process (the baseline: ``ConversationBus`` without a link).

    python -m benchmarks.bus_bench [--quick]

Two workers' buses joined by two :class:`~pipeline.bot.redis_bus.RedisBus` links in one
process (one Trio loop: both ends' work is on the clock, which a two-process fleet would
spread over two cores). Measured:

- **event latency**: a ``message.new`` published on worker b, received by a subscriber on
  worker a (JSON out, Redis, JSON in, typed again), paced at ``--rate`` events/s, against
  a subscriber on b itself;
- **event throughput**: 1,000 to 20,000 events/s offered on b for a few seconds each:
  what reaches a, and how many were dropped (counted, never silent) when the outbox
  filled;
- **routed sendMessage**: an operator on a asks for a line in a call held by b, with a
  speaker that says it at once (so only routing is timed), against the same on b.

Writes ``benchmarks/results/bus.json`` and ``bus.png``.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import trio

from pipeline.bot import ChatMessage, ConversationBus, MessageNew, TurnRecord, open_redis_bus

from .report import progress, timing_summary, write_report


class InstantSpeaker:
    """Says every line at once: routing is all that is timed."""

    async def say(self, text: str, metadata: Mapping[str, Any] | None = None) -> TurnRecord:
        now = trio.current_time()
        return TurnRecord(
            1, source="operator", reply_text=text, heard_text=text, bot_started_at=now
        )


def start_redis() -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, port
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.02)


def event(index: int) -> MessageNew:
    metadata = {"role": "bot", "turn": index, "latencyMs": {"tts": 41.5, "llm": 230.0}}
    return MessageNew(ChatMessage(f"m{index}", "call-b", "Your table is ready. " * 3, metadata))


async def event_latency(a: Any, b: Any, count: int, rate: float) -> dict[str, np.ndarray]:
    remote, local = np.zeros(count), np.zeros(count)
    with a.bus.subscribe(capacity=count) as on_a, b.bus.subscribe(capacity=count) as on_b:
        for index in range(count):
            started = time.perf_counter_ns()
            b.bus.publish(event(index))
            await on_b.__anext__()
            local[index] = time.perf_counter_ns() - started
            with trio.fail_after(5):
                await on_a.__anext__()
            remote[index] = time.perf_counter_ns() - started
            await trio.sleep(1 / rate)
    return {"remote": remote, "local": local}


async def offered_load(a: Any, b: Any, rate: float, seconds: float) -> dict[str, float]:
    """Publish ``rate`` events/s on b for ``seconds`` (in 10 ms ticks, as many calls
    would); what reached a's subscriber, what was dropped on the way (counted: b's outbox
    full or Redis refusing, a's inbox full), and what went missing uncounted (none, we
    expect: the figure checks it)."""
    count = int(rate * seconds)
    per_tick = max(1, round(rate / 100))

    def dropped() -> int:
        return b.mirror_dropped + b.mirror_failed + a.inbox_dropped

    with a.bus.subscribe(capacity=count + 1) as on_a:
        dropped_before = dropped()
        started = trio.current_time()
        for index in range(count):
            b.bus.publish(event(index))
            if index % per_tick == per_tick - 1:
                await trio.sleep_until(started + (index + 1) / rate)
        received = 0
        with trio.move_on_after(10):
            while received + dropped() - dropped_before < count:
                with trio.move_on_after(0.1):
                    await on_a.__anext__()
                    received += 1
        lost = dropped() - dropped_before
        return {"offered_per_s": rate, "events": count, "received": received, "dropped": lost,
                "missing": count - received - lost,
                "received_per_s": received / (trio.current_time() - started)}  # fmt: skip


async def routed_send(a: Any, b: Any, count: int) -> dict[str, np.ndarray]:
    remote, local = np.zeros(count), np.zeros(count)
    with b.bus.open_channel("call-b", InstantSpeaker(), trio.current_time()):
        with trio.fail_after(5):
            while await a.directory.holder_of("call-b") != b.holder.id:  # noqa: ASYNC110
                await trio.sleep(0.01)
        for index in range(count):
            started = time.perf_counter_ns()
            result = await a.bus.send_message("call-b", f"line {index}")
            remote[index] = time.perf_counter_ns() - started
            assert not result.status.error, result.as_json()
            started = time.perf_counter_ns()
            result = await b.bus.send_message("call-b", f"line {index}")
            local[index] = time.perf_counter_ns() - started
            assert not result.status.error, result.as_json()
    return {"remote": remote, "local": local}


async def measure(port: int, quick: bool, rate: float) -> dict[str, Any]:
    url = f"redis://127.0.0.1:{port}"
    count = 300 if quick else 2000
    async with (
        open_redis_bus(url, ConversationBus()) as a,
        open_redis_bus(url, ConversationBus()) as b,
    ):
        progress("event latency")
        latency = await event_latency(a, b, count, rate)
        progress("offered load")
        burst = [
            await offered_load(a, b, rate, 1.0 if quick else 3.0)
            for rate in (1000, 2000, 5000, 10000, 20000)
        ]
        progress("routed sendMessage")
        sends = await routed_send(a, b, count // 2)
    return {"latency": latency, "burst": burst, "sends": sends}


def figure(data: dict[str, Any]) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, (key, title) in zip(
        axes, [("latency", "message.new to a subscriber"), ("sends", "sendMessage")], strict=True
    ):
        for side, label in [("local", "same worker (baseline)"), ("remote", "other worker")]:
            values = np.sort(data[key][side] / 1e6)
            axis.plot(values, np.linspace(0, 1, len(values)), label=label)
        axis.set_xscale("log")
        axis.set_xlabel("milliseconds")
        axis.set_ylabel("fraction")
        axis.set_title(title)
        axis.legend(loc="lower right")
    fig.suptitle("Event bus on Redis (loopback), one process, two workers")
    fig.tight_layout()
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer events (a smoke run)")
    parser.add_argument("--rate", type=float, default=200.0, help="paced events per second")
    args = parser.parse_args()
    process, port = start_redis()
    try:
        data = trio.run(measure, port, args.quick, args.rate)
    finally:
        process.kill()
        process.wait()
    summary = {
        "event_latency": {
            side: timing_summary(data["latency"][side]) for side in ("local", "remote")
        },
        "event_load": data["burst"],
        "send_message": {side: timing_summary(data["sends"][side]) for side in ("local", "remote")},
    }
    for key in ("event_latency", "send_message"):
        local, remote = summary[key]["local"], summary[key]["remote"]
        summary[key]["ratio_median"] = remote["median_us"] / local["median_us"]
    summary["quick"] = args.quick
    json_path, png_path = write_report("bus", summary, figure(data))
    print(f"wrote {json_path} and {png_path}")
    for key in ("event_latency", "send_message"):
        local, remote = summary[key]["local"], summary[key]["remote"]
        print(
            f"{key}: other worker median {remote['median_us'] / 1000:.2f} ms, "
            f"p99 {remote['p99_us'] / 1000:.2f} ms; same worker median "
            f"{local['median_us'] / 1000:.3f} ms"
        )
    for load in summary["event_load"]:
        print(
            f"offered {load['offered_per_s']:.0f}/s: received {load['received_per_s']:.0f}/s, "
            f"dropped {load['dropped']} of {load['events']} (counted), missing {load['missing']}"
        )


if __name__ == "__main__":
    main()
