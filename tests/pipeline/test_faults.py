"""Each speech service failing, at start-up and mid-call: every failure has one defined outcome.

The real voice bot and the real server (its HTTP front, WebSocket and protocol code) run
on the named fakes, with one service wrapped by :func:`tests.faults.faulty` to raise,
hang or slow down. Calls are emulated callers on in-memory byte streams handed to the
server exactly as a TCP connection would be, so the tests run in virtual time
(``autojump_clock``) and every deadline is exact.

=========  ================  =================================================================
service    fault             outcome
=========  ================  =================================================================
any        raises at start   ``serve`` refuses to start, with the service's own error (one line)
any        hangs at start    the server never listens; cancelling it (SIGTERM) still stops it
any        slow at start     the server listens once the service is ready, and serves
VAD        raises mid-call   that call closes 1011 "internal error"; counted, logged with its callId
VAD        hangs mid-call    the same, after ``VadStage.timeout_s`` (5 s) without an answer
STT        raises / hangs    the caller hears the fallback line; the turn's ``error`` says why
LLM        raises / hangs    the fallback line (``[llm] timeout_s`` for a first word)
LLM        fails mid-reply   the caller keeps what was said, no fallback after it; a stall of
                             ``timeout_s`` between words counts as a failure
TTS        raises / hangs    that piece is left out (``Synthesizer.timeout_s``, 10 s), the rest
                             of the reply is spoken
turn       raises / hangs    the words alone judge the pause / ``max_wait_ms`` commits the turn
any        slow              answers come later; nothing is dropped or failed
STT/LLM/   raises anything   a bug, not a service failure: that call closes 1011, counted
TTS        else
=========  ================  =================================================================

In every mid-call case the failing call goes on (or only it ends), a second call on the
same server is answered normally, and the failure is in the call's log (``service failed``
or ``call failed``, with its callId), on the turn's record (``error``) and in counters
(the stage's ``failures``, the server's ``internal_errors``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import wrap_client_stream

from pipeline.bot.config import BotConfig, ConversationConfig
from pipeline.bot.conversation import TurnRecord
from pipeline.bot.voicebot import VoiceBot
from pipeline.caller.emulator import EmulatedCall, Impairments, register
from pipeline.cli.serve import run_reporting_startup_errors, serve_until_signalled
from pipeline.protocol.platform_side import ClientProtocol
from pipeline.runtime.errors import VoicegraphError
from pipeline.server.voice_stream import ServerConfig, VoiceStreamServer
from stages.guards import ReplyConfig
from stages.llm import EchoLlm, LlmConfig
from stages.transcriber import Transcriber
from stages.tts import Synthesizer
from stages.turns import TurnConfig
from stages.vad import VadStage
from tests.fakes import FakeEnergyVad, FakeScriptedStt, FakeToneTts, FakeTurnModel
from tests.faults import ERRORS, FaultPlan, FaultyService, faulty

from .conftest import utterance

SAID = "What time do you open"  # every caller turn, as the fake STT hears it
ANSWER = f"You said: {SAID}"  # the echo LLM's answer, voiced as two pieces
FALLBACK = ConversationConfig().fallback_line
DEADLINE = 0.5  # every service deadline of these tests (LLM first word, STT, TTS, VAD)
ROLES = ("vad", "stt", "llm", "tts")
TURNS = TurnConfig(mode="hangover")  # the fixed silence rule; semantic=True adds the turn model


class Harness:
    """A voice bot on fakes, some wrapped in faults, with what its reply paths counted."""

    def __init__(self, *, semantic: bool = False, **plans: FaultPlan) -> None:
        self.tts = FakeToneTts(seconds_per_char=0.005)
        fakes: dict[str, Any] = {
            "vad": FakeEnergyVad(),
            "stt": FakeScriptedStt([SAID] * 50),
            "llm": EchoLlm(),
            "tts": self.tts,
        }
        if semantic:  # the end-of-turn model judges each pause; a 440 Hz tone is "finished"
            fakes["turn"] = FakeTurnModel({440.0: 0.9}, delay=0.05)
        self.faulty: dict[str, FaultyService] = {
            role: faulty(role, fakes[role], plan) for role, plan in plans.items()
        }
        services = {**fakes, **self.faulty}
        self.stages: list[Any] = []
        config = BotConfig(
            conversation=ConversationConfig(greeting=""),
            llm=LlmConfig(backend="echo", timeout_s=DEADLINE),
            reply=ReplyConfig(no_repeats=False),  # the echo answers alike on purpose
            turns=TurnConfig(mode="semantic") if semantic else TURNS,
        )
        self.bot = VoiceBot(
            config, **services, inbound_edits=[self.deadlines], reply_edits=[self.deadlines]
        )
        self.server = VoiceStreamServer(ServerConfig(port=0), self.bot)

    def deadlines(self, stages: list[Any]) -> list[Any]:
        """Short service deadlines, and keep each stage to read its counters."""
        for stage in stages:
            if isinstance(stage, VadStage | Transcriber | Synthesizer):
                stage.timeout_s = DEADLINE
                self.stages.append(stage)
        return stages

    def failures(self, kind: type) -> int:
        return sum(stage.failures for stage in self.stages if isinstance(stage, kind))

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[VoiceStreamServer]:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.server.serve)
            yield self.server
            self.server.shutdown()

    @asynccontextmanager
    async def dial(self, call_id: str) -> AsyncIterator[EmulatedCall]:
        """An emulated caller on an in-memory stream the server handles as a connection."""
        client_stream, server_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.server.handle_stream, server_stream)
            ws = await wrap_client_stream(nursery, client_stream, "localhost", "/")
            protocol = ClientProtocol(call_id, "9876543210")
            await register(ws, protocol)
            call = EmulatedCall(ws, protocol, payload_format="buffer", impairments=Impairments())
            nursery.start_soon(call._run)
            while call_id not in self.bot.conversations:  # noqa: ASYNC110 (the bot's own task)
                await trio.sleep(0.01)
            yield call
            if call.close_code is None:
                await ws.aclose(1000, "caller hung up")
            nursery.cancel_scope.cancel()

    async def turn(self, call: EmulatedCall) -> TurnRecord:
        """The caller says one thing; the bot's record of that turn once it is over."""
        finished: list[TurnRecord] = []
        done = trio.Event()

        def observe(record: TurnRecord) -> None:
            finished.append(record)
            done.set()

        conversation = self.bot.conversations[call.call_id]
        conversation.observers.append(observe)
        with trio.fail_after(60):
            await call.speak(utterance(0.4))
            await done.wait()
        conversation.observers.remove(observe)
        return finished[0]


