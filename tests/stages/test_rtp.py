"""RTP packets: the parse/serialize mirror, every malformed case, wrap-safe arithmetic."""

import struct

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from pipeline import RawPacket, Stamp, open_chain
from stages.rtp import (
    PAYLOAD_TYPE_PCMU,
    RtpDepacketizer,
    RtpError,
    RtpFrame,
    RtpPacket,
    seq_distance,
    seq_less_than,
    timestamp_distance,
)

UINT16 = st.integers(0, 0xFFFF)
UINT32 = st.integers(0, 0xFFFF_FFFF)


@st.composite
def packets(draw: st.DrawFn) -> RtpPacket:
    """Any packet that can be put on the wire, every optional part included."""
    extension_profile = draw(st.none() | UINT16)
    extension = b""
    if extension_profile is not None:
        extension = draw(st.binary(max_size=64).map(lambda b: b[: len(b) - len(b) % 4]))
    return RtpPacket(
        payload_type=draw(st.integers(0, 127)),
        sequence_number=draw(UINT16),
        timestamp=draw(UINT32),
        ssrc=draw(UINT32),
        payload=draw(st.binary(max_size=400)),
        marker=draw(st.booleans()),
        csrc=tuple(draw(st.lists(UINT32, max_size=15))),
        extension_profile=extension_profile,
        extension=extension,
        padding=draw(st.integers(0, 255)),
    )


def header(
    *,
    version: int = 2,
    padding: bool = False,
    extension: bool = False,
    csrc_count: int = 0,
    marker: bool = False,
    payload_type: int = 0,
    sequence_number: int = 1,
    timestamp: int = 160,
    ssrc: int = 0xDEADBEEF,
) -> bytes:
    first = (version << 6) | (padding << 5) | (extension << 4) | csrc_count
    second = (marker << 7) | payload_type
    return struct.pack("!BBHII", first, second, sequence_number, timestamp, ssrc)


# --- the mirror -----------------------------------------------------------------


@given(packets())
def test_parse_mirrors_serialize_over_every_field(packet):
    assert RtpPacket.parse(packet.serialize()) == packet


@given(packets())
def test_serialize_mirrors_parse_for_wire_bytes(packet):
    wire = packet.serialize()
    assert RtpPacket.parse(wire).serialize() == wire
    assert RtpPacket.parse(bytearray(wire)) == packet
    assert RtpPacket.parse(memoryview(wire)) == packet


@given(st.binary(max_size=80))
def test_any_bytes_either_parse_or_raise_rtp_error(data):
    try:
        packet = RtpPacket.parse(data)
    except RtpError:
        return
    assert len(packet.payload) <= len(data) - 12


def test_plain_platform_packet():
    payload = bytes(range(160))
    data = header(sequence_number=7, timestamp=1120, ssrc=42) + payload
    packet = RtpPacket.parse(data)
    assert packet == RtpPacket(
        payload_type=PAYLOAD_TYPE_PCMU,
        sequence_number=7,
        timestamp=1120,
        ssrc=42,
        payload=payload,
    )
    assert packet.serialize() == data


def test_marker_and_payload_type_share_one_byte():
    packet = RtpPacket.parse(header(marker=True, payload_type=127))
    assert packet.marker is True
    assert packet.payload_type == 127
    packet = RtpPacket.parse(header(marker=False, payload_type=8))
    assert (packet.marker, packet.payload_type) == (False, 8)
    assert RtpPacket(8, 0, 0, 0, marker=True).serialize()[1] == 0x88


def test_csrcs_are_read_between_header_and_payload():
    data = header(csrc_count=2) + struct.pack("!II", 11, 0xFFFF_FFFF) + b"audio"
    packet = RtpPacket.parse(data)
    assert packet.csrc == (11, 0xFFFF_FFFF)
    assert packet.payload == b"audio"


