"""Per-packet cost of the inbound audio path: RTP parse, jitter push + tick, μ-law decode.

    python -m benchmarks.packet_bench [--packets N] [--quick]

Every 20 ms a call delivers one packet, so what matters is the cost of one small
packet, not throughput. Each packet of a synthetic call (160-byte μ-law payloads of a
speech-like signal, arriving every 20 ms with seeded ±5 ms jitter) goes through
``RtpPacket.parse``, ``JitterBuffer.push``, every ``tick`` that became due and
``mulaw.decode`` of each frame ticked: what the depacketizer, jitter and decoder
stages do per packet, without the Trio channels between them.

Three passes see the same packets, interleaved block by block so machine noise hits
all alike:

- ``total``: one timing around the whole path (two clock reads per packet). Its
  median is a packet that released one frame; with arrival jitter straddling the
  tick grid about a fifth release none and a fifth two, hence the steps in its CDF;
- ``layers``: a clock read between layers, for the breakdown: parse and push per
  packet, tick and decode per frame ticked (about one per packet; a packet can release
  none or two when arrival jitter straddles a tick). Each interval is net of one clock
  read, measured in the same run;
- ``baseline``: the least any implementation must do: ``struct.unpack`` of the
  12-byte header plus ``audioop.ulaw2lin`` of the payload. ``total / baseline`` is
  what our layers add.

The garbage collector stays on, as in a real call: its pauses belong in the p99.
Writes ``benchmarks/results/packet.json`` and ``packet.png``.
"""

from __future__ import annotations

import argparse
import gc
import random
import struct
import time
import warnings
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from stages import mulaw
from stages.jitter import JitterBuffer
from stages.rtp import RtpPacket

from .codec_bench import speech_like
from .report import progress, timing_summary, write_report

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:  # the stdlib module before 3.13; the audioop-lts package installs the same name after
        import audioop
    except ImportError:  # pragma: no cover
        import audioop_lts as audioop

FRAME = 160
HEADER = struct.Struct("!BBHII")
TARGET_US = 10.0
BLOCK = 5_000  # packets per interleaved block


def make_call(packets: int, seed: int = 7) -> tuple[list[bytes], list[float]]:
    """Serialized RTP packets of one call and their arrival times (seconds)."""
    codes = audioop.lin2ulaw(speech_like(packets * FRAME, seed).tobytes(), 2)
    rng = random.Random(seed)
    wire = [
        RtpPacket(
            payload_type=0,
            sequence_number=index & 0xFFFF,
            timestamp=(1000 + index * FRAME) & 0xFFFF_FFFF,
            ssrc=0x5EED,
            payload=codes[index * FRAME : (index + 1) * FRAME],
        ).serialize()
        for index in range(packets)
    ]
    arrivals = [index * 0.02 + 0.005 + rng.uniform(-0.005, 0.005) for index in range(packets)]
    return wire, arrivals


def timer_overhead_ns(samples: int = 200_000) -> float:
    """Median cost of one clock read as it shows in an interval: subtracted from each."""
    clock = time.perf_counter_ns
    deltas = [-clock() + clock() for _ in range(samples)]
    return float(np.median(deltas))


def run_total(buffer: JitterBuffer, wire: Sequence[bytes], arrivals: Sequence[float]) -> list[int]:
    clock, parse, decode = time.perf_counter_ns, RtpPacket.parse, mulaw.decode
    push, tick = buffer.push, buffer.tick
    out = []
    for data, arrival in zip(wire, arrivals, strict=True):
        start = clock()
        push(parse(data), arrival)
        while (due := buffer.next_tick_at) is not None and due <= arrival:
            decode(tick(arrival).payload)
        out.append(clock() - start)
    return out


