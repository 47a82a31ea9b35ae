"""The inbound edge of a call: audio from a phone cannot be pushed back on.

A telephone keeps sending 50 packets a second whatever we do, so the transport
must never wait for the pipeline. :class:`Inbound` offers items with
``send_nowait`` and counts what it had to drop, so overload shows up as a number
instead of as a stalled socket or a silent loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import trio

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

    __slots__ = ("_accepted", "_channel", "_dropped_closed", "_dropped_full")

    def __init__(self, channel: trio.MemorySendChannel[T]) -> None:
        self._channel = channel
        self._accepted = 0
        self._dropped_full = 0
        self._dropped_closed = 0

    def send_nowait(self, item: T) -> bool:
        """Offer ``item``; True if taken, False if dropped (counted either way)."""
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

    async def aclose(self) -> None:
        """End of input: the stages flush and finish one after another."""
        await self._channel.aclose()

    def close(self) -> None:
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
