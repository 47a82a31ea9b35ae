"""A bot on a loopback port, dialled by the call emulator: the real transport, one process.

The server and the emulator share one Trio loop and so one clock, which lets the
bench line up what the caller felt (end of speech in the audio it sent → first byte
of bot audio it received) with what the server recorded for the same turn.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from pipeline.bench.instrument import InstrumentedBot
from pipeline.caller.emulator import PACKET_SAMPLES, EmulatedCall, open_call, speech_end_offset
from pipeline.runtime.frames import TELEPHONE_RATE
from pipeline.server.voice_stream import ServerConfig, VoiceStreamServer
from stages.energy import level_dbfs

__all__ = [
    "CallResult",
    "CallerTurn",
    "converse_measured",
    "dial",
    "match_records",
    "serve_on_loopback",
    "speak",
]

GREETING_WAIT_S = 1.0  # a bot that greets sends it right after registration
CALL_END_WAIT_S = 20.0


@dataclass(slots=True)
class CallerTurn:
    """One caller turn as the emulator lived it (Trio clock; ``stream_*`` in call seconds)."""

    call_id: str
    turn: int
    source: str
    caller_seconds: float
    started_at: float
    speech_onset_at: float
    speech_end_at: float
    stream_start_s: float
    stream_end_s: float
    first_audio_at: float | None = None
    bot_messages: int = 0
    bot_audio_s: float = 0.0
    interrupts: list[float] = field(default_factory=list)

    @property
    def voice_to_voice_ms(self) -> float | None:
        if self.first_audio_at is None:
            return None
        return round((self.first_audio_at - self.speech_end_at) * 1000, 1)


@dataclass(slots=True)
class CallResult:
    """One call: the caller's turns and the server's records of them (if the bot keeps any)."""

    call_id: str
    turns: list[CallerTurn]
    records: list[Any]


def speech_onset_offset(samples: np.ndarray, threshold_dbfs: float = -45.0) -> int:
    """Sample index of the first 20 ms block louder than ``threshold_dbfs`` (the same
    measure the emulator uses for the end of speech)."""
    for start in range(0, len(samples), PACKET_SAMPLES):
        if level_dbfs(samples[start : start + PACKET_SAMPLES]) > threshold_dbfs:
            return start
    return len(samples)


@asynccontextmanager
async def serve_on_loopback(bot: InstrumentedBot) -> AsyncIterator[tuple[VoiceStreamServer, str]]:
    """Start ``bot`` on a free 127.0.0.1 port (models load first); shut down on exit."""
    # as `voicegraph serve` runs: the start-up heap frozen once the models are loaded
    config = ServerConfig(host="127.0.0.1", port=0, freeze_start_up_heap=True)
    server = VoiceStreamServer(config, bot)
    async with trio.open_nursery() as nursery:
        ws_server = await nursery.start(server.serve)
        try:
            yield server, f"ws://127.0.0.1:{ws_server.port}/"
        finally:
            server.shutdown()


async def speak(
    call: EmulatedCall, source: str, samples: np.ndarray, stream_start: float
) -> CallerTurn:
    """Stream one turn in real time; where its speech starts and ends, on the Trio clock."""
    samples = np.asarray(samples, dtype=np.int16)
    spoken = await call.speak(samples)
    end = speech_end_offset(samples)
    onset_at = (
        spoken.speech_end_at - (end - min(speech_onset_offset(samples), end)) / TELEPHONE_RATE
    )
    return CallerTurn(
        call_id=call.call_id,
        turn=0,
        source=source,
        caller_seconds=round(spoken.duration, 3),
        started_at=spoken.started_at,
        speech_onset_at=onset_at,
        speech_end_at=spoken.speech_end_at,
        stream_start_s=spoken.started_at - stream_start,
        stream_end_s=spoken.ended_at - stream_start,
    )


def settle(call: EmulatedCall, turn: CallerTurn, until: float) -> None:
    """Fill in what the bot sent back for ``turn`` between its end of speech and ``until``."""
    replies = [
        audio
        for audio in call.received
        if audio.kind == "media" and turn.speech_end_at <= audio.received_at <= until
    ]
    turn.first_audio_at = replies[0].received_at if replies else None
    turn.bot_messages = len(replies)
    turn.bot_audio_s = round(sum(audio.duration for audio in replies), 3)
    turn.interrupts = [t for t in call.interrupts if turn.started_at <= t <= until]


async def converse_measured(
    call: EmulatedCall,
    turns: Sequence[tuple[str, np.ndarray]],
    *,
    stream_start: float,
    pause: float,
    reply_timeout: float,
    on_turn: Callable[[CallerTurn], None] | None = None,
) -> list[CallerTurn]:
    """Speak each turn, wait for the answer and its playout, pause; what the caller felt."""
    results = []
    for index, (source, samples) in enumerate(turns, start=1):
        turn = await speak(call, source, samples, stream_start)
        turn.turn = index
        answered = False
        with trio.move_on_after(reply_timeout):
            await call.wait_for_bot_audio(turn.speech_end_at)
            answered = True
        if answered:
            await call.listen_until_quiet(pause)
        else:
            await trio.sleep(pause)
        settle(call, turn, trio.current_time())
        results.append(turn)
        if on_turn is not None:
            on_turn(turn)
    return results


async def wait_for_greeting(call: EmulatedCall, pause: float) -> bool:
    """Let a greeting play out before the caller speaks, as a person would."""
    with trio.move_on_after(GREETING_WAIT_S):
        await call.wait_for_greeting()
        await call.listen_until_quiet(pause)
        return True
    return False


async def dial(
    url: str,
    bot: InstrumentedBot,
    turns: Sequence[tuple[str, np.ndarray]],
    *,
    pause: float,
    reply_timeout: float,
    on_turn: Callable[[CallerTurn], None] | None = None,
) -> CallResult:
    """One call of ``turns``; returns once the server has finished with it."""
    async with open_call(url) as call:
        stream_start = trio.current_time()  # the emulator's first packet: sample 0 of the call
        await wait_for_greeting(call, pause)
        caller_turns = await converse_measured(
            call,
            turns,
            stream_start=stream_start,
            pause=pause,
            reply_timeout=reply_timeout,
            on_turn=on_turn,
        )
    with trio.fail_after(CALL_END_WAIT_S):
        await bot.wait_ended(call.call_id)
    return CallResult(call.call_id, caller_turns, bot.turn_records(call.call_id))


def match_records(turns: Sequence[CallerTurn], records: Sequence[Any]) -> list[Any | None]:
    """The server's record of each caller turn: the last reply whose caller speech ended
    inside that turn's stretch of the call (a turn the VAD split in two has two; the
    answer the caller waited for is the second)."""
    matched: list[Any | None] = []
    replies = [r for r in records if getattr(r, "index", 0) > 0 and r.caller_end_s is not None]
    for position, turn in enumerate(turns):
        until = turns[position + 1].stream_start_s if position + 1 < len(turns) else float("inf")
        inside = [r for r in replies if turn.stream_start_s <= r.caller_end_s < until]
        matched.append(inside[-1] if inside else None)
    return matched
