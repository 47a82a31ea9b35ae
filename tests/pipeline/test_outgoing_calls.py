"""Outgoing calls end to end on loopback: dial → platform emulator → it dials the bot →
conversation → lifecycle webhooks reach the bot server and land in the call's record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import pytest
import soundfile
import trio

from benchmarks.speech_corpus import speech
from pipeline.bot.config import BotConfig, ConversationConfig
from pipeline.bot.voicebot import VoiceBot
from pipeline.platform.emulator import EmulatorConfig, PlatformEmulator
from pipeline.platform.rest import CallRequest, PlatformClient, WebhookDetails
from pipeline.server.voice_stream import ServerConfig, VoiceStreamServer
from stages.llm import EchoLlm

from .conftest import speechlike, steady_parrot

API_KEY = "platform-key-123"
HOOK_HEADER, HOOK_VALUE = "x-hook-key", "hook-secret-456"
LIFECYCLE = ["initiated", "answered", "completed"]


def read_transcript(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "transcript.jsonl").read_text().splitlines()]


async def start_bot_server(nursery, bot, record_dir) -> tuple[VoiceStreamServer, int]:
    config = ServerConfig(
        port=0, webhook_header=HOOK_HEADER, webhook_value=HOOK_VALUE, record_dir=record_dir
    )
    server = VoiceStreamServer(config, bot)
    listening = await nursery.start(server.serve)
    return server, listening.port


async def start_emulator(
    nursery, turns, greeting_timeout: float = 0.3
) -> tuple[PlatformEmulator, str]:
    config = EmulatorConfig(
        api_key=API_KEY, caller_turns=turns, pause=0.3, greeting_timeout=greeting_timeout
    )
    emulator = PlatformEmulator(config)
    listening = await nursery.start(emulator.serve)
    return emulator, f"http://127.0.0.1:{listening.port}"


def call_request(bot_port: int, hook_value: str = HOOK_VALUE) -> CallRequest:
    return CallRequest(
        mobile_number="7712345678",
        did="8645012345",
        ws_url=f"ws://127.0.0.1:{bot_port}/media",
        webhook=WebhookDetails(
            f"http://127.0.0.1:{bot_port}/callbacks", "POST", HOOK_HEADER, hook_value
        ),
    )


async def finished(server: VoiceStreamServer, emulator: PlatformEmulator, call_id: str):
    """The emulator's record of the call once it and its last webhook are done."""
    with trio.fail_after(60):
        call = await emulator.wait_call(call_id)
        await server.webhooks.wait_for(call_id, "completed")
    return call


async def test_python_api_to_parrot_with_webhooks_in_the_record(nursery, tmp_path):
    server, bot_port = await start_bot_server(nursery, steady_parrot(), tmp_path)
    turns = (("one", speechlike(0.6, seed=1)), ("two", speechlike(0.5, pitch=200, seed=2)))
    emulator, base = await start_emulator(nursery, turns)
    async with PlatformClient(API_KEY, base_url=base) as client:
        started = await client.place_call(call_request(bot_port))
    assert started.status == "initiated"
    call = await finished(server, emulator, started.call_id)

    assert call.status == "completed"
    assert call.hangup_by == "caller"
    assert [report.bot_messages for report in call.reports] == [1, 1]  # the parrot answered
    assert call.webhooks == [(event, 200) for event in LIFECYCLE]
    # the bot server saw the same call: its WebSocket registration used the REST callId
    assert server.finished_calls[-1]["callId"] == started.call_id
    events = server.webhooks.events_for(started.call_id)
    assert [event.event for event in events] == LIFECYCLE
    completed = events[-1].data
    assert completed["answeredAt"] <= completed["endedAt"]
    assert completed["durationSeconds"] > 1.0
    assert completed["closeCode"] == 1000
    lines = read_transcript(tmp_path / started.call_id)
    assert [(line["role"], line["event"]) for line in lines] == [
        ("platform", event) for event in LIFECYCLE
    ]
    assert all(line["data"]["callId"] == started.call_id for line in lines)


async def test_cli_dial_as_a_subprocess(nursery, tmp_path):
    server, bot_port = await start_bot_server(nursery, steady_parrot(), tmp_path)
    emulator, base = await start_emulator(nursery, (("hi", speechlike(0.5)),))
    command = [
        sys.executable, "-m", "pipeline", "dial", "--json",
        "--mobile", "7712345678", "--did", "8645012345",
        "--ws-url", f"ws://127.0.0.1:{bot_port}/media",
        "--webhook-url", f"http://127.0.0.1:{bot_port}/callbacks",
        "--webhook-header", HOOK_HEADER, "--webhook-value", HOOK_VALUE,
        "--base-url", base,
    ]  # fmt: skip
    env = {**os.environ, "VOICEGRAPH_API_KEY": API_KEY}
    with trio.fail_after(60):
        done = await trio.run_process(command, capture_stdout=True, capture_stderr=True, env=env)
    assert done.returncode == 0, done.stderr.decode()
    assert API_KEY.encode() not in done.stdout + done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["success"] is True
    call = await finished(server, emulator, outcome["callId"])
    assert call.status == "completed"
    assert call.reports[0].bot_messages == 1
    lines = read_transcript(tmp_path / outcome["callId"])
    assert [line["event"] for line in lines] == LIFECYCLE

    # the same command with a wrong key: refused, exit 1, the platform's reason shown
    env["VOICEGRAPH_API_KEY"] = "not-the-key"
    with trio.fail_after(60):
        refused = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, env=env, check=False
        )
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["error"]["code"] == 1022
    assert b"Organisation does not exists" in refused.stderr


