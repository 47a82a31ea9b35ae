"""Endpointing and barge-in on generated speech with known true boundaries.

True boundaries: the corpus trims each clip to its first and last 5 ms block above
-45 dBFS, then pads it with exact digital silence, so speech starts at sample 8000
(1 s) and ends 8000 + len(clip) samples in.
"""

import numpy as np
import pytest

from benchmarks.speech_corpus import VOICES, click, padded, silence, speech, telephony
from pipeline import PcmAudio, open_chain
from stages.turns import (
    BargeIn,
    BotSpeech,
    Endpointer,
    SpeechPaused,
    SpeechResumed,
    SpeechSegment,
    SpeechStarted,
    TurnConfig,
    TurnStage,
)
from stages.vad import (
    WINDOW,
    SileroModel,
    VadFrame,
    VadStage,
    frames_of,
    open_vad_service,
)

SIZE = WINDOW[8000]
TOLERANCE = 480  # 60 ms at 8 kHz
HANGOVER = TurnConfig(mode="hangover")  # today's fixed 600 ms rule, the baseline


@pytest.fixture(scope="module")
def model() -> SileroModel:
    return SileroModel()


def run(endpointer: Endpointer, frames: list[VadFrame]) -> list:
    events = [event for frame in frames for event in endpointer.process(frame)]
    return events + endpointer.finish()


@pytest.mark.parametrize("voice", VOICES, ids=lambda v: v.label)
@pytest.mark.parametrize("text", ["Please call me back tomorrow afternoon.", "Yes."])
def test_boundaries_land_within_60_ms(model, voice, text):
    clip = telephony(speech(text, voice))
    audio = padded(clip, 1.0, 1.5)
    events = run(Endpointer(HANGOVER), frames_of(model, audio))
    assert [type(e) for e in events] == [SpeechStarted, SpeechPaused, SpeechSegment]
    started, paused, segment = events
    # the tentative turn is the committed one: work started on it stays valid
    assert paused.segment.speech_start == segment.speech_start
    assert paused.segment.speech_end == segment.speech_end
    np.testing.assert_array_equal(paused.segment.samples, segment.samples)
    assert abs(segment.speech_start - 8000) <= TOLERANCE
    assert abs(segment.speech_end - (8000 + len(clip))) <= TOLERANCE
    assert started.sample == segment.speech_start
    # the 600 ms hangover runs from the end of the voice, not from Silero's late release
    assert 4800 - TOLERANCE <= segment.decided_sample - (8000 + len(clip)) <= 4800 + SIZE + 80
    # the audio is the call's own samples, padded by pre-roll and post-roll
    assert segment.start_sample == segment.speech_start - 1600
    assert segment.end_sample == segment.speech_end + 1200
    np.testing.assert_array_equal(segment.samples, audio[segment.start_sample : segment.end_sample])


def test_a_pause_the_caller_talks_through_is_retracted(model):
    first = telephony(speech("My number is five five five."))
    second = telephony(speech("One two three four."))
    audio = np.concatenate([silence(0.5), first, silence(0.4), second, silence(1.0)])
    events = run(Endpointer(TurnConfig(early_silence_ms=250)), frames_of(model, audio))
    kinds = [type(e) for e in events]
    assert kinds == [SpeechStarted, SpeechPaused, SpeechResumed, SpeechPaused, SpeechSegment]
    resumed = events[2]
    assert resumed.sample >= events[1].segment.speech_end
    assert events[-1].speech_end > resumed.sample  # one turn holds both halves


def test_no_early_pause_when_disabled(model):
    audio = padded(telephony(speech("Yes.")), 1.0, 1.5)
    events = run(
        Endpointer(TurnConfig(mode="hangover", early_silence_ms=None)), frames_of(model, audio)
    )
    assert [type(e) for e in events] == [SpeechStarted, SpeechSegment]


