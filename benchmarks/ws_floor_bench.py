"""Server CPU per caller message: the parrot bot against a bare trio-websocket server.

    python -m benchmarks.ws_floor_bench [--calls 50] [--seconds 20]

How much of the server's cost per 20 ms packet is ours, and how much is the floor
that trio-websocket and Trio put under any server built on them? Both servers run
as processes of their own and take the same load: ``--calls`` emulated platform
calls (``pipeline.bench.load_caller``, a process of its own) for ``--seconds``.

- baseline: a trio-websocket server that acknowledges ``connected`` and then only
  reads messages (``get_message`` in a loop): no JSON, no RTP, no audio;
- ours: ``voicegraph serve --bot parrot`` (JSON, payload, RTP, jitter buffer,
  μ-law decode, energy gate, echo).

Reported: server CPU (``/proc``) per message received, each server's projected
cores at 200 calls (10,000 messages a second), and ours over the baseline.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from pipeline.bench import Children, process_cpu_seconds, sigterm_as_exit, start_server

from .report import progress, write_report

PACKETS_PER_SECOND = 50
PROJECTED_CALLS = 200


# --- the baseline server (run as a child process) ----------------------------------------


def bare_server(port: int) -> None:
    """trio-websocket with nothing on top: acknowledge, then read every message."""
    import trio
    from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

    from pipeline.protocol import ServerProtocol

    async def handle(request: WebSocketRequest) -> None:
        ws = await request.accept()
        protocol = ServerProtocol()
        try:
            protocol.receive_message(await ws.get_message())  # connected
            await ws.send_message(protocol.acknowledge())
            while True:
                await ws.get_message()
        except ConnectionClosed:
            pass

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            servers = await nursery.start(
                lambda task_status: serve_websocket(
                    handle, "127.0.0.1", port, None, max_message_size=1 << 20,
                    task_status=task_status,
                )
            )  # fmt: skip
            bound = servers.port if hasattr(servers, "port") else port
            print(json.dumps({"event": "listening", "url": f"ws://127.0.0.1:{bound}/"}), flush=True)

    trio.run(main)


# --- one measurement ------------------------------------------------------------------


def measure(name: str, server_argv: list[str], calls: int, seconds: float) -> dict[str, Any]:
    children = Children()
    try:
        with tempfile.TemporaryDirectory(prefix="vg-wsfloor-") as tmp:
            workdir = Path(tmp)
            server, url, _ = start_server(children, server_argv, workdir)
            out = workdir / "callers.json"
            argv = [sys.executable, "-m", "pipeline.bench.load_caller", "--url", url]
            argv += ["--calls", str(calls), "--seconds", str(seconds), "--out", str(out)]
            argv += ["--greeting-wait", "0", "--prefix", f"{name}-"]
            progress(f"{name}: {calls} calls for {seconds:g} s")
            cpu_start, wall_start = process_cpu_seconds(server.pid), time.monotonic()
            caller = children.start(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            caller.wait(timeout=seconds + 120)
            cpu = process_cpu_seconds(server.pid) - cpu_start
            wall = time.monotonic() - wall_start
            report = json.loads(out.read_text())
    finally:
        children.stop_all()
    sent = sum(call["packets_sent"] for call in report["calls"])
    answered = sum(bool(call["registered"]) for call in report["calls"])
    per_message_us = 1e6 * cpu / sent if sent else math.nan
    return {
        "calls": calls,
        "answered": answered,
        "messages": sent,
        "server_cpu_s": round(cpu, 2),
        "wall_s": round(wall, 1),
        "server_cores_used": round(cpu / wall, 3),
        "cpu_us_per_message": round(per_message_us, 1),
        "projected_cores_at_200_calls": round(
            per_message_us * PROJECTED_CALLS * PACKETS_PER_SECOND / 1e6, 2
        ),
        "caller_cpu_ms_per_call_second": round(1000 * report["cpu_s"] / (calls * seconds), 2),
    }


def plot(results: dict[str, Any]) -> plt.Figure:
    figure, axis = plt.subplots(figsize=(6, 3.5))
    names = ["bare trio-websocket", "parrot bot (ours)"]
    values = [results["baseline"]["cpu_us_per_message"], results["ours"]["cpu_us_per_message"]]
    axis.bar(names, values, color=["#999999", "#1f77b4"])
    for x, value in enumerate(values):
        axis.text(x, value, f"{value:.0f} µs", ha="center", va="bottom")
    axis.set_ylim(0, max(values) * 1.15)
    axis.set_ylabel("server CPU per caller message (µs)")
    axis.set_title(f"{results['calls']} calls, {results['seconds']:g} s each, loopback")
    figure.tight_layout()
    return figure


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare_server is not None:
        bare_server(args.bare_server)
        return {}
    bare = [sys.executable, "-m", "benchmarks.ws_floor_bench", "--bare-server", "0"]
    ours = [sys.executable, "-m", "pipeline", "serve", "--bot", "parrot", "--port", "0"]
    with sigterm_as_exit():
        baseline = measure("bare", bare, args.calls, args.seconds)
        parrot = measure("parrot", ours, args.calls, args.seconds)
    results = {
        "calls": args.calls,
        "seconds": args.seconds,
        "baseline": baseline,
        "ours": parrot,
        "ours_over_baseline": round(
            parrot["cpu_us_per_message"] / baseline["cpu_us_per_message"], 2
        ),
    }
    for name, row in (("bare trio-websocket", baseline), ("parrot bot (ours)", parrot)):
        print(
            f"{name:20s} {row['cpu_us_per_message']:7.1f} µs CPU per message, "
            f"{row['projected_cores_at_200_calls']:.2f} cores at 200 calls "
            f"(answered {row['answered']}/{row['calls']}; callers "
            f"{row['caller_cpu_ms_per_call_second']:.1f} ms CPU per call-second)"
        )
    print(f"ours / baseline: {results['ours_over_baseline']:.2f}x")
    json_path, png_path = write_report("ws_floor", results, plot(results))
    print(f"wrote {json_path}\nwrote {png_path}")
    return results


if __name__ == "__main__":
    main()
