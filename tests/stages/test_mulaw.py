"""G.711 μ-law kernels against an independent oracle, and the stages that wrap them."""

import warnings

import numpy as np
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline import Concealment, MulawAudio, PcmAudio, Stamp, open_chain
from stages import mulaw

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:  # the stdlib module before 3.13; the audioop-lts package installs the same name after
        import audioop
    except ImportError:  # pragma: no cover - only if some build ships it under its own name
        import audioop_lts as audioop

ALL_CODES = np.arange(256, dtype=np.uint8)
ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)


def oracle_decode(codes: bytes) -> np.ndarray:
    return np.frombuffer(audioop.ulaw2lin(codes, 2), dtype=np.int16)


def oracle_encode(samples: np.ndarray) -> bytes:
    return audioop.lin2ulaw(samples.astype("<i2").tobytes(), 2)


def test_decode_matches_oracle_on_all_256_codes():
    decoded = mulaw.decode(ALL_CODES.tobytes())
    assert decoded.dtype == np.int16
    np.testing.assert_array_equal(decoded, oracle_decode(ALL_CODES.tobytes()))


def test_encode_matches_oracle_on_every_int16_value():
    encoded = np.frombuffer(mulaw.encode(ALL_SAMPLES), dtype=np.uint8)
    expected = np.frombuffer(oracle_encode(ALL_SAMPLES), dtype=np.uint8)
    mismatches = np.flatnonzero(encoded != expected)
    assert mismatches.size == 0, f"first wrong inputs: {ALL_SAMPLES[mismatches[:5]]}"


def test_known_g711_points():
    assert mulaw.encode(np.zeros(3, np.int16)) == bytes([mulaw.SILENCE_BYTE]) * 3
    assert mulaw.decode(bytes([mulaw.SILENCE_BYTE])).tolist() == [0]
    assert mulaw.decode(b"\x7f").tolist() == [0]  # "negative zero"
    assert mulaw.decode(b"\x00\x80").tolist() == [-32124, 32124]  # the loudest codes
    assert mulaw.encode(np.array([32767, -32768], np.int16)) == b"\x80\x00"  # clipped


def test_decode_accepts_every_bytes_like_and_uint8_arrays():
    payload = ALL_CODES.tobytes()
    expected = oracle_decode(payload)
    for form in (payload, bytearray(payload), memoryview(payload), ALL_CODES, ALL_CODES.copy()):
        np.testing.assert_array_equal(mulaw.decode(form), expected)
    strided = np.repeat(ALL_CODES, 2)[::2]  # non-contiguous view
    np.testing.assert_array_equal(mulaw.decode(strided), expected)


def test_decode_of_empty_input_is_empty_int16():
    for empty in (b"", np.zeros(0, np.uint8)):
        decoded = mulaw.decode(empty)
        assert decoded.dtype == np.int16
        assert decoded.shape == (0,)
    assert mulaw.encode(np.zeros(0, np.int16)) == b""


def test_encode_accepts_foreign_byte_order_and_strided_views():
    swapped = ALL_SAMPLES.astype(">i2")
    assert mulaw.encode(swapped) == oracle_encode(ALL_SAMPLES)
    assert mulaw.encode(ALL_SAMPLES[::3]) == oracle_encode(ALL_SAMPLES[::3])


def test_wrong_input_types_are_refused_not_converted():
    with pytest.raises(TypeError, match="int16"):
        mulaw.encode(np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="int16"):
        mulaw.encode(np.zeros(4, np.int32))
    with pytest.raises(ValueError, match="mono"):
        mulaw.encode(np.zeros((2, 4), np.int16))
    with pytest.raises(TypeError, match="uint8"):
        mulaw.decode(np.zeros(4, np.int16))


def test_every_code_survives_decode_then_encode():
    # Both zeros (0x7F, 0xFF) come back as the positive zero: the one lossy code.
    round_trip = np.frombuffer(mulaw.encode(mulaw.decode(ALL_CODES)), np.uint8)
    expected = ALL_CODES.copy()
    expected[0x7F] = 0xFF
    np.testing.assert_array_equal(round_trip, expected)


