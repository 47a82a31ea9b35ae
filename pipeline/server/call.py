"""One live call as a bot sees it: caller audio in, speech and interrupts out.

The server creates a :class:`Call` once the platform has registered it, feeds the
caller's RTP packets into ``call.media`` without ever waiting (a full pipeline
drops and counts instead), and hands the call to the bot. Everything the bot sends
goes through the call so the sans-IO protocol decides the bytes on the wire.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from pipeline.runtime.editing import edited
from pipeline.runtime.frames import RawPacket
from pipeline.runtime.graph import RunningChain, open_chain
from pipeline.runtime.inbound import Inbound
from pipeline.runtime.stage import Stage
from pipeline.server.logs import CallLogger

__all__ = ["Bot", "Call", "CallStatistics"]

DEFAULT_MEDIA_CAPACITY = 256  # ~5 s of 20 ms packets


class Bot(Protocol):
    """What the server runs for each call.

    ``serving()`` is entered once for the server's lifetime: shared model services
    (one VAD batcher, one STT pool, one TTS, one LLM) load and run inside it, so a
    bad model path fails at start-up, and no call ever pays for a load.
    """

    def serving(self) -> AbstractAsyncContextManager[None]: ...

    async def handle_call(self, call: Call) -> None: ...


@dataclass(slots=True)
class CallStatistics:
    messages_received: int = 0
    media_packets: int = 0
    packets_dropped: int = 0
    skipped_messages: int = 0
    speech_messages_sent: int = 0
    speech_bytes_sent: int = 0
    interrupts_sent: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)


class Call:
    """A registered call: identity, the caller's packets, and ways to answer."""

    def __init__(
        self,
        *,
        call_id: str,
        mobile_no: str,
        extra: Mapping[str, Any],
        send_text: Callable[[str], Awaitable[None]],
        encode_speech: Callable[[bytes, int], list[str]],
        encode_greeting: Callable[[bytes], str],
        encode_interrupt: Callable[[], str],
        log: CallLogger,
        media_capacity: int = DEFAULT_MEDIA_CAPACITY,
    ) -> None:
        self.call_id = call_id
        self.mobile_no = mobile_no
        self.extra = dict(extra)
        self.log = log
        self.started_at = trio.current_time()
        self.stats = CallStatistics()
        send, self.media = trio.open_memory_channel[RawPacket](media_capacity)
        self._inbound = Inbound(send)
        self._send_text = send_text
        self._encode_speech = encode_speech
        self._encode_greeting = encode_greeting
        self._encode_interrupt = encode_interrupt
        self._pipeline_statistics: Callable[[], dict[str, Any]] | None = None
        # Each edit gets the stage list a bot opens and returns the list to run: how a
        # user (or the bench) puts a stage into a bot's graph without copying the bot.
        self.stage_edits: list[Callable[[list[Stage[Any, Any]]], list[Stage[Any, Any]]]] = []
        self._hang_up = trio.Event()
        self.hang_up_code = 1000
        self.hang_up_reason = "call ended by bot"

    # --- caller side (used by the server) -------------------------------------------

    def deliver_packet(self, data: bytes, received_at: float) -> None:
        """Hand one RTP packet to the bot without waiting; count it if it is dropped."""
        self.stats.media_packets += 1
        if not self._inbound.send_nowait(RawPacket(data=data, captured_at=received_at)):
            self.stats.packets_dropped += 1

    def end_of_media(self) -> None:
        self._inbound.close()

    def count_skip(self, reason: str) -> None:
        self.stats.skipped_messages += 1
        self.stats.skipped_reasons[reason] = self.stats.skipped_reasons.get(reason, 0) + 1

    # --- bot side ---------------------------------------------------------------------

    @asynccontextmanager
    async def open_pipeline(
        self, *stages: Stage[Any, Any], **options: Any
    ) -> AsyncIterator[RunningChain]:
        """Run ``stages`` on the caller's packets, fed straight from the socket reader.

        The chain's inbound edge replaces ``call.media``: its leading pure transforms (the
        RTP depacketizer) run in the reader's task, packets already waiting are handed
        over first, and its counters join the call's statistics.
        """
        async with open_chain(*edited(stages, self.stage_edits), **options) as chain:
            assert chain.inbound is not None
            while True:
                try:
                    chain.inbound.send_nowait(self.media.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            if self._inbound.closed:
                chain.inbound.close()
            self._inbound = chain.inbound
            self.attach_statistics(chain.statistics)
            yield chain

    async def send_speech(self, mulaw: bytes) -> None:
        """Send one utterance of bot speech (μ-law 8 kHz) as complete WAV chunk(s)."""
        messages = self._encode_speech(mulaw, int(time.time() * 1000))
        for message in messages:
            await self._send_text(message)
        self.stats.speech_messages_sent += len(messages)
        self.stats.speech_bytes_sent += len(mulaw)

    async def send_greeting(self, wav: bytes) -> None:
        """Send the protocol's ``greeting`` event: audio the platform plays on answer."""
        await self._send_text(self._encode_greeting(wav))

    async def send_interrupt(self) -> None:
        """Tell the platform to stop playing bot audio now (the caller barged in)."""
        await self._send_text(self._encode_interrupt())
        self.stats.interrupts_sent += 1

    def hang_up(self, code: int = 1000, reason: str = "call ended by bot") -> None:
        """End the call from the bot's side; the server closes the socket with ``code``."""
        self.hang_up_code, self.hang_up_reason = code, reason
        self._hang_up.set()

    async def wait_hung_up(self) -> None:
        await self._hang_up.wait()

    def attach_statistics(self, source: Callable[[], dict[str, Any]]) -> None:
        """Let the call report its pipeline's counters (drops, concealment, skips)."""
        self._pipeline_statistics = source

    def statistics(self) -> dict[str, Any]:
        inbound = self._inbound.statistics()
        pipeline = self._pipeline_statistics() if self._pipeline_statistics else {}
        return {
            "callId": self.call_id,
            "messages_received": self.stats.messages_received,
            "media_packets": self.stats.media_packets,
            "packets_dropped": self.stats.packets_dropped,
            "media_buffered": inbound.buffered,
            "skipped_messages": self.stats.skipped_messages,
            "skipped_reasons": dict(self.stats.skipped_reasons),
            "speech_messages_sent": self.stats.speech_messages_sent,
            "speech_bytes_sent": self.stats.speech_bytes_sent,
            "interrupts_sent": self.stats.interrupts_sent,
            "pipeline": pipeline,
        }
