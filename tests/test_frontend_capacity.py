"""The front-end capacity benchmark's pieces: the fake model servers, talking to the bot's
real remote clients, and how a ramp's rows become the figure (no timing is asserted)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from benchmarks.canned_model_servers import (
    REPLIES,
    CannedAnswers,
    FakeCannedModelServers,
    canned_speech,
    serve,
)
from benchmarks.frontend_capacity import BOT_TOML, TURNS, best, redis_bus
from pipeline.bot.config import load_config
from pipeline.bot.services import configured_turn_model
from pipeline.runtime.dialogue import Message
from stages.llm_openai import OpenAiCompatibleLlm
from stages.stt_remote import RemoteStt
from stages.tts_remote import RemoteTts

INSTANT = CannedAnswers(stt_delay_s=0.0, llm_first_token_s=0.0, llm_token_s=0.0, tts_delay_s=0.0)


@pytest.fixture
def fake_url() -> Iterator[str]:
    """The fakes in a thread of this process, answering at once."""
    server = serve(INSTANT)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_the_bots_remote_clients_accept_the_fakes_answers(fake_url: str) -> None:
    stt, tts, llm = RemoteStt(fake_url), RemoteTts(fake_url), OpenAiCompatibleLlm(fake_url)
    speech = canned_speech(8000)  # loud enough to be sent (quiet audio is not)
    async with stt.serving(), tts.serving(), llm.serving():
        transcript = await stt.transcribe(speech, 8000)
        assert transcript.text == INSTANT.transcript
        assert not transcript.dropped, "confident segment: not taken for a hallucination"
        audio = await tts.synthesize("Hello there.")
        assert len(audio) == pytest.approx(8000 * 1.2, abs=200), "1.2 s of μ-law at 8 kHz"
        first = [Message("system", "Be brief."), Message("user", "Hi?")]
        second = [*first, Message("assistant", REPLIES[0]), Message("user", "And?")]
        assert "".join([piece async for piece in llm.stream(first)]) == REPLIES[0]
        assert "".join([piece async for piece in llm.stream(second)]) == REPLIES[1]


def test_the_canned_speech_is_a_loud_short_sound() -> None:
    sound = canned_speech(22050)
    assert sound.dtype == np.int16
    assert len(sound) == int(22050 * 1.2)
    assert 5000 < np.abs(sound).max() < 32767
    assert abs(int(sound[0])) < 50, "faded in"
    assert abs(int(sound[-1])) < 50, "faded out"


def test_the_fakes_process_reports_its_url_stays_on_its_cores_and_counts() -> None:
    core = min(os.sched_getaffinity(0))
    with FakeCannedModelServers(INSTANT, cpus={core}) as fakes:
        assert fakes.url.startswith("http://127.0.0.1:")
        assert fakes.pid is not None
        assert os.sched_getaffinity(fakes.pid) == {core}
        assert fakes.stats() == {}, "nothing served yet"


def test_canned_answers_refuse_what_no_server_would_do() -> None:
    with pytest.raises(ValueError, match="must not be blank"):
        CannedAnswers(replies=("",))
    with pytest.raises(ValueError, match="must not be blank"):
        CannedAnswers(transcript=" ")
    with pytest.raises(ValueError, match="delays must be >= 0"):
        CannedAnswers(tts_delay_s=-0.1)


def test_the_benchmarks_bot_toml_puts_every_model_on_the_servers(tmp_path: Path) -> None:
    path = tmp_path / "bot.toml"
    path.write_text(BOT_TOML.format(url="http://127.0.0.1:9", turns=TURNS["semantic"]))
    loaded = load_config(path)
    assert (loaded.stt.backend, loaded.llm.backend, loaded.tts.backend) == ("openai",) * 3
    assert loaded.stt.url == "http://127.0.0.1:9"
    assert configured_turn_model(loaded.turns) is not None, "Smart Turn stays in the front-end"
    path.write_text(BOT_TOML.format(url="http://127.0.0.1:9", turns=TURNS["words"]))
    assert configured_turn_model(load_config(path).turns) is None
    path.write_text(BOT_TOML.format(url="http://127.0.0.1:9", turns=TURNS["hangover"]))
    assert not load_config(path).turns.semantic


def row(calls: int, met: bool, cost: float = 20.0) -> dict[str, object]:
    return {
        "calls_placed": calls,
        "calls_answered": calls,
        "meets_target": met,
        "server_cpu_ms_per_call_second": cost,
        "cpu_bound_calls_per_core": 1000 / cost,
    }


def test_the_best_step_is_the_last_of_an_unbroken_run_of_passes() -> None:
    rows = [row(5, True), row(10, True, 25.0), row(15, False), row(20, True)]
    result = best(rows, cores=1)
    assert result["max_calls_meeting_target"] == 10, "a pass after a miss is luck"
    assert result["calls_per_core"] == 10
    assert result["server_cpu_ms_per_call_second_there"] == 25.0
    assert best([row(5, False)], cores=1)["calls_per_core"] is None
    assert best([row(10, True)], cores=2)["calls_per_core"] == 5


def test_the_bus_is_a_private_redis_server_or_none() -> None:
    core = frozenset({min(os.sched_getaffinity(0))})
    with redis_bus("none", core) as url:
        assert url is None
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    with redis_bus("auto", core) as url:
        assert url is not None
        host, port = url.removeprefix("redis://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as client:
            client.sendall(b"PING\r\n")
            assert client.recv(16) == b"+PONG\r\n"
