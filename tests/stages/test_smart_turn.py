"""Smart Turn v3.2: Pipecat's features without transformers; one batched service for all calls."""

import os
import sys
import threading

import numpy as np
import pytest
import trio

from benchmarks.smart_turn_bench import cut_at_word_gap
from benchmarks.speech_corpus import VOICES, padded, silence, speech, telephony
from stages import smart_turn
from stages.resample import resample
from stages.smart_turn import (
    DEFAULT_TURN_MODEL,
    INFERENCE_NICE,
    SmartTurnModel,
    SmartTurnService,
    TurnModelError,
    turn_features,
)
from stages.vad import DEFAULT_VAD_MODEL

QUESTION, PREFIX = "What time do you open on Saturday?", "What time do you open on"
JOE = VOICES[:3]  # Piper joe at three speeds


@pytest.fixture(scope="module")
def model() -> SmartTurnModel:
    return SmartTurnModel()


def on_the_line(clip: np.ndarray) -> np.ndarray:
    """As the bot hears it at a pause: 8 kHz μ-law, 0.3 s before, 0.2 s of silence after."""
    return telephony(padded(clip, 0.3, 0.2))


def question_and_cut(voice) -> tuple[np.ndarray, np.ndarray]:
    full = speech(QUESTION, voice)
    cut = full[: cut_at_word_gap(full, len(speech(PREFIX, voice)))]
    return on_the_line(full), on_the_line(cut)


def whisper_log_mel_reference(audio_16k: np.ndarray) -> np.ndarray:
    """transformers' WhisperFeatureExtractor(chunk_length=8), in float64, from its definition."""
    window = np.zeros(128000)
    window[-len(audio_16k) :] = audio_16k
    window = (window - window.mean()) / np.sqrt(window.var() + 1e-7)
    framed = np.lib.stride_tricks.sliding_window_view(np.pad(window, 200, mode="reflect"), 400)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)  # periodic
    power = np.abs(np.fft.rfft(framed[::160] * hann, axis=-1)) ** 2  # (801, 201)

    def mel(hz):  # Slaney: linear below 1 kHz, logarithmic above
        hz = np.asarray(hz, dtype=np.float64)
        logarithmic = 15 + np.log(np.maximum(hz, 1e-9) / 1000) * 27 / np.log(6.4)
        return np.where(hz < 1000, 3 * hz / 200, logarithmic)

    def hertz(m):
        return np.where(m < 15, 200 * m / 3, 1000 * np.exp((m - 15) * np.log(6.4) / 27))

    edges = hertz(np.linspace(0, mel(8000), 82))
    bins = np.linspace(0, 8000, 201)[:, None]
    rising = (bins - edges[:-2]) / (edges[1:-1] - edges[:-2])
    falling = (edges[2:] - bins) / (edges[2:] - edges[1:-1])
    filters = np.maximum(0, np.minimum(rising, falling)) * 2 / (edges[2:] - edges[:-2])
    log_mel = np.log10(np.maximum(power @ filters, 1e-10)).T[:, :-1]  # (80, 800)
    return (np.maximum(log_mel, log_mel.max() - 8) + 4) / 4


@pytest.mark.parametrize("voice", [VOICES[0], VOICES[3]], ids=lambda v: v.label)
def test_features_are_whisper_log_mel_of_the_last_8_s_padded_at_the_start(voice):
    clip = telephony(speech(QUESTION, voice))
    features = turn_features(clip, 8000)
    reference = whisper_log_mel_reference(resample(clip / np.float32(32768), 8000, 16000))
    assert features.shape == (80, 800)
    assert features.dtype == np.float32
    assert np.abs(features - reference).max() < 1e-4
    # the speech sits at the end: the frames before it are all the same (the padding)
    speech_frames = round(len(clip) / 8000 * 100)
    padding = features[:, : 800 - speech_frames - 5]
    assert np.ptp(padding, axis=1).max() < 1e-6
    assert np.ptp(features[:40, -speech_frames:], axis=1).min() > 0.1  # (bins under 2 kHz)
    # longer audio: only its last 8 s count
    earlier = [telephony(speech(text, voice)) for text in ("Hello there.", "Good morning.")]
    first, second = (np.concatenate([e, silence(9.0), clip]) for e in earlier)
    assert np.array_equal(turn_features(first, 8000), turn_features(second, 8000))


@pytest.mark.parametrize("voice", JOE, ids=lambda v: v.label)
def test_a_complete_question_scores_above_the_same_question_cut_mid_phrase(model, voice):
    full, cut = question_and_cut(voice)
    complete, incomplete = model.completion(full, 8000), model.completion(cut, 8000)
    assert complete > 0.5 > incomplete
    assert complete - incomplete > 0.3


def test_short_audio_silence_and_nothing_have_defined_probabilities(model):
    answers = {
        "short": model.completion(telephony(speech("Yes.")), 8000),
        "silence": model.completion(silence(1.0), 8000),
        "nothing": model.completion(np.zeros(0, dtype=np.int16), 8000),
        "float 16k": model.completion(np.zeros(4000, dtype=np.float32), 16000),
    }
    assert all(0.0 <= p <= 1.0 for p in answers.values()), answers
    # silence normalises to the same all-zero window as no audio at all
    assert answers["silence"] == answers["nothing"] == answers["float 16k"]


