"""Seeing inside a running bot: probe what leaves the chain it opens per call.

A bot builds its per-call chain itself (``call.open_pipeline(*stages)``); the bench
goes in through the same hook a user has (:func:`pipeline.server.with_stages`: an edit
of every call's stage list) to append a :class:`StageProbe`, a pure transform (so it
runs inline, with no extra channel hop) that reads the timing stamps of every frame
leaving the chain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import trio

from pipeline.runtime.frames import Frame
from pipeline.runtime.stage import Stage
from pipeline.server.call import Bot, Call

__all__ = ["InstrumentedBot", "ProbedFrame", "StageProbe"]


@dataclass(slots=True)
class ProbedFrame:
    """One frame that left a call's chain: its type, each stage's share, its age (ms)."""

    call_id: str
    kind: str
    left_at: float
    age_ms: float
    stages_ms: dict[str, float]


class StageProbe(Stage[Any, Any]):
    """Passes everything on; records the stamps of every frame on the way (no hop, no copy)."""

    name = "bench_probe"

    def __init__(self, sink: Callable[[ProbedFrame], None], call_id: str) -> None:
        super().__init__()
        self._sink = sink
        self._call_id = call_id
        self.frames = 0
        self.other_items = 0

    def process(self, item: Any) -> Iterable[Any]:
        if isinstance(item, Frame):
            now = trio.current_time()
            self.frames += 1
            self._sink(
                ProbedFrame(
                    call_id=self._call_id,
                    kind=type(item).__name__,
                    left_at=now,
                    age_ms=round(item.age(now) * 1000, 3),
                    stages_ms={
                        stage: round(seconds * 1000, 3) for stage, seconds in item.stage_latencies()
                    },
                )
            )
        else:
            self.other_items += 1
        return (item,)

    def statistics(self) -> dict[str, Any]:
        return {"frames": self.frames, "other_items": self.other_items}


@dataclass
class InstrumentedBot:
    """A bot under measurement: every call's chain ends in a :class:`StageProbe`, and the
    bench can wait until the server has finished with a call (its records are final)."""

    bot: Bot
    frames: list[ProbedFrame] = field(default_factory=list)
    ended: set[str] = field(default_factory=set)
    _changed: trio.Event = field(default_factory=trio.Event)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bot, name)

    def serving(self) -> AbstractAsyncContextManager[None]:
        return self.bot.serving()

    async def handle_call(self, call: Call) -> None:
        def probe(stages: list[Stage[Any, Any]]) -> list[Stage[Any, Any]]:
            return [*stages, StageProbe(self.frames.append, call.call_id)]

        call.stage_edits.append(probe)
        try:
            await self.bot.handle_call(call)
        finally:
            self.ended.add(call.call_id)
            self._changed.set()
            self._changed = trio.Event()

    async def wait_ended(self, call_id: str) -> None:
        """Until the bot has returned from ``call_id`` (wrap in a timeout)."""
        while call_id not in self.ended:
            await self._changed.wait()

    def turn_records(self, call_id: str) -> list[Any]:
        """The bot's :class:`~pipeline.bot.conversation.TurnRecord` list for a finished call,
        if the bot keeps them (``finished``, as :class:`~pipeline.bot.voicebot.VoiceBot` does)."""
        for finished_id, records in getattr(self.bot, "finished", ()):
            if finished_id == call_id:
                return list(records)
        return []
