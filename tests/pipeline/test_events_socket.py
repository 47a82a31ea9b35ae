"""The ``/events`` WebSocket: the calls' authentication, channel filtering, the operator's
``sendMessage`` and its error shapes, dropped-event notices. Over in-memory streams;
what a voice bot really says is tested in test_messages."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    wrap_client_stream,
    wrap_server_stream,
)

from pipeline.bot.events_socket import serve_events
from pipeline.bot.messages import (
    CallState,
    CallStateChange,
    ChatMessage,
    ConversationBus,
    MessageNew,
)

from .test_messages import ScriptedSpeaker


async def open_events(
    nursery: trio.Nursery,
    bus: ConversationBus,
    *,
    api_key: str | None = None,
    resource: str = "/events",
    token: str | None = None,
) -> WebSocketConnection:
    client_end, server_end = trio.testing.memory_stream_pair()

    async def serve() -> None:
        async with trio.open_nursery() as inner:
            request = await wrap_server_stream(inner, server_end)
            await serve_events(request, bus, api_key)
            inner.cancel_scope.cancel()

    nursery.start_soon(serve)
    headers = [(b"Authorization", f"Bearer {token}".encode())] if token else None
    return await wrap_client_stream(
        nursery, client_end, "localhost", resource, extra_headers=headers
    )


async def receive(ws: WebSocketConnection) -> dict:
    with trio.fail_after(5):
        return json.loads(await ws.get_message())


async def request(ws: WebSocketConnection, message: dict) -> dict:
    await ws.send_message(json.dumps(message))
    return await receive(ws)


def state(channel: str, value: CallState = CallState.CONNECTED) -> CallStateChange:
    return CallStateChange(channel, value)


async def test_the_calls_key_is_required(nursery, autojump_clock):
    bus = ConversationBus()
    for token in (None, "wrong"):
        ws = await open_events(nursery, bus, api_key="s3cret", token=token)
        with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        assert closed.value.reason.code == 1008
    for ws in (
        await open_events(nursery, bus, api_key="s3cret", token="s3cret"),
        await open_events(nursery, bus, api_key="s3cret", resource="/events?token=s3cret"),
    ):
        reply = await request(ws, {"type": "subscribe", "channelIds": ["a"]})
        assert reply == {"type": "subscribed", "channelIds": ["a"]}
        await ws.aclose()
    await trio.sleep(0.1)
    assert bus.statistics()["subscribers"] == 0  # a client leaving unsubscribes it


async def test_a_client_gets_only_the_channels_it_subscribed_to(nursery, autojump_clock):
    bus = ConversationBus()
    ws = await open_events(nursery, bus)
    await request(ws, {"type": "subscribe", "channelIds": ["a"]})
    said = ChatMessage("m1", "a", "Hello.", {"role": "caller", "turn": 1})
    bus.publish(state("b"))
    bus.publish(state("a"))
    bus.publish(MessageNew(ChatMessage("m0", "b", "Not for you.", {"role": "caller"})))
    bus.publish(MessageNew(said))
    first, second = await receive(ws), await receive(ws)
    assert first["type"] == "call.state"
    assert first["data"]["channelId"] == "a"
    assert first["data"]["state"] == "connected"
    assert second == {"type": "message.new", "data": {"message": said.as_json()}}
    assert second["data"]["message"]["parentId"] is None

    reply = await request(ws, {"type": "subscribe", "channelIds": ["*"]})
    assert reply == {"type": "subscribed", "channelIds": ["*"]}
    bus.publish(state("b", CallState.DISCONNECTED))
    assert (await receive(ws))["data"]["channelId"] == "b"
    reply = await request(ws, {"type": "unsubscribe", "channelIds": ["*"]})
    assert reply == {"type": "subscribed", "channelIds": []}
    bus.publish(state("a"))
    with trio.move_on_after(0.2):
        assert await ws.get_message() is None  # nothing more arrives


async def test_send_message_over_the_socket(nursery, autojump_clock):
    bus = ConversationBus()
    speaker = ScriptedSpeaker()
    ws = await open_events(nursery, bus)
    await request(ws, {"type": "subscribe", "channelIds": ["call-1"]})
    with bus.open_channel("call-1", speaker, origin=trio.current_time()):
        send = {
            "type": "sendMessage",
            "requestId": "r1",
            "channelId": "call-1",
            "content": "We close at six.",
            "metadata": {"agent": "kim"},
        }
        await ws.send_message(json.dumps(send))
        replies = {reply["type"]: reply for reply in [await receive(ws), await receive(ws)]}
    event, result = replies["message.new"], replies["sendMessage.result"]
    assert event["type"] == "message.new"
    assert result["type"] == "sendMessage.result"
    assert result["requestId"] == "r1"
    assert result["status"] == {"error": False, "errorData": None}
    message = result["response"]["message"]
    assert message == event["data"]["message"]
    assert message["content"] == "We close at six."
    assert message["channelId"] == "call-1"
    assert message["metadata"]["agent"] == "kim"
    assert message["metadata"]["role"] == "bot"
    assert speaker.said == [("We close at six.", {"agent": "kim"})]


@pytest.mark.parametrize(
    ("send", "status_code"),
    [
        ({"channelId": "nobody", "content": "Hi."}, 404),
        ({"channelId": "ended", "content": "Hi."}, 410),
        ({"channelId": "ended", "content": ""}, 400),
        ({"content": "Hi."}, 400),
        ({"channelId": "ended", "content": "Hi.", "metadata": "x"}, 400),
    ],
)
async def test_send_message_errors_have_the_chat_shape(nursery, send, status_code, autojump_clock):
    bus = ConversationBus()
    with bus.open_channel("ended", ScriptedSpeaker(), origin=0.0):
        pass
    ws = await open_events(nursery, bus)
    result = await request(ws, {"type": "sendMessage", "requestId": 7, **send})
    assert result["type"] == "sendMessage.result"
    assert result["requestId"] == 7
    assert result["status"]["error"] is True
    assert result["status"]["errorData"]["statusCode"] == status_code
    assert isinstance(result["status"]["errorData"]["message"], str)
    assert result["response"] == {"message": None}


async def test_bad_requests_are_answered_and_the_socket_stays_open(nursery, autojump_clock):
    ws = await open_events(nursery, ConversationBus())
    for bad in ("{not json", "[1, 2]", json.dumps({"type": "dance"})):
        await ws.send_message(bad)
        reply = await receive(ws)
        assert reply["type"] == "error"
        assert reply["error"]["statusCode"] == 400
    reply = await request(ws, {"type": "subscribe", "channelIds": "a"})
    assert reply["type"] == "error"
    assert (await request(ws, {"type": "subscribe", "channelIds": ["a"]}))["type"] == "subscribed"


async def test_a_slow_client_is_told_how_many_events_it_lost(nursery, autojump_clock):
    bus = ConversationBus(subscriber_capacity=2)
    ws = await open_events(nursery, bus)
    await request(ws, {"type": "subscribe", "channelIds": ["*"]})
    for index in range(10):  # faster than the socket task can take them
        bus.publish(CallStateChange("a", CallState.CONNECTED, f"e{index}"))
    notice = await receive(ws)
    assert notice["type"] == "events.dropped"
    lost = notice["data"]["count"]
    assert notice["data"]["total"] == lost
    assert lost in (7, 8)  # a buffer of 2, plus the one the socket task was waiting for
    kept = [(await receive(ws))["data"]["message"] for _ in range(10 - lost)]
    assert kept == [f"e{index}" for index in range(10 - lost)]  # the oldest are kept
