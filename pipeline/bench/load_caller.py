"""Load-generator worker for ``bench capacity``: N emulated platform calls in one Trio loop.

    python -m pipeline.bench.load_caller --url ws://127.0.0.1:PORT/ --calls N \\
        --seconds S --out F.json [--audio FILE ...] [--ramp R]

It runs in a process of its own so the callers never share an interpreter (or a
GIL) with the server they load. Each call is what the platform does: dial with
:func:`pipeline.caller.emulator.open_call`, register, stream 20 ms packets without pause,
and hold a conversation: after a random start (so calls do not all speak at once)
speak a turn, wait for the bot's answer and its playout, pause, speak the next,
until the call's time is up. Turns are the given audio files (the voice bot needs
real speech) or, without them, 1-1.5 s of speech-like noise (enough for the parrot's
energy gate). ``--voices K`` gives the calls K voices in turn: the turns played
slower or faster (0.88x to 1.14x, pitch and tempo together, like a different
speaker's register), so calls do not all send the same audio. Calls are dialled over
``--ramp`` seconds, as calls arrive on a real server.

Per call it records whether it was answered, the registration time, turns spoken,
voice-to-voice latency of every answered turn (end of the caller's speech to the
first byte of bot audio), packets sent and how the call ended; for the worker, its
CPU time and how late its event loop woke up (a caller that falls behind sends in
bursts, and then the load offered is not the load asked for). Every call and the
worker itself have deadlines, so it always ends.
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

from pipeline.caller.audiofile import load_audio
from pipeline.caller.emulator import EmulatedCall, RegistrationError, open_call
from pipeline.runtime.frames import TELEPHONE_RATE
from pipeline.server.heap import freeze_start_up_heap
from stages.resample import resample

NOISE_TURN_S = (1.0, 1.5)
VOICE_SPEEDS = (0.88, 1.14)  # the slowest and fastest voice variant
LAG_PROBE_S = 0.01
LOOPBACK = ("ws://127.", "ws://localhost", "ws://[::1]")


@dataclass(slots=True)
class CallRecord:
    """What one emulated call saw (times in ms; ``dialled_at_s`` from the worker's start)."""

    call_id: str
    voice: int = 0
    dialled_at_s: float = math.nan
    registered: bool = False
    registration_ms: float | None = None
    connected_s: float = 0.0
    turns_spoken: int = 0
    answered_turns: int = 0
    unanswered_turns: int = 0  # no answer within --reply-timeout (hang-up cuts are neither)
    voice_to_voice_ms: list[float] = field(default_factory=list)
    packets_sent: int = 0
    close_code: int | None = None  # the bot's close code; None: we hung up (1000)
    error: str | None = None


def speech_like(samples: int, seed: int) -> np.ndarray:
    """8 kHz int16 noise shaped like speech (Laplacian amplitudes, 20 ms loudness steps,
    a 4 Hz syllable envelope), above an energy gate throughout: one turn, one utterance."""
    rng = np.random.default_rng(seed)
    frames = samples // 160 + 1
    loudness = np.repeat(rng.uniform(800.0, 6000.0, frames), 160)[:samples]
    phase = rng.uniform(0.0, 2 * np.pi)
    envelope = 0.65 + 0.35 * np.sin(2 * np.pi * 4.0 * np.arange(samples) / TELEPHONE_RATE + phase)
    signal = rng.laplace(0.0, 1.0, samples) * loudness * envelope
    return np.clip(np.round(signal), -32768, 32767).astype(np.int16)


def noise_turns(count: int, seed: int) -> list[np.ndarray]:
    low, high = NOISE_TURN_S
    return [
        speech_like(int((low + (high - low) * i / max(1, count - 1)) * TELEPHONE_RATE), seed + i)
        for i in range(count)
    ]


def voice_variants(turns: Sequence[np.ndarray], voices: int) -> list[list[np.ndarray]]:
    """``voices`` versions of ``turns``, played at speeds spread evenly over VOICE_SPEEDS
    (resampled, then sent at 8 kHz); one voice: the turns as recorded."""
    if voices < 1:
        raise ValueError(f"voices must be at least 1, not {voices}")
    low, high = VOICE_SPEEDS
    speeds = [1.0] if voices == 1 else list(np.linspace(low, high, voices))
    return [
        [resample(turn, TELEPHONE_RATE, round(TELEPHONE_RATE / speed)) for turn in turns]
        for speed in speeds
    ]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _converse(
    call: EmulatedCall,
    record: CallRecord,
    turns: Sequence[np.ndarray],
    rng: random.Random,
    *,
    hang_up_at: float,
    pause: float,
    reply_timeout: float,
    greeting_wait: float,
) -> None:
    if greeting_wait > 0:
        with trio.move_on_after(greeting_wait):  # a bot that greets does so on answer
            await call.wait_for_greeting()
            await call.listen_until_quiet(pause / 2)
    await trio.sleep(rng.uniform(0.2, min(3.0, (hang_up_at - trio.current_time()) / 4)))
    longest = max(len(turn) for turn in turns) / TELEPHONE_RATE
    while trio.current_time() + longest + 0.5 <= hang_up_at:
        spoken = await call.speak(turns[rng.randrange(len(turns))])
        record.turns_spoken += 1
        first = None
        with trio.move_on_after(reply_timeout):
            first = await call.wait_for_bot_audio(spoken.speech_end_at)
        if first is None:
            record.unanswered_turns += 1
            continue
        record.answered_turns += 1
        record.voice_to_voice_ms.append(round((first.received_at - spoken.speech_end_at) * 1000, 1))
        await call.listen_until_quiet(pause)


async def run_call(
    url: str,
    record: CallRecord,
    *,
    start: float,
    delay: float,
    seconds: float,
    turns: Sequence[np.ndarray],
    rng: random.Random,
    pause: float,
    reply_timeout: float,
    greeting_wait: float,
    registration_timeout: float,
) -> None:
    """One call, dial to hang-up; every failure is recorded, never raised."""
    await trio.sleep_until(start + delay)
    dialled = trio.current_time()
    record.dialled_at_s = round(dialled - start, 3)
    registered_at = None
    try:
        async with open_call(
            url, call_id=record.call_id, registration_timeout=registration_timeout
        ) as call:
            registered_at = trio.current_time()
            record.registered = True
            record.registration_ms = round((registered_at - dialled) * 1000, 1)
            with trio.move_on_at(registered_at + seconds):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_hang_up_when_closed, call, nursery.cancel_scope)
                    await _converse(
                        call,
                        record,
                        turns,
                        rng,
                        hang_up_at=registered_at + seconds,
                        pause=pause,
                        reply_timeout=reply_timeout,
                        greeting_wait=greeting_wait,
                    )
                    await trio.sleep_forever()  # hold the line until the call's time is up
            record.connected_s = trio.current_time() - registered_at
            record.packets_sent = call.packets_sent
            record.close_code = call.close_code
    except RegistrationError as exc:
        record.error = f"registration: {exc}"
    except Exception as exc:  # a bench records failures; it must not stop at the first
        record.error = f"{type(exc).__name__}: {exc}"[:300]
        if registered_at is not None and not record.connected_s:
            record.connected_s = trio.current_time() - registered_at


