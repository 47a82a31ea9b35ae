"""The scheduler's wiring on the reply path: a reply started at a pause is speculative work.

Its LLM request is shed when every context is busy (the reply waits for the commit and
asks again, losing nothing), it is stopped for a committed request only while it has
said nothing, and a committed turn's transcription and first piece of speech go before
a speculative one's. Virtual time; the LLM is a fake over the real
:class:`~stages.llm_pool.ContextPool`, as :class:`~stages.llm_local.LlamaCppLlm` uses it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

import numpy as np
import pytest
import trio
import trio.lowlevel

from pipeline.runtime.dialogue import BotText, CallerText, CallerTurn, Message, Reply
from pipeline.runtime.errors import ConfigError
from pipeline.runtime.graph import open_chain
from pipeline.runtime.service import Service
from stages.llm import LlmConfig, Responder
from stages.llm_pool import ContextPool, LlmShed, speculating
from stages.priority import PriorityLimiter
from stages.stt import Transcript
from stages.transcriber import Transcriber

BUSY_LINE = "We bake bread and cakes every single day of the week until six."


class FakePooledLlm(Service):
    """A fake local LLM: ``contexts`` contexts in a real :class:`ContextPool`, one scripted
    reply per caller line (``replies``), ``start_delay`` before the first word (the prompt)
    and ``token_delay`` per word; like LlamaCppLlm it checks before each word whether
    its context was taken for a committed reply (then :class:`LlmShed`)."""

    name = "fake-pooled-llm"

    def __init__(
        self,
        replies: dict[str, str],
        *,
        contexts: int = 1,
        start_delay: float = 0.0,
        token_delay: float = 0.1,
    ) -> None:
        self.replies = dict(replies)
        self.pool = ContextPool([f"context-{index}" for index in range(contexts)])
        self.start_delay = start_delay
        self.token_delay = token_delay
        self.started: list[str] = []  # the caller line of each reply that got a context
        self.finished: list[str] = []

    async def stream(
        self, messages: Sequence[Message], *, speculative: bool = False
    ) -> AsyncIterator[str]:
        heard = messages[-1].content
        key = tuple((m.role, m.content) for m in messages)
        async with self.pool.using(key, speculative=speculative) as slot:
            self.started.append(heard)
            await trio.sleep(self.start_delay)
            for index, word in enumerate(self.replies[heard].split()):
                if slot.preempted:
                    raise LlmShed("stopped for a committed reply")
                await trio.sleep(self.token_delay)
                yield word if index == 0 else f" {word}"
            self.finished.append(heard)


def pending_reply(turn: int = 1) -> Reply:
    """A reply started at a pause: its turn is not committed yet."""
    return Reply(turn=turn, speech_ended_at=trio.current_time(), committed=trio.Event())


async def answer(responder: Responder, reply: Reply, heard: str) -> str:
    """Run ``responder`` on the caller's words; the text it said."""
    send, receive = trio.open_memory_channel[Any](1)
    send.send_nowait(CallerText(reply=reply, text=heard, captured_at=trio.current_time()))
    send.close()
    async with open_chain(responder, source=receive) as chain:
        return "".join([frame.text async for frame in chain.outputs if isinstance(frame, BotText)])


async def hold_context(llm: FakePooledLlm, line: str, task_status: Any) -> None:
    """Another call's committed reply, holding a context until it is done."""
    async with aclosing(llm.stream([Message("user", line)])) as deltas:
        task_status.started()
        async for _ in deltas:
            pass


async def test_a_speculative_reply_is_shed_under_load_and_answered_once_committed(
    autojump_clock: Any,
) -> None:
    llm = FakePooledLlm({"busy": BUSY_LINE, "When do you open?": "At seven."})
    responder = Responder(llm, timeout_s=30.0)
    reply = pending_reply()
    said: list[str] = []

    async def speculative_reply() -> None:
        said.append(await answer(responder, reply, "When do you open?"))

    async with trio.open_nursery() as nursery:
        await nursery.start(hold_context, llm, "busy")  # another call's committed reply
        nursery.start_soon(speculative_reply)
        await trio.sleep(0.5)
        # shed at once: no context waited for, nothing said, the other reply goes on
        assert llm.pool.shed == 1
        assert llm.pool.waiting == 0
        assert responder.shed == 1
        assert reply.llm_shed == 1
        assert "llm_shed" in reply.timings_ms
        assert llm.started == ["busy"]
        assert not said
        reply.committed.set()  # the caller finished: now it waits in line
    assert said == ["At seven."]
    assert llm.finished == ["busy", "When do you open?"]
    assert responder.statistics()["shed"] == 1
    assert responder.failures == 0
    assert reply.text == "At seven."
    assert not reply.llm_failed


