"""Per-packet CPU of an emulated caller's send side: our path against the previous one.

    python -m benchmarks.caller_packet_bench [--packets N]

A load test runs a hundred emulated callers in one process, each sending a packet
every 20 ms, and that process shares the machine with the server it loads: every
microsecond a caller spends per packet is taken from the server. Per packet a caller
builds the 12-byte RTP header, the JSON ``media`` message (the packet as a Node.js
Buffer) and a masked WebSocket frame. Both paths make byte-identical messages, and
frames a server's wsproto reads back as the same message (checked before timing):

- ``baseline``: the previous path: ``RtpPacket(...).serialize()``,
  ``encode_buffer_json`` of the whole packet, and wsproto's client serializer (an
  ``os.urandom`` call and a slice-wise XOR per frame), as ``send_message`` does;
- ``ours``: ``FIXED_HEADER.pack``, :class:`~pipeline.protocol.payload.BufferJsonCache`
  (the digits of a payload seen before are reused: silence, and turns every caller
  speaks) and :func:`~pipeline.caller.frames.masked_frame` (masks from a pool, one
  big-integer XOR).

The packets are what a caller sends: mostly silence, with turns of speech-like
audio from a few voices. The two paths run in alternating blocks so machine noise
hits both alike. Writes ``benchmarks/results/caller_packet.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from wsproto.frame_protocol import FrameProtocol, Opcode

from pipeline.caller import masked_frame
from pipeline.protocol import BufferJsonCache, encode_buffer_json
from stages import mulaw
from stages.rtp import FIXED_HEADER, PAYLOAD_TYPE_PCMU, RtpPacket

from .codec_bench import speech_like
from .report import progress, write_report

FRAME = 160
PREFIX = '{"event":"media","callId":"load-0001","payload":'
BLOCK = 500


def caller_payloads(packets: int, seed: int = 3) -> list[bytes]:
    """μ-law payloads as one caller sends them: silence, then a turn, and again."""
    turns = [mulaw.encode(speech_like(int(8000 * (1.0 + 0.1 * i)), seed + i)) for i in range(6)]
    silence = bytes([mulaw.SILENCE_BYTE]) * FRAME
    payloads: list[bytes] = []
    turn = 0
    while len(payloads) < packets:
        payloads.extend([silence] * 75)  # 1.5 s of listening
        audio = turns[turn % len(turns)]
        turn += 1
        for start in range(0, len(audio), FRAME):
            chunk = audio[start : start + FRAME]
            payloads.append(chunk + silence[len(chunk) :])
    return payloads[:packets]


def baseline_packet(
    client: FrameProtocol, sequence: int, timestamp: int, payload: bytes, wall_ms: int
) -> bytes:
    packet = RtpPacket(PAYLOAD_TYPE_PCMU, sequence, timestamp, 0x1234ABCD, payload).serialize()
    message = PREFIX + encode_buffer_json(packet) + f',"timestamp":{wall_ms}}}'
    return bytes(client.send_data(message, fin=True))


def our_packet(
    cache: BufferJsonCache, sequence: int, timestamp: int, payload: bytes, wall_ms: int
) -> bytes:
    packet = FIXED_HEADER.pack(0x80, PAYLOAD_TYPE_PCMU, sequence, timestamp, 0x1234ABCD) + payload
    message = PREFIX + cache.encode(packet) + f',"timestamp":{wall_ms}}}'
    return masked_frame(message)


def _read_back(frames: Sequence[bytes]) -> list[str]:
    server = FrameProtocol(client=False, extensions=[])
    server.receive_bytes(b"".join(frames))
    received = list(server.received_frames())
    assert all(frame.opcode is Opcode.TEXT and frame.message_finished for frame in received)
    return [frame.payload for frame in received]


def check_same_messages(payloads: Sequence[bytes]) -> None:
    """Both paths: the same messages, as the server's wsproto reads them."""
    client, cache = FrameProtocol(client=True, extensions=[]), BufferJsonCache()
    ours = [our_packet(cache, i, i * FRAME, p, 1_700_000_000_000) for i, p in enumerate(payloads)]
    theirs = [
        baseline_packet(client, i, i * FRAME, p, 1_700_000_000_000) for i, p in enumerate(payloads)
    ]
    if _read_back(ours) != _read_back(theirs):
        raise AssertionError("the two paths send different messages")


def _time_block(
    build: Callable[..., bytes], state: Any, payloads: Sequence[bytes], first: int
) -> float:
    start = time.perf_counter_ns()
    for index in range(first, first + BLOCK):
        sequence, timestamp = index & 0xFFFF, (index * FRAME) & 0xFFFF_FFFF
        build(state, sequence, timestamp, payloads[index], 1_700_000_000_000 + index)
    return (time.perf_counter_ns() - start) / BLOCK / 1000  # µs per packet


def measure(packets: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    payloads = caller_payloads(packets)
    check_same_messages(payloads[:2000])
    client, cache = FrameProtocol(client=True, extensions=[]), BufferJsonCache()
    samples: dict[str, list[float]] = {"baseline": [], "ours": []}
    progress(f"caller packets: {packets} through both paths")
    for first in range(0, packets - BLOCK + 1, BLOCK):
        samples["baseline"].append(_time_block(baseline_packet, client, payloads, first))
        samples["ours"].append(_time_block(our_packet, cache, payloads, first))
    arrays = {name: np.array(values) for name, values in samples.items()}
    results: dict[str, Any] = {
        "packets": packets,
        "block_packets": BLOCK,
        "us_per_packet": {
            name: {
                "median": round(float(np.median(values)), 2),
                "p90": round(float(np.percentile(values, 90)), 2),
            }
            for name, values in arrays.items()
        },
    }
    ours, baseline = (results["us_per_packet"][k]["median"] for k in ("ours", "baseline"))
    results["ours_over_baseline"] = round(ours / baseline, 3)
    results["saved_ms_per_call_second"] = round((baseline - ours) * 50 / 1000, 3)
    return results, arrays


def plot(samples: dict[str, np.ndarray], results: dict[str, Any]) -> plt.Figure:
    figure, axis = plt.subplots(figsize=(7, 4.2))
    names = ["baseline", "ours"]
    medians = [results["us_per_packet"][name]["median"] for name in names]
    axis.bar(names, medians, color=["#999999", "#2a7ab9"])
    for x, value in enumerate(medians):
        axis.text(x, value, f"{value:.1f} µs", ha="center", va="bottom")
    axis.set_ylabel("CPU per packet sent (µs, median of blocks)")
    axis.set_title(
        f"Emulated caller, per 20 ms packet: ours / baseline = {results['ours_over_baseline']:.2f}"
    )
    return figure


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=100_000)
    args = parser.parse_args(argv)
    results, samples = measure(args.packets)
    json_path, png_path = write_report("caller_packet", results, plot(samples, results))
    for name, figures in results["us_per_packet"].items():
        print(f"{name:9s} {figures['median']:7.2f} µs/packet (p90 {figures['p90']:.2f})")
    print(f"ours / baseline: {results['ours_over_baseline']}; wrote {json_path}, {png_path}")
    return results


if __name__ == "__main__":
    main()
