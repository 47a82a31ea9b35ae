"""``GET /metrics`` over real sockets: a call moves the call and packet counters by what
the caller sent, a voice bot's turn fills the step and voice-to-voice histograms, turn
records count barge-ins, resumptions and service errors, the key guards the route, and
``serve --workers 2`` answers with the fleet's totals from any worker."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from pipeline.bot.config import BotConfig, ConversationConfig
from pipeline.bot.conversation import TurnRecord
from pipeline.bot.turn_metrics import TurnMetrics, failed_services
from pipeline.bot.voicebot import VoiceBot
from pipeline.caller.emulator import Impairments, open_call
from pipeline.server.call import Bot
from pipeline.server.http_front import HttpRequest
from pipeline.server.prometheus import Metrics, call_outcome, serve_metrics
from pipeline.server.voice_stream import ServerConfig, VoiceStreamServer
from stages.llm import EchoLlm
from tests.fakes import FakeEnergyVad, FakeScriptedStt, FakeToneTts, FakeTurnModel

from .conftest import serve_process, steady_parrot, utterance
from .test_workers import held_calls, http_get, port_of

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition: (name, sorted labels) → value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def http(port: int, path: str, headers: str = "") -> tuple[int, str]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        request = f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n"
        await stream.send_all(request.encode())
        response = b""
        while chunk := await stream.receive_some(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def scrape(port: int, headers: str = "") -> Samples:
    status, body = await http(port, "/metrics", headers)
    assert status == 200, body
    return parse(body)


@asynccontextmanager
async def metered(bot: Bot, **config: Any) -> AsyncIterator[tuple[VoiceStreamServer, int]]:
    """``bot`` behind a server with ``/metrics`` (its turns counted if it has any)."""
    server = VoiceStreamServer(ServerConfig(port=0, **config), bot)
    metrics = serve_metrics(server)
    TurnMetrics(metrics).watch(bot)
    async with trio.open_nursery() as nursery:
        listening = await nursery.start(server.serve)
        yield server, listening.port
        server.shutdown()


async def test_a_call_moves_the_call_and_packet_counters_by_what_was_sent() -> None:
    with trio.fail_after(30):
        async with metered(steady_parrot()) as (server, port):
            url = f"ws://127.0.0.1:{port}/"
            network = Impairments(duplicate=0.05, seed=7)  # the jitter buffer drops copies
            async with open_call(url, call_id="metered-1", impairments=network) as call:
                spoken = await call.speak(utterance(0.6))
                await call.wait_for_bot_audio(spoken.speech_end_at)
                live = await scrape(port)
            with trio.fail_after(5):
                while server.calls or not server.finished_calls:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            after = await scrape(port)
    assert value(live, "voicegraph_calls_active") == 1
    assert value(live, "voicegraph_calls_total") == 1
    assert 0 < value(live, "voicegraph_media_packets_total") <= call.packets_sent
    assert value(after, "voicegraph_calls_active") == 0
    assert value(after, "voicegraph_calls_total") == 1
    ended = {"code": "1000", "outcome": "caller_hung_up"}
    assert value(after, "voicegraph_calls_ended_total", **ended) == 1
    (summary,) = server.finished_calls
    assert value(after, "voicegraph_media_packets_total") == call.packets_sent
    assert value(after, "voicegraph_messages_received_total") == summary["messages_received"]
    speech = [audio for audio in call.received if audio.kind == "media"]
    assert value(after, "voicegraph_speech_messages_sent_total") == len(speech) > 0
    duplicates = summary["pipeline"]["jitter"]["duplicate"]
    assert value(after, "voicegraph_packets_dropped_total", reason="duplicate") == duplicates > 0
    for reason in ("inbound_full", "late", "malformed"):
        assert value(after, "voicegraph_packets_dropped_total", reason=reason) == 0
    assert value(after, "voicegraph_connections_refused_total", reason="auth_failed") == 0


async def test_a_voice_bot_turn_fills_the_step_and_voice_to_voice_histograms() -> None:
    config = BotConfig(conversation=ConversationConfig(greeting="Hello, bakery here."))
    stt = FakeScriptedStt(["what time do you open"])
    fakes = {"vad": FakeEnergyVad(), "tts": FakeToneTts(), "turn": FakeTurnModel({}, default=0.9)}
    bot = VoiceBot(config, stt=stt, llm=EchoLlm(), **fakes)
    with trio.fail_after(30):
        async with metered(bot) as (_, port):
            async with open_call(f"ws://127.0.0.1:{port}/", call_id="turns-1") as call:
                await call.wait_for_greeting()
                spoken = await call.speak(utterance())
                await call.wait_for_bot_audio(spoken.speech_end_at)
                turns = bot.conversations["turns-1"].turns
                with trio.fail_after(10):  # finished once its audio has played out
                    while not [turn for turn in turns if turn.source == "caller"]:  # noqa: ASYNC110
                        await trio.sleep(0.02)
                samples = await scrape(port)
    turn = next(turn for turn in turns if turn.source == "caller")
    assert turn.end_of_turn
    caller_turns = {"source": "caller", "end_of_turn": turn.end_of_turn}
    assert value(samples, "voicegraph_turns_total", **caller_turns) == 1
    assert value(samples, "voicegraph_turns_total", source="greeting", end_of_turn="none") == 1
    assert value(samples, "voicegraph_voice_to_voice_seconds_count") == 1
    v2v = value(samples, "voicegraph_voice_to_voice_seconds_sum")
    assert v2v == pytest.approx(turn.timings_ms["first_send"] / 1000)
    for step in ("endpointing", "stt", "llm_first_token", "tts_first_chunk", "first_send"):
        assert value(samples, "voicegraph_turn_step_seconds_count", step=step) == 1, step
        assert value(samples, "voicegraph_turn_step_seconds_sum", step=step) == pytest.approx(
            turn.timings_ms[step] / 1000
        )
    assert value(samples, "voicegraph_stt_compute_seconds_count") == 1
    assert value(samples, "voicegraph_service_errors_total", service="stt") == 0


def caller_turn(index: int, **fields: Any) -> TurnRecord:
    timings = {"endpointing": 600.0, "stt": 700.0, "first_send": 900.0}
    return TurnRecord(index, timings_ms=timings, end_of_turn="hangover", **fields)


def test_turn_records_count_barge_ins_resumptions_and_service_errors() -> None:
    metrics = Metrics()
    turns = TurnMetrics(metrics)
    turns.observe(caller_turn(1, interrupted=True, resumed=2))
    turns.observe(caller_turn(2, error="stt: no transcript in 5 s; tts: voice gone"))
    turns.observe(caller_turn(3, llm_failed=True, error="LLM server unreachable"))
    turns.observe(TurnRecord(4, source="operator", interrupted=True, timings_ms={"first_send": 50}))
    samples = parse(metrics.exposition().decode())
    assert value(samples, "voicegraph_turns_total", source="caller", end_of_turn="hangover") == 3
    assert value(samples, "voicegraph_turns_total", source="operator", end_of_turn="none") == 1
    assert value(samples, "voicegraph_replies_interrupted_total", source="caller") == 1
    assert value(samples, "voicegraph_replies_interrupted_total", source="operator") == 1
    assert value(samples, "voicegraph_false_interrupts_resumed_total") == 2
    for service, count in {"stt": 1, "tts": 1, "llm": 1, "other": 0}.items():
        assert value(samples, "voicegraph_service_errors_total", service=service) == count
    # only caller turns are voice-to-voice; an operator's line counts from its request
    assert value(samples, "voicegraph_voice_to_voice_seconds_count") == 3
    assert value(samples, "voicegraph_voice_to_voice_seconds_sum") == pytest.approx(2.7)
    assert value(samples, "voicegraph_voice_to_voice_seconds_bucket", le="0.9") == 3
    assert value(samples, "voicegraph_voice_to_voice_seconds_bucket", le="0.8") == 0
    assert value(samples, "voicegraph_turn_step_seconds_count", step="stt") == 3


def test_failed_services_reads_the_error_prefixes() -> None:
    assert failed_services(TurnRecord(1)) == set()
    assert failed_services(TurnRecord(1, error="tts: x")) == {"tts"}
    assert failed_services(TurnRecord(1, error="stt: a; tts: b")) == {"stt", "tts"}
    assert failed_services(TurnRecord(1, error="boom", llm_failed=True)) == {"llm"}
    assert failed_services(TurnRecord(1, error="something else")) == {"other"}


def test_call_outcome_names_each_way_a_call_ends() -> None:
    assert call_outcome(1000, "closed by peer") == "caller_hung_up"
    assert call_outcome(1000, "inactive for 300 s") == "inactive"
    assert call_outcome(1000, "call ended by bot") == "bot_hung_up"
    assert call_outcome(1001, "server going away") == "going_away"
    assert call_outcome(1002, "bad event") == "protocol_error"
    assert call_outcome(1007, "WebSocket protocol error: utf-8") == "protocol_error"
    assert call_outcome(1008, "replaced by a new connection") == "replaced"
    assert call_outcome(1009, "too big") == "message_too_big"
    assert call_outcome(1011, "internal error") == "internal_error"
    assert call_outcome(4000, "?") == "other"


def test_each_server_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()  # the same names twice: no clash
    TurnMetrics(first).observe(caller_turn(1))
    TurnMetrics(second)
    assert value(parse(first.exposition().decode()), "voicegraph_turns_total",
                 source="caller", end_of_turn="hangover") == 1  # fmt: skip
    assert value(parse(second.exposition().decode()), "voicegraph_turns_total",
                 source="caller", end_of_turn="hangover") == 0  # fmt: skip


async def test_with_a_key_metrics_need_it() -> None:
    with trio.fail_after(10):
        async with metered(steady_parrot(), api_key="sesame") as (_, port):
            assert (await http(port, "/metrics"))[0] == 401
            assert (await http(port, "/metrics?token=wrong"))[0] == 401
            assert (await http(port, "/metrics", "x-api-key: wrong\r\n"))[0] == 401
            samples = await scrape(port, "Authorization: Bearer sesame\r\n")
            assert value(samples, "voicegraph_calls_total") == 0
            assert ("voicegraph_calls_total", ()) in samples
            assert (await http(port, "/metrics?token=sesame"))[0] == 200


async def test_without_a_key_metrics_are_for_this_host_only() -> None:
    handler = Metrics().handler(api_key=None)
    outside = await handler(HttpRequest("GET", "/metrics", peer="192.0.2.7"))
    here = await handler(HttpRequest("GET", "/metrics", peer="127.0.0.1"))
    assert outside.status == 403
    assert here.status == 200
    keyed = Metrics().handler(api_key="sesame")
    assert (await keyed(HttpRequest("GET", "/metrics", peer="127.0.0.1"))).status == 401
    offered = (("authorization", "Bearer sesame"),)
    assert (await keyed(HttpRequest("GET", "/metrics", offered, peer="192.0.2.7"))).status == 200


FLEET_CALLS = 8


async def metrics_until(port: int, predicate: Any) -> Samples:
    """Scrape until ``predicate(samples)`` (a worker publishes once a second); the last."""
    samples: Samples = {}
    with trio.move_on_after(20):
        while True:
            try:
                samples = parse((await http(port, "/metrics"))[1])
            except (OSError, trio.BrokenResourceError, ValueError, IndexError):  # a dying worker
                samples = {}
            if predicate(samples):
                break
            await trio.sleep(0.2)
    return samples


@pytest.mark.skipif(not hasattr(__import__("socket"), "SO_REUSEPORT"), reason="Linux")
async def test_any_worker_answers_with_the_fleets_totals() -> None:
    with trio.fail_after(90):
        async with serve_process("--bot", "parrot", "--workers", "2") as (process, ready):
            port = port_of(ready)
            async with held_calls(ready["url"], FLEET_CALLS):
                with trio.fail_after(20):
                    while (fleet := await http_get(port, "/health/workers"))["calls"] < FLEET_CALLS:  # noqa: ASYNC110
                        await trio.sleep(0.1)
                per_worker = {w["index"]: w["calls"] for w in fleet["detail"]}
                assert all(count > 0 for count in per_worker.values()), per_worker

                def all_calls(s: Samples) -> bool:
                    return value(s, "voicegraph_calls_active") == FLEET_CALLS

                assert all_calls(await metrics_until(port, all_calls))
                for _ in range(6):  # whichever worker answers: the fleet's totals
                    samples = parse((await http(port, "/metrics"))[1])
                    assert value(samples, "voicegraph_calls_total") == FLEET_CALLS
                    assert value(samples, "voicegraph_calls_active") == FLEET_CALLS
                    assert value(samples, "voicegraph_media_packets_total") > 0
                os.kill(fleet["detail"][0]["pid"], signal.SIGKILL)

                def dead_forgotten(s: Samples) -> bool:
                    return value(s, "voicegraph_calls_active") == per_worker[1]

                samples = await metrics_until(port, dead_forgotten)
                assert dead_forgotten(samples), "the dead worker's live calls are not counted"
                assert value(samples, "voicegraph_calls_total") == FLEET_CALLS  # counts stay
            ended = await metrics_until(port, lambda s: value(s, "voicegraph_calls_active") == 0)
            assert (
                sum(v for (name, _), v in ended.items() if name == "voicegraph_calls_ended_total")
                == per_worker[1]
            )
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0


def test_serve_counts_the_turns_of_every_routed_voice_bot() -> None:
    from pipeline.bot.sharing import share_models
    from pipeline.cli.serve import add_metrics

    def voice_bot() -> VoiceBot:
        return VoiceBot(vad=FakeEnergyVad(), stt=FakeScriptedStt([]), tts=FakeToneTts())

    bots = share_models({"/sales": voice_bot(), "/support": voice_bot()})
    server = VoiceStreamServer(ServerConfig(port=0), bots=bots)
    bus = bots["/sales"].messages
    metrics = add_metrics(server, bus)
    owners = [bots["/sales"], bots["/support"].bot]  # the second borrows the first's models
    assert all(len(bot.turn_observers) == 1 for bot in owners)
    owners[1].turn_observers[0](caller_turn(1))
    bus.dropped = 3
    samples = parse(metrics.exposition().decode())
    assert value(samples, "voicegraph_turns_total", source="caller", end_of_turn="hangover") == 1
    assert value(samples, "voicegraph_events_dropped_total") == 3


def test_a_parrot_server_has_no_turn_series() -> None:
    from pipeline.bot.messages import ConversationBus
    from pipeline.cli.serve import add_metrics

    server = VoiceStreamServer(ServerConfig(port=0), steady_parrot())
    exposition = add_metrics(server, ConversationBus()).exposition().decode()
    names = {name for name, _ in parse(exposition)}
    assert "voicegraph_calls_total" in names
    assert not [name for name in names if "turn" in name or "voice_to_voice" in name]
