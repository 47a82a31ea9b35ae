"""Is a sound voiced speech? A cheap periodicity measure for the barge-in gate.

A VAD's probability says "speech-like", and a cough, a knock on the handset, a door
or a burst of line noise can hold it above the barge-in threshold for the 160 ms the
gate asks (an energy VAD always; Silero rejected every such sound we generated, and
this gate backs it up). What those sounds lack is *voicing*: the vocal folds' pulses,
which put a steady pitch (60-400 Hz) into every vowel, "mm" and "n". This module
finds it with YIN's cumulative-mean-normalised difference function (de Cheveigné and
Kawahara, 2002) on 25 ms frames every 10 ms of 8 kHz audio: a frame is *voiced* when
its best dip in the pitch-lag range is deep (the aperiodicity is below
``max_aperiodicity``) and the frame is not near-silent. Noise has no such dip (its
difference function just rises), a click is too short to fill a frame, and a thump,
which can dip by chance, does not hold one pitch: a *voiced run* counts only
consecutive voiced frames whose pitch moves less than ``max_pitch_jump`` (or by an
octave, YIN's usual slip) from one frame to the next. What is periodic passes: a
tone, a beep, a boom ringing within ~100 Hz.

:class:`VoicingGate` is a ``barge_in_gate`` for :class:`stages.turns.Endpointer`: it
says yes once the caller's audio since the speech start holds a voiced run of
``min_voiced_ms``. It keeps what it has analysed per speech start, so each call costs
only the frames new since the last one (the endpointer asks at every 32 ms window).
A short *voiced* sound ("mm", "uh-huh") passes: voicing cannot tell a backchannel
from a "no" in 160 ms. The turn manager resumes the bot's reply when such a barge-in
turns out to carry no words (:mod:`pipeline.bot.resumption`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "FrameVoicing",
    "TerminalPitch",
    "VoicingConfig",
    "VoicingGate",
    "frame_voicing",
    "longest_voiced_run",
    "terminal_pitch",
]


@dataclass(frozen=True, slots=True)
class VoicingConfig:
    """What counts as voiced speech; the defaults suit 8 kHz telephone audio."""

    min_pitch_hz: float = 60.0
    max_pitch_hz: float = 400.0
    frame_ms: float = 25.0  # YIN's integration window
    hop_ms: float = 10.0
    max_aperiodicity: float = 0.45  # YIN's d' at the chosen lag; 0 = perfectly periodic
    min_level_dbfs: float = -50.0  # quieter frames are never voiced
    max_pitch_jump: float = 0.2  # relative pitch change allowed between run frames
    min_voiced_ms: float = 45.0  # the gate's voiced run

    def __post_init__(self) -> None:
        if not 0 < self.min_pitch_hz < self.max_pitch_hz:
            raise ValueError("need 0 < min_pitch_hz < max_pitch_hz")
        if self.frame_ms <= 0 or self.hop_ms <= 0:
            raise ValueError("frame_ms and hop_ms must be > 0")
        if not 0 < self.max_aperiodicity <= 1:
            raise ValueError("max_aperiodicity must be in (0, 1]")
        if self.max_pitch_jump <= 0 or self.min_voiced_ms < 0:
            raise ValueError("max_pitch_jump must be > 0 and min_voiced_ms >= 0")


@dataclass(frozen=True, slots=True)
class FrameVoicing:
    """Per-frame measures of a stretch of audio (frame ``i`` starts at ``i * hop``)."""

    aperiodicity: np.ndarray  # YIN d' at the chosen lag (1 = noise-like)
    pitch_hz: np.ndarray  # the chosen lag as a frequency
    level_dbfs: np.ndarray
    voiced: np.ndarray  # bool
    hop: int  # samples


def _geometry(config: VoicingConfig, rate: int) -> tuple[int, int, int, int]:
    """(window, hop, shortest lag, longest lag) in samples."""
    window = max(8, round(config.frame_ms * rate / 1000))
    hop = max(1, round(config.hop_ms * rate / 1000))
    min_lag = max(2, int(rate / config.max_pitch_hz))
    max_lag = int(np.ceil(rate / config.min_pitch_hz))
    return window, hop, min_lag, max_lag


def frame_voicing(
    samples: np.ndarray, sample_rate: int = 8000, config: VoicingConfig | None = None
) -> FrameVoicing:
    """YIN aperiodicity, pitch and level of every whole frame of ``samples`` (int16)."""
    config = config or VoicingConfig()
    window, hop, min_lag, max_lag = _geometry(config, sample_rate)
    span = window + max_lag
    count = (len(samples) - span) // hop + 1 if len(samples) >= span else 0
    if count == 0:
        empty = np.zeros(0)
        return FrameVoicing(empty, empty, empty, np.zeros(0, dtype=bool), hop)
    x = np.asarray(samples, dtype=np.float64) / 32768.0
    frames = np.lib.stride_tricks.sliding_window_view(x, span)[::hop][:count]
    head = frames[:, :window]
    # d(tau) = sum x_j^2 + sum x_{j+tau}^2 - 2 sum x_j x_{j+tau}, j < window
    size = 1 << int(np.ceil(np.log2(span)))  # no wrap-around: lags stay inside the span
    cross = np.fft.irfft(
        np.conj(np.fft.rfft(head, size, axis=1)) * np.fft.rfft(frames, size, axis=1), size, axis=1
    )[:, : max_lag + 1]
    squares = np.cumsum(np.pad(frames**2, ((0, 0), (1, 0))), axis=1)
    energy_head = squares[:, window]
    lags = np.arange(max_lag + 1)
    energy_shifted = squares[:, lags + window] - squares[:, lags]
    difference = np.maximum(energy_head[:, None] + energy_shifted - 2 * cross, 0.0)
    running = np.cumsum(difference[:, 1:], axis=1)
    normalised = np.ones_like(difference)
    normalised[:, 1:] = difference[:, 1:] * lags[1:] / np.maximum(running, 1e-12)
    band = normalised[:, min_lag : max_lag + 1]
    # YIN's absolute threshold: the first dip under it, at its local minimum; else the
    # deepest dip (which then reads as unvoiced anyway)
    below = band < config.max_aperiodicity
    first = np.where(below.any(axis=1), below.argmax(axis=1), band.argmin(axis=1))
    rows = np.arange(count)
    # walk down to the bottom of that dip: the first lag from there whose successor
    # is no lower
    rising = np.ones_like(below)
    rising[:, :-1] = band[:, 1:] >= band[:, :-1]
    best = (rising & (np.arange(band.shape[1]) >= first[:, None])).argmax(axis=1)
    best = np.where(below[rows, first], best, first)
    aperiodicity = band[rows, best]
    pitch = sample_rate / (best + min_lag)
    level = 10 * np.log10(energy_head / window + 1e-12)
    voiced = (aperiodicity < config.max_aperiodicity) & (level >= config.min_level_dbfs)
    return FrameVoicing(aperiodicity, pitch, level, voiced, hop)


def longest_voiced_run(voicing: FrameVoicing, config: VoicingConfig | None = None) -> int:
    """Frames in the longest run of voiced frames holding one pitch track."""
    config = config or VoicingConfig()
    longest = run = 0
    previous = 0.0
    for voiced, pitch in zip(voicing.voiced, voicing.pitch_hz, strict=True):
        run = _extend(run, bool(voiced), float(pitch), previous, config.max_pitch_jump)
        previous = float(pitch)
        longest = max(longest, run)
    return longest


def _extend(run: int, voiced: bool, pitch: float, previous: float, jump: float) -> int:
    """The voiced run after one more frame. Pitch may jump by an octave (YIN's usual
    slip between a period and its double), not by anything else."""
    if not voiced:
        return 0
    octaves = float(np.log2(pitch / previous)) if run else 0.0
    if run and abs(octaves - round(octaves)) <= np.log2(1 + jump):
        return run + 1
    return 1


class VoicingGate:
    """A ``barge_in_gate``: yes once the caller's sound holds ``min_voiced_ms`` of
    steady voicing (see the module doc). One per call: it caches per speech start."""

    def __init__(self, config: VoicingConfig | None = None, *, sample_rate: int = 8000) -> None:
        self.config = config or VoicingConfig()
        self.sample_rate = sample_rate
        window, self._hop, _, max_lag = _geometry(self.config, sample_rate)
        self._span = window + max_lag
        hop_ms = self._hop * 1000 / sample_rate
        # a run of n frames covers (n - 1) hops plus one window of voicing
        self._needed = max(
            1, int(np.ceil((self.config.min_voiced_ms - self.config.frame_ms) / hop_ms)) + 1
        )
        self._start: int | None = None
        self._done = 0  # frames analysed for this start
        self._run = 0
        self._pitch = 0.0
        self.asked = 0
        self.passed = 0

    def __call__(self, audio: np.ndarray, start_sample: int) -> bool:
        self.asked += 1
        if start_sample != self._start:
            self._start, self._done, self._run, self._pitch = start_sample, 0, 0, 0.0
        if self._run < self._needed:
            self._analyse(audio)
        if self._run >= self._needed:
            self.passed += 1
            return True
        return False

    def _analyse(self, audio: np.ndarray) -> None:
        first = self._done * self._hop
        if len(audio) - first < self._span:
            return
        voicing = frame_voicing(audio[first:], self.sample_rate, self.config)
        self._done += len(voicing.voiced)
        jump = self.config.max_pitch_jump
        for voiced, pitch in zip(voicing.voiced, voicing.pitch_hz, strict=True):
            self._run = _extend(self._run, bool(voiced), float(pitch), self._pitch, jump)
            self._pitch = float(pitch)
            if self._run >= self._needed:
                return


@dataclass(frozen=True, slots=True)
class TerminalPitch:
    """How a phrase's voice ended, in the speaker's own range (semitones).

    ``end_st``: the last voiced 100 ms against the phrase's median pitch (a statement
    ends low, near the speaker's floor; a held phrase, "my name is ...", stays level;
    a yes/no question or a list item rises). ``slope_st_per_s``: the pitch's slope over
    the last voiced 250 ms. ``voiced_ms``: voiced audio the measure rests on (little:
    trust it little). ``end_level_db``: the last voiced 100 ms's level against the
    phrase's median voiced level (a statement's voice fades as it ends; a held phrase
    keeps its strength)."""

    end_st: float
    slope_st_per_s: float
    voiced_ms: float
    end_level_db: float = 0.0


TERMINAL_WINDOW_S = 3.0  # the phrase's register is taken from its last seconds
_END_FRAMES = 10  # 100 ms at a 10 ms hop
_SLOPE_FRAMES = 25  # 250 ms


def terminal_pitch(
    samples: np.ndarray, sample_rate: int = 8000, config: VoicingConfig | None = None
) -> TerminalPitch | None:
    """The pitch at the end of ``samples`` (int16, the phrase up to the pause) against
    the speaker's register; None when there is too little voicing to say (under
    ``_SLOPE_FRAMES`` voiced frames). Octave slips (YIN's period doubling) are folded
    back to the median's octave before anything is measured."""
    config = config or VoicingConfig()
    tail = samples[-int(TERMINAL_WINDOW_S * sample_rate) :]
    voicing = frame_voicing(tail, sample_rate, config)
    where = np.flatnonzero(voicing.voiced)
    if len(where) < _SLOPE_FRAMES:
        return None
    semitones = 12 * np.log2(voicing.pitch_hz[where])
    median = float(np.median(semitones))
    semitones = semitones - 12 * np.round((semitones - median) / 12)  # fold octave slips
    end = float(np.median(semitones[-_END_FRAMES:])) - median
    last = where[-_SLOPE_FRAMES:]
    seconds = last * voicing.hop / sample_rate
    slope = float(np.polyfit(seconds, semitones[-_SLOPE_FRAMES:], 1)[0])
    voiced_ms = len(where) * voicing.hop * 1000 / sample_rate
    levels = voicing.level_dbfs[where]
    fade = float(np.median(levels[-_END_FRAMES:]) - np.median(levels))
    return TerminalPitch(round(end, 2), round(slope, 1), round(voiced_ms), round(fade, 1))