@pytest.fixture
def call_log() -> Iterator[list[logging.LogRecord]]:
    """Every voicegraph log record (whatever an earlier test did to propagation)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("voicegraph")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def logged(records: list[logging.LogRecord], message: str, call_id: str) -> list[dict[str, Any]]:
    return [
        vars(record)
        for record in records
        if record.getMessage() == message and getattr(record, "callId", None) == call_id
    ]


async def both_answered(harness: Harness, first: EmulatedCall, second: EmulatedCall) -> None:
    """The failing call's next turn and another call's turn, at once: both answered."""
    records: list[TurnRecord] = []

    async def one(call: EmulatedCall) -> None:
        records.append(await harness.turn(call))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, first)
        nursery.start_soon(one, second)
    for record in records:
        assert (record.reply_text, record.heard_text, record.error) == (ANSWER, ANSWER, "")


async def closed_while_speaking(call: EmulatedCall) -> int:
    """The caller talks until the bot closes the call; its close code."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(call.speak, utterance(0.4))
        with trio.fail_after(10):
            code = await call.wait_closed()
        nursery.cancel_scope.cancel()
    return code


# --- start-up ------------------------------------------------------------------------


@pytest.mark.parametrize("role", [*ROLES, "turn"])
def test_a_service_failing_at_start_up_stops_serve_with_its_error(role: str) -> None:
    harness = Harness(semantic=role == "turn", **{role: FaultPlan("raise", at="start")})
    message = run_reporting_startup_errors(serve_until_signalled, harness.server)
    assert message == f"injected {role} fault at start-up"
    assert harness.faulty[role].strikes == 1
    assert issubclass(ERRORS[role], VoicegraphError)  # what the CLI reports as one line


