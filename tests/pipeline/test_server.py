"""The bot server end to end: the emulator dials the parrot bot over real sockets."""

from __future__ import annotations

import json
import signal
import ssl

import numpy as np
import pytest
import trio
import trio.testing
import trustme
from trio_websocket import ConnectionClosed, wrap_client_stream

from pipeline.bot.parrot import ParrotBot
from pipeline.caller.emulator import Impairments, RegistrationError, converse, open_call
from pipeline.protocol.platform_side import ClientProtocol
from pipeline.server.call import Call
from pipeline.server.voice_stream import ServerConfig, VoiceStreamServer
from stages import mulaw

from .conftest import quiet, serve_process, speechlike, start_server, steady_parrot


def padded(samples: np.ndarray) -> bytes:
    """The μ-law stream the emulator sends around one turn (silence is 0xFF)."""
    silence = bytes([mulaw.SILENCE_BYTE]) * 16000
    return silence + mulaw.encode(samples) + silence


async def test_parrot_echoes_each_turn_exactly(parrot):
    server, url = parrot
    turns = [("one", speechlike(0.8, seed=1)), ("two", speechlike(0.6, pitch=200, seed=2))]
    with trio.fail_after(30):
        async with open_call(url) as call:
            reports = await converse(call, turns, pause=0.3)
    assert [r.bot_messages for r in reports] == [1, 1]
    for (_, samples), report, audio in zip(turns, reports, call.received, strict=True):
        # μ-law codes survive decode + re-encode exactly, so the echo is a byte-exact
        # slice of what was sent: the speech, a short pre-roll and tail of silence
        assert audio.mulaw in padded(samples)
        assert len(samples) <= len(audio.mulaw) <= len(samples) + 0.4 * 8000
        assert report.voice_to_voice_ms is not None
        assert 500 <= report.voice_to_voice_ms <= 1500  # the 600 ms end-of-turn hangover
    assert call.close_code is None  # we hung up, not the bot
    await trio.sleep(0.1)
    (summary,) = server.finished_calls
    assert summary["packets_dropped"] == 0
    assert summary["pipeline"]["rtp_depacketizer"]["malformed"] == 0


async def test_parrot_over_tls(nursery):
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    with certificate.private_key_and_cert_chain_pem.tempfile() as pem:
        _, url = await start_server(nursery, steady_parrot(), certfile=pem, keyfile=pem)
        client_context = ssl.create_default_context()
        authority.configure_trust(client_context)
        assert url.startswith("wss://")
        with trio.fail_after(20):
            async with open_call(url, ssl_context=client_context) as call:
                (report,) = await converse(call, [("tls", speechlike(0.6))], pause=0.2)
    assert report.bot_messages == 1
    assert call.received[0].mulaw in padded(speechlike(0.6))


async def test_impaired_network_still_completes_and_counters_show_it(nursery):
    server, url = await start_server(nursery)  # the default, adaptive jitter buffer
    impairments = Impairments(jitter_ms=30, loss=0.05, reorder=0.05, duplicate=0.05, seed=7)
    with trio.fail_after(30):
        async with open_call(url, impairments=impairments) as call:
            reports = await converse(call, [("a", speechlike(1.0)), ("b", speechlike(0.8))])
    assert all(report.bot_messages >= 1 for report in reports)
    assert call.packets_lost > 0
    assert call.packets_duplicated > 0
    assert call.packets_reordered > 0
    await trio.sleep(0.1)
    jitter = server.finished_calls[-1]["pipeline"]["jitter"]
    assert jitter["duplicate"] > 0
    assert jitter["concealed_silence"] + jitter["concealed_repeat"] > 0


@pytest.mark.parametrize("payload_format", ["base64", "binary"])
async def test_other_payload_formats_are_understood(parrot, payload_format):
    _, url = parrot
    with trio.fail_after(20):
        async with open_call(url, payload_format=payload_format) as call:
            (report,) = await converse(call, [("x", speechlike(0.6))], pause=0.2)
    assert report.bot_messages == 1


