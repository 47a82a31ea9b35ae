"""Load-generator worker for the transport benchmark: N emulated platform calls, one Trio loop.

    python -m benchmarks.load_caller --url ws://127.0.0.1:PORT/ --calls N --seconds S --out F.json

It runs in a process of its own so the callers never share an interpreter (or a
GIL) with the server they measure; ``benchmarks.transport_bench`` starts one or two
of these. Each call is what the platform does: it dials with
:func:`pipeline.emulator.open_call`, registers, then streams 20 ms RTP packets
without pause, speaking a 1-1.5 s speech-like turn about every 5 s (at a random
phase, so calls do not all speak at once) and silence in between; the parrot bot
says each turn back. Connections are ramped over ``--ramp`` seconds, as calls
arrive on a real server, rather than all in one instant.

Per call it records whether it was answered (registered), how long registration
took, turns spoken, echoes received and their latency (end of the caller's speech
to the first byte of the echo), packets sent, and how the call ended. It also
records its own CPU time and how late its event loop woke up: a caller process
that falls behind sends packets in bursts, and then the load offered is not the
load asked for. Every call and the whole worker have deadlines, so it always ends.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import trio

from pipeline.emulator import EmulatedCall, RegistrationError, open_call

TURN_EVERY_S = 5.0
TURN_SECONDS = (1.0, 1.5)
ECHO_WAIT_S = 2.0  # the parrot answers ~0.7 s after a turn: leave room before hanging up
LAG_PROBE_S = 0.01
TEARDOWN_S = 10.0  # a call not gone this long after its hang-up time is abandoned
SAMPLE_RATE = 8000


@dataclass(slots=True)
class CallRecord:
    """What one emulated call saw; times in ms, offsets from the worker's start in s."""

    call_id: str
    dialled_at_s: float = math.nan
    registered: bool = False
    registration_ms: float | None = None
    connected_s: float = 0.0  # registration to hang-up (or to the bot closing)
    turns_spoken: int = 0
    echoes: int = 0
    echo_latency_ms: list[float] = field(default_factory=list)
    packets_sent: int = 0
    hang_up_ms: float | None = None  # our close handshake (and the emulator's teardown)
    close_code: int | None = None  # the bot's close code; None: we hung up (1000)
    close_reason: str | None = None
    error: str | None = None


def speech_like(samples: int, seed: int) -> np.ndarray:
    """8 kHz int16 noise shaped like speech: Laplacian amplitudes (speech's distribution),
    a loudness that changes every 20 ms, and a 4 Hz syllable envelope. Every 20 ms frame
    stays above the parrot's -45 dBFS gate, so one turn is one utterance."""
    rng = np.random.default_rng(seed)
    frames = samples // 160 + 1
    loudness = np.repeat(rng.uniform(800.0, 6000.0, frames), 160)[:samples]
    phase = rng.uniform(0.0, 2 * np.pi)
    envelope = 0.65 + 0.35 * np.sin(2 * np.pi * 4.0 * np.arange(samples) / SAMPLE_RATE + phase)
    signal = rng.laplace(0.0, 1.0, samples) * loudness * envelope
    return np.clip(np.round(signal), -32768, 32767).astype(np.int16)


def make_turns(count: int, seed: int) -> list[np.ndarray]:
    """Speech-like turns of 1 to 1.5 s, evenly spread in length."""
    low, high = TURN_SECONDS
    turns = []
    for index in range(count):
        seconds = low + (high - low) * index / max(1, count - 1)
        turns.append(speech_like(int(seconds * SAMPLE_RATE), seed + index))
    return turns


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _hang_up_when_closed(call: EmulatedCall, scope: trio.CancelScope) -> None:
    """If the bot closes the call, stop talking into it (speak() would wait forever)."""
    await call.wait_closed()
    scope.cancel()


async def run_call(
    url: str,
    record: CallRecord,
    *,
    start: float,
    delay: float,
    seconds: float,
    turns: Sequence[np.ndarray],
    rng: random.Random,
    registration_timeout: float,
) -> None:
    """One call, start to hang-up; every failure is recorded, never raised."""
    await trio.sleep_until(start + delay)
    dialled = trio.current_time()
    record.dialled_at_s = dialled - start
    # the emulator waits 5 s for the bot's close reply; a saturated server may never send it
    with trio.move_on_at(dialled + registration_timeout + seconds + TEARDOWN_S) as limit:
        await _call(url, record, dialled, seconds, turns, rng, registration_timeout)
    if limit.cancelled_caught:
        record.error = record.error or f"not finished {TEARDOWN_S:g} s after its hang-up time"


