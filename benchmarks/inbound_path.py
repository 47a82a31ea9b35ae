"""The transport benchmark's first part: the inbound path of one packet, in-process.

For each payload format, platform messages go through ServerProtocol.receive_message,
RtpPacket.parse, JitterBuffer.push + tick and mulaw.decode, timed per layer, against the
naive minimum a hand-written server would do, in the same run.
"""

from __future__ import annotations

import binascii
import gc
import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pipeline.bench import speech_like
from pipeline.protocol import ClientProtocol, Media, PayloadFormat, ServerProtocol
from stages import mulaw
from stages.jitter import JitterBuffer
from stages.rtp import PAYLOAD_TYPE_PCMU, RtpPacket

from .report import progress, timing_summary

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:  # the stdlib module before 3.13; the audioop-lts package installs the same name after
        import audioop
    except ImportError:  # pragma: no cover
        import audioop_lts as audioop
try:
    import orjson
except ImportError:  # pragma: no cover - a dependency, but the naive path must not need it
    orjson = None

FORMATS: tuple[PayloadFormat, ...] = ("buffer", "base64", "binary")

LAYERS = ("receive_message", "RtpPacket.parse", "JitterBuffer.push", "tick", "mulaw.decode")
FRAME = 160
BLOCK = 5_000  # packets per interleaved block
TARGET_US = 25.0
TARGET_CALLS = 200
CALL_ID = "c0ffee0123456789abcdef01"  # 24 hex characters, like the platform's
EPS = 1e-6
CLK_TCK = os.sysconf("SC_CLK_TCK")
REGISTRATION_TIMEOUT = 10.0

# --- part 1: per packet -------------------------------------------------------------


def make_messages(packets: int, payload_format: PayloadFormat, seed: int = 7) -> list[str | bytes]:
    """``media`` messages exactly as the platform's side of our protocol writes them."""
    codes = audioop.lin2ulaw(speech_like(packets * FRAME, seed).tobytes(), 2)
    client = ClientProtocol(CALL_ID, "9876543210")
    client.connect()
    return [
        client.media(
            RtpPacket(
                payload_type=PAYLOAD_TYPE_PCMU,
                sequence_number=(1000 + index) & 0xFFFF,
                timestamp=(4242 + index * FRAME) & 0xFFFF_FFFF,
                ssrc=0x5EED5EED,
                payload=codes[index * FRAME : (index + 1) * FRAME],
                marker=index == 0,
            ).serialize(),
            timestamp=1_763_700_000_000 + index * 20,
            payload_format=payload_format,
        )
        for index in range(packets)
    ]


def registered_server() -> ServerProtocol:
    """A server-side protocol past registration, as the server has it during a call."""
    server = ServerProtocol()
    server.receive_message(ClientProtocol(CALL_ID, "9876543210").connect())
    server.acknowledge()
    return server


def timer_overhead_ns(samples: int = 200_000) -> float:
    """Median cost of one clock read as it shows in an interval: subtracted from each."""
    clock = time.perf_counter_ns
    return float(np.median([-clock() + clock() for _ in range(samples)]))


class InboundPath:
    """One call's inbound state (protocol + jitter buffer) and the timed passes over it."""

    def __init__(self) -> None:
        self.server = registered_server()
        self.buffer = JitterBuffer()
        self.packets = 0

    def arrival(self) -> float:
        self.packets += 1
        return self.packets * 0.02  # 20 ms apart; ticks land on arrivals (± float noise)

    def run_total(self, messages: Sequence[str | bytes]) -> list[int]:
        clock, receive, parse = time.perf_counter_ns, self.server.receive_message, RtpPacket.parse
        push, tick, decode, buffer = self.buffer.push, self.buffer.tick, mulaw.decode, self.buffer
        out = []
        for message in messages:
            now = self.arrival()
            start = clock()
            event = receive(message)[0]
            push(parse(event.payload), now)  # type: ignore[union-attr]
            while (due := buffer.next_tick_at) is not None and due <= now + EPS:
                decode(tick(now).payload)
            out.append(clock() - start)
        return out

    def run_layers(
        self,
        messages: Sequence[str | bytes],
        per_packet: list[tuple[int, int, int]],
        per_frame: list[tuple[int, int]],
    ) -> None:
        """Append (receive, parse, push) per packet and (tick, decode) per frame, in ns."""
        clock, receive, parse = time.perf_counter_ns, self.server.receive_message, RtpPacket.parse
        push, tick, decode, buffer = self.buffer.push, self.buffer.tick, mulaw.decode, self.buffer
        for message in messages:
            now = self.arrival()
            t0 = clock()
            event = receive(message)[0]
            t1 = clock()
            packet = parse(event.payload)  # type: ignore[union-attr]
            t2 = clock()
            push(packet, now)
            t3 = clock()
            per_packet.append((t1 - t0, t2 - t1, t3 - t2))
            while (due := buffer.next_tick_at) is not None and due <= now + EPS:
                t4 = clock()
                frame = tick(now)
                t5 = clock()
                decode(frame.payload)
                t6 = clock()
                per_frame.append((t5 - t4, t6 - t5))


