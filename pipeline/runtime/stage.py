"""The stage contract.

A stage receives items from one Trio memory channel and sends what it makes to the
next. It is started with ``nursery.start(run_stage, ...)`` so that set-up (loading a
model, warming a kernel) finishes before the call starts feeding it; closing its
input ends it cleanly after it has flushed; an exception inside it ends the call it
belongs to (wrapped in :class:`StageFailed`, naming the stage), never the process.

Most stages only transform items one at a time: they override :meth:`Stage.process`
(and :meth:`Stage.finish` to flush at end of input). Stages that need time, threads or
several outputs per wake-up override :meth:`Stage.run` instead.

A stage that only transforms (``process`` without its own ``run``) may be run
*inline*: by the task that feeds it, right where that task sends, instead of by a
task of its own behind a channel. At 50 packets a second per call, each channel
hop costs 10-17 µs of CPU per packet; inline stages keep everything else of the
contract (set-up before start, flush at end of input, stamps, counters, StageFailed).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Generic, TypeVar

import trio

from pipeline.runtime.errors import StageFailed
from pipeline.runtime.frames import Frame

__all__ = ["InlineStages", "Outbox", "Stage", "StageFailed", "run_stage"]

In = TypeVar("In")
Out = TypeVar("Out")
T = TypeVar("T")


def _stamp(item: object, stage_name: str, now: float) -> None:
    if isinstance(item, Frame):
        item.stamp(stage_name, now)


class InlineStages:
    """Process-only stages run by the task that feeds them, in order, without a hop."""

    __slots__ = ("stages",)

    def __init__(self, stages: Sequence[Stage[Any, Any]] = ()) -> None:
        self.stages = tuple(stages)

    def __bool__(self) -> bool:
        return bool(self.stages)

    def through(self, item: Any, start: int = 0) -> list[Any]:
        """``item`` after ``stages[start:]``: zero or more items, each stamped by each stage."""
        items = [item]
        now = trio.current_time()
        for stage in self.stages[start:]:
            produced: list[Any] = []
            for each in items:
                try:
                    outputs = stage.process(each)
                    for output in outputs:
                        _stamp(output, stage.name, now)
                        produced.append(output)
                except Exception as exc:
                    raise StageFailed(stage.name) from exc
            items = produced
            if not items:
                break
        return items

    def finish(self) -> list[Any]:
        """End of input: each stage's flushed items, carried through the stages after it."""
        items: list[Any] = []
        for index, stage in enumerate(self.stages):
            try:
                flushed = list(stage.finish())
            except Exception as exc:
                raise StageFailed(stage.name) from exc
            now = trio.current_time()
            for output in flushed:
                _stamp(output, stage.name, now)
                items.extend(self.through(output, index + 1))
        return items


class Outbox(Generic[T]):
    """A stage's output: stamps every frame with the stage's name and the time it left,
    then runs it through the inline stages that follow (if any) before the channel."""

    __slots__ = ("_channel", "inline", "sent", "stage_name")

    def __init__(
        self,
        channel: trio.MemorySendChannel[T],
        stage_name: str,
        inline: InlineStages | None = None,
    ) -> None:
        self._channel = channel
        self.stage_name = stage_name
        self.inline = inline or InlineStages()
        self.sent = 0

    async def send(self, item: T) -> None:
        _stamp(item, self.stage_name, trio.current_time())
        if not self.inline:
            await self._put(item)
            return
        for output in self.inline.through(item):
            await self._put(output)

    async def _put(self, item: Any) -> None:
        # Usually the next stage has room: skip the scheduler round trip then (a stage
        # still yields to Trio at every receive). Wait only when it is full.
        try:
            self._channel.send_nowait(item)
        except trio.WouldBlock:
            await self._channel.send(item)
        except trio.BrokenResourceError:
            # The next stage is gone. If that is because the chain is being cancelled,
            # let the cancellation (not a broken channel) be what ends this stage.
            await trio.lowlevel.checkpoint()
            raise
        self.sent += 1

    async def flush_inline(self) -> None:
        """The inline stages' end-of-input outputs (the host stage has finished)."""
        for output in self.inline.finish():
            await self._put(output)


def _snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class Stage(Generic[In, Out]):
    """Base class of every stage. One instance serves one call (stages may hold state).

    ``name`` defaults to the class name in snake case; give two stages of the same
    class different names when both appear in one pipeline.
    """

    name: str = ""

    def __init__(self, *, name: str | None = None) -> None:
        self.name = name or self.name or _snake_case(type(self).__name__)

    async def setup(self) -> None:
        """Prepare before the stage reports itself started (load, warm up). Optional."""

    def process(self, item: In) -> Iterable[Out]:
        """Turn one input into zero or more outputs. Must not block."""
        raise NotImplementedError(f"{type(self).__name__} must override process() or run()")

    def finish(self) -> Iterable[Out]:
        """Outputs still owed when the input closes (flush buffered state). Optional."""
        return ()

    def statistics(self) -> dict[str, Any]:
        """Counters worth exposing (drops, skips, concealments). Override to add yours."""
        return {}

    @property
    def can_run_inline(self) -> bool:
        """True for a pure transform (``process`` without its own ``run``)."""
        return type(self).run is Stage.run

    async def run(self, inbox: trio.MemoryReceiveChannel[In], outbox: Outbox[Out]) -> None:
        """Consume ``inbox`` until it closes. The default drives process()/finish()."""
        async for item in inbox:
            for out in self.process(item):
                await outbox.send(out)
        for out in self.finish():
            await outbox.send(out)


async def run_stage(
    stage: Stage[In, Out],
    inbox: trio.MemoryReceiveChannel[In],
    output: trio.MemorySendChannel[Any],
    *,
    inline: InlineStages | None = None,
    task_status: trio.TaskStatus[Outbox[Out]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one stage as a task: set up, report started, run, close its output when done.

    Closing the output when the stage returns is what lets an end of input ripple
    down a chain, each stage flushing on the way. ``inline`` stages run in this task
    on everything the stage sends (they are set up by whoever built the chain).
    """
    # Close synchronously: an async close checkpoints, and a cancellation arriving
    # there would replace (and so lose) the exception that is on its way out.
    with inbox, output:
        outbox: Outbox[Out] = Outbox(output, stage.name, inline)
        try:
            await stage.setup()
            task_status.started(outbox)
            await stage.run(inbox, outbox)
            await outbox.flush_inline()
        except StageFailed:
            raise
        except Exception as exc:
            raise StageFailed(stage.name) from exc
