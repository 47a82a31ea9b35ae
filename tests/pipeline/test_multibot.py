"""Several bots on one server, one per WebSocket path; extra routes for other services."""

from __future__ import annotations

import argparse
import signal
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from pipeline import cli
from pipeline.bot.config import BotConfig, ConfigError, ConversationConfig
from pipeline.bot.parrot import ParrotBot
from pipeline.bot.sharing import BorrowingVoiceBot
from pipeline.bot.voicebot import VoiceBot
from pipeline.caller.emulator import converse, open_call
from pipeline.cli.serve import make_routed_bots, parse_routes
from pipeline.server.call import Call
from pipeline.server.http_front import HttpRequest, HttpResponse
from pipeline.server.voice_stream import ServerConfig, VoiceStreamServer
from stages.llm import EchoLlm

from .conftest import serve_process, speechlike, steady_parrot

STEADY_JITTER = "[jitter]\nmin_delay = 0.12\ninitial_delay = 0.12\nmax_delay = 0.12\n"


@dataclass
class TaggedParrot(ParrotBot):
    """A parrot that remembers which calls it answered."""

    handled: list[str] = field(default_factory=list)

    async def handle_call(self, call: Call) -> None:
        self.handled.append(call.call_id)
        await super().handle_call(call)


def tagged() -> TaggedParrot:
    return TaggedParrot(jitter=steady_parrot().jitter)


async def start(nursery, server: VoiceStreamServer) -> str:
    listening = await nursery.start(server.serve)
    return f"127.0.0.1:{listening.port}"


async def test_each_path_reaches_its_own_bot_and_unknown_paths_get_404(nursery):
    sales, support = tagged(), tagged()
    server = VoiceStreamServer(
        ServerConfig(port=0), bots={"/media/sales": sales, "/media/support/": support}
    )
    address = await start(nursery, server)
    with trio.fail_after(30):
        async with open_call(f"ws://{address}/media/sales", call_id="s1") as call:
            (report,) = await converse(call, [("x", speechlike(0.5))], pause=0.2)
        assert report.bot_messages == 1
        async with open_call(f"ws://{address}/media/support/?token=t", call_id="p1"):
            pass
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_call(f"ws://{address}/media/other", call_id="o1"):
                pass
    assert rejected.value.status_code == 404
    assert sales.handled == ["s1"]
    assert support.handled == ["p1"]
    assert server.front.counters["not_found"] == 1
    assert server.counters["connections"] == 2  # the refused one never reached a bot
    async with httpx.AsyncClient() as client:
        health = (await client.get(f"http://{address}/health")).json()
    assert health["bots"] == ["/media/sales", "/media/support"]


async def test_a_single_bot_answers_any_path(nursery):
    bot = tagged()
    address = await start(nursery, VoiceStreamServer(ServerConfig(port=0), bot))
    with trio.fail_after(10):
        async with open_call(f"ws://{address}/any/path/at/all", call_id="a1"):
            pass
    assert bot.handled == ["a1"]


async def test_extra_routes_sit_beside_the_bots(nursery):
    bot = tagged()
    server = VoiceStreamServer(ServerConfig(port=0), bot)
    seen: list[str] = []

    async def events(request) -> None:  # what an /events route looks like
        seen.append(request.path)
        ws = await request.accept()
        await ws.send_message("events here")
        await ws.aclose()

    async def stats(request: HttpRequest) -> HttpResponse:
        return HttpResponse.json(200, {"calls": len(server.calls)})

    server.add_websocket_route("/events", events)
    server.add_http_route("GET", "/stats", stats)
    address = await start(nursery, server)
    with trio.fail_after(10):
        async with open_websocket_url(f"ws://{address}/events?token=k") as ws:
            assert await ws.get_message() == "events here"
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://{address}/stats")).json() == {"calls": 0}
    assert seen == ["/events?token=k"]
    assert bot.handled == []  # the explicit route won over the catch-all bot


