"""μ-law WAV writer checked by independent readers; the tolerant reader against odd files."""

import io
import shutil
import struct
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stages import mulaw
from stages.mulaw import mulaw_from_wav
from stages.wav import (
    WAV_HEADER_SIZE,
    WAVE_FORMAT_MULAW,
    WAVE_FORMAT_PCM,
    WavAudio,
    WavError,
    decode_wav,
    encode_mulaw_wav,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:  # the stdlib module before 3.13; the audioop-lts package installs the same name after
        import audioop
    except ImportError:  # pragma: no cover - only if some build ships it under its own name
        import audioop_lts as audioop

SOX = shutil.which("sox")
needs_sox = pytest.mark.skipif(SOX is None, reason="sox binary not installed (apt install sox)")

# Every code once, then a few more: odd length, so the pad byte is exercised too.
PAYLOAD = bytes(range(256)) + bytes(range(0, 256, 17))
EVEN_PAYLOAD = bytes(range(256)) * 2


def oracle_linear(payload: bytes) -> np.ndarray:
    return np.frombuffer(audioop.ulaw2lin(payload, 2), dtype=np.int16)


def chunk(chunk_id: bytes, body: bytes) -> bytes:
    return struct.pack("<4sI", chunk_id, len(body)) + body + b"\x00" * (len(body) & 1)


def riff(*chunks: bytes) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return struct.pack("<4sI", b"RIFF", len(body)) + body


def fmt_body(tag: int, channels: int = 1, rate: int = 8000, bits: int = 8) -> bytes:
    align = channels * bits // 8
    return struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)


# --- the writer, read by others ---------------------------------------------------


@pytest.mark.parametrize("payload", [PAYLOAD, EVEN_PAYLOAD, b""], ids=["odd", "even", "empty"])
def test_writer_layout_matches_the_spec(payload):
    wav = encode_mulaw_wav(payload)
    assert WAV_HEADER_SIZE == 58
    assert wav[WAV_HEADER_SIZE : WAV_HEADER_SIZE + len(payload)] == payload
    assert len(wav) == WAV_HEADER_SIZE + len(payload) + (len(payload) & 1)
    riff_id, riff_size, wave = struct.unpack_from("<4sI4s", wav)
    assert (riff_id, wave, riff_size) == (b"RIFF", b"WAVE", len(wav) - 8)
    fmt = struct.unpack_from("<4sIHHIIHHH", wav, 12)
    #        id       size tag channels rate  bytes/s align bits cbSize
    assert fmt == (b"fmt ", 18, 7, 1, 8000, 8000, 1, 8, 0)
    assert struct.unpack_from("<4sII", wav, 38) == (b"fact", 4, len(payload))
    assert struct.unpack_from("<4sI", wav, 50) == (b"data", len(payload))


def test_soundfile_reads_our_header():
    wav = encode_mulaw_wav(PAYLOAD)
    info = sf.info(io.BytesIO(wav))
    assert (info.format, info.subtype) == ("WAV", "ULAW")
    assert (info.samplerate, info.channels, info.frames) == (8000, 1, len(PAYLOAD))
    samples, rate = sf.read(io.BytesIO(wav), dtype="float64")
    assert rate == 8000
    np.testing.assert_array_equal(samples, oracle_linear(PAYLOAD) / 32768.0)


def test_other_sample_rates_are_declared_faithfully():
    info = sf.info(io.BytesIO(encode_mulaw_wav(EVEN_PAYLOAD, sample_rate=16000)))
    assert (info.samplerate, info.frames) == (16000, len(EVEN_PAYLOAD))
    with pytest.raises(ValueError, match="sample rate"):
        encode_mulaw_wav(b"", sample_rate=0)