async def _hang_up_when_closed(call: EmulatedCall, scope: trio.CancelScope) -> None:
    """If the bot closes the call, stop talking into it (speak() would wait forever)."""
    await call.wait_closed()
    scope.cancel()


async def _probe_loop_lag(lags: list[float]) -> None:
    while True:
        due = trio.current_time() + LAG_PROBE_S
        await trio.sleep_until(due)
        lags.append(trio.current_time() - due)


async def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    turns = [load_audio(p) for p in args.audio] if args.audio else noise_turns(6, args.seed)
    voices = voice_variants(turns, args.voices)
    records = [
        CallRecord(call_id=f"{args.prefix}{index:04d}", voice=index % len(voices))
        for index in range(args.calls)
    ]
    lags: list[float] = []
    # A full collection walks every tracked object: with the start-up heap (numpy, scipy,
    # the turns) it stopped this loop for ~200 ms every few seconds, and 100 calls then
    # sent 10 packets each in a burst. Frozen, it is no longer scanned.
    freeze_start_up_heap()
    cpu_before, wall_before = cpu_seconds(), time.monotonic()
    start = trio.current_time()
    limit = args.ramp + args.seconds + args.registration_timeout + 30  # catches a bug only
    with trio.move_on_after(limit) as guard:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_probe_loop_lag, lags)
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
                            turns=voices[record.voice],
                            rng=random.Random(rng.getrandbits(32)),
                            pause=args.pause,
                            reply_timeout=args.reply_timeout,
                            greeting_wait=args.greeting_wait,
                            registration_timeout=args.registration_timeout,
                        )
                    )
            nursery.cancel_scope.cancel()
    lag_ms = np.array(lags or [0.0]) * 1000
    return {
        "calls": [asdict(record) for record in records],
        "cpu_s": cpu_seconds() - cpu_before,
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
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--url", required=True, help="ws:// URL of the bot (loopback only)")
    parser.add_argument("--calls", type=int, required=True, help="concurrent calls to place")
    parser.add_argument("--seconds", type=float, required=True, help="length of each call")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON")
    parser.add_argument("--audio", type=Path, nargs="+", help="caller turns (default: noise)")
    parser.add_argument("--ramp", type=float, default=2.0, help="seconds to dial all calls")
    parser.add_argument("--pause", type=float, default=1.0, help="pause after each answer (s)")
    parser.add_argument("--reply-timeout", type=float, default=10.0)
    parser.add_argument(
        "--greeting-wait", type=float, default=1.0, help="wait for a greeting (s; 0: none)"
    )
    parser.add_argument("--prefix", default="load-", help="callId prefix (unique per worker)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--voices", type=int, default=1, help="voice variants, call by call")
    parser.add_argument("--registration-timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    if not args.url.startswith(LOOPBACK):
        parser.error("only loopback URLs: this is a load generator")
    result = trio.run(run_worker, args)
    result["settings"] = {key: str(value) for key, value in vars(args).items()}
    args.out.write_text(json.dumps(result) + "\n")
    answered = sum(call["registered"] for call in result["calls"])
    print(f"{args.prefix}: {answered}/{args.calls} answered", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