async def _call(
    url: str,
    record: CallRecord,
    dialled: float,
    seconds: float,
    turns: Sequence[np.ndarray],
    rng: random.Random,
    registration_timeout: float,
) -> None:
    """The call itself, from dialling to hanging up; ``run_call`` bounds it in time."""
    registered_at = None
    try:
        async with open_call(
            url, call_id=record.call_id, registration_timeout=registration_timeout
        ) as call:
            registered_at = trio.current_time()
            record.registered = True
            record.registration_ms = (registered_at - dialled) * 1000
            hang_up_at = registered_at + seconds
            speech_ends: list[float] = []
            with trio.move_on_at(hang_up_at):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_hang_up_when_closed, call, nursery.cancel_scope)
                    next_turn = registered_at + rng.uniform(0.5, TURN_EVERY_S)
                    while next_turn + TURN_SECONDS[1] + ECHO_WAIT_S <= hang_up_at:
                        await trio.sleep_until(next_turn)
                        spoken = await call.speak(turns[rng.randrange(len(turns))])
                        record.turns_spoken += 1
                        speech_ends.append(spoken.speech_end_at)
                        next_turn += TURN_EVERY_S
                    await trio.sleep_until(hang_up_at)
            record.connected_s = trio.current_time() - registered_at
            echoes = [audio.received_at for audio in call.received if audio.kind == "media"]
            record.echoes = len(echoes)
            for end in speech_ends:
                first = next((at for at in echoes if at >= end), None)
                if first is not None:
                    record.echo_latency_ms.append(round((first - end) * 1000, 1))
            record.packets_sent = call.packets_sent
            record.close_code = call.close_code
            record.close_reason = call.close_reason
            hanging_up = trio.current_time()
        record.hang_up_ms = (trio.current_time() - hanging_up) * 1000
    except RegistrationError as exc:
        record.error = f"registration: {exc}"
    except Exception as exc:  # a benchmark records failures; it must not stop at the first
        record.error = f"{type(exc).__name__}: {exc}"[:300]
        if registered_at is not None and not record.connected_s:
            record.connected_s = trio.current_time() - registered_at


async def probe_loop_lag(lags: list[float]) -> None:
    """How late this loop wakes from a 10 ms sleep: a busy caller sends in bursts."""
    while True:
        due = trio.current_time() + LAG_PROBE_S
        await trio.sleep_until(due)
        lags.append(trio.current_time() - due)


async def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    turns = make_turns(6, args.seed)
    records = [CallRecord(call_id=f"{args.prefix}{index:04d}") for index in range(args.calls)]
    lags: list[float] = []
    cpu_before, wall_before = cpu_seconds(), time.monotonic()
    start = trio.current_time()
    # every call has its own deadline; this one only catches a bug
    limit = args.ramp + args.seconds + args.registration_timeout + TEARDOWN_S + 20
    with trio.move_on_after(limit) as guard:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe_loop_lag, lags)
            async with trio.open_nursery() as calls:
                for index, record in enumerate(records):
                    calls.start_soon(
                        partial(
                            run_call,
                            args.url,
                            record,
                            start=start,
                            delay=args.ramp * index / max(1, args.calls),
                            seconds=args.seconds,
                            turns=turns,
                            rng=random.Random(rng.getrandbits(32)),
                            registration_timeout=args.registration_timeout,
                        )
                    )
            nursery.cancel_scope.cancel()
    cpu = cpu_seconds() - cpu_before
    lag_ms = np.array(lags or [0.0]) * 1000
    return {
        "calls": [asdict(record) for record in records],
        "cpu_s": cpu,
        "wall_s": time.monotonic() - wall_before,
        "started_monotonic": wall_before,  # CLOCK_MONOTONIC: comparable across processes
        "timed_out": guard.cancelled_caught,
        "loop_lag_ms": {
            "p50": float(np.percentile(lag_ms, 50)),
            "p99": float(np.percentile(lag_ms, 99)),
            "max": float(lag_ms.max()),
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="ws:// URL of the bot (loopback)")
    parser.add_argument("--calls", type=int, required=True, help="concurrent calls to place")
    parser.add_argument("--seconds", type=float, required=True, help="length of each call")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON")
    parser.add_argument("--ramp", type=float, default=2.0, help="seconds to dial all calls")
    parser.add_argument("--prefix", default="load-", help="callId prefix (unique per worker)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--registration-timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    if not args.url.startswith(("ws://127.", "ws://localhost", "ws://[::1]")):
        parser.error("only loopback URLs: this is a load generator")
    result = trio.run(run_worker, args)
    result["settings"] = {key: str(value) for key, value in vars(args).items()}
    args.out.write_text(json.dumps(result) + "\n")
    answered = sum(call["registered"] for call in result["calls"])
    print(f"{args.prefix}: {answered}/{args.calls} answered", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
