"""WAV files: the container the platform wants bot speech in, and what users hand us.

Outbound bot speech is a complete μ-law WAV per utterance. :func:`encode_mulaw_wav`
writes the smallest header that strict readers accept for non-PCM audio: an 18-byte
``fmt`` chunk (with ``cbSize``) and a ``fact`` chunk holding the sample count.

Inbound WAVs (greetings, prompts, test audio) come from any tool, so
:func:`decode_wav` walks chunks in whatever order they appear, skips the ones it
does not know, and says exactly what is wrong with a file it cannot read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pipeline.runtime.errors import ProtocolError

__all__ = [
    "WAVE_FORMAT_EXTENSIBLE",
    "WAVE_FORMAT_MULAW",
    "WAVE_FORMAT_PCM",
    "WAV_HEADER_SIZE",
    "WavAudio",
    "WavError",
    "decode_wav",
    "encode_mulaw_wav",
]

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_MULAW = 0x0007
WAVE_FORMAT_EXTENSIBLE = 0xFFFE

_CHUNK = struct.Struct("<4sI")
_FMT = struct.Struct("<HHIIHH")  # tag, channels, rate, bytes/s, block align, bits/sample
_MULAW_HEADER = struct.Struct("<4sI4s4sIHHIIHHH4sII4sI")

WAV_HEADER_SIZE = _MULAW_HEADER.size
"""Bytes before the samples in a file from :func:`encode_mulaw_wav` (58)."""

_MAX_RIFF_SIZE = 0xFFFF_FFFF
_FORMAT_NAMES = {WAVE_FORMAT_PCM: "PCM", 0x0003: "IEEE float", 0x0006: "A-law", 0x0007: "μ-law"}


class WavError(ProtocolError, ValueError):
    """A file that is not a WAV we can read, with what is wrong with it."""


@dataclass(frozen=True, slots=True)
class WavAudio:
    """The format of a WAV file and its raw sample bytes (``data`` chunk, no padding)."""

    format_tag: int
    channels: int
    sample_rate: int
    bits_per_sample: int
    data: bytes

    @property
    def format_name(self) -> str:
        return _FORMAT_NAMES.get(self.format_tag, f"format tag 0x{self.format_tag:04X}")


def encode_mulaw_wav(payload: bytes, sample_rate: int = 8000) -> bytes:
    """Wrap μ-law ``payload`` (mono, one byte per sample) in a complete WAV file."""
    samples = len(payload)
    padding = samples & 1  # RIFF chunks are word-aligned
    riff_size = WAV_HEADER_SIZE - 8 + samples + padding
    if riff_size > _MAX_RIFF_SIZE:
        raise ValueError(f"{samples} samples do not fit in one WAV file")
    if not 0 < sample_rate <= 0xFFFF_FFFF:
        raise ValueError(f"sample rate {sample_rate} cannot be written in a WAV header")
    header = _MULAW_HEADER.pack(
        b"RIFF", riff_size, b"WAVE",
        b"fmt ", 18, WAVE_FORMAT_MULAW, 1, sample_rate, sample_rate, 1, 8, 0,
        b"fact", 4, samples,
        b"data", samples,
    )  # fmt: skip
    return b"".join((header, payload, b"\x00" * padding))


def _parse_fmt(body: bytes) -> tuple[int, int, int, int]:
    if len(body) < _FMT.size:
        raise WavError(f"fmt chunk is {len(body)} bytes; at least {_FMT.size} are needed")
    format_tag, channels, sample_rate, _, _, bits = _FMT.unpack_from(body)
    if format_tag == WAVE_FORMAT_EXTENSIBLE:
        # cbSize, valid bits, channel mask, then a GUID whose first two bytes are the tag.
        if len(body) < 40:
            raise WavError("WAVE_FORMAT_EXTENSIBLE fmt chunk is too short for its sub-format")
        (format_tag,) = struct.unpack_from("<H", body, 24)
    if channels < 1:
        raise WavError("fmt chunk declares no channels")
    if sample_rate < 1:
        raise WavError("fmt chunk declares a sample rate of 0")
    if bits < 1:
        raise WavError("fmt chunk declares 0 bits per sample")
    return format_tag, channels, sample_rate, bits


def decode_wav(data: bytes) -> WavAudio:
    """Read a RIFF/WAVE file's format and samples; raises :class:`WavError` if malformed.

    Chunks may come in any order; unknown ones (``LIST``, ``cue ``, ...) are skipped,
    odd-sized chunks are followed by their pad byte (tolerated when a writer left
    the final one out). Fewer than 8 stray bytes at the end of the RIFF chunk, and
    bytes after it, are ignored.
    """
    data = bytes(data)
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        kind = "RIFX (big-endian) is not supported" if data[:4] == b"RIFX" else "not a WAV file"
        raise WavError(f"{kind}: expected 'RIFF' .... 'WAVE' at the start")
    (riff_size,) = struct.unpack_from("<I", data, 4)
    end = 8 + riff_size
    if end > len(data):
        raise WavError(f"truncated: the RIFF header promises {end} bytes, the file has {len(data)}")

    fmt: tuple[int, int, int, int] | None = None
    samples: bytes | None = None
    offset = 12
    while offset + _CHUNK.size <= end:
        chunk_id, size = _CHUNK.unpack_from(data, offset)
        body_start = offset + _CHUNK.size
        body_end = body_start + size
        if body_end > end:
            name = chunk_id.decode("latin-1")
            raise WavError(
                f"truncated: chunk {name!r} at byte {offset} needs {size} bytes, "
                f"only {end - body_start} remain"
            )
        if chunk_id == b"fmt " and fmt is None:
            fmt = _parse_fmt(data[body_start:body_end])
        elif chunk_id == b"data" and samples is None:
            samples = data[body_start:body_end]
        offset = body_end + (size & 1)

    if fmt is None:
        raise WavError("no 'fmt ' chunk: the file does not say how its samples are encoded")
    if samples is None:
        raise WavError("no 'data' chunk: the file holds no samples")
    format_tag, channels, sample_rate, bits = fmt
    return WavAudio(format_tag, channels, sample_rate, bits, samples)
