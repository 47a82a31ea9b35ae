"""Sounds a caller makes over the bot that are not words, for the barge-in gate.

Generated, like :mod:`benchmarks.speech_corpus`, so tests and the benchmark share them
and nothing is downloaded. None is voiced: a cough is a burst of turbulent noise with
a fast attack (formant-coloured, 200-400 ms), a click train is a handset being
knocked or fumbled, a door slam is a low thump with a rattle, a breath is soft
band-passed noise, line noise is stationary hiss. Levels are loud on purpose: an
energy VAD takes every one of them for speech. Voiced non-words ("mm", "uh-huh") are
speech-corpus clips (``speech("Mm-hmm.")``): voicing lets them through by design.
A sound with one narrow resonance is periodic too: the door's thump here is a broad
one (250 Hz wide); a boom ringing within ~100 Hz, a beep or a tone reads as voiced.
"""

from __future__ import annotations

import numpy as np

from benchmarks.speech_corpus import click, noise, silence

__all__ = ["NON_SPEECH", "breath", "click_train", "cough", "door_slam", "non_speech"]

RATE = 8000


def _coloured(seconds: float, bands: list[tuple[float, float]], seed: int) -> np.ndarray:
    """White noise through a sum of resonances (centre Hz, bandwidth Hz)."""
    count = round(seconds * RATE)
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(count))
    freqs = np.fft.rfftfreq(count, 1 / RATE)
    gain = sum(1 / (1 + ((freqs - centre) / width) ** 2) for centre, width in bands)
    return np.fft.irfft(spectrum * gain, count)


def _scaled(signal: np.ndarray, peak_dbfs: float) -> np.ndarray:
    peak = float(np.max(np.abs(signal))) or 1.0
    scaled = signal / peak * 32767 * 10 ** (peak_dbfs / 20)
    return np.clip(np.rint(scaled), -32768, 32767).astype(np.int16)


def cough(seconds: float = 0.3, *, seed: int = 0, peak_dbfs: float = -3.0) -> np.ndarray:
    """One cough: formant-coloured noise, ~8 ms attack, decaying over ``seconds``."""
    t = np.arange(round(seconds * RATE)) / RATE
    envelope = (1 - np.exp(-t / 0.008)) * np.exp(-t / (seconds / 3))
    bands = [(600 + 50 * seed, 250), (1200, 300), (2500, 350)]
    return _scaled(_coloured(seconds, bands, seed) * envelope, peak_dbfs)


def click_train(count: int = 8, *, gap: float = 0.02, seed: int = 0) -> np.ndarray:
    """A handset fumbled: ``count`` 50 ms clicks, ``gap`` seconds apart."""
    parts = [np.concatenate([click(0.05, seed=seed + i), silence(gap)]) for i in range(count)]
    return np.concatenate(parts)


def door_slam(*, seed: int = 0) -> np.ndarray:
    """A thump with a rattle, as a phone line passes it (its sub-300 Hz rumble removed)."""
    t = np.arange(round(0.5 * RATE)) / RATE
    thump = _coloured(0.5, [(350, 250)], seed) * np.exp(-t / 0.08)
    rattle = _coloured(0.5, [(1500, 800)], seed + 1) * np.exp(-t / 0.04)
    return _scaled(thump + 0.3 * rattle, -3.0)


def breath(*, seed: int = 0) -> np.ndarray:
    """A breath into the mouthpiece: soft band-passed noise rising and falling, 500 ms."""
    t = np.arange(round(0.5 * RATE)) / RATE
    return _scaled(_coloured(0.5, [(1500, 900)], seed) * np.sin(np.pi * t / 0.5) ** 2, -20.0)


def non_speech(seed: int = 0) -> dict[str, np.ndarray]:
    """One of each kind (``seed`` varies the noise), by name."""
    return {
        "cough": cough(0.2 + 0.05 * (seed % 5), seed=seed),
        "double_cough": np.concatenate([cough(0.25, seed=seed), cough(0.3, seed=seed + 7)]),
        "click_train": click_train(seed=10 * seed),
        "door_slam": door_slam(seed=seed),
        "breath": breath(seed=seed),
        "line_noise": noise(0.6, level_dbfs=-15.0, seed=seed),
        "white_noise": noise(0.6, level_dbfs=-20.0, seed=seed, pink=False),
    }


NON_SPEECH = tuple(non_speech())
"""The kinds :func:`non_speech` makes."""