def test_header_extension_is_separated_from_payload():
    data = header(extension=True) + struct.pack("!HH", 0xBEDE, 2) + b"12345678" + b"audio"
    packet = RtpPacket.parse(data)
    assert (packet.extension_profile, packet.extension, packet.payload) == (
        0xBEDE,
        b"12345678",
        b"audio",
    )
    empty = RtpPacket.parse(header(extension=True) + struct.pack("!HH", 0, 0) + b"x")
    assert (empty.extension_profile, empty.extension, empty.payload) == (0, b"", b"x")
    assert empty.serialize()[0] & 0x10


def test_csrc_and_extension_together_in_order():
    data = (
        header(csrc_count=1, extension=True)
        + struct.pack("!I", 5)
        + struct.pack("!HH", 1, 1)
        + b"EXT!"
        + b"pay"
    )
    packet = RtpPacket.parse(data)
    assert (packet.csrc, packet.extension, packet.payload) == ((5,), b"EXT!", b"pay")


def test_padding_is_stripped_and_counted():
    data = header(padding=True) + b"audio" + b"\x00\x00\x03"
    packet = RtpPacket.parse(data)
    assert (packet.payload, packet.padding) == (b"audio", 3)
    only_padding = RtpPacket.parse(header(padding=True) + b"\x01")
    assert (only_padding.payload, only_padding.padding) == (b"", 1)


def test_serialize_refuses_what_cannot_be_encoded():
    with pytest.raises(RtpError, match="15 CSRCs"):
        RtpPacket(0, 0, 0, 0, csrc=tuple(range(16))).serialize()
    with pytest.raises(RtpError, match="multiple of 4"):
        RtpPacket(0, 0, 0, 0, extension_profile=1, extension=b"abc").serialize()
    with pytest.raises(RtpError, match="one byte"):
        RtpPacket(0, 0, 0, 0, padding=256).serialize()


def test_serialize_wraps_sequence_and_timestamp():
    packet = RtpPacket(0, sequence_number=0x1_0001, timestamp=2**32 + 5, ssrc=1)
    parsed = RtpPacket.parse(packet.serialize())
    assert (parsed.sequence_number, parsed.timestamp) == (1, 5)


# --- malformed packets ----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than the 12-byte"),
        (header()[:11], "shorter than the 12-byte"),
        (header(version=0) + b"x", "version 0"),
        (header(version=1) + b"x", "version 1"),
        (header(version=3) + b"x", "version 3"),
        (header(csrc_count=1), "CSRC count 1"),
        (header(csrc_count=15) + bytes(56), "CSRC count 15"),
        (header(csrc_count=2) + bytes(7), "CSRC count 2"),
        (header(extension=True), "no extension header"),
        (header(extension=True) + b"\xbe\xde\x00", "no extension header"),
        (header(extension=True) + struct.pack("!HH", 0xBEDE, 2) + bytes(7), "2 words"),
        (header(padding=True) + b"audio\x00", "padding length 0"),
        (header(padding=True) + b"ab\x04", "padding length 4"),
        (header(padding=True), "padding length"),  # last header byte read as the count
    ],
    ids=[
        "empty",
        "11-bytes",
        "version-0",
        "version-1",
        "version-3",
        "csrc-missing",
        "csrc-15-short",
        "csrc-partial",
        "extension-missing",
        "extension-header-partial",
        "extension-body-short",
        "padding-zero",
        "padding-too-long",
        "padding-without-payload",
    ],
)
def test_malformed_packets_raise_rtp_error(data, message):
    with pytest.raises(RtpError, match=message):
        RtpPacket.parse(data)


def test_rtp_error_is_a_value_error():
    assert issubclass(RtpError, ValueError)


# --- wrap-safe arithmetic ---------------------------------------------------------


def test_sequence_distance_across_the_wrap():
    assert seq_distance(65535, 0) == 1
    assert seq_distance(0, 65535) == -1
    assert seq_distance(65530, 5) == 11
    assert seq_distance(5, 65530) == -11
    assert seq_distance(100, 100) == 0
    assert seq_distance(0, 32767) == 32767
    assert seq_distance(0, 32768) == -32768  # half way round: the ambiguous point


def test_sequence_order_across_the_wrap():
    assert seq_less_than(65535, 0)
    assert not seq_less_than(0, 65535)
    assert seq_less_than(65000, 200)
    assert not seq_less_than(7, 7)


