"""The energy gate the parrot bot listens with."""

import numpy as np

from pipeline.runtime.frames import PcmAudio
from stages.energy import EnergyGateConfig, EnergySegmenter, level_dbfs

RATE = 8000
FRAME = 160


def frames_of(signal: np.ndarray) -> list[PcmAudio]:
    return [
        PcmAudio(samples=signal[i : i + FRAME], start_sample=i, captured_at=i / RATE)
        for i in range(0, len(signal) - FRAME + 1, FRAME)
    ]


def tone(seconds: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


def silence(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(0, 20, int(seconds * RATE)).astype(np.int16)  # about -64 dBFS of hiss


def run(segmenter: EnergySegmenter, signal: np.ndarray) -> list:
    out = []
    for frame in frames_of(signal):
        out.extend(segmenter.process(frame))
    out.extend(segmenter.finish())
    return out


def test_level_of_full_scale_sine_is_minus_3_dbfs():
    assert abs(level_dbfs(tone(0.1, amplitude=1.0)) - (-3.01)) < 0.05
    assert level_dbfs(np.zeros(160, np.int16)) == float("-inf")


def test_two_utterances_with_exact_boundaries_and_preroll():
    signal = np.concatenate([silence(1), tone(0.8), silence(1), tone(0.5), silence(1)])
    config = EnergyGateConfig(preroll_ms=200, tail_ms=100, hangover_ms=600)
    utterances = run(EnergySegmenter(config), signal)
    assert len(utterances) == 2
    first, second = utterances
    assert first.start_sample == int(0.8 * RATE)  # 200 ms pre-roll before the 1 s onset
    assert first.end_sample == int(1.9 * RATE)  # 100 ms tail after the 1.8 s offset
    assert np.array_equal(first.samples, signal[first.start_sample : first.end_sample])
    assert second.start_sample == int(2.6 * RATE)
    assert second.end_sample == int(3.4 * RATE)


def test_utterance_is_charged_the_hangover_wait():
    signal = np.concatenate([silence(0.5), tone(0.5), silence(1)])
    (utterance,) = run(EnergySegmenter(EnergyGateConfig(hangover_ms=600)), signal)
    assert utterance.captured_at == (0.98)  # the last voiced frame starts at 0.98 s


def test_a_click_is_not_speech():
    signal = np.concatenate([silence(0.5), tone(0.04), silence(1)])
    assert run(EnergySegmenter(EnergyGateConfig(min_speech_ms=100)), signal) == []


def test_long_speech_is_cut_at_the_maximum():
    segmenter = EnergySegmenter(EnergyGateConfig(max_utterance_s=2.0))
    utterances = run(segmenter, np.concatenate([silence(0.2), tone(5), silence(1)]))
    assert len(utterances) == 3
    assert segmenter.statistics() == {"utterances": 3, "forced_cuts": 2}