async def test_api_key_is_required_and_checked(nursery):
    _, url = await start_server(nursery, api_key="s3cret")
    with pytest.raises(RegistrationError, match="1008"):
        async with open_call(url):
            pass
    with pytest.raises(RegistrationError, match="1008"):
        async with open_call(url, api_key="wrong"):
            pass
    async with open_call(url, api_key="s3cret") as call:
        assert call.call_id
    async with open_call(url + "?token=s3cret") as call:
        assert call.call_id


class CrashOnFirstPacket(ParrotBot):
    """A deliberately broken bot for one caller number: its handler raises."""

    async def handle_call(self, call: Call) -> None:
        if call.mobile_no == "1111111111":
            async for _ in call.media:
                raise RuntimeError("bot bug")
        await super().handle_call(call)


async def test_one_call_crashing_leaves_a_concurrent_call_untouched(nursery):
    server, url = await start_server(nursery, CrashOnFirstPacket(jitter=steady_parrot().jitter))
    results = {}

    async def healthy() -> None:
        async with open_call(url, mobile_no="2222222222") as call:
            results["healthy"] = await converse(
                call, [("1", speechlike(0.6)), ("2", speechlike(0.6))], pause=0.2
            )

    async def broken() -> None:
        async with open_call(url, mobile_no="1111111111") as call:
            await trio.sleep(1.0)
            results["broken"] = call.close_code

    with trio.fail_after(30):
        async with trio.open_nursery() as calls:
            calls.start_soon(healthy)
            calls.start_soon(broken)
    assert results["broken"] == 1011
    assert [report.bot_messages for report in results["healthy"]] == [1, 1]
    assert server.counters["internal_errors"] == 1


# --- timeouts, in virtual time over in-memory streams ---------------------------------


async def read_until_closed(ws) -> ConnectionClosed:
    try:
        while True:
            await ws.get_message()
    except ConnectionClosed as closed:
        return closed


async def connect_in_memory(nursery: trio.Nursery, server: VoiceStreamServer):
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(server.handle_stream, server_stream)
    return await wrap_client_stream(nursery, client_stream, "localhost", "/")


async def test_no_registration_within_10_seconds_closes_1008(nursery, autojump_clock):
    server = VoiceStreamServer(ServerConfig(), ParrotBot())
    ws = await connect_in_memory(nursery, server)
    start = trio.current_time()
    closed = await read_until_closed(ws)
    assert closed.reason.code == 1008
    assert 10.0 <= trio.current_time() - start < 10.5
    assert server.counters["registration_timeouts"] == 1


async def test_five_minutes_without_a_message_closes_the_call(nursery, autojump_clock):
    server = VoiceStreamServer(ServerConfig(), ParrotBot())
    ws = await connect_in_memory(nursery, server)
    client = ClientProtocol("idle-call", "9876543210")
    await ws.send_message(client.connect())
    client.receive_message(await ws.get_message())  # the acknowledgement
    await trio.sleep(200)
    await ws.send_message(client.media(b"\x80" + bytes(171), timestamp=0))  # activity at 200 s
    start = trio.current_time()
    closed = await read_until_closed(ws)
    assert closed.reason.code == 1000
    assert "inactive" in closed.reason.reason
    assert 300.0 <= trio.current_time() - start < 300.5
    assert server.counters["inactivity_timeouts"] == 1


async def test_message_over_1_mb_closes_1009(parrot):
    _, url = parrot
    async with open_call(url) as call:
        await call.ws.send_message("x" * ((1 << 20) + 1))
        with trio.fail_after(5):
            assert await call.wait_closed() == 1009


async def test_protocol_violation_closes_1002(parrot):
    _, url = parrot
    async with open_call(url) as call:
        await call.ws.send_message(json.dumps({"event": "connected", "callId": "again"}))
        with trio.fail_after(5):
            assert await call.wait_closed() == 1002


# --- the real command: SIGTERM closes every call with 1001 and exits 0 -------------------


async def test_sigterm_closes_calls_with_1001_and_exits_0():
    with trio.fail_after(60):  # --drain-timeout 0: close at once (draining: test_drain.py)
        async with serve_process("--bot", "parrot", "--drain-timeout", "0") as (process, ready):
            async with open_call(ready["url"]) as call:
                await call.speak(quiet(0.2))
                process.send_signal(signal.SIGTERM)
                assert await call.wait_closed() == 1001
            assert await process.wait() == 0