def test_pause_shorter_than_hangover_keeps_one_turn(model):
    first = telephony(speech("My number is five five five."))
    second = telephony(speech("One two three four."))
    short_pause = np.concatenate([silence(0.5), first, silence(0.3), second, silence(1.0)])
    long_pause = np.concatenate([silence(0.5), first, silence(1.0), second, silence(1.0)])
    segments = [
        e
        for e in run(Endpointer(HANGOVER), frames_of(model, short_pause))
        if isinstance(e, SpeechSegment)
    ]
    assert len(segments) == 1
    segments = [
        e
        for e in run(Endpointer(HANGOVER), frames_of(model, long_pause))
        if isinstance(e, SpeechSegment)
    ]
    assert len(segments) == 2
    assert abs(segments[1].speech_start - (4000 + len(first) + 8000)) <= TOLERANCE


def test_hangover_is_configurable(model):
    audio = padded(telephony(speech("Okay.")), 0.5, 1.0)
    frames = frames_of(model, audio)
    fast = [
        e
        for e in run(Endpointer(TurnConfig(mode="hangover", min_silence_ms=200)), frames)
        if isinstance(e, SpeechSegment)
    ]
    slow = [
        e
        for e in run(Endpointer(TurnConfig(mode="hangover", min_silence_ms=800)), frames)
        if isinstance(e, SpeechSegment)
    ]
    assert slow[0].captured_at == fast[0].captured_at == 0.0
    # the same speech, but the slow endpointer needed more audio before it decided
    assert slow[0].end_sample == fast[0].end_sample
    decided = {}
    for config in (
        TurnConfig(mode="hangover", min_silence_ms=200),
        TurnConfig(mode="hangover", min_silence_ms=800),
    ):
        endpointer = Endpointer(config)
        for frame in frames:
            if any(isinstance(e, SpeechSegment) for e in endpointer.process(frame)):
                decided[config.min_silence_ms] = frame.end_sample
                break
    assert decided[800] - decided[200] == pytest.approx(600 * 8, abs=SIZE)


def test_forced_cut_at_max_utterance(model):
    audio = padded(
        telephony(speech("I would like to check the status of my order, please.")), 0.5, 1.0
    )
    events = run(Endpointer(TurnConfig(max_utterance_s=1.0)), frames_of(model, audio))
    segments = [e for e in events if isinstance(e, SpeechSegment)]
    assert len(segments) >= 2
    assert segments[0].forced
    assert segments[0].speech_end - segments[0].speech_start <= 8000 + SIZE


def test_click_is_not_a_turn(model):
    audio = telephony(np.concatenate([silence(0.5), click(0.1), silence(1.0)]))
    assert run(Endpointer(), frames_of(model, audio)) == []


def barge_events(model, audio, *, speaking=True, gate=None) -> list[BargeIn]:
    bot = BotSpeech()
    endpointer = Endpointer(bot=bot, barge_in_gate=gate)
    with bot.speaking_scope() if speaking else _nothing():
        events = run(endpointer, frames_of(model, audio))
    return [e for e in events if isinstance(e, BargeIn)]


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


def test_barge_in_ignores_a_100_ms_click(model):
    audio = telephony(
        np.concatenate(
            [
                silence(0.5),
                click(0.1),
                silence(0.5),
                click(0.1, level_dbfs=0.0, seed=3),
                silence(0.5),
            ]
        )
    )
    assert barge_events(model, audio) == []


def test_barge_in_fires_on_400_ms_of_speech(model):
    words = telephony(speech("Hello there, can you hear me?"))[:3200]  # 400 ms of it
    audio = np.concatenate([silence(0.5), words, silence(0.5)])
    (barge,) = barge_events(model, audio)
    assert abs(barge.sample - 4000) <= TOLERANCE
    assert barge.detected_sample - barge.sample >= TurnConfig().barge_in_min_speech_ms * 8
    assert barge.detected_sample <= 4000 + 3200 + SIZE  # while the caller is still talking


