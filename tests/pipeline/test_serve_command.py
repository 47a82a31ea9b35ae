"""`voicegraph serve` as a user runs it: the voice bot, its calls and its /events socket."""

from __future__ import annotations

import json

import trio
from trio_websocket import open_websocket_url

from benchmarks.speech_corpus import speech
from pipeline.caller.emulator import converse, open_call

from .conftest import serve_process


async def test_serve_publishes_each_turn_on_the_events_socket():
    arguments = ["--llm", "echo", "--api-key", "k3y", "--log-level", "warning"]
    with trio.fail_after(120):
        async with serve_process(*arguments) as (process, ready):
            url = ready["url"]
            async with open_websocket_url(url + "events?token=k3y") as events:
                await events.send_message(json.dumps({"type": "subscribe", "channelIds": ["*"]}))
                assert json.loads(await events.get_message())["type"] == "subscribed"
                async with open_call(url, api_key="k3y", call_id="events-1") as call:
                    turn = ("q", speech("Please book a table for four people tonight."))
                    await converse(call, [turn], pause=0.3)
                messages = []
                while len(messages) < 3:
                    event = json.loads(await events.get_message())
                    if event.get("type") == "message.new":
                        messages.append(event["data"]["message"])
            process.send_signal(2)
            assert await process.wait() == 0
    greeting, caller, bot = messages  # the greeting is the bot's first message
    assert greeting["metadata"]["role"] == "bot"
    assert caller["channelId"] == bot["channelId"] == "events-1"
    assert caller["metadata"]["role"] == "caller"
    assert "table" in caller["content"].lower()
    assert bot["parentId"] == caller["id"]
    assert bot["content"].lower().startswith("you said")
