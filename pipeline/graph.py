"""Composition: wire stages into a running per-call chain in a few lines.

    async with open_chain(RtpDepacketizer(), JitterStage(), MulawDecoder()) as chain:
        # JitterStage from stages.playout, the others from stages.rtp and stages.mulaw
        chain.inbound.send_nowait(RawPacket(data=packet, captured_at=trio.current_time()))
        async for frame in chain.outputs:
            ...

Every stage is a task in the chain's own nursery, linked to the next by a bounded
memory channel. Leaving the ``async with`` block cancels whatever is still running,
so nothing outlives its call. To end gracefully instead, close the input
(``await chain.inbound.aclose()``) and read ``outputs`` to the end: every stage
flushes in turn.

Chains compose into graphs: pass one chain's ``outputs`` as another's ``source``
(both inside one nursery), or put a :class:`Tee` in a chain to branch it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from .inbound import Inbound
from .stage import Outbox, Stage, run_stage

__all__ = ["RunningChain", "Tee", "open_chain"]

T = TypeVar("T")

DEFAULT_LINK_CAPACITY = 64
DEFAULT_INBOUND_CAPACITY = 256


@dataclass(slots=True)
class RunningChain:
    """Handle on a running chain: where to put input, where to read output, counters."""

    stages: Sequence[Stage[Any, Any]]
    inbound: Inbound[Any] | None
    outputs: trio.MemoryReceiveChannel[Any]
    cancel_scope: trio.CancelScope
    _links: Sequence[trio.MemorySendChannel[Any]]

    def statistics(self) -> dict[str, Any]:
        """Counters of the inbound edge, of every link and of every stage, by stage name."""
        stats: dict[str, Any] = {}
        if self.inbound is not None:
            stats["inbound"] = self.inbound.statistics()
        for stage, link in zip(self.stages, self._links, strict=True):
            link_stats = link.statistics()
            stats[stage.name] = {
                "buffered": link_stats.current_buffer_used,
                **stage.statistics(),
            }
        return stats


@asynccontextmanager
async def open_chain(
    *stages: Stage[Any, Any],
    source: trio.MemoryReceiveChannel[Any] | None = None,
    link_capacity: int = DEFAULT_LINK_CAPACITY,
    inbound_capacity: int = DEFAULT_INBOUND_CAPACITY,
) -> AsyncIterator[RunningChain]:
    """Start ``stages`` in order, each fed by the previous one; yield a :class:`RunningChain`.

    Without ``source`` the chain gets an :class:`Inbound` edge (non-blocking, counted
    drops) sized ``inbound_capacity``; with ``source`` it reads that channel instead.
    Stages are started one by one with ``nursery.start``, so the chain is ready
    (models loaded, kernels warm) when this yields.
    """
    if not stages:
        raise ValueError("a chain needs at least one stage")
    names = [stage.name for stage in stages]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"stage names must be unique in a chain; repeated: {duplicates}")

    async with trio.open_nursery() as nursery:
        inbound: Inbound[Any] | None = None
        if source is None:
            send, source = trio.open_memory_channel[Any](inbound_capacity)
            inbound = Inbound(send)
        receive = source
        links = []
        for stage in stages:
            send, next_receive = trio.open_memory_channel[Any](link_capacity)
            links.append(send)
            await nursery.start(run_stage, stage, receive, send)
            receive = next_receive
        running = RunningChain(stages, inbound, receive, nursery.cancel_scope, links)
        try:
            yield running
        finally:
            nursery.cancel_scope.cancel()
            receive.close()


class Tee(Stage[T, T]):
    """Pass every item on, and offer a copy to each branch without waiting on it.

    A branch that falls behind loses items (counted) rather than stalling the main
    path: the main path carries the call's audio.
    """

    def __init__(self, *branches: trio.MemorySendChannel[T], name: str | None = None) -> None:
        super().__init__(name=name)
        self._branches = [Inbound(branch) for branch in branches]

    def process(self, item: T) -> Iterable[T]:
        for branch in self._branches:
            branch.send_nowait(item)
        return (item,)

    def statistics(self) -> dict[str, Any]:
        return {"branch_dropped": [branch.statistics().dropped for branch in self._branches]}

    async def run(self, inbox: trio.MemoryReceiveChannel[T], outbox: Outbox[T]) -> None:
        try:
            await super().run(inbox, outbox)
        finally:
            for branch in self._branches:
                branch.close()
