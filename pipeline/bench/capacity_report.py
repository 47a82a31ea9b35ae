"""How ``bench capacity`` shows a ramp: the table on stdout and the two plots."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.bench.report import cpu_model, table

__all__ = ["plot", "print_rows"]


def print_rows(rows: Sequence[dict[str, Any]], best: int | None, args: argparse.Namespace) -> None:
    workers = f", {args.workers} server workers" if args.workers > 1 else ""
    print(
        f"\n{args.bot} bot capacity over loopback, {os.cpu_count()} cores ({cpu_model()}){workers}"
    )
    header = [
        "calls",
        "answered",
        "dropped",
        "late %",
        "srv ms CPU/call-s",
        "srv cores",
        "turns",
        "v2v p50",
        "v2v p95",
        "PSS MB",
        "target",
    ]
    body = [
        [
            row["calls_placed"],
            f"{row['calls_answered']}/{row['calls_placed']}",
            row["packets_dropped"],
            row.get("late_packets_pct"),
            row["server_cpu_ms_per_call_second"],
            None if row["server_cores_used"] is None else f"{row['server_cores_used']:.2f}",
            f"{row['turns_answered']}/{row['turns_spoken']}",
            row["voice_to_voice_ms"]["p50"],
            row["voice_to_voice_ms"]["p95"],
            row.get("server_pss_mb"),
            "met" if row["meets_target"] else "missed",
        ]
        for row in rows
    ]
    print(table(header, body))
    goal = "zero drops" if args.max_drops == 0 else f"<= {args.max_drops} drops"
    if args.max_late_pct is not None:
        goal += f", <= {args.max_late_pct:g}% late"
    goal += f", voice-to-voice p95 <= {args.target_p95:g} s, every call answered"
    answer = "none" if best is None else str(best)
    print(f"\nlargest number of concurrent calls meeting the target ({goal}): {answer}")
    idle = getattr(args, "idle_memory", None)
    if idle:
        print(f"server memory with its models, no call: RSS {idle['rss']} MB, PSS {idle['pss']} MB")


def plot(rows: Sequence[dict[str, Any]], args: argparse.Namespace) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (cpu_axis, latency_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    calls = [row["calls_placed"] for row in rows]
    cpu_axis.plot(
        calls, [row["server_cpu_ms_per_call_second"] for row in rows], "o-", label="server"
    )
    cpu_axis.plot(
        calls,
        [row["caller_cpu_ms_per_call_second"] for row in rows],
        "s:",
        label="callers (emulator)",
    )
    cores = cpu_axis.twinx()
    cores.plot(
        calls,
        [row["server_cores_used"] for row in rows],
        "^--",
        color="gray",
        label="server cores used",
    )
    cores.set_ylabel("server cores used")
    cores.set_ylim(bottom=0)
    cores.legend(fontsize=8, loc="upper right")
    cpu_axis.set_xlabel("concurrent calls")
    cpu_axis.set_ylabel("CPU ms per call-second")
    cpu_axis.set_ylim(bottom=0)
    cpu_axis.set_title("CPU per call-second")
    cpu_axis.legend(fontsize=8, loc="upper left")
    cpu_axis.grid(True, alpha=0.3)
    for key, label in (("p50", "voice-to-voice p50"), ("p95", "voice-to-voice p95")):
        values = [row["voice_to_voice_ms"][key] for row in rows]
        latency_axis.plot(calls, [np.nan if v is None else v for v in values], "o-", label=label)
    latency_axis.axhline(
        args.target_p95 * 1000,
        color="red",
        linewidth=0.8,
        label=f"target p95 {args.target_p95:g} s",
    )
    for row in rows:
        if row["packets_dropped"] or not row["meets_target"]:
            latency_axis.annotate(
                f"{row['packets_dropped']} dropped",
                (row["calls_placed"], row["voice_to_voice_ms"]["p95"] or 0),
                fontsize=7,
                textcoords="offset points",
                xytext=(0, 8),
                ha="center",
            )
    latency_axis.set_xlabel("concurrent calls")
    latency_axis.set_ylabel("ms (caller side)")
    latency_axis.set_ylim(bottom=0)
    latency_axis.set_title("voice-to-voice at the callers")
    latency_axis.legend(fontsize=8)
    latency_axis.grid(True, alpha=0.3)
    figure.suptitle(
        f"voicegraph bench capacity: {args.bot} bot, {args.seconds:g} s calls, "
        f"{os.cpu_count()} cores ({cpu_model()})",
        fontsize=10,
    )
    figure.tight_layout()
    return figure