async def test_a_service_slow_to_start_delays_listening_then_serves(autojump_clock: Any) -> None:
    harness = Harness(stt=FaultPlan("slow", at="start", delay_s=30.0))
    started = trio.current_time()
    async with harness.serving(), harness.dial("slow-start") as call:
        assert trio.current_time() - started >= 30.0
        record = await harness.turn(call)
    assert record.reply_text == ANSWER


async def test_a_service_hanging_at_start_up_never_listens_and_can_be_stopped(
    autojump_clock: Any,
) -> None:
    harness = Harness(llm=FaultPlan("hang", at="start"))
    with trio.move_on_after(600) as waited:
        async with trio.open_nursery() as nursery:
            await nursery.start(harness.server.serve)
    assert waited.cancelled_caught  # never listened; the cancel (SIGTERM) went through
    assert harness.faulty["llm"].strikes == 1


# --- mid-call: the turn degrades, the call goes on -----------------------------------


@pytest.mark.parametrize("kind", ["raise", "hang"])
@pytest.mark.parametrize("role", ["stt", "llm"])
async def test_stt_or_llm_failing_says_the_fallback_line_and_the_call_goes_on(
    role: str, kind: str, autojump_clock: Any, call_log: list[logging.LogRecord]
) -> None:
    harness = Harness(**{role: FaultPlan(kind)})
    async with harness.serving(), harness.dial("a") as first, harness.dial("b") as second:
        failed = await harness.turn(first)
        await both_answered(harness, first, second)
    assert (failed.reply_text, failed.heard_text) == (FALLBACK, FALLBACK)
    assert first.bot_audio_since(0)
    assert second.bot_audio_since(0)
    expected = {
        ("stt", "raise"): "stt: injected stt fault in a transcription",
        ("stt", "hang"): f"stt: no transcript in {DEADLINE:g} s",
        ("llm", "raise"): "llm: injected llm fault before the first word",
        ("llm", "hang"): f"llm: no reply within {DEADLINE:g} s",
    }[role, kind]
    assert failed.error == expected
    assert failed.llm_failed == (role == "llm")
    (warning,) = logged(call_log, "service failed", "a")
    assert warning["error"] == expected
    assert not logged(call_log, "service failed", "b")
    assert harness.faulty[role].strikes == 1
    if role == "stt":
        assert harness.failures(Transcriber) == 1
    assert harness.server.counters["internal_errors"] == 0


@pytest.mark.parametrize("kind", ["raise", "hang"])
async def test_tts_failing_on_the_first_piece_says_the_fallback_line(
    kind: str, autojump_clock: Any, call_log: list[logging.LogRecord]
) -> None:
    harness = Harness(tts=FaultPlan(kind))  # the first piece: "You said:"
    async with harness.serving(), harness.dial("a") as first, harness.dial("b") as second:
        failed = await harness.turn(first)
        await both_answered(harness, first, second)
    # a reply missing its start would not make sense: the caller hears the fallback line
    assert (failed.reply_text, failed.heard_text) == (FALLBACK, FALLBACK)
    assert FALLBACK in harness.tts.spoken
    reason = "injected tts fault voicing 'You said:'" if kind == "raise" else "no audio in 0.5 s"
    assert failed.error == f"tts: {reason}"
    assert logged(call_log, "service failed", "a")[0]["error"] == failed.error
    assert harness.failures(Synthesizer) == 1
    assert harness.server.counters["internal_errors"] == 0


@pytest.mark.parametrize("kind", ["raise", "hang"])
async def test_llm_failing_mid_reply_keeps_what_was_said_without_the_fallback(
    kind: str, autojump_clock: Any
) -> None:
    harness = Harness(llm=FaultPlan(kind, after_items=2))  # after "You said:"
    async with harness.serving(), harness.dial("a") as first, harness.dial("b") as second:
        failed = await harness.turn(first)
        await both_answered(harness, first, second)
    assert (failed.reply_text, failed.heard_text) == ("You said:", "You said:")
    assert failed.llm_failed
    reason = "injected llm fault after 2 words" if kind == "raise" else "the reply stalled"
    assert failed.error.startswith(f"llm: {reason}")
    assert FALLBACK not in harness.tts.spoken


