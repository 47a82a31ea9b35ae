"""Silero VAD: speech vs non-speech, and batching that keeps every stream's state its own."""

import numpy as np
import pytest
import trio

from benchmarks.speech_corpus import VOICES, click, noise, padded, silence, speech, telephony
from pipeline import PcmAudio, open_chain
from stages.vad import (
    WINDOW,
    SileroModel,
    SileroStream,
    VadError,
    VadStage,
    open_vad_service,
    probabilities_of,
)

SIZE = WINDOW[8000]


@pytest.fixture(scope="module")
def model() -> SileroModel:
    return SileroModel()


def sequential(model: SileroModel, audio: np.ndarray) -> np.ndarray:
    return np.array(list(probabilities_of(model, audio)))


@pytest.mark.parametrize("voice", [VOICES[0], VOICES[3], VOICES[4]], ids=lambda v: v.label)
def test_speech_is_found_between_silences(model, voice):
    clip = telephony(speech("Please call me back tomorrow afternoon.", voice))
    p = sequential(model, padded(clip, 1.0, 1.0))
    before, during = p[: 8000 // SIZE - 1], p[8000 // SIZE + 2 : (8000 + len(clip)) // SIZE - 1]
    after = p[(8000 + len(clip)) // SIZE + 4 :]
    assert before.max() < 0.2
    assert after.max() < 0.2
    assert np.mean(during > 0.5) > 0.9


@pytest.mark.parametrize(
    "audio",
    [
        silence(2.0),
        noise(2.0, level_dbfs=-30, pink=True),
        noise(2.0, level_dbfs=-35, pink=False),
        np.concatenate([silence(0.5), click(0.1), silence(0.5), click(0.1, seed=2), silence(0.5)]),
    ],
    ids=["silence", "pink-noise", "white-noise", "clicks"],
)
def test_non_speech_stays_below_threshold(model, audio):
    assert sequential(model, telephony(audio)).max() < 0.5


async def test_batched_equals_sequential_as_streams_join_and_leave(model):
    texts = ["Yes.", "I want to cancel my subscription.", "John Smith.", "Okay, thank you."]
    clips = [
        telephony(padded(speech(text, VOICES[i % len(VOICES)]), 0.1 * i, 0.2))
        for i, text in enumerate(texts)
    ]
    clips.append(telephony(noise(1.0, level_dbfs=-40)))
    expected = [sequential(model, clip) for clip in clips]
    got: list[list[float]] = [[] for _ in clips]

    async def call(index: int, join_after: int, service) -> None:
        await trio.sleep(join_after * 0.01)  # calls join at different moments...
        with service.open_stream() as stream:
            clip = clips[index]
            for start in range(0, len(clip) - SIZE + 1, SIZE):
                got[index].append(await stream.probability(clip[start : start + SIZE]))
                if (start // SIZE + index) % 3 == 0:
                    await trio.sleep(0.001)  # ...and run at uneven paces
        # ...and leave when their audio ends, while others keep going

    with trio.fail_after(60):
        async with open_vad_service(model, max_batch_delay=0.002) as service:
            async with trio.open_nursery() as nursery:
                for index in range(len(clips)):
                    nursery.start_soon(call, index, index * 3, service)
            stats = service.statistics()
    assert stats["largest_batch"] > 1  # batching really happened
    assert stats["streams"] == 0  # every stream freed its state
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_allclose(have, want, atol=1e-4)


async def test_lone_stream_does_not_wait_for_the_batching_delay(model):
    async with open_vad_service(model, max_batch_delay=30.0) as service:
        with trio.fail_after(10), service.open_stream() as stream:
            for _ in range(3):
                await stream.probability(np.zeros(SIZE, dtype=np.int16))


async def test_idle_stream_delays_others_by_at_most_the_bound(model):
    async with open_vad_service(model, max_batch_delay=0.2) as service:
        with service.open_stream(), service.open_stream() as busy:  # the first stays silent
            started = trio.current_time()
            await busy.probability(np.zeros(SIZE, dtype=np.int16))
            waited = trio.current_time() - started
    assert 0.2 <= waited < 2.0


async def test_closed_stream_refuses_windows(model):
    async with open_vad_service(model) as service:
        stream = service.open_stream()
        stream.close()
        with pytest.raises(trio.ClosedResourceError):
            await stream.probability(np.zeros(SIZE, dtype=np.int16))


async def test_missing_model_fails_at_start_up_with_the_path(tmp_path):
    missing = tmp_path / "no_such_vad.onnx"
    with pytest.raises(VadError, match=r"no_such_vad\.onnx"):
        async with open_vad_service(missing):
            pytest.fail("the service must not start")


async def test_stage_emits_windows_at_exact_positions(model):
    clip = telephony(padded(speech("Hello there."), 0.5, 0.5))
    async with open_vad_service(model) as service, open_chain(VadStage(service)) as chain:
        for i in range(0, len(clip), 160):
            frame = PcmAudio(samples=clip[i : i + 160], start_sample=4000 + i, captured_at=0.0)
            assert chain.inbound.send_nowait(frame)
        await chain.inbound.aclose()
        frames = [f async for f in chain.outputs]
    assert [f.start_sample for f in frames] == list(range(4000, 4000 + len(clip), SIZE))
    assert sum(len(f.samples) for f in frames) == len(clip)
    full = len(clip) // SIZE
    np.testing.assert_allclose(
        [f.probability for f in frames[:full]], sequential(model, clip), atol=1e-4
    )
    assert max(f.probability for f in frames) > 0.9


def test_unbatched_reference_matches_model_batch_of_one(model):
    stream = SileroStream(model)
    x = telephony(speech("Yes."))[:SIZE]
    assert 0.0 <= stream.probability(x) <= 1.0
