"""The stage contract.

A stage receives items from one Trio memory channel and sends what it makes to the
next. It is started with ``nursery.start(run_stage, ...)`` so that set-up (loading a
model, warming a kernel) finishes before the call starts feeding it; closing its
input ends it cleanly after it has flushed; an exception inside it ends the call it
belongs to (wrapped in :class:`StageFailed`, naming the stage), never the process.

Most stages only transform items one at a time: they override :meth:`Stage.process`
(and :meth:`Stage.finish` to flush at end of input). Stages that need time, threads or
several outputs per wake-up override :meth:`Stage.run` instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

import trio

from .frames import Frame

__all__ = ["Outbox", "Stage", "StageFailed", "run_stage"]

In = TypeVar("In")
Out = TypeVar("Out")
T = TypeVar("T")


class StageFailed(Exception):
    """A stage raised: the call it belongs to must end, and the log must say which stage."""

    def __init__(self, stage: str) -> None:
        super().__init__(f"stage {stage!r} failed")
        self.stage = stage


class Outbox(Generic[T]):
    """A stage's output: stamps every frame with the stage's name and the time it left."""

    __slots__ = ("_channel", "sent", "stage_name")

    def __init__(self, channel: trio.MemorySendChannel[T], stage_name: str) -> None:
        self._channel = channel
        self.stage_name = stage_name
        self.sent = 0

    def _stamp(self, item: T) -> None:
        if isinstance(item, Frame):
            item.stamp(self.stage_name, trio.current_time())

    async def send(self, item: T) -> None:
        self._stamp(item)
        await self._channel.send(item)
        self.sent += 1

    def send_nowait(self, item: T) -> None:
        """Send without waiting; raises ``trio.WouldBlock`` when the next stage is full."""
        self._stamp(item)
        self._channel.send_nowait(item)
        self.sent += 1


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
    output: trio.MemorySendChannel[Out],
    *,
    task_status: trio.TaskStatus[Outbox[Out]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one stage as a task: set up, report started, run, close its output when done.

    Closing the output when the stage returns is what lets an end of input ripple
    down a chain, each stage flushing on the way.
    """
    # Close synchronously: an async close checkpoints, and a cancellation arriving
    # there would replace (and so lose) the exception that is on its way out.
    with inbox, output:
        outbox = Outbox(output, stage.name)
        try:
            await stage.setup()
            task_status.started(outbox)
            await stage.run(inbox, outbox)
        except Exception as exc:
            raise StageFailed(stage.name) from exc