async def test_every_service_slow_still_answers_every_call(autojump_clock: Any) -> None:
    harness = Harness(
        vad=FaultPlan("slow", count=None, delay_s=0.005),  # under the 32 ms of a window
        stt=FaultPlan("slow", count=None, delay_s=0.3),
        llm=FaultPlan("slow", count=None, delay_s=0.05),  # per word
        tts=FaultPlan("slow", count=None, delay_s=0.2),
    )
    async with harness.serving(), harness.dial("a") as first, harness.dial("b") as second:
        await both_answered(harness, first, second)
        await both_answered(harness, first, second)
    assert all(service.strikes >= 4 for service in harness.faulty.values())
    stats = harness.server.finished_calls
    assert len(stats) == 2
    assert all(call["packets_dropped"] == 0 for call in stats)


@pytest.mark.parametrize("kind", ["raise", "hang"])
async def test_the_turn_model_failing_leaves_the_words_to_judge_the_turn(
    kind: str, autojump_clock: Any, call_log: list[logging.LogRecord]
) -> None:
    harness = Harness(semantic=True, turn=FaultPlan(kind))
    async with harness.serving(), harness.dial("a") as first, harness.dial("b") as second:
        judged = await harness.turn(first)
        await both_answered(harness, first, second)
    assert (judged.reply_text, judged.heard_text) == (ANSWER, ANSWER)
    assert harness.faulty["turn"].strikes == 1
    if kind == "raise":  # logged (without the callId: pipeline/bot/turn_judge.py's logger)
        assert [r for r in call_log if r.getMessage() == "turn model failed"]
    else:  # no answer within turn_model_deadline_ms: the words judge the pause alone
        assert judged.end_of_turn == "complete"
        assert [r for r in call_log if r.getMessage().startswith("turn model missed")]
    assert harness.server.counters["internal_errors"] == 0


# --- mid-call: the call ends, and only it --------------------------------------------


@pytest.mark.parametrize("kind", ["raise", "hang"])
async def test_vad_failing_mid_call_ends_that_call_with_1011_only(
    kind: str, autojump_clock: Any, call_log: list[logging.LogRecord]
) -> None:
    harness = Harness(vad=FaultPlan(kind, after_items=20))  # the first call's stream
    async with harness.serving(), harness.dial("a") as first, harness.dial("b") as second:
        assert await closed_while_speaking(first) == 1011
        record = await harness.turn(second)
    assert record.reply_text == ANSWER
    assert first.close_reason == "internal error"
    assert harness.server.counters["internal_errors"] == 1
    (failed,) = logged(call_log, "call failed", "a")
    assert failed["exc_info"] is not None  # the VAD's error, for whoever runs the server
    (ended,) = [call for call in harness.server.finished_calls if call["callId"] == "a"]
    assert ended["code"] == 1011


@pytest.mark.parametrize("role", ["stt", "llm", "tts"])
async def test_an_unexpected_exception_in_a_service_ends_that_call_only(
    role: str, autojump_clock: Any
) -> None:
    plan = FaultPlan("raise", error=RuntimeError(f"a bug in the {role} service"))
    harness = Harness(**{role: plan})
    async with harness.serving(), harness.dial("a") as first, harness.dial("b") as second:
        assert await closed_while_speaking(first) == 1011
        record = await harness.turn(second)
    assert record.reply_text == ANSWER
    assert harness.server.counters["internal_errors"] == 1


def test_fault_plans_count_requests_from_first() -> None:
    plan = FaultPlan("raise", first=2, count=2)
    assert [plan.hits(n) for n in range(6)] == [False, False, True, True, False, False]
    assert dataclasses.replace(plan, count=None).hits(99)
    assert not FaultPlan("raise", at="start").hits(0)
