"""What ``/metrics`` costs: recording one turn, one call's end, reading one live call,
one scrape; in one process and in a fleet's multiprocess mode.

    python -m benchmarks.metrics_overhead [--quick]

Nothing is recorded per packet (the server's own counters are read at collection), so
the figures that matter are per turn (histogram observations and counter increments,
in the event loop), per live call per collection (a scrape, or once a second in a
fleet) and per finished call. Multiprocess mode writes memory-mapped files, so each
mode runs in its own child process (the mode is chosen when ``prometheus_client`` is
imported). Reported: the median of repeats, microseconds.

Writes ``benchmarks/results/metrics_overhead.json`` (no plot: four numbers per mode).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from .report import progress, write_report

LIVE_CALLS = 100


def _median_us(function: Callable[[], None], repeats: int, inner: int) -> float:
    runs = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        for _ in range(inner):
            function()
        runs.append((time.perf_counter_ns() - started) / inner / 1000)
    return statistics.median(runs)


def measure(repeats: int) -> dict[str, float]:
    """Run in the child: the four costs, in this process's mode."""
    from pipeline.bot import TurnMetrics, TurnRecord
    from pipeline.server import CallStatistics, Metrics, ServerMetrics
    from stages.playout import JitterStage
    from stages.rtp import RtpDepacketizer

    class LiveCall:
        """A live call: its counters, and its statistics as :meth:`Call.statistics` builds
        them at its end (real stages)."""

        def __init__(self) -> None:
            self.stages = [RtpDepacketizer(), JitterStage()]
            self.stats = CallStatistics(3000, 2998, 0, 0, 12, 96000, 1)

        def statistics(self) -> dict[str, Any]:
            pipeline = {stage.name: stage.statistics() for stage in self.stages}
            return {
                "messages_received": 3000, "media_packets": 2998, "packets_dropped": 0,
                "interrupts_sent": 1, "speech_messages_sent": 12, "speech_bytes_sent": 96000,
                "skipped_reasons": {}, "pipeline": pipeline,
            }  # fmt: skip

    class Server:
        def __init__(self) -> None:
            self.counters = {"calls": LIVE_CALLS}
            self.front = type("Front", (), {"counters": {}})()
            self.call_observers: list[Any] = []
            self.calls = {f"call-{i}": LiveCall() for i in range(LIVE_CALLS)}

    metrics = Metrics()
    turns = TurnMetrics(metrics)
    server = Server()
    server_metrics = ServerMetrics(metrics, server)
    timings = {
        "endpointing": 610.0, "judged": 200.0, "stt": 480.0, "stt_compute": 150.0,
        "llm_first_token": 520.0, "first_clause": 600.0, "tts_first_chunk": 640.0,
        "first_send": 645.0,
    }  # fmt: skip
    record = TurnRecord(3, timings_ms=timings, end_of_turn="complete", interrupted=True)
    summary = {"code": 1000, "reason": "closed by peer", **LiveCall().statistics()}
    read_us = _median_us(server_metrics.read, repeats, 20)
    return {
        "turn_us": _median_us(lambda: turns.observe(record), repeats, 2000),
        "call_end_us": _median_us(lambda: server_metrics.call_ended(summary), repeats, 2000),
        "read_per_live_call_us": read_us / LIVE_CALLS,
        "scrape_us": _median_us(lambda: metrics.exposition(), repeats, 20),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    repeats = 3 if args.quick else 15
    if args.child:
        print(json.dumps(measure(repeats)))
        return
    results: dict[str, Any] = {"live_calls": LIVE_CALLS}
    for mode in ("single_process", "multiprocess"):
        progress(f"measuring {mode}")
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        with tempfile.TemporaryDirectory() as directory:
            if mode == "multiprocess":
                env["PROMETHEUS_MULTIPROC_DIR"] = directory
            command = [sys.executable, "-m", "benchmarks.metrics_overhead", "--child"]
            if args.quick:
                command.append("--quick")
            output = subprocess.run(command, env=env, capture_output=True, check=True, text=True)
        results[mode] = json.loads(output.stdout.strip().splitlines()[-1])
    print(json.dumps(results, indent=2))
    write_report("metrics_overhead", results)


if __name__ == "__main__":
    main()