def naive_paths(payload_format: PayloadFormat) -> dict[str, Callable[[Any], bytes]]:
    """What a hand-written server minimally does per message, with json and with orjson."""
    ulaw2lin, a2b = audioop.ulaw2lin, binascii.a2b_base64
    if payload_format == "binary":
        return {"naive": lambda message: ulaw2lin(message[12:], 2)}
    paths = {}
    for name, loads in (("naive", json.loads), ("naive (orjson)", orjson and orjson.loads)):
        if loads is None:
            continue
        if payload_format == "buffer":
            paths[name] = lambda m, loads=loads: ulaw2lin(
                bytes(loads(m)["payload"]["data"])[12:], 2
            )
        else:
            paths[name] = lambda m, loads=loads: ulaw2lin(a2b(loads(m)["payload"])[12:], 2)
    return paths


def run_naive(function: Callable[[Any], bytes], messages: Sequence[str | bytes]) -> list[int]:
    clock = time.perf_counter_ns
    out = []
    for message in messages:
        start = clock()
        function(message)
        out.append(clock() - start)
    return out


def check_path(messages: Sequence[str | bytes]) -> None:
    """A benchmark of a broken path is worthless: our path and the naive one must agree."""
    server = registered_server()
    for message in messages[:20]:
        event = server.receive_message(message)[0]
        assert isinstance(event, Media), event
        ours = mulaw.decode(RtpPacket.parse(event.payload).payload).tobytes()
        raw = message if isinstance(message, bytes) else None
        if raw is None:
            payload = json.loads(message)["payload"]
            raw = bytes(payload["data"]) if isinstance(payload, dict) else a2b(payload)
        if ours != audioop.ulaw2lin(raw[12:], 2):
            raise AssertionError("our inbound path and the naive one decode differently")


def a2b(text: str) -> bytes:
    return binascii.a2b_base64(text)


def measure_packets(packets: int) -> dict[str, Any]:
    """Part 1: per-packet cost of every layer, every format, against the naive path."""
    mulaw.warm_up()
    progress(f"per packet: building {packets} messages in each of {', '.join(FORMATS)}")
    messages = {fmt: make_messages(packets, fmt) for fmt in FORMATS}
    for fmt in FORMATS:
        check_path(messages[fmt])
    overhead = timer_overhead_ns()
    totals = {fmt: InboundPath() for fmt in FORMATS}
    layered = {fmt: InboundPath() for fmt in FORMATS}
    naive = {fmt: naive_paths(fmt) for fmt in FORMATS}
    whole: dict[str, list[int]] = {fmt: [] for fmt in FORMATS}
    per_packet: dict[str, list[tuple[int, int, int]]] = {fmt: [] for fmt in FORMATS}
    per_frame: dict[str, list[tuple[int, int]]] = {fmt: [] for fmt in FORMATS}
    naive_ns: dict[str, dict[str, list[int]]] = {
        fmt: {name: [] for name in naive[fmt]} for fmt in FORMATS
    }
    for fmt in FORMATS:  # warm-up: a second of audio through everything, on state of its own
        InboundPath().run_total(messages[fmt][:50])
        InboundPath().run_layers(messages[fmt][:50], [], [])
        for function in naive[fmt].values():
            run_naive(function, messages[fmt][:50])
    for block, start in enumerate(range(0, packets, BLOCK)):
        progress(f"per packet: {start:>6}-{min(start + BLOCK, packets):>6} of {packets}")
        gc.collect()
        order = FORMATS[block % 3 :] + FORMATS[: block % 3]  # rotate: drift hits all alike
        for fmt in order:
            chunk = messages[fmt][start : start + BLOCK]
            whole[fmt] += totals[fmt].run_total(chunk)
            layered[fmt].run_layers(chunk, per_packet[fmt], per_frame[fmt])
            for name, function in naive[fmt].items():
                naive_ns[fmt][name] += run_naive(function, chunk)

    def net(values: Sequence[Any]) -> np.ndarray:
        return np.maximum(np.array(values, dtype=np.float64) - overhead, 0.0)

    results: dict[str, Any] = {
        "packets": packets,
        "payload_bytes": FRAME,
        "timer_overhead_ns": overhead,
        "target_median_us": TARGET_US,
        "formats": {},
    }
    for fmt in FORMATS:
        packet_ns, frame_ns = net(per_packet[fmt]), net(per_frame[fmt])
        layers = {
            "receive_message": timing_summary(packet_ns[:, 0]),
            "RtpPacket.parse": timing_summary(packet_ns[:, 1]),
            "JitterBuffer.push": timing_summary(packet_ns[:, 2]),
            "tick": timing_summary(frame_ns[:, 0]),
            "mulaw.decode": timing_summary(frame_ns[:, 1]),
        }
        ours = timing_summary(net(whole[fmt]))
        baselines = {name: timing_summary(net(values)) for name, values in naive_ns[fmt].items()}
        row: dict[str, Any] = {
            "message_bytes": len(messages[fmt][0]),
            "frames_per_packet": len(per_frame[fmt]) / packets,
            "layers": layers,
            "whole_path": ours,
            "naive": baselines,
            "meets_target": ours["median_us"] <= TARGET_US,
        }
        for name, base in baselines.items():
            key = name.replace("naive", "vs_naive").replace(" (orjson)", "_orjson")
            row[f"ratio_median_{key}"] = ours["median_us"] / base["median_us"]
            row[f"ratio_p99_{key}"] = ours["p99_us"] / base["p99_us"]
        stats = totals[fmt].buffer.statistics()
        row["jitter_buffer"] = {"played": stats.played, "concealed": stats.concealed}
        results["formats"][fmt] = row
    return results


# --- part 2: concurrent calls in real processes -------------------------------------
