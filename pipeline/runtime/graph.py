"""Composition: wire stages into a running per-call chain in a few lines.

    async with open_chain(RtpDepacketizer(), JitterStage(), MulawDecoder()) as chain:
        # JitterStage from stages.playout, the others from stages.rtp and stages.mulaw
        chain.inbound.send_nowait(RawPacket(data=packet, captured_at=trio.current_time()))
        async for frame in chain.outputs:
            ...

Stages that need time or threads are tasks in the chain's own nursery, linked to the
next by a bounded memory channel; a pure transform (``process`` only) runs inline in
the task before it, or at the inbound edge in the sender's task, saving a channel
hop per item (``fuse=False`` gives every stage a task of its own). Leaving the
``async with`` block cancels whatever is still running, so nothing outlives its
call. To end gracefully instead, close the input (``await chain.inbound.aclose()``)
and read ``outputs`` to the end: every stage flushes in turn.

Chains compose into graphs: pass one chain's ``outputs`` as another's ``source``
(both inside one nursery), or put a :class:`Tee` in a chain to branch it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import trio

from pipeline.runtime.inbound import Inbound
from pipeline.runtime.stage import InlineStages, Outbox, Stage, run_stage

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
    _links: dict[str, trio.MemorySendChannel[Any]]

    def statistics(self) -> dict[str, Any]:
        """Counters of the inbound edge and of every stage (plus, for a stage that is a
        task, how many items wait in its output channel), by stage name."""
        stats: dict[str, Any] = {}
        if self.inbound is not None:
            stats["inbound"] = self.inbound.statistics()
        for stage in self.stages:
            link = self._links.get(stage.name)
            buffered = {"buffered": link.statistics().current_buffer_used} if link else {}
            stats[stage.name] = {**buffered, **stage.statistics()}
        return stats


@asynccontextmanager
async def open_chain(
    *stages: Stage[Any, Any],
    source: trio.MemoryReceiveChannel[Any] | None = None,
    link_capacity: int = DEFAULT_LINK_CAPACITY,
    inbound_capacity: int = DEFAULT_INBOUND_CAPACITY,
    fuse: bool = True,
) -> AsyncIterator[RunningChain]:
    """Start ``stages`` in order, each fed by the previous one; yield a :class:`RunningChain`.

    Without ``source`` the chain gets an :class:`Inbound` edge (non-blocking, counted
    drops) sized ``inbound_capacity``; with ``source`` it reads that channel instead.
    Stages are started one by one with ``nursery.start`` (inline ones set up first),
    so the chain is ready (models loaded, kernels warm) when this yields.
    """
    if not stages:
        raise ValueError("a chain needs at least one stage")
    names = [stage.name for stage in stages]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"stage names must be unique in a chain; repeated: {duplicates}")

    # (host task stage, or None for the inbound edge) -> the pure transforms it runs inline
    groups: list[tuple[Stage[Any, Any] | None, list[Stage[Any, Any]]]] = []
    if source is None:
        groups.append((None, []))
    for stage in stages:
        if fuse and stage.can_run_inline and groups:
            groups[-1][1].append(stage)
        else:
            groups.append((stage, []))

    async with trio.open_nursery() as nursery:
        for _, inline in groups:
            for stage in inline:
                await stage.setup()
        inbound: Inbound[Any] | None = None
        if groups[0][0] is None:
            send, source = trio.open_memory_channel[Any](inbound_capacity)
            inbound = Inbound(send, InlineStages(groups.pop(0)[1]))
        assert source is not None
        receive = source
        links: dict[str, trio.MemorySendChannel[Any]] = {}
        for host, inline in groups:
            assert host is not None
            send, next_receive = trio.open_memory_channel[Any](link_capacity)
            links[host.name] = send
            await nursery.start(
                partial(run_stage, host, receive, send, inline=InlineStages(inline))
            )
            receive = next_receive
        running = RunningChain(stages, inbound, receive, nursery.cancel_scope, links)
        try:
            yield running
        finally:
            nursery.cancel_scope.cancel()
    # Closed only once every stage has stopped: a stage must see its cancellation,
    # not a broken channel, when the chain is torn down.
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