async def test_a_wrong_webhook_header_is_refused_and_counted(nursery, tmp_path):
    server, bot_port = await start_bot_server(nursery, steady_parrot(), tmp_path)
    emulator, base = await start_emulator(nursery, (("hi", speechlike(0.4)),))
    async with PlatformClient(API_KEY, base_url=base) as client:
        started = await client.place_call(call_request(bot_port, hook_value="wrong"))
    with trio.fail_after(60):
        call = await emulator.wait_call(started.call_id)
    assert call.status == "completed"  # webhooks failing never ends a call
    assert call.webhooks == [(event, 403) for event in LIFECYCLE]
    assert server.webhooks.counters["forbidden"] == 3
    assert server.webhooks.events_for(started.call_id) == []
    assert not (tmp_path / started.call_id / "transcript.jsonl").exists()

    hook_url = f"http://127.0.0.1:{bot_port}/callbacks"
    event = {"callId": "c1", "event": "answered", "extra": {"unknown": "fields"}}
    async with httpx.AsyncClient() as client:
        missing = await client.post(hook_url, json=event)
        accepted = await client.post(hook_url, json=event, headers={HOOK_HEADER: HOOK_VALUE})
        no_call_id = await client.post(
            hook_url, json={"event": "x"}, headers={HOOK_HEADER: HOOK_VALUE}
        )
    assert missing.status_code == 401
    assert server.webhooks.counters["unauthorized"] == 1
    assert accepted.status_code == 200
    assert server.webhooks.events_for("c1")[0].data["extra"] == {"unknown": "fields"}
    assert no_call_id.status_code == 400


async def test_voice_bot_conversation_and_webhooks_share_the_record(nursery, tmp_path):
    config = BotConfig(conversation=ConversationConfig(greeting="Hello, bakery here."))
    bot = VoiceBot(config, llm=EchoLlm(), record_dir=tmp_path)
    server, bot_port = await start_bot_server(nursery, bot, tmp_path)
    sentence = "Do you have fresh bread today?"
    # the voice bot greets first: the caller waits for it
    emulator, base = await start_emulator(
        nursery, (("bread", speech(sentence)),), greeting_timeout=10
    )
    async with PlatformClient(API_KEY, base_url=base) as client:
        started = await client.place_call(call_request(bot_port))
    call = await finished(server, emulator, started.call_id)
    assert call.reports[0].bot_messages >= 1
    lines = read_transcript(tmp_path / started.call_id)
    roles = [line["role"] for line in lines]
    assert roles.count("caller") == 1
    assert roles.count("bot") == 2  # greeting and answer
    assert [line["event"] for line in lines if line["role"] == "platform"] == LIFECYCLE
    assert roles.index("platform") < roles.index("bot")  # initiated/answered came first
    assert roles[-1] == "platform"  # completed, after the call ended
    (caller,) = [line for line in lines if line["role"] == "caller"]
    assert "bread" in caller["text"].lower()


async def test_emulator_command_with_caller_audio(nursery, tmp_path):
    server, bot_port = await start_bot_server(nursery, steady_parrot(), tmp_path)
    audio = tmp_path / "caller.wav"
    soundfile.write(audio, speechlike(0.6), 8000, subtype="PCM_16")
    command = [
        sys.executable, "-m", "pipeline", "emulator", "--port", "0", "--api-key", API_KEY,
        "--caller-audio", str(audio), "--pause", "0.3", "--greeting-timeout", "0.3",
    ]  # fmt: skip
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    buffered = b""

    async def next_line() -> dict:
        nonlocal buffered
        while b"\n" not in buffered:
            chunk = await process.stdout.receive_some(4096)
            if not chunk:
                raise EOFError("the emulator exited")
            buffered += chunk
        line, buffered = buffered.split(b"\n", 1)
        return json.loads(line)

    try:
        with trio.fail_after(60):
            listening = await next_line()
            assert listening["event"] == "listening"
            async with PlatformClient(API_KEY, base_url=listening["url"]) as client:
                assert (await client.health())["status"] == "ok"
                started = await client.place_call(call_request(bot_port))
            lines = [await next_line() for _ in range(4)]
            assert [line.get("status") for line in lines[:3]] == LIFECYCLE
            summary = lines[3]
            assert summary["event"] == "call_summary"
            assert summary["callId"] == started.call_id
            assert summary["turns"][0]["source"] == str(audio)
            assert summary["turns"][0]["bot_messages"] == 1
            assert [hook["result"] for hook in summary["webhooks"]] == [200, 200, 200]
            assert [e.event for e in server.webhooks.events_for(started.call_id)] == LIFECYCLE
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()


@pytest.mark.parametrize("method", ["GET", "PUT"])
async def test_webhooks_by_other_request_types(nursery, tmp_path, method):
    server, bot_port = await start_bot_server(nursery, steady_parrot(), tmp_path)
    emulator, base = await start_emulator(nursery, (("hi", speechlike(0.3)),))
    request = call_request(bot_port)
    hook = WebhookDetails(request.webhook.url, method, HOOK_HEADER, HOOK_VALUE)
    request = CallRequest(request.mobile_number, request.did, request.ws_url, hook)
    async with PlatformClient(API_KEY, base_url=base) as client:
        started = await client.place_call(request)
    await finished(server, emulator, started.call_id)
    events = server.webhooks.events_for(started.call_id)
    assert [event.event for event in events] == LIFECYCLE
