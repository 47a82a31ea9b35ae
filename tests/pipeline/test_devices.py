"""Audio devices: file and generator inputs, file output, switching them mid-call, and
the softphone extra being optional."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import soundfile
import trio
import trio.testing

from pipeline.caller.audiofile import save_wav
from pipeline.caller.client import open_client
from pipeline.caller.devices import (
    FileInput,
    FileOutput,
    GeneratorInput,
    MicrophoneInput,
    SoftphoneUnavailable,
    SpeakerOutput,
    get_media_list,
)
from pipeline.cli.main import main as voicegraph
from pipeline.server.voice_stream import ServerConfig, VoiceStreamServer
from stages import mulaw

from .test_client import SILENCE, MemoryNetwork, RecordingBot, tone


def test_generator_input_joins_blocks_of_any_length_then_ends():
    source = GeneratorInput([np.arange(100, dtype=np.int16), np.arange(100, 250, dtype=np.int16)])
    first = source.read(160)
    assert first.tolist() == [*range(100), *range(100, 160)]
    assert source.read(160).tolist() == list(range(160, 250))
    assert source.read(160) is None


def test_file_input_plays_once_or_loops(tmp_path):
    path = save_wav(tmp_path / "a.wav", tone(0.05, 440))  # 400 samples
    once, looped = FileInput(path), FileInput(path, loop=True)
    once.open()
    looped.open()
    assert [len(once.read(160)) for _ in range(3)] == [160, 160, 80]
    assert once.read(160) is None
    for _ in range(3):
        looped.read(160)
    assert len(looped.read(160)) == 160  # from the top again


def test_file_output_places_chunks_and_cuts_at_an_interrupt(tmp_path):
    out = FileOutput(tmp_path / "heard.wav")
    out.open(10.0)
    one = np.full(8000, 1000, dtype=np.int16)
    out.play(one, 10.5)  # plays 0.5-1.5 s
    out.play(one * 2, 10.6)  # queued after it: 1.5-2.5 s
    out.interrupt(12.0)  # stopped at 2.0 s
    out.close()
    heard, rate = soundfile.read(str(tmp_path / "heard.wav"), dtype="int16")
    assert rate == 8000
    assert len(heard) == 16000
    assert (heard[:4000] == 0).all()
    assert (heard[4000:12000] == 1000).all()
    assert (heard[12000:] == 2000).all()


@contextmanager
def clock_held(clock: trio.testing.MockClock) -> Iterator[None]:
    """Keep the autojump clock still while a device opens in a worker thread.

    The clock sees every Trio task waiting while the thread works, so it jumps: virtual
    time runs on for as long as the thread takes in real time (0.5-1.2 s measured for
    loading a 4 s WAV on a quiet machine, more under load), and the old file played on
    until it ran out, sending silence at the switch. The client is right to keep sending
    from the old input meanwhile; what this test checks is the order of the sources.
    """
    threshold, clock.autojump_threshold = clock.autojump_threshold, math.inf
    try:
        yield
    finally:
        clock.autojump_threshold = threshold


async def test_devices_switch_mid_call(tmp_path, nursery, autojump_clock):
    first_voice, second_voice = tone(4.0, 440), tone(4.0, 1000)
    first_in = save_wav(tmp_path / "first.wav", first_voice)
    second_in = save_wav(tmp_path / "second.wav", second_voice)
    bot = RecordingBot()
    network = MemoryNetwork(nursery, VoiceStreamServer(ServerConfig(), bot))
    line_a, line_b = np.full(4000, 2000, np.int16), np.full(4000, -3000, np.int16)
    async with open_client(
        "ws://bot/",
        connector=network.connect,
        audio_input=FileInput(first_in),
        audio_output=FileOutput(tmp_path / "out1.wav"),
    ) as client:
        await client.connect()
        await trio.sleep(1.0)
        with clock_held(autojump_clock):
            await client.change_audio_input(FileInput(second_in))
        await trio.sleep(1.0)
        await bot.lines.send(mulaw.encode(line_a))
        await trio.sleep(1.0)
        with clock_held(autojump_clock):
            await client.change_audio_output(FileOutput(tmp_path / "out2.wav"))
        await bot.lines.send(mulaw.encode(line_b))
        await trio.sleep(1.0)
        await client.disconnect()

    # the caller's audio: the first file from its start, then the second from its start
    packets = bot.calls[0]
    first_codes, second_codes = mulaw.encode(first_voice), mulaw.encode(second_voice)
    switch = next(i for i, p in enumerate(packets) if p != first_codes[i * 160 : i * 160 + 160])
    assert 48 <= switch <= 52  # at 1 s: the clock stood still while the new file loaded
    assert b"".join(packets[:switch]) == first_codes[: switch * 160]
    after = b"".join(packets[switch : switch + 40])
    assert after == second_codes[: len(after)]
    assert SILENCE not in packets[: switch + 40]

    # the bot's speech: each line in the output that was current when it arrived
    out1, _ = soundfile.read(str(tmp_path / "out1.wav"), dtype="int16")
    out2, _ = soundfile.read(str(tmp_path / "out2.wav"), dtype="int16")
    level_a = mulaw.decode(mulaw.encode(line_a[:1]))[0]  # as μ-law carries them
    level_b = mulaw.decode(mulaw.encode(line_b[:1]))[0]
    assert np.count_nonzero(out1 == level_a) == len(line_a)
    assert np.count_nonzero(out1) == len(line_a)  # nothing of the second line
    assert np.count_nonzero(out2 == level_b) == len(line_b)
    assert np.count_nonzero(out2) == len(line_b)


@pytest.fixture
def no_sounddevice(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as if not installed


def test_softphone_devices_need_the_extra(no_sounddevice):
    assert get_media_list() == []
    for device in (MicrophoneInput(), SpeakerOutput()):
        with pytest.raises(SoftphoneUnavailable, match=r"voicegraph\[softphone\]"):
            device.open(*(() if isinstance(device, MicrophoneInput) else (0.0,)))


def test_call_mic_without_the_extra_says_how_to_get_it(no_sounddevice, capsys):
    assert voicegraph(["call", "ws://127.0.0.1:9/", "--mic"]) == 2
    error = capsys.readouterr().err
    assert "softphone" in error
    assert "pip install" in error


class FakeStream:
    """What sounddevice's streams are to our devices: a callback PortAudio would call."""

    def __init__(self, *, callback, samplerate, **options) -> None:
        self.callback = callback
        self.samplerate = samplerate
        self.options = options
        self.active = False

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False

    def close(self) -> None:
        pass


