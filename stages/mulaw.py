"""G.711 μ-law: the codec every telephone call arrives and leaves in.

Decode and encode are numba kernels, bit-exact with the classic G.711 reference
(the one CPython's ``audioop`` uses), written from the definition: μ-law works on
14-bit linear samples, adds a bias of 33 (0x84 on the 16-bit scale) so that every
segment starts at a power of two, finds the segment (exponent) and keeps four
mantissa bits, and sends the result with all bits inverted. Decode computes that
per sample (it vectorises); encode looks the code up in a table the definition
fills once at import.

The kernels have explicit signatures, so numba compiles them when this module is
imported (or loads them from its on-disk cache) and then refuses to compile
anything else: a call can never stall on a compile. They write into a buffer the
caller provides, because handing a numba-allocated array back to Python costs more
than decoding a whole 20 ms packet.
"""

from __future__ import annotations

from collections.abc import Iterable

import numba
import numpy as np
from numba import types

from pipeline.runtime.frames import MulawAudio, PcmAudio
from pipeline.runtime.stage import Stage
from stages.wav import WAVE_FORMAT_MULAW, WAVE_FORMAT_PCM, WavError, decode_wav

__all__ = [
    "SILENCE_BYTE",
    "MulawDecoder",
    "MulawEncoder",
    "decode",
    "decode_kernel",
    "encode",
    "encode_kernel",
    "mulaw_from_wav",
    "warm_up",
]

SILENCE_BYTE = 0xFF
"""The code for linear zero: what to send when there is nothing to say."""

BIAS = 0x84
"""G.711 μ-law bias on the 16-bit scale (33 on the 14-bit scale the encoder works on)."""

_BIAS_14 = BIAS >> 2
_TOP_14 = 0x1FFF  # top of segment 7 once biased: larger magnitudes clip to code 0x7F
# Segment s holds biased 14-bit magnitudes up to (64 << s) - 1.
_SEGMENT_ENDS = np.array([(64 << segment) - 1 for segment in range(8)], dtype=np.int32)

# Inputs are typed read-only: numba passes writable arrays to a read-only signature
# without compiling another one. ``bytes`` get a signature of their own because
# wrapping each packet in an array first (np.frombuffer) costs more than decoding it.
_CODES = types.Array(types.uint8, 1, "C", readonly=True)
_CODES_BYTES = types.Bytes(types.uint8, 1, "C", readonly=True)
_SAMPLES = types.Array(types.int16, 1, "C", readonly=True)


