"""The emulated caller's packets: the bytes RtpPacket.serialize() and ClientProtocol would write."""

from __future__ import annotations

import json

import numpy as np
import trio

from pipeline.caller.emulator import PACKET_SAMPLES, CallerSide, Impairments
from pipeline.protocol.payload import decode_payload, encode_buffer_json
from pipeline.protocol.platform_side import ClientProtocol
from stages import mulaw
from stages.rtp import PAYLOAD_TYPE_PCMU, RtpPacket


def _caller() -> tuple[CallerSide, ClientProtocol]:
    protocol = ClientProtocol("call-1", "9876543210")
    protocol.connect()  # media may follow
    return CallerSide("call-1", payload_format="buffer", impairments=Impairments(seed=7)), protocol


async def test_packets_are_what_rtp_packet_serialize_writes() -> None:
    caller, protocol = _caller()
    turn = (np.sin(np.arange(PACKET_SAMPLES * 3) / 5) * 8000).astype(np.int16)
    sequence, timestamp, ssrc = caller._sequence, caller._timestamp, caller._ssrc
    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller.speak, turn)
        await trio.testing.wait_all_tasks_blocked()
        messages = [caller._next_packet(float(i), protocol) for i in range(5)]
    chunks = [mulaw.encode(turn)[i : i + PACKET_SAMPLES] for i in range(0, 3 * PACKET_SAMPLES, 160)]
    chunks += [bytes([mulaw.SILENCE_BYTE]) * PACKET_SAMPLES] * 2
    for index, (message, chunk) in enumerate(zip(messages, chunks, strict=True)):
        expected = RtpPacket(
            payload_type=PAYLOAD_TYPE_PCMU,
            sequence_number=(sequence + index) & 0xFFFF,
            timestamp=(timestamp + index * PACKET_SAMPLES) & 0xFFFF_FFFF,
            ssrc=ssrc,
            payload=chunk,
            marker=index == 0,
        ).serialize()
        parsed = json.loads(message)
        assert decode_payload(parsed["payload"]) == expected
        assert json.dumps(parsed["payload"], separators=(",", ":")) == encode_buffer_json(expected)
        assert message.startswith('{"event":"media","callId":"call-1","payload":{"type":"Buffer"')