class FakeSoundDevice:
    """A stand-in for the ``sounddevice`` module: one microphone, one speaker, 48 kHz."""

    default = type("Default", (), {"device": (0, 1)})()

    def __init__(self) -> None:
        self.streams: list[FakeStream] = []

    def query_devices(self, device=None, kind=None):
        devices = [
            {"name": "Built-in Microphone", "max_input_channels": 1, "max_output_channels": 0},
            {"name": "Headphones", "max_input_channels": 0, "max_output_channels": 2},
        ]
        for info in devices:
            info["default_samplerate"] = 48000.0
        if kind is None:
            return devices
        return devices[0 if kind == "input" else 1]

    def InputStream(self, **options):
        self.streams.append(FakeStream(**options))
        return self.streams[-1]

    OutputStream = InputStream


@pytest.fixture
def fake_sounddevice(monkeypatch) -> FakeSoundDevice:
    fake = FakeSoundDevice()
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    return fake


def test_media_list_names_microphones_and_speakers(fake_sounddevice):
    listed = [(d.device_id, d.kind, d.label, d.default) for d in get_media_list()]
    assert listed == [
        ("0", "audioinput", "Built-in Microphone", True),
        ("1", "audiooutput", "Headphones", True),
    ]


def test_microphone_is_resampled_to_8khz_as_a_steady_stream(fake_sounddevice):
    microphone = MicrophoneInput("0")
    microphone.open()
    (stream,) = fake_sounddevice.streams
    assert stream.active
    assert stream.samplerate == 48000
    t = np.arange(48000) / 48000
    captured = (0.25 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    packets = []
    for start in range(0, 48000, 960):  # one second: a callback, then a packet, every 20 ms
        stream.callback(captured[start : start + 960, None], 960, None, None)
        packets.append(microphone.read(160))
    first = next(i for i, packet in enumerate(packets) if packet is not None)
    assert first <= 6  # the resampler's delay and the cushion: about 0.1 s
    assert all(len(packet) == 160 for packet in packets[first:])  # no gaps once started
    assert microphone.underruns == 0
    audio = np.concatenate(packets[first:])
    spectrum = np.abs(np.fft.rfft(audio[-1024:]))
    assert abs(np.argmax(spectrum) * 8000 / 1024 - 440) < 10  # still the 440 Hz tone
    microphone.close()
    assert not stream.active


def test_microphone_drops_the_oldest_audio_when_nobody_reads(fake_sounddevice):
    microphone = MicrophoneInput(max_backlog_s=0.2)
    microphone.open()
    (stream,) = fake_sounddevice.streams
    silence = np.zeros((960, 1), np.float32)
    for _ in range(50):  # one second that nobody reads
        stream.callback(silence, 960, None, None)
    kept = 0
    while (block := microphone.read(160)) is not None:
        kept += len(block)
    assert 0.2 * 8000 <= kept <= 0.25 * 8000  # only the newest 0.2 s (plus a burst)
    assert microphone.discarded >= 0.7 * 8000


def test_speaker_plays_queued_speech_and_an_interrupt_silences_it(fake_sounddevice):
    speaker = SpeakerOutput()
    speaker.open(0.0)
    (stream,) = fake_sounddevice.streams
    speaker.play(np.full(800, 8000, np.int16), 0.0)  # 0.1 s at 8 kHz: 4800 at 48 kHz
    out = np.zeros((960, 1), np.float32)
    stream.callback(out, 960, None, None)
    assert np.allclose(out[200:800, 0], 8000 / 32768, atol=0.02)
    speaker.interrupt(0.02)
    stream.callback(out, 960, None, None)
    assert not out.any()  # nothing more after the interrupt