@numba.jit(
    [types.void(_CODES_BYTES, types.int16[::1]), types.void(_CODES, types.int16[::1])],
    nopython=True,
    nogil=True,
    cache=True,
    boundscheck=False,
)
def decode_kernel(codes: bytes | np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    """Decode μ-law ``codes`` (bytes or uint8 array) into ``out[:len(codes)]`` (int16)."""
    if len(out) < len(codes):
        raise ValueError("output buffer is shorter than the input")
    for i in range(len(codes)):
        code = ~np.int32(codes[i]) & 0xFF  # codes travel with every bit inverted
        exponent = (code >> 4) & 0x07
        mantissa = code & 0x0F
        magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS
        out[i] = -magnitude if code & 0x80 else magnitude


def _mulaw_codes(linear14: np.ndarray) -> np.ndarray:
    """The G.711 μ-law code of each 14-bit linear value: the encoder's definition."""
    values = linear14.astype(np.int32)
    biased = np.minimum(np.abs(values) + _BIAS_14, _TOP_14)  # bias, then clip
    segment = np.searchsorted(_SEGMENT_ENDS, biased)  # first segment reaching the value
    code = (segment << 4) | ((biased >> (segment + 1)) & 0x0F)
    # Positive samples have every bit inverted; negative ones all but the sign bit.
    return np.where(values < 0, code ^ 0x7F, code ^ 0xFF).astype(np.uint8)


_ENCODE_TABLE = _mulaw_codes(np.arange(-8192, 8192))
"""Code of every 14-bit value, indexed by value + 8192 (16 KB: stays in L1 cache).

A lookup beats computing the segment per sample by about 2.5x: the segment
search does not vectorise well, a 16 KB table read does not need to.
"""


@numba.jit(
    [types.void(_SAMPLES, types.uint8[::1])],
    nopython=True,
    nogil=True,
    cache=True,
    boundscheck=False,
)
def encode_kernel(samples: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    """Encode int16 ``samples`` into μ-law ``out[:len(samples)]``."""
    if len(out) < len(samples):
        raise ValueError("output buffer is shorter than the input")
    for i in range(len(samples)):
        # μ-law is defined on 14-bit samples: drop the two low bits (rounding down).
        out[i] = _ENCODE_TABLE[(np.int32(samples[i]) >> 2) + 8192]


# Per-call overhead matters more than the loop for 20 ms packets: dtypes are made once.
_UINT8 = np.dtype(np.uint8)
_INT16 = np.dtype(np.int16)


def _as_codes(payload: bytes | bytearray | memoryview | np.ndarray) -> bytes | np.ndarray:
    if type(payload) is bytes:
        return payload
    if not isinstance(payload, np.ndarray):
        return np.frombuffer(payload, _UINT8)
    if payload.dtype != _UINT8 or payload.ndim != 1:
        raise TypeError(
            f"μ-law codes must be a 1-D uint8 array, not {payload.ndim}-D {payload.dtype}"
        )
    return payload if payload.flags.c_contiguous else np.ascontiguousarray(payload)


def _as_pcm16(samples: np.ndarray) -> np.ndarray:
    array = np.asarray(samples)
    if array.dtype.kind != "i" or array.dtype.itemsize != 2:
        raise TypeError(
            f"encode() takes int16 samples, not {array.dtype}; "
            "scale and convert first (floats: np.round(x * 32767).astype(np.int16))"
        )
    if array.ndim != 1:
        raise ValueError(f"encode() takes mono (1-D) samples, not shape {array.shape}")
    if array.dtype == _INT16 and array.flags.c_contiguous:
        return array
    return np.ascontiguousarray(array, dtype=_INT16)  # also fixes a foreign byte order


def decode(payload: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """μ-law bytes (or a uint8 array) to int16 samples, one sample per byte."""
    codes = _as_codes(payload)
    out = np.empty(len(codes), _INT16)
    decode_kernel(codes, out)
    return out


def encode(samples: np.ndarray) -> bytes:
    """Int16 mono samples to μ-law bytes, one byte per sample."""
    pcm = _as_pcm16(samples)
    out = np.empty(len(pcm), _UINT8)
    encode_kernel(pcm, out)
    return out.tobytes()


def warm_up() -> None:
    """Run both kernels once, at start-up, so the first call pays no first-use cost.

    Compilation itself happens at import (explicit signatures); this touches every
    code path once more (dispatch, allocation, page faults in the compiled code).
    """
    codes = bytes(range(256))
    decode(np.frombuffer(codes, _UINT8))  # each signature once: arrays...
    encode(decode(codes))  # ...and bytes


class MulawDecoder(Stage[MulawAudio, PcmAudio]):
    """μ-law frames in, int16 PCM frames out, on the same timeline."""

    async def setup(self) -> None:
        warm_up()

    def process(self, item: MulawAudio) -> Iterable[PcmAudio]:
        frame = PcmAudio(
            samples=decode(item.payload),
            start_sample=item.start_sample,
            sample_rate=item.sample_rate,
            concealment=item.concealment,
            captured_at=item.captured_at,
        )
        frame.inherit_timing(item)
        return (frame,)


class MulawEncoder(Stage[PcmAudio, MulawAudio]):
    """Int16 PCM frames in, μ-law frames out, on the same timeline."""

    async def setup(self) -> None:
        warm_up()

    def process(self, item: PcmAudio) -> Iterable[MulawAudio]:
        frame = MulawAudio(
            payload=encode(item.samples),
            start_sample=item.start_sample,
            sample_rate=item.sample_rate,
            concealment=item.concealment,
            captured_at=item.captured_at,
        )
        frame.inherit_timing(item)
        return (frame,)


def mulaw_from_wav(data: bytes) -> bytes:
    """μ-law 8 kHz mono bytes from a μ-law WAV, or from a 16-bit PCM WAV at 8 kHz mono.

    Anything else is refused rather than guessed at: resampling and down-mixing
    belong in a resampler stage, not in a file reader.
    """
    wav = decode_wav(data)
    described = (
        f"{wav.format_name}, {wav.bits_per_sample}-bit, {wav.sample_rate} Hz, "
        f"{wav.channels} channel{'s' if wav.channels != 1 else ''}"
    )
    hint = (
        f"this WAV is {described}; telephone audio must be 8000 Hz mono μ-law or 16-bit PCM. "
        "Convert it first, e.g. `sox in.wav -r 8000 -c 1 -e mu-law out.wav` "
        "(resampling is not supported yet)"
    )
    if wav.channels != 1 or wav.sample_rate != 8000:
        raise WavError(hint)
    if wav.format_tag == WAVE_FORMAT_MULAW and wav.bits_per_sample == 8:
        return wav.data
    if wav.format_tag == WAVE_FORMAT_PCM and wav.bits_per_sample == 16:
        if len(wav.data) % 2:
            raise WavError("16-bit PCM data chunk has an odd number of bytes")
        return encode(np.frombuffer(wav.data, dtype="<i2"))
    raise WavError(hint)
