"""The LLM context pool's policy, without a model: affinity, order, shedding, pre-emption."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from stages.llm_pool import ContextPool, LlmShed, shared_prefix

SYSTEM = ("system", "You are a bakery.")
HELLO = ("user", "Hello?")


def primed_pool(contexts: int = 2) -> ContextPool:
    pool = ContextPool([f"model-{index}" for index in range(contexts)])
    for slot in pool.slots:
        slot.cached = (SYSTEM, HELLO)
    return pool


def test_shared_prefix_counts_leading_equal_items() -> None:
    assert shared_prefix((1, 2, 3), (1, 2, 4, 5)) == 2
    assert shared_prefix((), (1,)) == 0
    assert shared_prefix((1, 2), (1, 2)) == 2


def test_a_pool_needs_a_context() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ContextPool([])


async def test_a_call_returns_to_the_context_holding_its_conversation() -> None:
    pool = primed_pool()
    a1 = (SYSTEM, ("user", "a1"))
    b1 = (SYSTEM, ("user", "b1"))
    async with pool.using(a1) as slot_a, pool.using(b1) as slot_b:
        assert slot_a is not slot_b
    # A's next turn shares three messages with A's context, one with B's (used later,
    # so not the least recently used): affinity wins.
    a2 = (*a1, ("assistant", "r1"), ("user", "a2"))
    async with pool.using(a2) as slot:
        assert slot is slot_a
    assert pool.affinity_hits == 1
    # A new call shares only the system prompt with both: the least recently used.
    async with pool.using((SYSTEM, ("user", "c1"))) as slot:
        assert slot is slot_b


async def test_committed_requests_wait_in_arrival_order(autojump_clock: Any) -> None:
    pool = primed_pool(1)
    order: list[str] = []

    async def ask(name: str, delay: float) -> None:
        await trio.sleep(delay)
        async with pool.using((SYSTEM, ("user", name))):
            order.append(name)
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        for index, name in enumerate(["first", "second", "third"]):
            nursery.start_soon(ask, name, index * 0.1)
    assert order == ["first", "second", "third"]
    assert pool.waited == 2
    assert pool.busy == 0


async def test_speculative_work_is_shed_when_every_context_is_busy() -> None:
    pool = primed_pool(1)
    async with pool.using((SYSTEM, ("user", "committed"))):
        with pytest.raises(LlmShed, match="busy"):
            async with pool.using((SYSTEM, ("user", "maybe")), speculative=True):
                pytest.fail("a speculative reply must not wait")
    assert pool.shed == 1
    async with pool.using((SYSTEM, ("user", "maybe")), speculative=True) as slot:
        assert slot.speculative  # idle capacity: it runs


async def test_a_waiting_committed_request_preempts_a_speculative_one(autojump_clock: Any) -> None:
    pool = primed_pool(1)
    events: list[str] = []

    async def speculative() -> None:
        try:
            async with pool.using((SYSTEM, ("user", "maybe")), speculative=True) as slot:
                while not slot.preempted:  # noqa: ASYNC110 - as the backend checks per token
                    await trio.sleep(0.05)  # one token
                raise LlmShed("stopped for a committed reply")
        except LlmShed:
            events.append("speculative stopped")

    async def committed() -> None:
        await trio.sleep(0.2)
        async with pool.using((SYSTEM, ("user", "sure"))):
            events.append("committed ran")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(speculative)
            nursery.start_soon(committed)
    assert events == ["speculative stopped", "committed ran"]
    assert pool.preempted == 1


async def test_a_cancelled_waiter_leaves_the_line_and_loses_nothing(autojump_clock: Any) -> None:
    pool = primed_pool(1)
    async with pool.using((SYSTEM, ("user", "long"))):
        with trio.move_on_after(0.5):
            async with pool.using((SYSTEM, ("user", "impatient"))):
                pytest.fail("the only context is busy")
        assert pool.waiting == 0
    assert pool.busy == 0
    async with pool.using((SYSTEM, ("user", "next"))) as slot:
        assert slot.busy


async def test_holding_every_context_waits_for_replies_in_progress(autojump_clock: Any) -> None:
    pool = primed_pool(2)
    held_at: list[float] = []

    async def reply() -> None:
        async with pool.using((SYSTEM, ("user", "x"))):
            await trio.sleep(2)

    async def close() -> None:
        await trio.sleep(0.1)
        async with pool.all_contexts() as slots:
            held_at.append(trio.current_time())
            assert len(slots) == 2
            assert all(slot.busy for slot in slots)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reply)
        nursery.start_soon(close)
    assert held_at[0] - start == pytest.approx(2)
    assert pool.busy == 0