def run_layers(
    buffer: JitterBuffer,
    wire: Sequence[bytes],
    arrivals: Sequence[float],
    per_packet: list[tuple[int, int]],
    per_frame: list[tuple[int, int]],
) -> None:
    """Append (parse, push) per packet and (tick, decode) per frame, raw nanoseconds."""
    clock, parse, decode = time.perf_counter_ns, RtpPacket.parse, mulaw.decode
    push, tick = buffer.push, buffer.tick
    for data, arrival in zip(wire, arrivals, strict=True):
        t0 = clock()
        packet = parse(data)
        t1 = clock()
        push(packet, arrival)
        t2 = clock()
        per_packet.append((t1 - t0, t2 - t1))
        while (due := buffer.next_tick_at) is not None and due <= arrival:
            t3 = clock()
            frame = tick(arrival)
            t4 = clock()
            decode(frame.payload)
            t5 = clock()
            per_frame.append((t4 - t3, t5 - t4))


def run_baseline(wire: Sequence[bytes]) -> list[tuple[int, int]]:
    """(header unpack, audioop decode) per packet, raw nanoseconds."""
    clock, unpack, ulaw2lin = time.perf_counter_ns, HEADER.unpack_from, audioop.ulaw2lin
    out = []
    for data in wire:
        t0 = clock()
        unpack(data)
        t1 = clock()
        ulaw2lin(data[12:], 2)
        t2 = clock()
        out.append((t1 - t0, t2 - t1))
    return out


