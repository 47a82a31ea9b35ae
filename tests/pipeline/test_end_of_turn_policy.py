"""The semantic end-of-turn policy in the turn manager, on virtual time.

The caller's audio is tone bursts fed in real time (virtual) through the real
endpointer into a real :class:`Conversation` with a real reply path on named fakes:
:class:`FakeToneStt` reads each burst's pitch as words, :class:`FakeTurnModel` gives
P(complete) by the pitch of the last burst. What the bot sends is recorded with the
(virtual) time it was sent, so "nothing during the pause" is checked exactly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pytest
import trio

from pipeline.bot.config import BotConfig, ConversationConfig
from pipeline.bot.conversation import Conversation, TurnRecord
from pipeline.bot.playback import Playout
from pipeline.bot.services import SpeechServices, configured_turn_model
from pipeline.server.call import Call
from pipeline.server.logs import CallLogger
from stages.llm import EchoLlm, Responder
from stages.sentences import SpeechSplitter
from stages.smart_turn import SmartTurnService
from stages.stt import Transcriber
from stages.tts import Synthesizer
from stages.turns import Endpointer, TurnConfig
from stages.vad import VadFrame
from tests.fakes import FakeEnergyVad, FakeToneStt, FakeToneTts, FakeTurnModel, tone_burst

RATE = 8000
WINDOW = 256
QUESTION, NAME_IS, JOHN, MUSING, SUNDAY = 440.0, 330.0, 550.0, 770.0, 880.0
WORDS = {
    QUESTION: "What time do you open?",
    NAME_IS: "My name is",
    JOHN: "John Smith.",
    MUSING: "Well I was thinking",
    SUNDAY: "on Sunday?",
}
# the audio model: unsure of the question (as Smart Turn often is), sure of the rest
MODEL = {QUESTION: 0.3, NAME_IS: 0.2, JOHN: 0.8, MUSING: 0.1, SUNDAY: 0.8}


def quiet(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.int16)


def said(*parts: tuple[float, float] | float) -> np.ndarray:
    """Caller audio: (pitch, seconds) bursts and quiet gaps (a float), after 0.5 s quiet."""
    pieces = [quiet(0.5)]
    for part in parts:
        if isinstance(part, tuple):
            pieces.append(tone_burst(part[1], hz=part[0]))
        else:
            pieces.append(quiet(part))
    return np.concatenate(pieces)


@dataclass
class Line:
    """What went to the platform, with virtual send times."""

    sent: list[tuple[float, str]] = field(default_factory=list)

    async def send_text(self, message: str) -> None:
        self.sent.append((trio.current_time(), message))

    def times(self, kind: str) -> list[float]:
        return [at for at, message in self.sent if message == kind]


@dataclass
class Outcome:
    conversation: Conversation
    line: Line
    stt: FakeToneStt
    model: FakeTurnModel
    started_at: float  # virtual time of the first sample

    @property
    def turns(self) -> list[TurnRecord]:
        return self.conversation.turns

    def at(self, seconds_into_audio: float) -> float:
        return self.started_at + seconds_into_audio


async def converse(
    audio: np.ndarray,
    turns: TurnConfig | None = None,
    *,
    barge_in: bool = True,
    seconds_per_char: float = 0.03,
    model_delay: float = 0.05,
    stt_confidence: float = 1.0,
) -> Outcome:
    """Feed ``audio`` window by window at its real pace through the endpointer into a
    conversation, then 3 s of silence; return what happened."""
    turns = turns or TurnConfig()
    line = Line()
    call = Call(
        call_id="policy",
        mobile_no="5550100",
        extra={},
        send_text=line.send_text,
        encode_speech=lambda mulaw, stamp: ["speech"],
        encode_greeting=lambda wav: "greeting",
        encode_interrupt=lambda: "interrupt",
        log=CallLogger(logging.getLogger("test.policy"), "policy"),
    )
    stt, tts = FakeToneStt(WORDS, confidence=stt_confidence), FakeToneTts(seconds_per_char)
    model = FakeTurnModel(MODEL, delay=model_delay)
    llm = EchoLlm("Sure. You said {text}, and I will help.")
    playout = Playout()
    conversation = Conversation(
        call,
        config=ConversationConfig(greeting="", barge_in=barge_in),
        reply_stages=lambda: [
            Transcriber(stt),
            Responder(llm),
            SpeechSplitter(),
            Synthesizer(tts),
        ],
        playout=playout,
        turns=turns,
        turn_model=model,
    )
    endpointer = Endpointer(turns, bot=playout.bot)
    audio = np.concatenate([audio, quiet(3.0)])
    send, receive = trio.open_memory_channel[object](100)
    started_at = trio.current_time()

    async def feed() -> None:
        async with send:
            for start in range(0, len(audio) - WINDOW + 1, WINDOW):
                await trio.sleep(WINDOW / RATE)
                samples = audio[start : start + WINDOW]
                loud = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) > 300.0
                frame = VadFrame(
                    samples=samples,
                    start_sample=start,
                    probability=0.99 if loud else 0.01,
                    captured_at=trio.current_time(),
                )
                for event in endpointer.process(frame):
                    send.send_nowait(event)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        await conversation.run(receive)
    return Outcome(conversation, line, stt, model, started_at)


async def test_a_complete_question_commits_at_the_pause_long_before_the_hangover(autojump_clock):
    outcome = await converse(said((QUESTION, 1.0)))
    (turn,) = outcome.turns  # the endpointer's late segment did not start a second reply
    assert turn.end_of_turn == "complete"
    assert turn.caller_text == "What time do you open?"
    # committed at the pause (200 ms) + the judgement (STT + a 50 ms model), not at 600 ms
    assert turn.timings_ms["endpointing"] < 350
    assert turn.timings_ms["first_send"] < 400
    assert outcome.conversation.duplicate_segments == 1
    assert outcome.line.times("interrupt") == []
    assert outcome.model.requests  # the audio model was asked


async def test_an_incomplete_phrase_and_its_continuation_are_answered_once_as_a_whole(
    autojump_clock,
):
    outcome = await converse(said((NAME_IS, 0.8), 0.8, (JOHN, 0.8)))
    (turn,) = outcome.turns
    assert turn.caller_text == "My name is John Smith."
    assert outcome.line.times("interrupt") == []
    speech = outcome.line.times("speech")
    assert speech, "the whole sentence was answered"
    continuation_ends = outcome.at(0.5 + 0.8 + 0.8 + 0.8)
    assert min(speech) > continuation_ends  # nothing was sent during the pause
    assert outcome.stt.heard[-1] >= 2.4  # the last decode held the whole sentence
    assert turn.end_of_turn == "complete"
    user_lines = [m.content for m in outcome.conversation.history if m.role == "user"]
    assert user_lines == ["My name is John Smith."]


async def test_an_incomplete_verdict_is_committed_at_max_wait(autojump_clock):
    outcome = await converse(said((MUSING, 0.8)), TurnConfig(max_wait_ms=1500.0))
    (turn,) = outcome.turns
    assert turn.end_of_turn == "max_wait"
    assert turn.turn_probability is not None
    assert turn.turn_probability < 0.3
    assert 1500 - 100 <= turn.timings_ms["endpointing"] <= 1500 + 100
    assert outcome.line.times("speech")  # answered, however late


async def test_hangover_mode_is_todays_fixed_rule(autojump_clock):
    outcome = await converse(said((QUESTION, 1.0)), TurnConfig(mode="hangover"))
    (turn,) = outcome.turns
    assert turn.end_of_turn == "hangover"
    assert 600 - 100 <= turn.timings_ms["endpointing"] <= 600 + 100
    assert outcome.model.requests == []  # no judgement at all
    assert outcome.conversation.judge is None


async def test_a_reply_playing_when_the_caller_goes_on_is_stopped_and_the_whole_answered(
    autojump_clock,
):
    """The question sounds finished and is committed at its pause; the caller goes on
    0.8 s later while the reply plays: stopped once the barge-in gate hears a voice,
    the whole sentence answered."""
    outcome = await converse(said((QUESTION, 1.0), 0.8, (SUNDAY, 0.7)))
    first, whole = outcome.turns
    resumed_at = outcome.at(0.5 + 1.0 + 0.8)
    assert first.end_of_turn == "withdrawn"
    assert first.interrupted
    assert first.bot_started_at is not None
    (interrupt,) = outcome.line.times("interrupt")
    # as soon as the barge-in gate hears a voice (~160 ms): a cough would not stop it
    assert resumed_at + 0.12 <= interrupt <= resumed_at + 0.3
    assert whole.caller_text == "What time do you open? on Sunday?"
    assert any(at > interrupt for at in outcome.line.times("speech"))
    # the history keeps the whole sentence and its answer, nothing of the half one
    user_lines = [m.content for m in outcome.conversation.history if m.role == "user"]
    assert user_lines == ["What time do you open? on Sunday?"]
    assert len(outcome.conversation.history) == 2


async def test_an_answer_heard_in_full_stands_and_what_follows_is_a_new_turn(autojump_clock):
    """Committed early and short enough to be heard before the caller speaks again
    (within max_wait): the next words are a turn of their own, not the old one again."""
    turns = TurnConfig(max_wait_ms=3500.0)
    outcome = await converse(said((QUESTION, 1.0), 2.5, (JOHN, 0.6)), turns)
    first, second = outcome.turns
    assert first.end_of_turn == "complete"
    assert not first.interrupted
    assert second.caller_text == "John Smith."  # the question was not answered twice
    assert outcome.line.times("interrupt") == []


async def test_half_duplex_never_stops_an_early_answer(autojump_clock):
    """barge_in = false: the caller going on over an early answer does not stop it."""
    outcome = await converse(said((QUESTION, 1.0), 0.8, (SUNDAY, 0.7)), barge_in=False)
    first, *rest = outcome.turns
    assert outcome.line.times("interrupt") == []
    assert first.end_of_turn == "complete"
    assert not first.interrupted
    assert first.heard_text == first.reply_text.strip()
    assert all(turn.caller_text == "on Sunday?" for turn in rest)  # never the question again


def test_the_turn_model_is_built_only_where_the_policy_uses_it():
    assert configured_turn_model(TurnConfig(mode="hangover")) is None
    assert configured_turn_model(TurnConfig(turn_model="none")) is None
    smart = configured_turn_model(TurnConfig())
    assert isinstance(smart, SmartTurnService)  # built, not loaded: that is serving()'s
    fake = FakeTurnModel(MODEL)
    given = {
        "vad": FakeEnergyVad(),
        "stt": FakeToneStt(WORDS),
        "llm": EchoLlm(),
        "tts": FakeToneTts(),
    }
    services = SpeechServices.from_config(BotConfig(), **given, turn=fake)
    assert services.turn is fake
    hangover = BotConfig(turns=TurnConfig(mode="hangover"))
    services = SpeechServices.from_config(hangover, **given)
    assert services.turn is None
    assert [name for name, _ in services.each()] == ["vad", "stt", "llm", "tts"]


async def test_speech_after_the_continuation_window_is_a_barge_in_not_more_sentence(
    autojump_clock,
):
    """Resuming 1.8 s after the question (continuation_ms 1.5 s) while its answer plays:
    a reply to the bot. The barge-in gate stops it, the new words are answered alone."""
    turns = TurnConfig(max_wait_ms=3000.0, continuation_ms=1500.0)
    outcome = await converse(said((QUESTION, 1.0), 1.8, (JOHN, 0.8)), turns, seconds_per_char=0.06)
    first, second = outcome.turns
    resumed_at = outcome.at(0.5 + 1.0 + 1.8)
    (interrupt,) = outcome.line.times("interrupt")
    assert interrupt >= resumed_at + 0.12  # after the barge-in gate, not at the first window
    assert first.end_of_turn == "complete"
    assert first.interrupted
    assert second.caller_text == "John Smith."
    user_lines = [m.content for m in outcome.conversation.history if m.role == "user"]
    assert user_lines == ["What time do you open?", "John Smith."]


async def test_an_unsure_verdict_commits_after_the_middle_wait(autojump_clock):
    # P = 0.1: unsure; the fixed wait (and no pitch cue: a tone is a level voice)
    turns = TurnConfig(
        incomplete_threshold=0.05, unsure_wait_ms=900.0, graded_wait=False, use_pitch=False
    )
    outcome = await converse(said((MUSING, 0.8)), turns)
    (turn,) = outcome.turns
    assert turn.end_of_turn == "unsure"
    assert 900 - 50 <= turn.timings_ms["endpointing"] <= 900 + 50
    assert turn.timings_ms["judged"] < 400  # known early, committed at the wait


async def test_an_unsure_verdict_waits_less_the_surer_it_is(autojump_clock):
    """P = 0.1 between thresholds 0.05 and 0.15: in log-odds 38% of the way down from
    complete to incomplete, so it waits 38% of the way from the pause (160 ms) to
    unsure_wait_ms (900 ms): 443 ms, not the fixed 900."""
    turns = TurnConfig(
        incomplete_threshold=0.05, complete_threshold=0.15, unsure_wait_ms=900.0, use_pitch=False
    )
    outcome = await converse(said((MUSING, 0.8)), turns)
    (turn,) = outcome.turns
    assert turn.end_of_turn == "unsure"
    (judged,) = turn.turn_judgements
    assert judged["wait_ms"] == pytest.approx(443.0, abs=5.0)
    assert 443 - 50 <= turn.timings_ms["endpointing"] <= 443 + 50


@pytest.mark.parametrize(("seconds", "wait_ms"), [(0.6, 1200.0), (2.6, 600.0)])
async def test_words_not_made_out_wait_by_how_long_the_caller_spoke(
    autojump_clock, seconds, wait_ms
):
    """Words heard at confidence 0.2: a short turn (a cut-off lead-in's length) waits
    the whole unsure wait, a long one the hangover's min_silence_ms."""
    turns = TurnConfig(unsure_wait_ms=1200.0, min_silence_ms=600.0, use_pitch=False)
    outcome = await converse(said((MUSING, seconds)), turns, stt_confidence=0.2)
    (turn,) = outcome.turns
    assert turn.end_of_turn == "unsure"
    (judged,) = turn.turn_judgements
    assert judged["wait_ms"] == wait_ms
    assert judged["turn_ms"] == pytest.approx(seconds * 1000 + 350, abs=100)
    assert wait_ms - 50 <= turn.timings_ms["endpointing"] <= wait_ms + 50


async def test_a_hung_turn_model_costs_its_cue_not_the_wait(autojump_clock):
    """The model never answers in time: the words judge "John Smith." at its deadline,
    instead of the turn waiting for the endpointer's max_wait_ms."""
    turns = TurnConfig(turn_model_deadline_ms=300.0)
    outcome = await converse(said((JOHN, 1.0)), turns, model_delay=60.0)
    (turn,) = outcome.turns
    assert turn.timings_ms["judged"] < 160 + 300 + 100
    assert turn.end_of_turn != "max_wait"
    (judged,) = turn.turn_judgements
    assert judged["model_late"] is True
    assert judged["model_probability"] is None
    assert outcome.conversation.judge is not None
    assert outcome.conversation.judge.counts["model_late"] == 1


async def test_words_that_settle_the_verdict_withdraw_the_model_request(autojump_clock):
    """A plain question is complete whatever the model could say (its probability is
    clipped to [0.1, 0.9]): the judge does not wait for it, even one that would take a
    minute, and the verdict is the one the model would have given."""
    outcome = await converse(said((QUESTION, 1.0)), TurnConfig(), model_delay=60.0)
    (turn,) = outcome.turns
    assert turn.end_of_turn == "complete"
    (judged,) = turn.turn_judgements
    assert (judged["model_skipped"], judged["model_late"]) == (True, False)
    assert turn.timings_ms["judged"] < 160 + 100  # the transcript's time, not the model's
    assert outcome.conversation.judge is not None
    assert outcome.conversation.judge.counts["model_skipped"] == 1


async def test_words_that_leave_the_verdict_open_wait_for_the_model(autojump_clock):
    outcome = await converse(said((JOHN, 1.0)), TurnConfig(), model_delay=0.2)
    (turn,) = outcome.turns
    (judged,) = turn.turn_judgements
    assert judged["model_skipped"] is False
    assert judged["model_probability"] == MODEL[JOHN]
    assert outcome.conversation.judge is not None
    assert outcome.conversation.judge.counts["model_skipped"] == 0


async def test_each_pause_of_a_resumed_turn_is_kept_on_its_record(autojump_clock):
    outcome = await converse(said((NAME_IS, 0.8), 0.8, (JOHN, 0.8)))
    (turn,) = outcome.turns
    verdicts = [judged["verdict"] for judged in turn.turn_judgements]
    assert verdicts == ["incomplete", "complete"]
    assert turn.turn_judgements[0]["text"] == "My name is"
    assert turn.turn_judgements[1]["text"] == "My name is John Smith."
