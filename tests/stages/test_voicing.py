"""The voicing gate on generated audio: speech in six voices interrupts, coughs, clicks,
a door, a breath and line noise do not, even where the VAD takes them for speech.

"The VAD takes them for speech" is an energy VAD here (every loud 32 ms window has
p = 0.99): Silero itself rejects these generated sounds, so the gate is measured
against the VAD it has to back up. Real speech goes through Silero as in production.
"""

import numpy as np
import pytest

from benchmarks.barge_in_sounds import NON_SPEECH, non_speech
from benchmarks.speech_corpus import VOICES, noise, padded, speech, telephony
from stages.turns import BargeIn, BotSpeech, Endpointer
from stages.vad import WINDOW, SileroModel, VadFrame, frames_of
from stages.voicing import (
    VoicingConfig,
    VoicingGate,
    frame_voicing,
    longest_voiced_run,
    terminal_pitch,
)

SIZE = WINDOW[8000]
RATE = 8000


@pytest.fixture(scope="module")
def model() -> SileroModel:
    return SileroModel()


def energy_frames(audio: np.ndarray, threshold: float = 300.0) -> list[VadFrame]:
    """What an energy VAD says (FakeEnergyVad's rule): loud windows are speech."""
    frames = []
    for i in range(0, len(audio) - SIZE + 1, SIZE):
        window = audio[i : i + SIZE]
        rms = float(np.sqrt(np.mean(window.astype(np.float64) ** 2)))
        p = 0.99 if rms > threshold else 0.01
        frames.append(VadFrame(samples=window, start_sample=i, probability=p, captured_at=0.0))
    return frames


def barge_ins(frames: list[VadFrame], gate=None) -> list[BargeIn]:
    bot = BotSpeech()
    bot.speaking = True
    endpointer = Endpointer(bot=bot, barge_in_gate=gate)
    return [e for f in frames for e in endpointer.process(f) if isinstance(e, BargeIn)]


def harmonic(seconds: float, pitch: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    voice = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 8))
    return (8000 * voice / 2).astype(np.int16)


@pytest.mark.parametrize("pitch", [85.0, 140.0, 230.0])
def test_a_harmonic_voice_is_voiced_at_its_pitch(pitch):
    voicing = frame_voicing(harmonic(0.3, pitch))
    assert voicing.voiced.all()
    assert np.median(voicing.pitch_hz) == pytest.approx(pitch, rel=0.05)
    assert longest_voiced_run(voicing) == len(voicing.voiced)


@pytest.mark.parametrize("pink", [True, False])
def test_loud_noise_is_not_voiced(pink):
    voicing = frame_voicing(telephony(noise(1.0, level_dbfs=-15.0, pink=pink)))
    assert not voicing.voiced.any()
    assert voicing.aperiodicity.min() > VoicingConfig().max_aperiodicity


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", NON_SPEECH)
def test_non_speech_over_the_bot_makes_no_barge_in(kind, seed):
    audio = padded(telephony(non_speech(seed)[kind]), 0.5, 0.5)
    frames = energy_frames(audio)
    assert barge_ins(frames), "the energy VAD alone stops the bot"
    assert barge_ins(frames, VoicingGate()) == []


@pytest.mark.parametrize("voice", VOICES, ids=lambda v: v.label)
@pytest.mark.parametrize("text", ["Stop.", "Sorry, wait.", "Hello there, can you hear me?"])
def test_speech_still_barges_in_within_two_windows(model, voice, text):
    audio = padded(telephony(speech(text, voice)), 0.5, 0.5)
    frames = frames_of(model, audio)
    # the first stretch's (the bot talks throughout here, so a phrase with a pause
    # inside, "Sorry, [pause] wait.", barges in once per stretch)
    ungated = barge_ins(frames)[0]
    gated = barge_ins(frames, VoicingGate())[0]
    assert gated.sample == ungated.sample
    assert gated.detected_sample - ungated.detected_sample <= 2 * SIZE


@pytest.mark.parametrize("text", ["Mm-hmm.", "Uh-huh."])
def test_a_voiced_backchannel_passes_the_gate(text):
    """By design: 160 ms of voicing cannot tell "mm" from "no". Its turn has no words,
    so the bot resumes its reply (pipeline.bot.resumption)."""
    audio = padded(telephony(speech(text)), 0.5, 0.5)
    assert barge_ins(energy_frames(audio), VoicingGate())


def test_the_gate_analyses_each_frame_once_and_restarts_per_speech_start():
    voice = harmonic(0.6, 120.0)
    gate = VoicingGate()
    assert not gate(voice[:300], 100)  # less than one frame yet
    assert gate(voice[:800], 100)
    assert gate.passed == 1
    hiss = telephony(noise(0.6, level_dbfs=-15.0))
    answers = [gate(hiss[:end], 5000) for end in range(400, len(hiss) + 1, SIZE)]
    assert not any(answers)  # a new start: nothing of the voice carried over
    whole = frame_voicing(hiss)
    assert gate._done == len(whole.voiced)  # every frame analysed exactly once


def test_config_is_checked():
    with pytest.raises(ValueError, match="pitch"):
        VoicingConfig(min_pitch_hz=400.0, max_pitch_hz=60.0)
    with pytest.raises(ValueError, match="aperiodicity"):
        VoicingConfig(max_aperiodicity=0.0)


def glide(seconds: float, start_hz: float, end_hz: float, *, octave_slip: bool = False):
    """A harmonic voice whose pitch moves from ``start_hz`` to ``end_hz`` (log-linear);
    ``octave_slip``: its first half an octave up, as YIN sometimes reads a voice."""
    n = int(seconds * RATE)
    pitch = start_hz * (end_hz / start_hz) ** (np.arange(n) / n)
    if octave_slip:
        pitch[: n // 2] *= 2
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    return (8000 * voice / 2).astype(np.int16)


def test_terminal_pitch_tells_a_final_fall_from_a_held_level():
    phrase = harmonic(0.8, 140.0)
    falling = terminal_pitch(np.concatenate([phrase, glide(0.4, 140.0, 100.0)]))
    held = terminal_pitch(np.concatenate([phrase, glide(0.4, 140.0, 145.0)]))
    assert falling is not None
    assert held is not None
    assert falling.end_st < -3.0
    assert falling.slope_st_per_s < -5.0
    assert abs(held.end_st) < 1.0
    assert held.slope_st_per_s > -2.0
    assert falling.voiced_ms > 1000


def test_terminal_pitch_folds_octave_slips_and_needs_voice():
    slipped = terminal_pitch(glide(1.0, 120.0, 120.0, octave_slip=True))
    assert slipped is not None
    assert abs(slipped.end_st) < 1.0  # an octave read in half the frames is not a fall
    assert terminal_pitch(harmonic(0.15, 140.0)) is None  # too little voicing to tell
    assert terminal_pitch(telephony(noise(1.0, level_dbfs=-15.0))) is None
