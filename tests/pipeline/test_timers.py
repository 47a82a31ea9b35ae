"""The shared timer: sleepers wake in order, never early, at most SLACK late; cancellable."""

from __future__ import annotations

import random

import pytest
import trio

from pipeline.runtime.timers import SLACK, sleep_until


async def test_many_sleepers_wake_at_their_deadlines_in_order(autojump_clock) -> None:
    start = trio.current_time()
    deadlines = [start + random.Random(7).uniform(0.001, 2.0) for _ in range(200)]
    woke: list[tuple[float, float]] = []

    async def sleeper(deadline: float) -> None:
        await sleep_until(deadline)
        woke.append((deadline, trio.current_time()))

    async with trio.open_nursery() as nursery:
        for deadline in deadlines:
            nursery.start_soon(sleeper, deadline)
    assert len(woke) == len(deadlines)
    for deadline, at in woke:
        assert deadline <= at <= deadline + SLACK + 1e-9
    assert [at for _, at in woke] == sorted(at for _, at in woke)


async def test_an_earlier_deadline_added_later_is_not_held_back(autojump_clock) -> None:
    start = trio.current_time()
    woke: dict[str, float] = {}

    async def sleeper(name: str, deadline: float) -> None:
        await sleep_until(deadline)
        woke[name] = trio.current_time() - start

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sleeper, "late", start + 10.0)
        await trio.sleep(1.0)  # the timer now sleeps towards 10 s
        nursery.start_soon(sleeper, "early", start + 2.0)
    assert woke["early"] == pytest.approx(2.0, abs=2 * SLACK)
    assert woke["late"] == pytest.approx(10.0, abs=2 * SLACK)


async def test_a_cancelled_sleeper_is_never_woken_again(autojump_clock) -> None:
    start = trio.current_time()
    with trio.move_on_after(1.0) as scope:
        await sleep_until(start + 5.0)
    assert scope.cancelled_caught
    assert trio.current_time() - start == pytest.approx(1.0)
    # the stale entry reaches its deadline while this task sleeps on another one
    await sleep_until(start + 6.0)
    assert trio.current_time() - start == pytest.approx(6.0, abs=2 * SLACK)


async def test_a_deadline_in_the_past_returns_at_once() -> None:
    before = trio.current_time()
    await sleep_until(before - 1.0)
    assert trio.current_time() - before < 0.01
    with pytest.raises(ValueError, match="NaN"):
        await sleep_until(float("nan"))


async def test_a_sleeper_can_be_cancelled_before_it_parks(autojump_clock) -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        await sleep_until(trio.current_time() + 1.0)
    assert scope.cancelled_caught
