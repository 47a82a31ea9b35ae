"""The REST client: validation before sending, both answer shapes, HTTP and transport errors."""

from __future__ import annotations

import json
import logging
import socket
from functools import partial

import httpx
import pytest
import trio

from pipeline import cli
from pipeline.platform.rest import (
    CallRejected,
    CallRequest,
    CallStarted,
    InvalidCallRequest,
    PlatformClient,
    PlatformError,
    PlatformTimeout,
    PlatformUnreachable,
    UnexpectedResponse,
    WebhookDetails,
    place_call,
)

KEY = "sk-test-0123456789abcdef"
GOOD = CallRequest(
    "7712345678",
    "8645012345",
    "wss://bot.example.com/media",
    WebhookDetails("https://hooks.example.com/calls", "POST", "x-hook-key", "hook-secret"),
)
SUCCESS = {
    "success": True,
    "response": {
        "message": "Call setup in progress",
        "status": "initiated",
        "callId": "a47f91c2e8d44b77b65f13f9",
    },
}
FAILURE = {"success": False, "error": {"code": 1022, "reason": "Organisation does not exists"}}


class Recorder:
    """A fake platform: records each request, answers with a canned response."""

    def __init__(self, status: int = 200, body: object = SUCCESS) -> None:
        self.status = status
        self.body = body
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if isinstance(self.body, bytes):
            return httpx.Response(self.status, content=self.body)
        return httpx.Response(self.status, json=self.body)


def client_for(handler, **options) -> PlatformClient:
    return PlatformClient(
        KEY,
        base_url="https://platform.test",
        transport=httpx.MockTransport(handler),
        **options,
    )


# --- validation: every failure is caught before anything is sent --------------------------


def replace(**changes) -> CallRequest:
    fields = {
        "mobile_number": GOOD.mobile_number,
        "did": GOOD.did,
        "ws_url": GOOD.ws_url,
        "webhook": GOOD.webhook,
    }
    return CallRequest(**{**fields, **changes})


def webhook(**changes) -> WebhookDetails:
    fields = {"url": "https://hooks.example.com/x", "request_type": "POST"}
    return WebhookDetails(**{**fields, **changes})


INVALID = [
    (replace(mobile_number="771234567"), "mobile_number", "exactly 10 digits"),
    (replace(mobile_number="77123456789"), "mobile_number", "exactly 10 digits"),
    (replace(mobile_number="77XXXXXXXX"), "mobile_number", "2 digits"),
    (replace(mobile_number="+917712345678"), "mobile_number", "exactly 10 digits"),
    (replace(mobile_number=7712345678), "mobile_number", "must be a string"),
    (replace(did="864501234"), "did", "exactly 10 digits"),
    (replace(did=""), "did", "exactly 10 digits"),
    (replace(ws_url="https://bot.example.com/media"), "ws_url", "ws:// or wss://"),
    (replace(ws_url="bot.example.com/media"), "ws_url", "ws:// or wss://"),
    (replace(ws_url="wss:///media"), "ws_url", "no host"),
    (replace(ws_url="wss://bot.example.com:99999/"), "ws_url", "not a valid URL"),
    (replace(ws_url="wss://bot example.com/"), "ws_url", "spaces"),
    (replace(ws_url=""), "ws_url", "ws:// or wss://"),
    (replace(webhook=webhook(url="ws://hooks.example.com")), "webhook_details.url", "http"),
    (replace(webhook=webhook(url="hooks")), "webhook_details.url", "http"),
    (replace(webhook=webhook(request_type="PATCH")), "request_type", "one of"),
    (replace(webhook=webhook(api_key="x-key")), "api_key", "go together"),
    (replace(webhook=webhook(api_value="secret")), "api_key", "go together"),
    (replace(webhook=webhook(api_key="x key", api_value="v")), "api_key", "header name"),
    (replace(webhook=webhook(api_key="x-key", api_value="a\r\nb")), "api_value", "one line"),
]


@pytest.mark.parametrize(("request_", "field", "message"), INVALID)
async def test_invalid_requests_are_refused_before_sending(request_, field, message):
    platform = Recorder()
    async with client_for(platform) as client:
        with pytest.raises(InvalidCallRequest, match=message) as refused:
            await client.place_call(request_)
    assert field in refused.value.field
    assert platform.requests == []


def test_messages_never_echo_the_phone_number():
    with pytest.raises(InvalidCallRequest) as refused:
        replace(mobile_number="98765432101").validate()
    assert "98765432101" not in str(refused.value)


def test_client_needs_a_key_and_a_usable_base_url():
    with pytest.raises(InvalidCallRequest, match="api_key"):
        PlatformClient("")
    with pytest.raises(InvalidCallRequest, match="base_url"):
        PlatformClient(KEY, base_url="ftp://platform")


# --- the request on the wire and both answer shapes -------------------------------------------


async def test_sends_the_documented_request_and_parses_success():
    platform = Recorder()
    async with client_for(platform) as client:
        started = await client.place_call(GOOD)
    assert started == CallStarted("a47f91c2e8d44b77b65f13f9", "initiated", "Call setup in progress")
    (sent,) = platform.requests
    assert sent.method == "POST"
    assert sent.url == "https://platform.test/v1/voice-stream/call"
    assert sent.headers["x-metro-api-key"] == KEY
    assert sent.headers["content-type"] == "application/json"
    body = json.loads(sent.content)
    assert body["mobile_number"] == "7712345678"
    assert body["did"] == "8645012345"
    assert body["ws_url"] == "wss://bot.example.com/media"
    # "Must be a stringified JSON", as the document asks
    assert isinstance(body["webhook_details"], str)
    assert json.loads(body["webhook_details"]) == {
        "url": "https://hooks.example.com/calls",
        "request_type": "POST",
        "api_key": "x-hook-key",
        "api_value": "hook-secret",
    }