def test_barge_in_rearms_when_the_bot_talks_again_within_one_turn(model):
    """A reply resumed after a false interruption can be cut again by the same turn."""
    words = telephony(speech("Hello there, can you hear me? I have a question for you."))
    frames = frames_of(model, np.concatenate([silence(0.5), words, silence(0.5)]))
    bot = BotSpeech()
    endpointer = Endpointer(TurnConfig(mode="hangover"), bot=bot)
    barges = []
    third = len(frames) // 3
    for index, frame in enumerate(frames):
        bot.speaking = index < third or index >= 2 * third  # cut, then resumed
        barges += [e for e in endpointer.process(frame) if isinstance(e, BargeIn)]
    assert len(barges) == 2


def test_barge_in_needs_the_bot_to_be_speaking(model):
    audio = np.concatenate([silence(0.5), telephony(speech("Hello there.")), silence(0.5)])
    assert barge_events(model, audio, speaking=False) == []


def test_barge_in_is_stricter_than_speech_start(model):
    words = telephony(speech("Hello there, can you hear me?"))[:1200]  # 150 ms: a blip
    audio = np.concatenate([silence(0.5), words, silence(1.0)])
    bot = BotSpeech()
    bot.speaking = True
    events = run(Endpointer(bot=bot), frames_of(model, audio))
    assert any(isinstance(e, SpeechStarted) for e in events)
    assert not any(isinstance(e, BargeIn) for e in events)


def test_each_stretch_of_speech_over_the_bot_can_barge_in(model):
    """A semantic turn stays open over a pause (its segment waits for max_wait_ms), and
    the bot may be talking again by then (the reply committed at the pause). Speech
    after that pause is a new stretch: it must be able to stop the bot, even if the
    first stretch's barge-in did not silence it (the turn manager decides that)."""
    first = telephony(speech("What time do you open on Saturday?"))
    second = telephony(speech("Can you transfer me to customer service?"))
    audio = np.concatenate([silence(0.5), first, silence(1.2), second, silence(0.5)])
    barges = barge_events(model, audio)  # the bot talks throughout
    assert len(barges) == 2  # not one per window: once per stretch
    assert barges[0].detected_sample < 4000 + len(first) < barges[1].detected_sample


def test_words_gate_hook_is_asked_and_can_veto(model):
    # one stretch of speech (no pause inside: each stretch may barge in once)
    audio = np.concatenate(
        [silence(0.5), telephony(speech("What time do you open on Saturday?")), silence(0.5)]
    )
    seen: list[tuple[int, int]] = []

    def gate(samples: np.ndarray, start: int) -> bool:
        seen.append((len(samples), start))
        return len(seen) >= 3  # "words" appear on the third look

    (barge,) = barge_events(model, audio, gate=gate)
    assert len(seen) == 3
    assert seen[0][1] == barge.sample
    assert seen[1][0] == seen[0][0] + SIZE  # growing audio from the speech start
    assert barge_events(model, audio, gate=lambda samples, start: False) == []


def test_config_rejects_inverted_thresholds():
    with pytest.raises(ValueError, match="release_threshold"):
        TurnConfig(threshold=0.3, release_threshold=0.5)


async def test_pipeline_pcm_to_turns(model):
    clip = telephony(speech("Can you transfer me to customer service?"))
    audio = padded(clip, 1.0, 1.0)
    async with (
        open_vad_service(model) as service,
        open_chain(VadStage(service), TurnStage(HANGOVER)) as chain,
    ):
        for i in range(0, len(audio), 160):
            frame = PcmAudio(samples=audio[i : i + 160], start_sample=i, captured_at=i / 8000)
            chain.inbound.send_nowait(frame)
        await chain.inbound.aclose()
        events = [e async for e in chain.outputs]
        stats = chain.statistics()
    assert [type(e) for e in events] == [SpeechStarted, SpeechPaused, SpeechSegment]
    segment = events[2]
    assert abs(segment.speech_end - (8000 + len(clip))) <= TOLERANCE
    assert [s.stage for s in segment.stamps] == ["vad_stage", "turn_stage"]
    # charged from the capture of the window that ended the turn
    assert segment.captured_at >= (segment.speech_end + 600 * 8 - SIZE - 160) / 8000
    assert stats["turn_stage"]["utterances"] == 1