def measure(packets: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    mulaw.warm_up()
    progress(f"building a call of {packets} packets ({packets * 0.02:.0f} s of audio)")
    wire, arrivals = make_call(packets)
    overhead = timer_overhead_ns()
    total_buffer, layer_buffer = JitterBuffer(), JitterBuffer()
    # warm-up: a second of audio through everything, on buffers of its own
    run_total(JitterBuffer(), wire[:50], arrivals[:50])
    run_layers(JitterBuffer(), wire[:50], arrivals[:50], [], [])
    run_baseline(wire[:50])
    totals: list[int] = []
    per_packet: list[tuple[int, int]] = []
    per_frame: list[tuple[int, int]] = []
    baseline: list[tuple[int, int]] = []
    for start in range(0, packets, BLOCK):
        progress(f"packets {start:>7}-{min(start + BLOCK, packets):>7} of {packets}")
        block = slice(start, start + BLOCK)
        gc.collect()
        totals += run_total(total_buffer, wire[block], arrivals[block])
        run_layers(layer_buffer, wire[block], arrivals[block], per_packet, per_frame)
        baseline += run_baseline(wire[block])

    # every interval holds one clock read's worth of overhead: take it out
    packet_ns = np.maximum(np.array(per_packet, dtype=np.float64) - overhead, 0.0)
    frame_ns = np.maximum(np.array(per_frame, dtype=np.float64) - overhead, 0.0)
    base = np.maximum(np.array(baseline, dtype=np.float64) - overhead, 0.0)
    samples = {
        "parse": packet_ns[:, 0],
        "push": packet_ns[:, 1],
        "tick (per frame)": frame_ns[:, 0],
        "decode (per frame)": frame_ns[:, 1],
        "ours (total)": np.maximum(np.array(totals, dtype=np.float64) - overhead, 0.0),
        "header struct.unpack": base[:, 0],
        "audioop.ulaw2lin": base[:, 1],
    }
    samples["baseline (sum)"] = base[:, 0] + base[:, 1]

    summaries = {name: timing_summary(values) for name, values in samples.items()}
    ours, floor = summaries["ours (total)"], summaries["baseline (sum)"]
    stats = total_buffer.statistics()
    results = {
        "packets": packets,
        "payload_bytes": FRAME,
        "timer_overhead_ns": overhead,
        "frames_per_packet": len(per_frame) / packets,
        "per_packet": summaries,
        "ratio_median_vs_baseline": ours["median_us"] / floor["median_us"],
        "ratio_p99_vs_baseline": ours["p99_us"] / floor["p99_us"],
        "decode_median_ours_vs_audioop": (
            summaries["decode (per frame)"]["median_us"]
            / summaries["audioop.ulaw2lin"]["median_us"]
        ),
        "target_median_us": TARGET_US,
        "meets_target": ours["median_us"] <= TARGET_US,
        "jitter_buffer": {
            "played": stats.played,
            "concealed": stats.concealed,
            "late": stats.late,
            "held": stats.held,
            "skipped": stats.skipped,
            "delay_s": stats.delay,
            "jitter_s": stats.jitter,
        },
    }
    return results, samples


def plot(samples: dict[str, np.ndarray], results: dict[str, Any]) -> plt.Figure:
    figure, (cdf, bars) = plt.subplots(1, 2, figsize=(12, 4.6))
    styles = {
        "ours (total)": ("k", "-", 2.2),
        "baseline (sum)": ("gray", "--", 2.2),
        "header struct.unpack": ("gray", ":", 1.2),
        "audioop.ulaw2lin": ("gray", "-.", 1.2),
    }
    for name, values in samples.items():
        us = np.sort(values) / 1000.0
        color, line, width = styles.get(name, (None, "-", 1.4))
        fraction = np.arange(1, len(us) + 1) / len(us)
        cdf.plot(us, fraction, color=color, linestyle=line, linewidth=width, label=name)
    cdf.axvline(TARGET_US, color="red", linewidth=0.8, label=f"target {TARGET_US:g} µs")
    cdf.set_xscale("log")
    cdf.set_xlim(left=0.05)
    cdf.set_xlabel("cost per packet (µs, log)")
    cdf.set_ylabel("fraction of packets")
    cdf.set_title("CDF of per-packet cost, by layer")
    cdf.grid(True, which="both", alpha=0.3)
    cdf.legend(fontsize=8, loc="lower right")

    names = list(results["per_packet"])
    medians = [results["per_packet"][name]["median_us"] for name in names]
    p99s = [results["per_packet"][name]["p99_us"] for name in names]
    x = np.arange(len(names))
    bars.bar(x - 0.2, medians, 0.4, label="median")
    bars.bar(x + 0.2, p99s, 0.4, label="p99")
    bars.axhline(TARGET_US, color="red", linewidth=0.8)
    bars.set_xticks(x, names, rotation=35, ha="right", fontsize=8)
    bars.set_ylabel("µs per packet")
    bars.set_title("median and p99")
    bars.legend()
    figure.suptitle(
        f"Inbound path per 20 ms packet ({results['packets']} packets): "
        f"ours {results['per_packet']['ours (total)']['median_us']:.2f} µs median, "
        f"{results['ratio_median_vs_baseline']:.1f}× the struct+audioop floor"
    )
    figure.tight_layout()
    return figure


def print_table(results: dict[str, Any]) -> None:
    print(f"\nper-packet cost, {results['packets']} packets of 20 ms (µs)")
    print(f"{'layer':>22} | {'median':>7} | {'p90':>7} | {'p99':>7} | {'p99.9':>7} | {'mean':>7}")
    for name, row in results["per_packet"].items():
        print(
            f"{name:>22} | {row['median_us']:7.2f} | {row['p90_us']:7.2f} | "
            f"{row['p99_us']:7.2f} | {row['p999_us']:7.2f} | {row['mean_us']:7.2f}"
        )
    print(
        f"\nours / baseline: {results['ratio_median_vs_baseline']:.1f}× at the median, "
        f"{results['ratio_p99_vs_baseline']:.1f}× at p99; clock read "
        f"{results['timer_overhead_ns']:.0f} ns (subtracted per interval)"
    )
    verdict = "met" if results["meets_target"] else "NOT met"
    print(f"target (median <= {TARGET_US:g} µs per packet): {verdict}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=100_000, help="packets to time")
    parser.add_argument("--quick", action="store_true", help="10,000 packets")
    args = parser.parse_args(argv)
    packets = 10_000 if args.quick else args.packets
    results, samples = measure(packets)
    print_table(results)
    json_path, png_path = write_report("packet", results, plot(samples, results))
    print(f"wrote {json_path} and {png_path}")
    return results


if __name__ == "__main__":
    main()