async def test_a_shed_reply_whose_turn_never_commits_asks_nothing_more(
    autojump_clock: Any,
) -> None:
    llm = FakePooledLlm({"busy": BUSY_LINE, "Hm.": "Yes?"})
    responder = Responder(llm, timeout_s=30.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(hold_context, llm, "busy")
        with trio.move_on_after(5):  # the caller went on: the turn manager cancels it
            await answer(responder, pending_reply(), "Hm.")
    assert llm.started == ["busy"]
    assert responder.shed == 1
    assert llm.pool.granted == 1
    assert llm.pool.busy == 0


async def test_an_idle_model_serves_a_speculative_reply_at_once(autojump_clock: Any) -> None:
    llm = FakePooledLlm({"When do you open?": "At seven."})
    responder = Responder(llm)
    reply = pending_reply()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: answer(responder, reply, "When do you open?"))
        await trio.sleep(0.05)
        assert llm.pool.slots[0].speculative  # a speculative reply, on idle capacity
        reply.committed.set()
        await trio.lowlevel.checkpoint()
        assert not llm.pool.slots[0].speculative  # committed work from now on
    assert reply.text == "At seven."
    assert responder.shed == 0


async def test_a_committed_request_stops_a_speculative_reply_that_said_nothing(
    autojump_clock: Any,
) -> None:
    llm = FakePooledLlm(
        {"Maybe.": "Take your time.", "Now!": "Right away."}, start_delay=1.0, token_delay=0.1
    )
    responder = Responder(llm, timeout_s=30.0)
    speculative, committed = pending_reply(1), Reply(turn=2, speech_ended_at=0.0)
    order: list[str] = []

    async def reply(which: Reply, heard: str) -> None:
        await answer(responder, which, heard)
        order.append(heard)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reply, speculative, "Maybe.")
        await trio.sleep(0.5)  # its prompt is being evaluated: nothing said yet
        nursery.start_soon(reply, committed, "Now!")
        await trio.sleep(3)
        assert order == ["Now!"]
        assert llm.pool.preempted == 1
        assert speculative.llm_shed == 1
        speculative.committed.set()
    assert order == ["Now!", "Maybe."]
    assert (speculative.text, committed.text) == ("Take your time.", "Right away.")


async def test_a_speculative_reply_that_has_spoken_is_not_stopped(autojump_clock: Any) -> None:
    llm = FakePooledLlm({"Maybe.": "Take your time, there is no hurry.", "Now!": "Right away."})
    responder = Responder(llm, timeout_s=30.0)
    speculative, committed = pending_reply(1), Reply(turn=2, speech_ended_at=0.0)
    with trio.fail_after(30):  # a hang guard: stopped, it would wait for a commit
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer, responder, speculative, "Maybe.")
            await trio.sleep(0.25)  # two words said: on their way to the voice
            nursery.start_soon(answer, responder, committed, "Now!")
    # its words would be lost: it finished, and the committed reply waited for it
    assert llm.finished == ["Maybe.", "Now!"]
    assert speculative.text == "Take your time, there is no hurry."
    assert speculative.llm_shed == 0
    assert committed.text == "Right away."


def test_the_pool_forgets_a_stop_request_once_the_reply_is_committed() -> None:
    pool = ContextPool(["only"])
    slot = pool.slots[0]
    committed = False
    pool._grant(slot, (), lambda: not committed)
    slot.stop_asked = True
    assert slot.preempted
    committed = True
    assert not slot.preempted
    assert not slot.speculative