def test_a_server_needs_one_bot_or_bots_by_path():
    with pytest.raises(ValueError, match="either"):
        VoiceStreamServer(ServerConfig())
    with pytest.raises(ValueError, match="either"):
        VoiceStreamServer(ServerConfig(), ParrotBot(), bots={"/a": ParrotBot()})


# --- the command line: --route PATH=BOT.TOML ----------------------------------------------


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["media/sales=a.toml"], "expected PATH=BOT.TOML"),
        (["/media/sales"], "expected PATH=BOT.TOML"),
        (["/media/sales="], "expected PATH=BOT.TOML"),
        (["/a?x=1=a.toml"], "expected PATH=BOT.TOML"),
        (["/a=x.toml", "/a/=y.toml"], "given twice"),
    ],
)
def test_bad_routes_are_refused(specs, message):
    with pytest.raises(ConfigError, match=message):
        parse_routes(specs)


def bot_args(**overrides) -> argparse.Namespace:
    values = {"bot": "voice", "config": None, "llm": "echo", "llm_url": None, "llm_model": None}
    return argparse.Namespace(**{**values, "record": None, **overrides})


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_voice_bots_with_the_same_models_share_them(tmp_path):
    sales = write(tmp_path / "sales.toml", '[bot]\ngreeting = "Sales."\n')
    support = write(tmp_path / "support.toml", '[bot]\ngreeting = "Support."\n')
    other = write(tmp_path / "other.toml", "[tts]\nlength_scale = 1.2\n")
    routes = parse_routes([f"/s={sales}", f"/p={support}", f"/o={other}"])
    bots = make_routed_bots(bot_args(), routes)
    assert isinstance(bots["/s"], VoiceBot)
    assert isinstance(bots["/p"], BorrowingVoiceBot)
    assert bots["/p"].owner is bots["/s"]
    assert isinstance(bots["/o"], VoiceBot)  # other TTS settings: its own models


async def test_borrowing_voice_bot_runs_on_the_owners_models(nursery, tmp_path):
    owner = VoiceBot(
        BotConfig(conversation=ConversationConfig(greeting="Sales here.")), llm=EchoLlm()
    )
    guest = BorrowingVoiceBot(
        VoiceBot(BotConfig(conversation=ConversationConfig(greeting="Support here."))), owner
    )
    server = VoiceStreamServer(ServerConfig(port=0), bots={"/sales": owner, "/support": guest})
    address = await start(nursery, server)
    with trio.fail_after(60):
        async with open_call(f"ws://{address}/sales") as call:
            sales_greeting = await call.wait_for_greeting()
        async with open_call(f"ws://{address}/support") as call:
            support_greeting = await call.wait_for_greeting()
    assert guest.bot.services is owner.services  # one VAD, STT, TTS and LLM for both
    assert owner.greeting[0] == "Sales here."
    assert guest.bot.greeting[0] == "Support here."
    assert sales_greeting.mulaw == owner.greeting[1]
    assert support_greeting.mulaw == guest.bot.greeting[1]


async def test_serve_command_with_two_routes(tmp_path):
    sales = write(tmp_path / "sales.toml", STEADY_JITTER)
    support = write(tmp_path / "support.toml", STEADY_JITTER)
    routes_args = ["--route", f"/media/sales={sales}", "--route", f"/media/support={support}"]
    with trio.fail_after(60):
        async with serve_process("--bot", "parrot", *routes_args) as (process, ready):
            routes = ready["routes"]
            assert sorted(routes) == ["/media/sales", "/media/support"]
            assert ready["webhooks"].endswith("/callbacks")
            async with open_call(routes["/media/support"]) as call:
                (report,) = await converse(call, [("x", speechlike(0.5))], pause=0.2)
            assert report.bot_messages == 1
            with pytest.raises(ConnectionRejected):
                async with open_call(ready["url"] + "media/nobody"):
                    pass
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0


def test_config_and_route_do_not_mix(tmp_path, capsys):
    toml = write(tmp_path / "a.toml", "")
    code = cli.main(["serve", "--bot", "parrot", "--config", str(toml), "--route", f"/a={toml}"])
    assert code == 2
    assert "do not mix" in capsys.readouterr().err