@needs_sox
@pytest.mark.parametrize("payload", [PAYLOAD, EVEN_PAYLOAD], ids=["odd", "even"])
def test_sox_reads_our_header(tmp_path: Path, payload: bytes):
    path = tmp_path / "speech.wav"
    path.write_bytes(encode_mulaw_wav(payload))

    def sox_info(flag: str) -> str:
        done = subprocess.run(
            [SOX, "--i", flag, str(path)], capture_output=True, text=True, check=True
        )
        assert "WARN" not in done.stderr, done.stderr
        return done.stdout.strip()

    assert sox_info("-t") == "wav"
    assert sox_info("-e") == "u-law"
    assert sox_info("-r") == "8000"
    assert sox_info("-c") == "1"
    assert sox_info("-b") == "8"
    assert sox_info("-s") == str(len(payload))
    decoded = subprocess.run(
        [SOX, str(path), "-t", "raw", "-e", "signed", "-b", "16", "-L", "-"],
        capture_output=True,
        check=True,
    )
    assert "WARN" not in decoded.stderr.decode(errors="replace")
    np.testing.assert_array_equal(np.frombuffer(decoded.stdout, "<i2"), oracle_linear(payload))


# --- the reader -----------------------------------------------------------------


@pytest.mark.parametrize("payload", [PAYLOAD, EVEN_PAYLOAD, b""], ids=["odd", "even", "empty"])
def test_reader_round_trips_the_writer(payload):
    wav = decode_wav(encode_mulaw_wav(payload, sample_rate=8000))
    assert wav == WavAudio(WAVE_FORMAT_MULAW, 1, 8000, 8, payload)
    assert mulaw_from_wav(encode_mulaw_wav(payload)) == payload


def test_reader_takes_pcm16_written_by_soundfile():
    rng = np.random.default_rng(7)
    samples = rng.integers(-32768, 32768, 801, dtype=np.int16)
    buffer = io.BytesIO()
    sf.write(buffer, samples, 8000, format="WAV", subtype="PCM_16")
    wav = decode_wav(buffer.getvalue())
    assert (wav.format_tag, wav.channels, wav.sample_rate, wav.bits_per_sample) == (
        WAVE_FORMAT_PCM,
        1,
        8000,
        16,
    )
    np.testing.assert_array_equal(np.frombuffer(wav.data, "<i2"), samples)
    assert mulaw_from_wav(buffer.getvalue()) == audioop.lin2ulaw(samples.tobytes(), 2)


def test_reader_takes_mulaw_written_by_soundfile():
    pcm = oracle_linear(EVEN_PAYLOAD)
    buffer = io.BytesIO()
    sf.write(buffer, pcm, 8000, format="WAV", subtype="ULAW")
    assert mulaw_from_wav(buffer.getvalue()) == mulaw.encode(pcm)


def test_reader_walks_chunks_in_any_order_and_skips_unknown_ones():
    odd_samples = b"\x01\x02\x03"
    wav = riff(
        chunk(b"LIST", b"INFOISFT\x05\x00\x00\x00test\x00"),  # odd size: padded
        chunk(b"data", odd_samples),  # odd size, before fmt
        chunk(b"junk", b"\xaa" * 7),
        chunk(b"fmt ", fmt_body(WAVE_FORMAT_MULAW)),
    )
    assert decode_wav(wav) == WavAudio(WAVE_FORMAT_MULAW, 1, 8000, 8, odd_samples)


def test_reader_tolerates_a_missing_final_pad_byte_and_trailing_bytes():
    body = b"WAVE" + chunk(b"fmt ", fmt_body(WAVE_FORMAT_MULAW)) + struct.pack("<4sI", b"data", 3)
    body += b"abc"  # odd data at the very end, no pad byte
    wav = struct.pack("<4sI", b"RIFF", len(body)) + body
    assert decode_wav(wav).data == b"abc"
    assert decode_wav(wav + b"trailing garbage after RIFF").data == b"abc"


