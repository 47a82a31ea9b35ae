"""The stage contract and chain composition."""

from collections.abc import Iterable

import pytest
import trio
import trio.testing

from pipeline import Frame, Stage, StageFailed, Tee, open_chain


class Double(Stage[int, int]):
    def process(self, item: int) -> Iterable[int]:
        return (item * 2,)


class PairUp(Stage[int, tuple[int, ...]]):
    """Buffers items two by two; flushes a half pair at end of input."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[int] = []

    def process(self, item: int) -> Iterable[tuple[int, ...]]:
        self.pending.append(item)
        if len(self.pending) == 2:
            pair, self.pending = tuple(self.pending), []
            return (pair,)
        return ()

    def finish(self) -> Iterable[tuple[int, ...]]:
        return (tuple(self.pending),) if self.pending else ()


class Explode(Stage[int, int]):
    def process(self, item: int) -> Iterable[int]:
        if item == 3:
            raise RuntimeError("boom")
        return (item,)


class Slow(Stage[int, int]):
    def __init__(self) -> None:
        super().__init__()
        self.ready = False

    async def setup(self) -> None:
        await trio.sleep(1)
        self.ready = True

    def process(self, item: int) -> Iterable[int]:
        return (item,)


class Timed(Frame):
    pass


async def collect(channel: trio.MemoryReceiveChannel) -> list:
    return [item async for item in channel]


@pytest.mark.parametrize("fuse", [True, False])
async def test_closing_input_flushes_every_stage_in_order(fuse):
    async with open_chain(Double(), PairUp(), fuse=fuse) as chain:
        for value in range(5):
            assert chain.inbound.send_nowait(value)
        await chain.inbound.aclose()
        assert await collect(chain.outputs) == [(0, 2), (4, 6), (8,)]


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("attempt", range(10))  # trio shuffles scheduling: try many orders
async def test_stage_exception_names_the_stage(attempt, fuse):
    with pytest.RaisesGroup(pytest.RaisesExc(StageFailed, match="explode")):
        async with open_chain(Explode(), Double(), fuse=fuse) as chain:
            for value in range(5):
                chain.inbound.send_nowait(value)
            await collect(chain.outputs)


async def test_chain_is_ready_only_after_setup(autojump_clock):
    slow = Slow()
    start = trio.current_time()
    async with open_chain(slow) as chain:
        assert slow.ready
        assert trio.current_time() - start >= 1
        chain.inbound.send_nowait(1)
        assert await chain.outputs.receive() == 1


async def test_leaving_the_block_cancels_stages_still_running():
    async with open_chain(Double()) as chain:
        chain.inbound.send_nowait(1)
    # reaching here at all means nothing was left running


async def test_inbound_never_blocks_and_counts_drops():
    async with open_chain(Double(), inbound_capacity=2, link_capacity=1, fuse=False) as chain:
        accepted = [chain.inbound.send_nowait(value) for value in range(10)]
        stats = chain.inbound.statistics()
        # the first item goes straight to the waiting stage, the next two fill the buffer
        assert accepted.count(True) == stats.accepted == 3
        assert stats.dropped_full == stats.dropped == 7


async def test_inline_stages_run_in_the_senders_task_and_still_count_drops():
    async with open_chain(Double(), inbound_capacity=2) as chain:
        accepted = [chain.inbound.send_nowait(value) for value in range(10)]
        stats = chain.inbound.statistics()
        # Double ran inline: its outputs wait in the channel, nobody has read them yet
        assert accepted.count(True) == stats.accepted == 2
        assert stats.dropped_full == 8
        assert [await chain.outputs.receive() for _ in range(2)] == [0, 2]
        assert "buffered" not in chain.statistics()["double"]  # no task, no link of its own


async def test_inline_stages_after_a_task_stage_flush_in_order(autojump_clock):
    class Hold(Stage[int, int]):
        """A task stage that releases everything at end of input."""

        async def run(self, inbox, outbox):
            held = [item async for item in inbox]
            for item in held:
                await outbox.send(item)

    async with open_chain(Hold(), Double(), PairUp()) as chain:
        for value in range(3):
            chain.inbound.send_nowait(value)
        await chain.inbound.aclose()
        assert await collect(chain.outputs) == [(0, 2), (4,)]
    assert "buffered" in chain.statistics()["hold"]


async def test_inline_stage_is_set_up_before_the_chain_is_ready(autojump_clock):
    class SlowTransform(Slow):
        pass

    slow = SlowTransform()
    assert slow.can_run_inline
    async with open_chain(slow):
        assert slow.ready


async def test_inline_stage_frames_are_stamped_too():
    class Passthrough(Stage[Frame, Frame]):
        def process(self, item):
            return (item,)

    async with open_chain(Passthrough(name="a"), Passthrough(name="b")) as chain:
        chain.inbound.send_nowait(Timed(captured_at=trio.current_time()))
        frame = await chain.outputs.receive()
    assert [stamp.stage for stamp in frame.stamps] == ["a", "b"]


async def test_frames_are_stamped_by_each_stage(autojump_clock):
    class Delay(Stage[Frame, Frame]):
        async def run(self, inbox, outbox):
            async for frame in inbox:
                await trio.sleep(0.25)
                await outbox.send(frame)

    async with open_chain(Delay(name="first"), Delay(name="second")) as chain:
        chain.inbound.send_nowait(Timed(captured_at=trio.current_time()))
        frame = await chain.outputs.receive()
    latencies = frame.stage_latencies()
    assert [name for name, _ in latencies] == ["first", "second"]
    assert [round(seconds, 6) for _, seconds in latencies] == [0.25, 0.25]


async def test_duplicate_stage_names_are_refused():
    with pytest.raises(ValueError, match="double"):
        async with open_chain(Double(), Double()):
            pass


async def test_tee_branch_that_lags_loses_items_but_main_path_does_not():
    branch_send, branch_receive = trio.open_memory_channel(1)
    tee = Tee(branch_send)
    async with open_chain(tee) as chain:
        for value in range(4):
            chain.inbound.send_nowait(value)
        await chain.inbound.aclose()
        assert await collect(chain.outputs) == [0, 1, 2, 3]
    assert await collect(branch_receive) == [0]
    assert tee.statistics()["branch_dropped"] == [3]


@pytest.mark.parametrize("attempt", range(10))  # the race depends on trio's schedule
async def test_teardown_reads_as_cancellation_not_a_broken_channel(attempt):
    """A stage still sending while the chain is cancelled must not report a failure."""

    class Burst(Stage[int, int]):
        async def run(self, inbox, outbox):
            async for item in inbox:
                for copy in range(item):
                    await outbox.send(copy)

    class Gone(Stage[int, int]):
        async def run(self, inbox, outbox):
            await inbox.receive()  # take one, then leave: the channel behind is closed

    with trio.move_on_after(1):
        async with open_chain(Burst(), Gone(), link_capacity=1000) as chain:
            chain.inbound.send_nowait(100)
            chain.cancel_scope.cancel()
            await trio.sleep_forever()
