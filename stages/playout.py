"""Playout: the Trio driver that runs a :class:`~stages.jitter.JitterBuffer` on the clock.

The buffer is pure and knows nothing of time; this stage is the only place that
reads the Trio clock. It sleeps until the next frame is due (or, while the buffer
is idle, until a packet comes), takes every packet that arrived meanwhile, and
plays what is due: one wake-up per 20 ms frame, however the packets arrive (a
burst bigger than the inbound channel within one frame, 256 packets by default,
i.e. a stall of over 5 s flushed at once, is dropped and counted there). It
never busy-loops, and a clock that jumps (virtual time in tests) simply releases
every frame that became due, in order.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import trio

from pipeline.runtime.frames import MulawAudio
from pipeline.runtime.stage import Outbox, Stage
from pipeline.runtime.timers import sleep_until
from stages.jitter import JitterBuffer, JitterConfig, JitterOutput
from stages.rtp import RtpFrame

__all__ = ["JitterStage"]


class JitterStage(Stage[RtpFrame, MulawAudio]):
    """Turns parsed RTP packets into one 20 ms :class:`MulawAudio` frame per tick.

    A frame's ``captured_at`` is the arrival of the packet that carried its audio
    (the tick time for concealment), and it inherits that packet's stamps, so stage
    latencies read off any frame include the time spent here. At end of input the
    buffered audio is played out at once rather than at its due time: the call is over.
    """

    name = "jitter"

    def __init__(self, config: JitterConfig | None = None, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.buffer = JitterBuffer(config)
        self._sample_rate = self.buffer.config.sample_rate

    def statistics(self) -> dict[str, Any]:
        stats = self.buffer.statistics()
        return {**dataclasses.asdict(stats), "concealed": stats.concealed}

    def _frame(self, out: JitterOutput) -> MulawAudio:
        frame = MulawAudio(
            payload=out.payload,
            start_sample=out.start_sample,
            sample_rate=self._sample_rate,
            concealment=out.concealment,
            captured_at=out.due_at if out.arrival is None else out.arrival,
        )
        if isinstance(out.tag, list):  # the stamps of the packet that carried the audio
            frame.stamps = list(out.tag)
        return frame

    async def run(
        self, inbox: trio.MemoryReceiveChannel[RtpFrame], outbox: Outbox[MulawAudio]
    ) -> None:
        buffer = self.buffer
        while True:
            due = buffer.next_tick_at
            try:
                if due is None:  # idle: the next packet restarts the schedule
                    item = await inbox.receive()
                    buffer.push(item.packet, item.captured_at, item.stamps)
                else:
                    # Wake once per frame, not once per packet as well: packets wait in
                    # the channel (stamped with their arrival) until the next frame is due;
                    # one shared timer task serves every call's ticks.
                    await sleep_until(due)
                while True:
                    item = inbox.receive_nowait()
                    buffer.push(item.packet, item.captured_at, item.stamps)
            except trio.WouldBlock:
                pass
            except trio.EndOfChannel:
                break
            now = trio.current_time()
            while (due := buffer.next_tick_at) is not None and due <= now:
                await outbox.send(self._frame(buffer.tick(now)))
        while buffer.buffered and buffer.next_tick_at is not None:
            await outbox.send(self._frame(buffer.tick(trio.current_time())))