def test_reader_resolves_wave_format_extensible():
    guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    extensible = (
        struct.pack("<HHIIHH", 0xFFFE, 1, 8000, 16000, 2, 16)
        + struct.pack("<HHI", 22, 16, 4)
        + struct.pack("<H", WAVE_FORMAT_PCM)
        + guid_tail
    )
    samples = np.array([0, 1000, -1000], np.int16)
    wav = riff(chunk(b"fmt ", extensible), chunk(b"data", samples.tobytes()))
    assert decode_wav(wav).format_tag == WAVE_FORMAT_PCM
    assert mulaw_from_wav(wav) == mulaw.encode(samples)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a WAV"),
        (b"RIFF\x04\x00\x00\x00WAV", "not a WAV"),
        (b"RIFX\x04\x00\x00\x00WAVE", "RIFX"),
        (b"OggS" + bytes(60), "not a WAV"),
        (riff(chunk(b"data", b"\x01\x02")), "no 'fmt '"),
        (riff(chunk(b"fmt ", fmt_body(WAVE_FORMAT_MULAW))), "no 'data'"),
        (riff(chunk(b"fmt ", b"\x07\x00\x01\x00")), "fmt chunk is 4 bytes"),
        (riff(chunk(b"fmt ", fmt_body(WAVE_FORMAT_MULAW, channels=0))), "no channels"),
        (riff(chunk(b"fmt ", fmt_body(WAVE_FORMAT_MULAW, rate=0))), "sample rate of 0"),
        (riff(chunk(b"fmt ", fmt_body(WAVE_FORMAT_MULAW, bits=0))), "0 bits"),
        (riff(chunk(b"fmt ", struct.pack("<HHIIHH", 0xFFFE, 1, 8000, 8000, 1, 8))), "EXTENSIBLE"),
        (encode_mulaw_wav(PAYLOAD)[:100], "truncated"),  # cut inside the data chunk
        (encode_mulaw_wav(PAYLOAD)[:30], "truncated"),  # cut inside the fmt chunk
    ],
    ids=[
        "empty",
        "no-wave-tag",
        "big-endian",
        "ogg",
        "no-fmt",
        "no-data",
        "short-fmt",
        "no-channels",
        "zero-rate",
        "zero-bits",
        "short-extensible",
        "cut-in-data",
        "cut-in-fmt",
    ],
)
def test_reader_rejects_malformed_files(data, message):
    with pytest.raises(WavError, match=message):
        decode_wav(data)


def test_chunk_running_past_the_riff_end_is_truncation():
    body = b"WAVE" + chunk(b"fmt ", fmt_body(WAVE_FORMAT_MULAW)) + struct.pack("<4sI", b"data", 99)
    wav = struct.pack("<4sI", b"RIFF", len(body)) + body + bytes(10)
    with pytest.raises(WavError, match="truncated: chunk 'data'"):
        decode_wav(wav)


@pytest.mark.parametrize(
    ("rate", "channels", "subtype", "message"),
    [
        (16000, 1, "PCM_16", "16000 Hz"),
        (8000, 2, "PCM_16", "2 channels"),
        (8000, 1, "FLOAT", "IEEE float"),
        (8000, 1, "PCM_24", "24-bit"),
        (8000, 1, "ALAW", "A-law"),
    ],
)
def test_mulaw_from_wav_refuses_what_needs_converting(rate, channels, subtype, message):
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros((8, channels)), rate, format="WAV", subtype=subtype)
    with pytest.raises(WavError, match=message) as caught:
        mulaw_from_wav(buffer.getvalue())
    assert "sox" in str(caught.value)
    assert "resampling is not supported yet" in str(caught.value)


def test_mulaw_from_wav_refuses_odd_pcm16_data():
    wav = riff(chunk(b"fmt ", fmt_body(WAVE_FORMAT_PCM, bits=16)), chunk(b"data", b"\x00\x01\x02"))
    with pytest.raises(WavError, match="odd number of bytes"):
        mulaw_from_wav(wav)