@given(hnp.arrays(np.int16, st.integers(0, 400)))
def test_encode_then_decode_stays_within_one_quantisation_step(samples):
    decoded = mulaw.decode(mulaw.encode(samples)).astype(np.int32)
    original = samples.astype(np.int32)
    clipped = np.clip(original, -32124, 32124)
    # A μ-law step is 8 on the 16-bit scale in segment 0 and doubles per segment:
    # the error is at most one step of the larger segment of input and output (the
    # 14-bit shift rounds negative samples away from zero, across a segment edge).
    magnitude = np.maximum(np.abs(clipped), np.abs(decoded))
    step = 8 << np.maximum(0, np.floor(np.log2(magnitude + 132)).astype(np.int32) - 7)
    assert np.all(np.abs(decoded - clipped) <= step)
    assert np.all(np.sign(decoded) * np.sign(original) >= 0)  # never flips the sign


def test_decode_is_monotonic_in_the_linear_value():
    values = mulaw.decode(np.arange(0x80, dtype=np.uint8)).astype(np.int32)  # negative half
    assert np.all(np.diff(values) > 0)
    values = mulaw.decode(np.arange(0x80, 0x100, dtype=np.uint8)).astype(np.int32)
    assert np.all(np.diff(values) < 0)


def test_warm_up_leaves_kernels_compiled_and_closed_to_new_compiles():
    mulaw.warm_up()
    for kernel in (mulaw.decode_kernel, mulaw.encode_kernel):
        assert kernel.signatures
        assert kernel.nopython_signatures
    compiled = list(mulaw.decode_kernel.signatures)
    # Every input form decode() passes on runs without compiling anything new...
    for payload in (
        b"\x00",
        bytearray(b"\x00"),
        np.zeros(1, np.uint8),
        np.arange(4, dtype=np.uint8)[::2],
    ):
        mulaw.decode(payload)
    assert mulaw.decode_kernel.signatures == compiled
    # ...and a type without a signature is refused instead of being compiled mid-call.
    with pytest.raises(TypeError, match="No matching definition"):
        mulaw.decode_kernel(np.zeros(4, np.int64), np.zeros(4, np.int16))
    assert mulaw.decode_kernel.signatures == compiled


def test_kernels_refuse_a_short_output_buffer():
    with pytest.raises(ValueError, match="shorter"):
        mulaw.decode_kernel(np.zeros(4, np.uint8), np.zeros(3, np.int16))
    with pytest.raises(ValueError, match="shorter"):
        mulaw.decode_kernel(bytes(4), np.zeros(3, np.int16))
    with pytest.raises(ValueError, match="shorter"):
        mulaw.encode_kernel(np.zeros(4, np.int16), np.zeros(3, np.uint8))


async def test_decoder_then_encoder_carry_timing_and_position(autojump_clock):
    payload = ALL_CODES.tobytes()[:160]
    captured = trio.current_time()
    source = MulawAudio(
        payload=payload,
        start_sample=8000,
        concealment=Concealment.REPEAT,
        captured_at=captured,
        stamps=[Stamp("jitter", captured)],
    )
    async with open_chain(mulaw.MulawDecoder(), mulaw.MulawEncoder()) as chain:
        await trio.sleep(0.5)
        chain.inbound.send_nowait(source)
        await chain.inbound.aclose()
        frames = [frame async for frame in chain.outputs]

    assert len(frames) == 1
    back = frames[0]
    assert isinstance(back, MulawAudio)
    assert back.payload == oracle_encode(oracle_decode(payload))
    assert back.start_sample == 8000
    assert back.sample_rate == 8000
    assert back.concealment is Concealment.REPEAT
    assert back.captured_at == captured
    assert [stamp.stage for stamp in back.stamps] == ["jitter", "mulaw_decoder", "mulaw_encoder"]
    assert [stamp.stage for stamp in source.stamps] == ["jitter"]  # input left untouched


def test_decoder_stage_output_is_pcm_on_the_same_timeline():
    source = MulawAudio(payload=b"\xff" * 160, start_sample=320, sample_rate=8000, captured_at=2.5)
    (frame,) = mulaw.MulawDecoder().process(source)
    assert isinstance(frame, PcmAudio)
    assert frame.samples.tolist() == [0] * 160
    assert (frame.start_sample, frame.end_sample) == (320, 480)
    assert frame.concealment is Concealment.NONE
    assert frame.captured_at == 2.5
