"""Whisper STT through the telephone path, its guards, and its start-up errors."""

import numpy as np
import pytest
import trio

from benchmarks.speech_corpus import VOICES, noise, padded, silence, speech, telephony
from pipeline import open_chain
from pipeline.runtime.frames import Utterance
from stages.stt import (
    SttConfig,
    SttError,
    SttService,
    SttStage,
    TranscriptFrame,
    hallucination,
    open_stt_service,
    repetition,
    trim_loop,
)


def words(text: str) -> list[str]:
    return "".join(c for c in text.lower() if c.isalnum() or c.isspace()).split()


@pytest.fixture(scope="module")
def service() -> SttService:
    stt = SttService(SttConfig(cpu_threads=2))
    stt.load()
    return stt


@pytest.mark.parametrize(
    ("text", "voice"),
    [
        ("I want to cancel my subscription.", VOICES[0]),
        ("Can you transfer me to customer service?", VOICES[1]),
        ("Please call me back tomorrow afternoon.", VOICES[4]),
        ("What time does the store open on Saturday?", VOICES[3]),
    ],
    ids=lambda x: getattr(x, "label", x[:20] if isinstance(x, str) else x),
)
def test_sentences_through_the_telephone_path(service, text, voice):
    audio = telephony(padded(speech(text, voice, rate=22050), 0.2, 0.2, rate=22050), 22050)
    result = service.transcribe_sync(audio, 8000)
    assert words(result.text) == words(text)
    assert 0.0 < result.confidence <= 1.0
    assert result.audio_s == pytest.approx(len(audio) / 8000, abs=0.01)


def test_short_answer_is_not_looped(service):
    result = service.transcribe_sync(telephony(padded(speech("Yes."), 0.2, 0.2)))
    assert words(result.text) == ["yes"]


@pytest.mark.parametrize(
    "audio",
    [silence(1.5), noise(1.5, level_dbfs=-60, seed=4)],
    ids=["digital-silence", "line-hiss"],
)
def test_near_silence_gives_no_words(service, audio):
    assert service.transcribe_sync(telephony(audio)).text == ""


def test_a_loop_on_audio_whisper_calls_non_speech_is_dropped_however_sure():
    """faster-whisper's sampled fallback sometimes keeps a confident loop of the
    vocabulary prompt on white noise (seen once in the suite: "Rosie's Bakery,
    sourdough, sourdough, ...")."""

    def judged(text: str, no_speech_prob: float) -> str | None:
        return hallucination(
            text,
            avg_logprob=-0.2,  # sure of its words
            no_speech_prob=no_speech_prob,
            level_dbfs=-35.0,
            no_speech_threshold=0.6,
            log_prob_threshold=-1.0,
            silence_dbfs=-55.0,
            phantom_phrases=frozenset(),
        )

    assert judged("Rosie's Bakery, sourdough, sourdough, sourdough.", 0.97) == "no speech"
    assert judged("No, no, no, not today.", 0.1) is None  # speech repeats itself too
    assert judged("Sourdough, please.", 0.97) is None  # no loop: the log-probability decides


def test_repetition_and_loop_trimming():
    assert repetition("Yes. Yes. Yes.") == "word repeated"
    assert repetition("Please call me back. Please call") is not None
    assert repetition("My number is five five two") is None
    # a phone number repeats digits for real; a word loop is still a loop
    assert repetition("Five five five, two one nine eight.") is None
    assert repetition("5 5 5 2 1 9 8") is None
    assert repetition("time time time two one") == "word repeated"
    # a restart: at a sentence start, three words again, or two cut off at the end
    assert repetition("Can I book a table? Can I book") == "opening repeated"
    assert repetition("I want to return the shoes and I want to") == "opening repeated"
    assert repetition("I would like the cake I would") == "opening repeated"
    # speech says its opening words again inside a sentence
    assert repetition("I want to return the shoes I want yesterday.") is None
    assert repetition("I need to know if I need a visa.") is None
    assert trim_loop("Not really. Not really. Not") == "Not really."
    assert trim_loop("Five five five two one") == "Five five five two one"


async def test_service_runs_off_the_event_loop(service):
    audio = telephony(speech("Maria Garcia."))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0.01)
            ticks += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        result = await service.transcribe(audio)
        nursery.cancel_scope.cancel()
    assert words(result.text) == ["maria", "garcia"]
    assert ticks >= 1  # the loop kept running while the model worked


async def test_stage_transcribes_utterances_and_skips_other_events(service):
    clip = telephony(speech("John Smith."))
    utterance = Utterance(
        samples=clip, start_sample=800, end_sample=800 + len(clip), captured_at=0.0
    )
    async with open_chain(SttStage(service)) as chain:
        chain.inbound.send_nowait("not an utterance")
        chain.inbound.send_nowait(utterance)
        await chain.inbound.aclose()
        outputs = [item async for item in chain.outputs]
    assert len(outputs) == 1
    (frame,) = outputs
    assert isinstance(frame, TranscriptFrame)
    assert words(frame.text) == ["john", "smith"]
    assert (frame.start_sample, frame.end_sample) == (800, 800 + len(clip))
    assert [s.stage for s in frame.stamps] == ["stt_stage"]


async def test_missing_model_path_fails_at_start_up(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(SttError, match="no-such-model"):
        async with open_stt_service(SttConfig(model=missing)):
            pytest.fail("the service must not start")


async def test_stage_refuses_an_unloaded_service():
    with pytest.raises(BaseException) as caught:  # noqa: PT011 - wrapped by the chain
        async with open_chain(SttStage(SttService())):
            pass
    assert "SttService" in repr(caught.value.exceptions[0].__cause__)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(SttError, match="cannot load STT model"):
        SttService(SttConfig(model="no-such-whisper-size")).load()


def test_transcripts_are_independent_of_call_order(service):
    a = telephony(speech("Okay."))
    b = telephony(speech("Not really.", VOICES[3]))
    first = [service.transcribe_sync(x).text for x in (a, b)]
    second = [service.transcribe_sync(x).text for x in (b, a)][::-1]
    assert first == second
    assert np.isfinite(service.statistics()["transcribed"])
