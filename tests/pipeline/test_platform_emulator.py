"""The platform emulator's REST API: the documented validation and both answer shapes."""

from __future__ import annotations

import json
import socket

import httpx
import pytest
import trio

from pipeline.platform.emulator import EmulatorConfig, PlatformEmulator
from pipeline.platform.rest import CallRejected, CallRequest, PlatformClient, WebhookDetails
from pipeline.server.http_front import HttpFront, HttpRequest, HttpResponse

from .conftest import speechlike

KEY = "emulator-key"
TURNS = (("hello", speechlike(0.5)),)


@pytest.fixture
async def emulator(nursery):
    emulator = PlatformEmulator(
        EmulatorConfig(api_key=KEY, caller_turns=TURNS, pause=0.2, greeting_timeout=0.2)
    )
    listening = await nursery.start(emulator.serve)
    return emulator, f"http://127.0.0.1:{listening.port}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def post(base: str, body: object, key: str | None = KEY) -> httpx.Response:
    headers = {"x-metro-api-key": key} if key else {}
    async with httpx.AsyncClient() as client:
        if isinstance(body, bytes):
            return await client.post(base + "/v1/voice-stream/call", content=body, headers=headers)
        return await client.post(base + "/v1/voice-stream/call", json=body, headers=headers)


VALID = {"mobile_number": "7712345678", "did": "8645012345", "ws_url": "ws://127.0.0.1:1/media"}


@pytest.mark.parametrize(
    ("body", "key", "status", "code"),
    [
        (VALID, None, 401, 1010),
        (VALID, "wrong-key", 401, 1022),
        (b"{not json", KEY, 400, 1001),
        ([1, 2, 3], KEY, 400, 1001),
        ({"did": "8645012345", "ws_url": "ws://h/"}, KEY, 400, 1001),
        ({**VALID, "mobile_number": "77XXXXXXXX"}, KEY, 400, 1030),
        ({**VALID, "mobile_number": 7712345678}, KEY, 400, 1030),
        ({**VALID, "did": "86450"}, KEY, 400, 1031),
        ({**VALID, "ws_url": "http://bot/media"}, KEY, 400, 1032),
        ({**VALID, "webhook_details": "{not json"}, KEY, 400, 1033),
        ({**VALID, "webhook_details": json.dumps({"request_type": "POST"})}, KEY, 400, 1033),
        ({**VALID, "webhook_details": {"url": "http://h/", "request_type": "X"}}, KEY, 400, 1033),
        ({**VALID, "webhook_details": 12}, KEY, 400, 1033),
    ],
)  # fmt: skip
async def test_refusals_use_the_failure_shape(emulator, body, key, status, code):
    platform, base = emulator
    answer = await post(base, body, key)
    assert answer.status_code == status
    document = answer.json()
    assert document["success"] is False
    assert document["error"]["code"] == code
    assert document["error"]["reason"]
    assert platform.calls == {}
    assert platform.counters["refused"] == 1


async def test_the_client_sees_the_wrong_key_as_a_typed_rejection(emulator):
    _, base = emulator
    async with PlatformClient("wrong-key", base_url=base) as client:
        with pytest.raises(CallRejected, match="Organisation does not exists") as refused:
            await client.place_call(CallRequest(**VALID))
    assert refused.value.code == 1022
    assert refused.value.http_status == 401


async def test_webhook_details_as_an_object_like_the_sample_is_accepted(emulator):
    platform, base = emulator
    answer = await post(base, {**VALID, "webhook_details": {"url": "http://127.0.0.1:1/cb"}})
    document = answer.json()
    assert answer.status_code == 200
    assert document["success"] is True
    assert document["response"]["status"] == "initiated"
    assert document["response"]["message"] == "Call setup in progress"
    call = platform.calls[document["response"]["callId"]]
    assert call.webhook is not None
    assert call.webhook.request_type == "POST"


async def test_health(emulator):
    _, base = emulator
    async with PlatformClient(KEY, base_url=base) as client:
        assert (await client.health())["status"] == "ok"


async def test_a_bot_that_cannot_be_reached_fails_the_call_and_says_so(emulator, nursery):
    platform, base = emulator
    hooks: list[dict] = []

    async def record(request: HttpRequest) -> HttpResponse:  # a minimal webhook sink
        hooks.append(request.json())
        return HttpResponse.json(200, {"ok": True})

    sink = HttpFront()
    sink.add_http_route("POST", "/cb", record)
    listening = await nursery.start(sink.serve, "127.0.0.1", 0)
    hook_url = f"http://127.0.0.1:{listening.port}/cb"
    request = CallRequest(
        "7712345678", "8645012345", f"ws://127.0.0.1:{free_port()}/", WebhookDetails(hook_url)
    )
    async with PlatformClient(KEY, base_url=base) as client:
        started = await client.place_call(request)
    with trio.fail_after(10):
        call = await platform.wait_call(started.call_id)
    assert call.status == "failed"
    assert call.error
    assert [hook["event"] for hook in hooks] == ["initiated", "failed"]
    assert all(hook["callId"] == started.call_id for hook in hooks)
    assert hooks[1]["reason"] == call.error
    assert call.webhooks == [("initiated", 200), ("failed", 200)]
