"""Safe by default, and a defined answer to every bad input (issue 18).

Secure defaults: ``serve`` will not listen beyond loopback without a key or record with
open webhooks unless told ``--insecure-open``; without a key ``/events`` (and so
``sendMessage``) and ``/health``'s details are for this host only; a request offering
several keys is refused and refusals are logged once per interval. Bad input: ``/events``
answers malformed requests with its ``error`` shape and stays up, the webhook endpoint
answers malformed bodies with 400, and broken WebSocket frames are closed with 1002/1007
(and counted) as RFC 6455 says. A remote peer is simulated by replacing the front's view
of the source address; everything else is real sockets on loopback.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import struct
from collections.abc import Callable
from functools import partial

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from pipeline.bot.events_socket import serve_events
from pipeline.bot.messages import ConversationBus
from pipeline.caller.emulator import open_call
from pipeline.cli import serve as serve_command
from pipeline.cli.main import build_parser
from pipeline.server import http_front
from pipeline.server.http_front import HttpRequest
from pipeline.server.webhooks import WebhookReceiver

from .conftest import start_server, steady_parrot

REMOTE = "203.0.113.7"  # TEST-NET-3: never this host


@pytest.fixture
def log_records(caplog, monkeypatch):
    """Every voicegraph log record, whatever an earlier test's ``configure_logging`` left
    behind (it stops propagation to the root logger that caplog listens on)."""
    root = logging.getLogger("voicegraph")
    monkeypatch.setattr(root, "propagate", True)
    monkeypatch.setattr(root, "handlers", [])
    caplog.set_level(logging.DEBUG)
    return caplog


async def until(condition: Callable[[], object]) -> None:
    """Wait (at most 5 s) for the server to get there: it reacts in its own tasks."""
    with trio.fail_after(5):
        while not condition():  # noqa: ASYNC110 - a server's plain state, not an event
            await trio.sleep(0.01)


def serve_args(*argv: str):
    return build_parser().parse_args(["serve", *argv])


@pytest.fixture
def from_remote(monkeypatch):
    """Every connection the front accepts appears to come from another host."""
    monkeypatch.setattr(http_front, "_peer_address", lambda stream: REMOTE)


async def events_server(nursery, api_key: str | None = None):
    server, url = await start_server(nursery, steady_parrot(), api_key=api_key)
    bus = ConversationBus()
    server.add_websocket_route("/events", partial(serve_events, bus=bus, api_key=api_key))
    return server, url


# --- secure defaults -------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "bot.example.com"])
def test_serve_will_not_listen_beyond_loopback_without_a_key(host, capsys, monkeypatch):
    def started(*args: object) -> None:
        raise AssertionError("serve went on to start")

    monkeypatch.setattr(serve_command, "make_bot", started)
    monkeypatch.setattr(serve_command, "run_reporting_startup_errors", started)
    assert serve_command.main(serve_args("--host", host)) == 2
    message = capsys.readouterr().err
    assert "without an API key" in message
    assert "--insecure-open" in message


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_and_a_key_and_the_explicit_flag_may_start(host):
    assert serve_command.check_exposure(serve_args("--host", host)) is None
    assert serve_command.check_exposure(serve_args("--host", "0.0.0.0", "--api-key", "k")) is None
    assert serve_command.check_exposure(serve_args("--host", "0.0.0.0", "--insecure-open")) is None


def test_running_open_on_purpose_is_announced(capsys):
    serve_command.warn_if_open(serve_args("--host", "0.0.0.0", "--insecure-open"))
    warning = capsys.readouterr().err
    assert "WARNING" in warning
    assert "need no key" in warning


def test_record_needs_a_webhook_secret(tmp_path):
    refusal = serve_command.check_exposure(serve_args("--record", str(tmp_path)))
    assert refusal is not None
    assert "--webhook-header" in refusal
    with_secret = serve_args(
        "--record", str(tmp_path), "--webhook-header", "x-hook", "--webhook-value", "v"
    )
    assert serve_command.check_exposure(with_secret) is None


async def test_without_a_key_events_are_for_this_host_only(nursery, from_remote):
    _, url = await events_server(nursery)
    async with open_websocket_url(url + "events") as ws:
        with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert closed.value.reason.code == 1008


async def test_without_a_key_events_answer_this_host(nursery):
    _, url = await events_server(nursery)
    async with open_websocket_url(url + "events") as ws:
        await ws.send_message(json.dumps({"type": "subscribe", "channelIds": ["*"]}))
        with trio.fail_after(5):
            assert json.loads(await ws.get_message())["type"] == "subscribed"


async def test_with_a_key_events_need_it_even_from_this_host(nursery):
    _, url = await events_server(nursery, api_key="k")
    async with open_websocket_url(url + "events") as ws:
        with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert closed.value.reason.code == 1008


async def get_health(url: str, headers: dict[str, str] | None = None) -> dict:
    address = url.split("//")[1].rstrip("/")
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://{address}/health", headers=headers)
    assert response.status_code == 200
    return response.json()


async def test_health_details_only_for_the_trusted(nursery, monkeypatch):
    _, open_url = await start_server(nursery)
    _, keyed_url = await start_server(nursery, api_key="k")
    assert await get_health(open_url) == {"status": "ok", "calls": 0, "bots": ["*"]}
    assert await get_health(keyed_url) == {"status": "ok"}
    assert (await get_health(keyed_url, {"x-api-key": "k"}))["calls"] == 0
    monkeypatch.setattr(http_front, "_peer_address", lambda stream: REMOTE)
    assert await get_health(open_url) == {"status": "ok"}


async def test_several_keys_in_one_request_are_refused(nursery):
    _, url = await start_server(nursery, api_key="k")
    tokens = "&".join(f"token=guess{index}" for index in range(50))
    for attempt in (f"{url}?{tokens}&token=k", f"{url}?token=k&token=k"):
        async with open_websocket_url(attempt) as ws:
            with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
        assert closed.value.reason.code == 1008


async def test_refused_keys_are_counted_and_logged_once_per_interval(nursery, log_records):
    server, url = await start_server(nursery, api_key="k")
    for _ in range(20):
        async with open_websocket_url(url + "?token=wrong") as ws:
            with trio.fail_after(5), pytest.raises(ConnectionClosed):
                await ws.get_message()
    assert server.counters["auth_refused"] == 20
    lines = [r for r in log_records.records if r.getMessage() == "authentication failed"]
    assert len(lines) == 1
    assert server.front.rate_limited_log.summary()["authentication failed"] == 19


# --- /events: every bad request gets the error shape, and the socket stays up -----------

BAD_EVENTS_REQUESTS = {
    "type is a list": json.dumps({"type": ["subscribe"]}),
    "type is an object": json.dumps({"type": {"a": 1}}),
    "deeply nested": "[" * 100_000 + "]" * 100_000,
    "nested object": '{"type":' * 50_000 + "1" + "}" * 50_000,
    "not JSON": "\x00\x01 hello",
    "invalid UTF-8 in a binary message": b"\xff\xfe{",
    "huge channel list": json.dumps(
        {"type": "subscribe", "channelIds": [f"c{i}" for i in range(50_000)]}
    ),
    "channel id with a newline": json.dumps({"type": "subscribe", "channelIds": ["a\nb"]}),
    "huge request id": json.dumps({"type": "sendMessage", "requestId": "r" * 10_000}),
    "huge metadata": json.dumps(
        {"type": "sendMessage", "channelId": "c", "content": "hi", "metadata": {"x": "y" * 9000}}
    ),
}


@pytest.mark.parametrize("bad", list(BAD_EVENTS_REQUESTS.values()), ids=list(BAD_EVENTS_REQUESTS))
async def test_events_answer_malformed_requests_and_stay_up(nursery, bad):
    _, url = await events_server(nursery)
    async with open_websocket_url(url + "events") as ws:
        await ws.send_message(bad)
        with trio.fail_after(5):
            reply = json.loads(await ws.get_message())
        assert reply["type"] == "error"
        assert reply["error"]["statusCode"] == 400
        assert len(reply["error"]["message"]) < 300
        await ws.send_message(json.dumps({"type": "subscribe", "channelIds": ["a"]}))
        with trio.fail_after(5):
            assert json.loads(await ws.get_message())["type"] == "subscribed"


# --- the webhook endpoint --------------------------------------------------------------

BAD_WEBHOOK_BODIES = {
    "30,000 nested [": b"[" * 30_000,
    "nested objects": b'{"a":' * 30_000 + b"1" + b"}" * 30_000,
    "callId an object": json.dumps({"callId": {"x": 1}, "event": "answered"}).encode(),
    "callId a list": json.dumps({"callId": ["a"], "event": "answered"}).encode(),
    "callId too long": json.dumps({"callId": "c" * 129, "event": "answered"}).encode(),
    "callId with a newline": json.dumps({"callId": "a\nb", "event": "answered"}).encode(),
    "event a list": json.dumps({"callId": "c", "event": ["answered"]}).encode(),
    "event too long": json.dumps({"callId": "c", "event": "e" * 1000}).encode(),
    "not UTF-8": b"\xff\xfe\x00",
}


@pytest.mark.parametrize("body", list(BAD_WEBHOOK_BODIES.values()), ids=list(BAD_WEBHOOK_BODIES))
async def test_webhook_answers_malformed_bodies_with_400(body):
    receiver = WebhookReceiver()
    request = HttpRequest("POST", "/callbacks", (("content-type", "application/json"),), body)
    response = await receiver.handle(request)
    assert response.status == 400
    document = json.loads(response.body)
    assert document["success"] is False
    assert isinstance(document["error"], str)
    assert receiver.counters["invalid"] == 1
    assert receiver.events == {}


async def test_webhook_over_the_wire_gets_400_not_500(nursery):
    server, url = await start_server(nursery)
    address = url.split("//")[1].rstrip("/")
    async with httpx.AsyncClient() as client:
        response = await client.post(f"http://{address}/callbacks", content=b"[" * 30_000)
    assert response.status_code == 400
    assert response.json()["success"] is False
    assert server.front.counters["handler_errors"] == 0


# --- WebSocket frame-level errors ----------------------------------------------------


def client_frame(opcode: int, payload: bytes = b"", *, rsv: int = 0, masked: bool = True) -> bytes:
    """One final WebSocket frame, made by hand (payloads under 126 bytes)."""
    assert len(payload) < 126
    head = bytes([0x80 | rsv << 4 | opcode, (0x80 if masked else 0) | len(payload)])
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))


async def raw_websocket(port: int) -> trio.SocketStream:
    """A WebSocket opened by hand: the handshake, then the 101 read off."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all(
        (
            "GET / HTTP/1.1\r\nHost: bot\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive_some(1)
    assert head.startswith(b"HTTP/1.1 101")
    return stream


async def read_close_frame(stream: trio.SocketStream) -> tuple[int, str]:
    """Skip data frames; return the server's close frame's code and reason."""
    received = b""
    with trio.fail_after(5):
        while True:
            while len(received) >= 2:
                length = received[1] & 0x7F
                assert length < 126  # the server sends nothing longer here
                if len(received) < 2 + length:
                    break
                opcode, payload = received[0] & 0x0F, received[2 : 2 + length]
                received = received[2 + length :]
                if opcode == 0x8:
                    return struct.unpack("!H", payload[:2])[0], payload[2:].decode()
            chunk = await stream.receive_some(4096)
            assert chunk, "closed without a close frame"
            received += chunk


FRAME_ERRORS = {
    "bad opcode": (client_frame(0x3, b"x"), 1002),
    "reserved bit": (client_frame(0x1, b"{}", rsv=0b100), 1002),
    "unmasked client frame": (client_frame(0x1, b"{}", masked=False), 1002),
    "invalid UTF-8 text": (client_frame(0x1, b"\xff\xfe"), 1007),
    "bad close code": (client_frame(0x8, struct.pack("!H", 999)), 1002),
    "fragmented ping": (bytes([0x09, 0x80]) + os.urandom(4), 1002),
}


@pytest.mark.parametrize(("frame", "code"), list(FRAME_ERRORS.values()), ids=list(FRAME_ERRORS))
@pytest.mark.parametrize("registered", [False, True], ids=["unregistered", "in a call"])
async def test_broken_frames_close_with_1002_or_1007_and_are_counted(
    nursery, frame, code, registered
):
    server, url = await start_server(nursery)
    port = int(url.rsplit(":", 1)[1].strip("/"))
    stream = await raw_websocket(port)
    if registered:
        connected = json.dumps({"event": "connected", "callId": "frames-1"}).encode()
        await stream.send_all(client_frame(0x1, connected))
        await until(lambda: server.calls)
    await stream.send_all(frame)
    closed_with, _ = await read_close_frame(stream)
    assert closed_with == code
    await until(lambda: server.counters["protocol_errors"] >= 1)
    assert server.front.counters["websocket_protocol_errors"] == 1
    if registered:
        await until(lambda: server.finished_calls)
        assert server.finished_calls[-1]["code"] == code
        assert "protocol error" in server.finished_calls[-1]["reason"]


async def test_a_peer_closing_normally_is_not_a_protocol_error(nursery):
    server, url = await start_server(nursery)
    async with open_call(url, call_id="clean-1"):
        pass
    await until(lambda: server.finished_calls)
    assert server.front.counters["websocket_protocol_errors"] == 0
    assert server.counters["protocol_errors"] == 0
    assert server.finished_calls[-1]["code"] == 1000
