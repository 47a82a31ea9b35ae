"""The urgent lane of the model services' limiter: order, cancellation, worker threads."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from pipeline.runtime.dialogue import Reply, SpeakableText
from pipeline.runtime.graph import open_chain
from stages.priority import PriorityLimiter, is_urgent, urgent
from stages.tts import Synthesizer


async def test_urgent_waiters_go_first_then_arrival_order(autojump_clock: Any) -> None:
    limiter = PriorityLimiter(1)
    served: list[str] = []

    async def job(name: str, delay: float, is_urgent: bool) -> None:
        await trio.sleep(delay)
        with urgent(is_urgent):
            async with limiter:
                served.append(name)
                await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(job, "running", 0.0, False)
        nursery.start_soon(job, "later sentence A", 0.1, False)
        nursery.start_soon(job, "later sentence B", 0.2, False)
        nursery.start_soon(job, "first sentence C", 0.3, True)
        nursery.start_soon(job, "first sentence D", 0.4, True)
    assert served == [
        "running",
        "first sentence C",
        "first sentence D",
        "later sentence A",
        "later sentence B",
    ]
    assert limiter.jumped == 2
    assert limiter.borrowed_tokens == 0


async def test_a_cancelled_waiter_leaves_the_line(autojump_clock: Any) -> None:
    limiter = PriorityLimiter(1)

    async def impatient() -> None:
        with trio.move_on_after(0.5), urgent():
            await limiter.acquire()
            pytest.fail("the only token is held")

    async with limiter:
        async with trio.open_nursery() as nursery:  # another task: it must wait
            nursery.start_soon(impatient)
        assert limiter.waiting == 0
    assert limiter.borrowed_tokens == 0
    async with limiter:
        assert limiter.borrowed_tokens == 1


async def test_it_limits_worker_threads_like_a_capacity_limiter() -> None:
    limiter = PriorityLimiter(2)
    running: list[int] = []
    peak = 0

    def work() -> None:
        nonlocal peak
        running.append(1)
        peak = max(peak, len(running))
        trio.from_thread.run_sync(lambda: None)  # a round trip lets the others start
        running.pop()

    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(lambda: trio.to_thread.run_sync(work, limiter=limiter))
    assert 1 <= peak <= 2
    assert limiter.borrowed_tokens == 0


def test_a_limiter_needs_a_token() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PriorityLimiter(0)


async def test_the_synthesizer_marks_only_a_reply_s_first_piece_urgent() -> None:
    class FakeUrgencyRecordingTts:
        """Records, for each piece, whether it was queued as urgent."""

        def __init__(self) -> None:
            self.marks: list[tuple[str, bool]] = []

        async def synthesize(self, text: str) -> bytes:
            self.marks.append((text, is_urgent()))
            return b"\xff" * 160

    tts = FakeUrgencyRecordingTts()
    now = trio.current_time()
    reply = Reply(turn=1, speech_ended_at=now)
    texts = ("Sure.", "We open at nine.", "See you soon.")
    send, receive = trio.open_memory_channel[Any](len(texts))
    for text in texts:
        send.send_nowait(SpeakableText(reply=reply, text=text, captured_at=now))
    send.close()
    with trio.fail_after(10):
        async with open_chain(Synthesizer(tts), source=receive) as chain:
            spoken = [frame.text async for frame in chain.outputs]
    assert spoken == list(texts)
    assert tts.marks == [("Sure.", True), ("We open at nine.", False), ("See you soon.", False)]