async def test_concurrent_requests_share_one_inference_with_the_same_answers(model):
    clips = [clip for voice in (VOICES[0], VOICES[2]) for clip in question_and_cut(voice)]
    alone = [model.completion(clip, 8000) for clip in clips]
    answers: dict[int, float] = {}
    service = SmartTurnService(model, max_batch=len(clips), max_batch_delay=1.0)

    async def ask(index: int) -> None:
        answers[index] = await service.completion(clips[index], 8000)

    async with service.serving():
        async with trio.open_nursery() as nursery:
            for index in range(len(clips)):
                nursery.start_soon(ask, index)
    assert [answers[i] for i in range(len(clips))] == alone
    stats = service.statistics()
    assert (stats["requests"], stats["batches"], stats["largest_batch"]) == (4, 1, 4)
    assert stats["mean_inference_ms"] > 0


async def test_max_batch_caps_a_batch_and_the_rest_follow_in_order(model):
    clips = [telephony(speech(text)) for text in ("Yes.", "Twelve.", "Okay.")]
    alone = [model.completion(clip, 8000) for clip in clips]
    service = SmartTurnService(model, max_batch=2)
    answers: dict[int, float] = {}

    async def ask(index: int) -> None:
        answers[index] = await service.completion(clips[index], 8000)

    async with service.serving():
        async with trio.open_nursery() as nursery:
            for index in range(len(clips)):
                nursery.start_soon(ask, index)
    assert [answers[i] for i in range(len(clips))] == alone
    stats = service.statistics()
    assert (stats["batches"], stats["largest_batch"], stats["requests"]) == (2, 2, 3)


async def test_a_cancelled_request_leaves_the_queue(model, autojump_clock):
    service = SmartTurnService(model, max_batch=2, max_batch_delay=10.0)
    async with service.serving():
        with trio.move_on_after(1.0):
            await service.completion(silence(0.5), 8000)
        assert service.statistics()["cancelled"] == 1
        assert service.statistics()["pending"] == 0
    assert service.statistics()["batches"] == 0


async def test_a_request_still_queued_when_the_service_stops_fails_clearly(model, autojump_clock):
    service = SmartTurnService(model, max_batch=2, max_batch_delay=10.0)
    errors: list[Exception] = []

    async def ask() -> None:
        try:
            await service.completion(silence(0.5), 8000)
        except TurnModelError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        async with service.serving():
            nursery.start_soon(ask)
            await trio.sleep(1.0)
    assert len(errors) == 1
    assert "stopped" in str(errors[0])


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread priority is Linux's")
async def test_inference_runs_on_a_thread_below_the_event_loop(model, monkeypatch):
    niceness: list[int] = []

    def timed(model, clips):  # stands in for the inference: notes its thread's priority
        niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return np.full(len(clips), 0.25), 0.0, 0.0

    monkeypatch.setattr(smart_turn, "_timed_completions", timed)
    loop_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    service = SmartTurnService(model)
    async with service.serving():
        assert await service.completion(silence(0.5), 8000) == 0.25
    assert niceness == [min(loop_nice + INFERENCE_NICE, 19)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == loop_nice


async def test_bad_audio_fails_its_own_request_only(model):
    service = SmartTurnService(model)
    async with service.serving():
        with pytest.raises(ValueError, match="mono"):
            await service.completion(np.zeros((2, 800), dtype=np.int16), 8000)
        with pytest.raises(ValueError, match="int16 or float"):
            await service.completion(np.zeros(800, dtype=np.int32), 8000)
        with pytest.raises(ValueError, match="NaN"):
            await service.completion(np.full(800, np.nan, dtype=np.float32), 8000)
        with pytest.raises(ValueError, match="sample rate"):
            await service.completion(np.zeros(800, dtype=np.int16), 0)
        assert 0.0 <= await service.completion(silence(0.5), 8000) <= 1.0
    assert service.statistics()["failures"] == 0


async def test_asking_a_service_that_is_not_serving_is_an_error(model):
    with pytest.raises(RuntimeError, match="serving"):
        await SmartTurnService(model).completion(silence(0.5), 8000)


async def test_a_missing_model_fails_at_setup_with_the_path(tmp_path):
    missing = tmp_path / "nowhere.onnx"
    with pytest.raises(TurnModelError, match=r"nowhere\.onnx"):
        async with SmartTurnService(missing).serving():
            pytest.fail("served without a model")


async def test_a_file_that_is_not_smart_turn_fails_at_setup(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(TurnModelError, match="cannot load"):
        async with SmartTurnService(junk).serving():
            pass
    with pytest.raises(TurnModelError, match="not a Smart Turn"):
        async with SmartTurnService(DEFAULT_VAD_MODEL).serving():
            pass


def test_the_vendored_model_is_the_default():
    assert DEFAULT_TURN_MODEL.name == "smart-turn-v3.2-cpu.onnx"
    assert DEFAULT_TURN_MODEL.is_file()
