"""One timer for many sleepers: cheap periodic wake-ups for hundreds of calls.

Every call wakes every 20 ms (its jitter buffer plays a frame; an emulated caller
sends a packet). ``trio.sleep_until`` does that with a cancel scope whose deadline
expires: a deadline registered, a cancellation delivered and unwound, ~30 µs of CPU
per wake-up, which at 200 calls is a sixth of a core spent on timers alone.

:func:`sleep_until` here parks the task and leaves the waiting to one system task
per Trio run, which sleeps until the earliest deadline, then reschedules every
sleeper due by then directly (no cancellation, ~5 µs each). The timer wakes
``SLACK`` after the earliest deadline, so sleepers due within that millisecond share
one wake-up: never early, at most ``SLACK`` late. Cancelling a
sleeper works as with Trio's own sleeps. Virtual clocks (``autojump_clock``) work:
the timer task's own sleep is an ordinary Trio sleep.
"""

from __future__ import annotations

import heapq
import itertools
import math

import trio

__all__ = ["SLACK", "sleep_until"]

SLACK = 0.001  # how late a sleeper may wake, so that nearby deadlines share a wake-up


class _Sleeper:
    __slots__ = ("deadline", "task", "woken")

    def __init__(self, deadline: float, task: trio.lowlevel.Task) -> None:
        self.deadline = deadline
        self.task = task
        self.woken = False  # rescheduled, or cancelled: either way no longer waiting


class _SharedTimer:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Sleeper]] = []
        self._order = itertools.count()
        self._scope: trio.CancelScope | None = None  # the timer task's current sleep
        self._parked: trio.lowlevel.Task | None = None  # timer task waiting for work

    def add(self, sleeper: _Sleeper) -> None:
        heapq.heappush(self._heap, (sleeper.deadline, next(self._order), sleeper))
        if self._parked is not None:
            task, self._parked = self._parked, None
            trio.lowlevel.reschedule(task)
        elif self._scope is not None and sleeper.deadline + SLACK < self._scope.deadline:
            self._scope.deadline = sleeper.deadline + SLACK

    async def run(self) -> None:
        heap = self._heap
        while True:
            while heap and heap[0][2].woken:
                heapq.heappop(heap)  # cancelled sleepers, removed lazily
            if not heap:
                self._parked = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(self._unpark)
                continue
            with trio.CancelScope(deadline=heap[0][0] + SLACK) as self._scope:
                await trio.sleep_forever()
            self._scope = None
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                sleeper = heapq.heappop(heap)[2]
                if not sleeper.woken:
                    sleeper.woken = True
                    trio.lowlevel.reschedule(sleeper.task)

    def _unpark(self, _: object) -> trio.lowlevel.Abort:
        self._parked = None  # the run is ending
        return trio.lowlevel.Abort.SUCCEEDED


_TIMER: trio.lowlevel.RunVar[_SharedTimer] = trio.lowlevel.RunVar("voicegraph_shared_timer")


def _timer() -> _SharedTimer:
    try:
        return _TIMER.get()
    except LookupError:
        timer = _SharedTimer()
        _TIMER.set(timer)
        trio.lowlevel.spawn_system_task(timer.run, name="voicegraph shared timer")
        return timer


async def sleep_until(deadline: float) -> None:
    """Like :func:`trio.sleep_until`, served by the run's shared timer task."""
    if math.isnan(deadline):
        raise ValueError("deadline must not be NaN")
    if deadline <= trio.current_time():
        await trio.lowlevel.checkpoint()
        return
    sleeper = _Sleeper(deadline, trio.lowlevel.current_task())
    _timer().add(sleeper)

    def abort(_: object) -> trio.lowlevel.Abort:
        sleeper.woken = True
        return trio.lowlevel.Abort.SUCCEEDED

    await trio.lowlevel.wait_task_rescheduled(abort)