async def test_speculating_marks_requests_without_a_backend_argument() -> None:
    pool = ContextPool(["only"])
    async with pool.using(("a",)):
        with speculating(), pytest.raises(LlmShed):
            async with pool.using(("b",)):
                pytest.fail("a speculative request must not wait")
    assert pool.shed == 1
    with speculating(lambda: False):  # committed by now: committed work
        async with pool.using(("b",)) as slot:
            assert not slot.speculative
    assert pool.shed == 1


class FakeQueuedStt(Service):
    """A fake STT with one worker behind the services' :class:`PriorityLimiter`: each
    turn 'says' its length in seconds, takes ``delay`` seconds, and is noted in the
    order served."""

    name = "fake-queued-stt"

    def __init__(self, delay: float = 1.0) -> None:
        self.delay = delay
        self.limiter = PriorityLimiter(1)
        self.served: list[str] = []

    async def transcribe(self, samples: np.ndarray, sample_rate: int = 8000) -> Transcript:
        async with self.limiter:
            text = f"turn {len(samples)}"
            self.served.append(text)
            await trio.sleep(self.delay)
        return Transcript(text, 1.0, 0.0, 0.0, len(samples) / sample_rate, self.delay)


async def transcribe(stt: FakeQueuedStt, reply: Reply, samples: int) -> None:
    send, receive = trio.open_memory_channel[Any](1)
    turn = CallerTurn(reply=reply, samples=np.zeros(samples, np.int16), captured_at=0.0)
    send.send_nowait(turn)
    send.close()
    async with open_chain(Transcriber(stt), source=receive) as chain:
        async for _ in chain.outputs:
            pass


async def test_a_committed_turn_is_transcribed_before_a_speculative_one(
    autojump_clock: Any,
) -> None:
    stt = FakeQueuedStt()
    late = pending_reply(3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(transcribe, stt, Reply(turn=1, speech_ended_at=0.0), 1)
        await trio.sleep(0.1)
        nursery.start_soon(transcribe, stt, pending_reply(2), 2)  # at a pause
        await trio.sleep(0.1)
        nursery.start_soon(transcribe, stt, Reply(turn=3, speech_ended_at=0.0), 3)
        await trio.sleep(0.1)
        nursery.start_soon(transcribe, stt, late, 4)  # at a pause, committed while queued
        await trio.sleep(0.1)
        late.committed.set()
    assert stt.served == ["turn 1", "turn 3", "turn 4", "turn 2"]
    assert stt.limiter.jumped == 2


def test_llm_config_rejects_what_cannot_run() -> None:
    for bad, match in (
        ({"contexts": 0}, "contexts must be at least 1"),
        ({"threads": -1}, "threads must be"),
        ({"max_tokens": 0}, "max_tokens must be"),
        ({"timeout_s": 0}, "timeout_s must be above 0"),
        ({"backend": "gpt"}, "backend must be one of"),
    ):
        with pytest.raises(ConfigError, match=match):
            LlmConfig(**bad)


def test_a_bot_toml_with_no_llm_context_is_a_config_error(tmp_path: Any) -> None:
    from pipeline.bot.config import load_config

    path = tmp_path / "bot.toml"
    path.write_text("[llm]\ncontexts = 0\n")
    with pytest.raises(ConfigError, match=r"\[llm\] contexts must be at least 1"):
        load_config(path)


@pytest.mark.parametrize("committed", [True, False])
async def test_the_first_piece_is_urgent_only_once_the_turn_is_committed(committed: bool) -> None:
    from pipeline.runtime.dialogue import SpeakableText
    from stages.priority import is_urgent
    from stages.tts import Synthesizer

    class FakeUrgencyRecordingTts:
        def __init__(self) -> None:
            self.marks: list[bool] = []

        async def synthesize(self, text: str) -> bytes:
            self.marks.append(is_urgent())
            return b"\xff" * 160

    tts = FakeUrgencyRecordingTts()
    reply = Reply(turn=1, speech_ended_at=0.0) if committed else pending_reply()
    send, receive = trio.open_memory_channel[Any](2)
    for text in ("Sure.", "See you."):
        send.send_nowait(SpeakableText(reply=reply, text=text, captured_at=0.0))
    send.close()
    async with open_chain(Synthesizer(tts), source=receive) as chain:
        async for _ in chain.outputs:
            pass
    assert tts.marks == [committed, False]