async def test_no_webhook_means_no_webhook_details():
    platform = Recorder()
    async with client_for(platform) as client:
        await client.place_call(replace(webhook=None))
    assert "webhook_details" not in json.loads(platform.requests[0].content)


@pytest.mark.parametrize(
    ("status", "kind"), [(200, CallRejected), (400, CallRejected), (500, PlatformError)]
)
async def test_failure_shape_becomes_a_typed_error_with_code_and_reason(status, kind):
    async with client_for(Recorder(status, FAILURE)) as client:
        with pytest.raises(kind) as failed:
            await client.place_call(GOOD)
    assert failed.value.code == 1022
    assert failed.value.http_status == status
    assert "Organisation does not exists" in str(failed.value)


async def test_http_400_and_500_without_the_failure_shape():
    async with client_for(Recorder(400, b"bad things")) as client:
        with pytest.raises(CallRejected, match="HTTP 400, invalid parameters"):
            await client.place_call(GOOD)
    async with client_for(Recorder(500, b"<html>oops</html>")) as client:
        with pytest.raises(PlatformError, match="HTTP 500") as failed:
            await client.place_call(GOOD)
    assert failed.value.code is None
    async with client_for(Recorder(401, {"message": "unauthorized"})) as client:
        with pytest.raises(CallRejected, match="HTTP 401"):
            await client.place_call(GOOD)


@pytest.mark.parametrize(
    "body",
    [b"not json", {"success": True}, {"success": True, "response": {"status": "x"}}, [1, 2]],
)
async def test_answers_in_neither_shape_are_unexpected(body):
    async with client_for(Recorder(200, body)) as client:
        with pytest.raises(UnexpectedResponse):
            await client.place_call(GOOD)


# --- a platform that does not answer, or is not there ------------------------------------------


async def test_a_platform_that_never_answers_times_out(autojump_clock):
    async def never(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError

    start = trio.current_time()
    async with client_for(never, timeout=7.5) as client:
        with pytest.raises(PlatformTimeout, match=r"within 7\.5 s"):
            await client.place_call(GOOD)
    assert trio.current_time() - start == pytest.approx(7.5)


async def test_a_server_that_accepts_and_stays_silent_times_out(nursery):
    connections: list[trio.SocketStream] = []

    async def silent(stream: trio.SocketStream) -> None:
        connections.append(stream)
        await trio.sleep_forever()

    (listener,) = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
    port = listener.socket.getsockname()[1]
    with trio.fail_after(10):
        with pytest.raises(PlatformTimeout):
            await place_call(
                GOOD, api_key=KEY, base_url=f"http://127.0.0.1:{port}", request_timeout=0.3
            )
    assert len(connections) == 1


async def test_nothing_listening_is_unreachable():
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with trio.fail_after(10), pytest.raises(PlatformUnreachable, match="cannot reach"):
        await place_call(GOOD, api_key=KEY, base_url=f"http://127.0.0.1:{port}")


# --- the key is never shown --------------------------------------------------------------------


async def test_the_key_is_never_in_reprs_messages_or_logs(caplog):
    caplog.set_level(logging.DEBUG)
    client = client_for(Recorder(400, FAILURE))
    assert KEY not in repr(client)
    assert "hook-secret" not in repr(GOOD)
    async with client:
        with pytest.raises(CallRejected) as failed:
            await client.place_call(GOOD)
    assert KEY not in str(failed.value)
    assert all(KEY not in record.getMessage() for record in caplog.records)


# --- voicegraph dial, in process (the end-to-end tests run it as a subprocess) -------------------


def dial(*arguments: str) -> int:
    return cli.main(["dial", *arguments])


def test_dial_refuses_a_bad_request_with_exit_2(capsys, monkeypatch):
    monkeypatch.setenv("VOICEGRAPH_API_KEY", KEY)
    code = dial("--mobile", "123", "--did", "8645012345", "--ws-url", "ws://127.0.0.1:1/", "--json")
    assert code == 2
    out, err = capsys.readouterr()
    assert json.loads(out)["error"]["kind"] == "InvalidCallRequest"
    assert "mobile_number" in err


def test_dial_without_a_key_says_where_to_put_it(capsys, monkeypatch):
    monkeypatch.delenv("VOICEGRAPH_API_KEY", raising=False)
    assert dial("--mobile", "7712345678", "--did", "8645012345", "--ws-url", "ws://h/") == 2
    assert "VOICEGRAPH_API_KEY" in capsys.readouterr().err


def test_dial_webhook_header_needs_a_webhook_url(capsys, monkeypatch):
    monkeypatch.setenv("VOICEGRAPH_API_KEY", KEY)
    code = dial(
        "--mobile", "7712345678", "--did", "8645012345", "--ws-url", "ws://h/",
        "--webhook-header", "x-a", "--webhook-value", "b",
    )  # fmt: skip
    assert code == 2
    assert "--webhook-url" in capsys.readouterr().err


def test_dial_unreachable_platform_exits_1_without_showing_the_key(capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = dial(
        "--mobile", "7712345678", "--did", "8645012345", "--ws-url", "ws://h/",
        "--api-key", KEY, "--base-url", f"http://127.0.0.1:{port}", "--timeout", "5",
    )  # fmt: skip
    assert code == 1
    out, err = capsys.readouterr()
    assert "cannot reach" in err
    assert KEY not in out + err