@given(UINT16, st.integers(-32767, 32767))
def test_sequence_distance_inverts_modular_addition(start, step):
    later = (start + step) & 0xFFFF
    assert seq_distance(start, later) == step
    assert seq_distance(later, start) == -step
    assert seq_less_than(start, later) == (step > 0)
    if step:
        assert seq_less_than(start, later) != seq_less_than(later, start)


def test_timestamp_distance_across_the_wrap():
    assert timestamp_distance(2**32 - 160, 0) == 160
    assert timestamp_distance(0, 2**32 - 160) == -160
    assert timestamp_distance(2**32 - 80, 80) == 160
    assert timestamp_distance(0, 2**31 - 1) == 2**31 - 1
    assert timestamp_distance(0, 2**31) == -(2**31)


@given(UINT32, st.integers(-(2**31) + 1, 2**31 - 1))
def test_timestamp_distance_inverts_modular_addition(start, step):
    later = (start + step) & 0xFFFF_FFFF
    assert timestamp_distance(start, later) == step
    assert timestamp_distance(later, start) == -step


# --- the depacketizer stage -------------------------------------------------------


async def test_depacketizer_parses_counts_and_skips_bad_packets(autojump_clock):
    good = [
        RtpPacket(0, sequence_number=1, timestamp=160, ssrc=9, payload=b"\xff" * 160),
        RtpPacket(0, sequence_number=2, timestamp=320, ssrc=9, payload=b"\x7f" * 160),
    ]
    raw = [
        good[0].serialize(),
        b"\x00" * 5,  # too short
        header(version=1) + b"x",  # not RTP version 2
        RtpPacket(8, 1, 160, 9, payload=b"alaw").serialize(),  # PCMA: not accepted
        header(padding=True) + b"ab\x09",  # bad padding
        good[1].serialize(),
    ]
    depacketizer = RtpDepacketizer()
    async with open_chain(depacketizer) as chain:
        for data in raw:
            await trio.sleep(0.02)
            chain.inbound.send_nowait(RawPacket(data=data, captured_at=trio.current_time()))
        await chain.inbound.aclose()
        frames = [frame async for frame in chain.outputs]
        stats = chain.statistics()["rtp_depacketizer"]

    assert [frame.packet for frame in frames] == good
    assert all(isinstance(frame, RtpFrame) for frame in frames)
    assert [round(frame.captured_at, 6) for frame in frames] == [0.02, 0.12]
    assert stats == {"parsed": 2, "malformed": 3, "wrong_payload_type": 1}  # ran inline: no link
    assert depacketizer.last_error is not None
    assert "padding" in depacketizer.last_error


async def test_depacketizer_accepts_the_payload_types_it_is_given():
    depacketizer = RtpDepacketizer(payload_types=(0, 8))
    async with open_chain(depacketizer) as chain:
        for payload_type in (0, 8, 9):
            chain.inbound.send_nowait(
                RawPacket(data=RtpPacket(payload_type, 1, 1, 1).serialize(), captured_at=0.0)
            )
        await chain.inbound.aclose()
        frames = [frame async for frame in chain.outputs]
    assert [frame.packet.payload_type for frame in frames] == [0, 8]
    assert depacketizer.statistics()["wrong_payload_type"] == 1
    assert depacketizer.last_error == "payload type 9 is not accepted"


async def test_depacketizer_carries_timing_without_touching_the_raw_packet(autojump_clock):
    captured = trio.current_time()
    raw = RawPacket(
        data=RtpPacket(0, 1, 160, 1, payload=b"\xff").serialize(),
        captured_at=captured,
        stamps=[Stamp("transport", captured)],
    )
    async with open_chain(RtpDepacketizer()) as chain:
        await trio.sleep(0.01)
        chain.inbound.send_nowait(raw)
        frame = await chain.outputs.receive()
    assert frame.captured_at == captured
    assert [stamp.stage for stamp in frame.stamps] == ["transport", "rtp_depacketizer"]
    # The raw packet may still be held elsewhere (a tee, a recorder): its stamps are its own.
    assert [stamp.stage for stamp in raw.stamps] == ["transport"]
