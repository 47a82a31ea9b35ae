"""Resampling: real anti-aliasing, exact lengths, seamless streaming."""

import itertools

import numpy as np
import pytest

from pipeline.runtime.frames import PcmAudio
from stages.resample import ResampleStage, StreamResampler, resample


def tone(freq: float, rate: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return np.rint(np.sin(2 * np.pi * freq * t) * amplitude * 32767).astype(np.int16)


def level_db(samples: np.ndarray) -> float:
    x = samples.astype(np.float64) / 32768
    return 10 * np.log10(np.mean(x**2) + 1e-20)


@pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 16000), (16000, 8000), (22050, 8000)])
def test_lengths_follow_the_rate_ratio(in_rate, out_rate):
    out = resample(tone(440, in_rate), in_rate, out_rate)
    assert out.dtype == np.int16
    assert len(out) == out_rate


def test_passband_tone_survives_downsampling():
    out = resample(tone(1000, 22050), 22050, 8000)
    assert abs(level_db(out) - level_db(tone(1000, 8000))) < 0.5


def test_tone_above_new_nyquist_is_filtered_not_aliased():
    # 5 kHz at 22.05 kHz would fold to 3 kHz at 8 kHz without an anti-aliasing filter
    out = resample(tone(5000, 22050), 22050, 8000)[800:-800]  # skip the clip-edge transients
    assert level_db(out) < level_db(tone(5000, 22050)) - 60


def test_upsampling_leaves_no_image_above_old_nyquist():
    out = resample(tone(3000, 8000), 8000, 16000).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    freqs = np.fft.rfftfreq(len(out), 1 / 16000)
    image = spectrum[(freqs > 4500)].max()  # sample repetition would put one at 5 kHz
    assert 20 * np.log10(image / spectrum.max()) < -70


def test_streaming_equals_one_shot():
    x = tone(700, 8000, 1.3)
    stream = StreamResampler(8000, 16000)
    chunks = [stream.process(x[i : i + 160]) for i in range(0, len(x), 160)]
    streamed = np.concatenate([*chunks, stream.flush()])
    one_shot = resample(x, 8000, 16000)
    assert len(streamed) == len(one_shot)
    assert np.abs(streamed.astype(int) - one_shot.astype(int)).max() <= 2


def test_stage_keeps_the_timeline_exact():
    stage = ResampleStage(16000)
    x = tone(440, 8000, 0.5)
    frames = []
    for i in range(0, len(x), 160):
        frame = PcmAudio(samples=x[i : i + 160], start_sample=800 + i, captured_at=0.0)
        frames.extend(stage.process(frame))
    frames.extend(stage.finish())
    assert frames[0].start_sample == 1600
    for previous, nxt in itertools.pairwise(frames):
        assert nxt.start_sample == previous.end_sample
    assert frames[-1].end_sample == 1600 + 2 * len(x)
    assert all(f.sample_rate == 16000 for f in frames)
