"""The inbound edge of a call: audio from a phone cannot be pushed back on.

A telephone keeps sending 50 packets a second whatever we do, so the transport
must never wait for the pipeline. :class:`Inbound` offers items with
``send_nowait`` and counts what it had to drop, so overload shows up as a number
instead of as a stalled socket or a silent loss. The first stages of a chain, when
they are pure transforms, run inline here, in the transport's task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import trio

from pipeline.runtime.stage import InlineStages

__all__ = ["Inbound", "InboundStatistics"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class InboundStatistics:
    accepted: int
    dropped_full: int
    dropped_closed: int
    buffered: int
    capacity: float

    @property
    def dropped(self) -> int:
        return self.dropped_full + self.dropped_closed


class Inbound(Generic[T]):
    """Non-blocking, drop-counting sender into the first stage of a pipeline."""

    __slots__ = ("_accepted", "_channel", "_closed", "_dropped_closed", "_dropped_full", "inline")

    def __init__(
        self, channel: trio.MemorySendChannel[Any], inline: InlineStages | None = None
    ) -> None:
        self._channel = channel
        self.inline = inline or InlineStages()
        self._accepted = 0
        self._dropped_full = 0
        self._dropped_closed = 0
        self._closed = False

    def send_nowait(self, item: T) -> bool:
        """Offer ``item``; True if taken, False if dropped (counted either way).

        With inline stages, what is offered to the channel is their output: an item
        they consume (a malformed packet they count and skip) is taken, not dropped.
        """
        if not self.inline:
            return self._offer(item)
        taken = True
        for output in self.inline.through(item):
            taken = self._offer(output) and taken
        return taken

    def _offer(self, item: Any) -> bool:
        try:
            self._channel.send_nowait(item)
        except trio.WouldBlock:
            self._dropped_full += 1
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._dropped_closed += 1
            return False
        self._accepted += 1
        return True

    @property
    def closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        """End of input: the stages flush and finish one after another."""
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for output in self.inline.finish():  # inline stages flush before the channel closes
            self._offer(output)
        self._channel.close()

    def statistics(self) -> InboundStatistics:
        channel = self._channel.statistics()
        return InboundStatistics(
            accepted=self._accepted,
            dropped_full=self._dropped_full,
            dropped_closed=self._dropped_closed,
            buffered=channel.current_buffer_used,
            capacity=channel.max_buffer_size,
        )