def test_semantic_mode_leaves_the_decision_to_the_pause_and_bounds_it_at_max_wait(model):
    """Semantic mode: SpeechPaused at early_silence_ms as before, and the endpointer's
    own SpeechSegment only after max_wait_ms of silence, not at the 600 ms hangover."""
    clip = telephony(speech("I would like to order some bread."))
    audio = padded(clip, 1.0, 3.0)
    config = TurnConfig(mode="semantic", max_wait_ms=2000.0)
    endpointer = Endpointer(config)
    decided: dict[type, int] = {}
    for frame in frames_of(model, audio):
        for event in endpointer.process(frame):
            decided.setdefault(type(event), frame.end_sample)
    assert set(decided) == {SpeechStarted, SpeechPaused, SpeechSegment}
    true_end = 8000 + len(clip)
    assert decided[SpeechPaused] - true_end == pytest.approx(200 * 8, abs=TOLERANCE)
    assert decided[SpeechSegment] - true_end == pytest.approx(2000 * 8, abs=TOLERANCE)


def test_semantic_mode_keeps_one_turn_through_a_one_second_pause(model):
    """A pause shorter than max_wait_ms is retracted: the paused segment after the
    continuation holds the audio from the original onset (the whole sentence)."""
    first = telephony(speech("My name is"))
    second = telephony(speech("John Smith."))
    audio = np.concatenate([silence(0.5), first, silence(1.0), second, silence(2.5)])
    events = run(Endpointer(TurnConfig()), frames_of(model, audio))
    kinds = [type(e) for e in events]
    assert kinds == [SpeechStarted, SpeechPaused, SpeechResumed, SpeechPaused, SpeechSegment]
    first_pause, second_pause, segment = events[1], events[3], events[4]
    assert second_pause.segment.speech_start == first_pause.segment.speech_start
    assert segment.speech_start == first_pause.segment.speech_start
    assert segment.speech_end > events[2].sample  # it holds both halves


def test_hangover_mode_ignores_max_wait(model):
    audio = padded(telephony(speech("Okay.")), 0.5, 1.0)
    frames = frames_of(model, audio)
    ends = {}
    for max_wait in (700.0, 1500.0):
        endpointer = Endpointer(TurnConfig(mode="hangover", max_wait_ms=max_wait))
        for frame in frames:
            if any(isinstance(e, SpeechSegment) for e in endpointer.process(frame)):
                ends[max_wait] = frame.end_sample
                break
    assert ends[700.0] == ends[1500.0]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mode": "smart"}, "mode must be one of"),
        ({"early_silence_ms": None}, "semantic mode needs"),
        ({"early_silence_ms": 2500.0}, "semantic mode needs"),
        ({"complete_threshold": 0.2, "incomplete_threshold": 0.4}, "incomplete_threshold"),
        ({"unsure_wait_ms": 3000.0}, "unsure_wait_ms"),
        ({"unsure_wait_ms": 100.0}, "unsure_wait_ms"),
        ({"continuation_ms": 2500.0}, "continuation_ms"),
        ({"turn_model_deadline_ms": 0.0}, "turn_model_deadline_ms"),
    ],
)
def test_config_rejects_inconsistent_end_of_turn_settings(fields, message):
    with pytest.raises(ValueError, match=message):
        TurnConfig(**fields)


def test_hangover_mode_needs_no_early_pause():
    assert TurnConfig(mode="hangover", early_silence_ms=None).commit_silence_ms == 600.0
    assert TurnConfig().commit_silence_ms == 2000.0
