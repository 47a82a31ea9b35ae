"""Piper TTS on the phone path: real synthesis, 8 kHz μ-law, intelligible to Whisper.

Loads the bundled joe-medium voice (~60 MB) and Whisper tiny.en once per module.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import trio

from stages import mulaw
from stages.stt import SttService
from stages.tts import PiperTts, TtsError, bundled_voice_path

SENTENCE = "Please hold the line while I check your order."


@pytest.fixture(scope="module")
def tts() -> PiperTts:
    voice = PiperTts()
    voice.load()
    return voice


@pytest.fixture(scope="module")
def stt() -> SttService:
    service = SttService()
    service.load()
    return service


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def level_dbfs(samples: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
    return 20 * np.log10(max(rms, 1e-9) / 32768)


async def test_synthesis_is_loud_plausible_phone_audio(tts: PiperTts) -> None:
    payload = await tts.synthesize(SENTENCE)
    assert tts.sample_rate == 8000
    assert tts.source_rate == 22050
    assert tts.voice_name == "en_US-joe-medium"
    seconds = len(payload) / 8000  # μ-law: one byte per sample
    assert 1.5 < seconds < 5.0, f"{len(words(SENTENCE))} words in {seconds:.2f} s"
    pcm = mulaw.decode(payload)
    assert level_dbfs(pcm) > -30, "too quiet for a phone line"
    peak = int(np.max(np.abs(pcm.astype(np.int32))))
    assert 20000 < peak < 32124, "peak normalised below full scale, not clipping"


async def test_voice_survives_the_8khz_phone_path(tts: PiperTts, stt: SttService) -> None:
    payload = await tts.synthesize(SENTENCE)
    transcript = await trio.to_thread.run_sync(stt.transcribe_sync, mulaw.decode(payload), 8000)
    assert words(transcript.text) == words(SENTENCE)


async def test_stream_yields_each_sentence_as_soon_as_it_is_made(tts: PiperTts) -> None:
    text = "Good morning. Your table is ready. Enjoy your meal!"
    made_before = tts.sentences
    made_at_yield = []
    chunks = []
    async for chunk in tts.stream(text):
        made_at_yield.append(tts.sentences - made_before)
        chunks.append(chunk)
    assert made_at_yield == [1, 2, 3], "each chunk is handed over before the next is made"
    assert all(0.4 < len(chunk) / 8000 < 3 for chunk in chunks)
    assert tts.statistics()["real_time_factor"] < 1


async def test_cancelling_a_stream_returns_promptly_and_the_voice_stays_usable(
    tts: PiperTts,
) -> None:
    long_text = " ".join(f"This is sentence number {n}." for n in range(1, 21))
    got = 0
    with trio.move_on_after(30) as scope:
        async for _ in tts.stream(long_text):
            got += 1
            scope.cancel()  # barge-in after the first sentence
    assert got == 1
    with trio.fail_after(10):
        assert len(await tts.synthesize("Yes?")) > 1000


async def test_nothing_speakable_gives_no_audio(tts: PiperTts) -> None:
    assert await tts.synthesize("") == b""
    assert [chunk async for chunk in tts.stream("   ")] == []


async def test_missing_voice_is_a_clear_error_at_setup(tmp_path: Path) -> None:
    with pytest.raises(TtsError, match=r"voice not found: .*nowhere\.onnx"):
        await PiperTts(tmp_path / "nowhere.onnx").setup()

    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(b"")
    with pytest.raises(TtsError, match=r"config not found: .*lonely\.onnx\.json"):
        await PiperTts(lonely).setup()

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    shutil.copy(bundled_voice_path().with_suffix(".onnx.json"), tmp_path / "broken.onnx.json")
    with pytest.raises(TtsError, match="cannot load Piper voice"):
        await PiperTts(broken, threads=None).setup()  # piper's own loader


async def test_synthesis_before_setup_is_a_clear_error() -> None:
    with pytest.raises(TtsError, match="setup"):
        await PiperTts().synthesize("Hello.")
