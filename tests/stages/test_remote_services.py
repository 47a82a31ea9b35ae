"""Remote STT, LLM and TTS against real model servers that these tests start.

faster-whisper-server (Whisper tiny.en), llama-cpp-python's server (SmolLM2) and
local-tts-studio (Piper joe) run as subprocesses on loopback ports, offline, once per
session (benchmarks/model_servers.py). Faults come from servers too: a port nobody listens
on (down), and :class:`~benchmarks.model_servers.FaultyProxy` in front of a real server
(slow, HTTP 500, a 200 with the wrong JSON or a body that is not audio). Each fault is
run through the reply path's own stages: the call goes on, with the fallback line.
"""

from __future__ import annotations

import io
import json
import wave
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import trio

from benchmarks.model_servers import (
    FaultyProxy,
    ModelServer,
    free_port,
    llm_command,
    speech_command,
    start,
    whisper_command,
)
from benchmarks.speech_corpus import padded, speech, telephony
from benchmarks.stt_bench import word_errors
from pipeline.bot.config import ConfigError, load_config
from pipeline.bot.services import SpeechServices
from pipeline.runtime.dialogue import (
    CallerText,
    CallerTurn,
    Message,
    Reply,
    SpeakableText,
    SpeechAudio,
)
from pipeline.runtime.errors import LlmError, SttError, TtsError
from pipeline.runtime.graph import open_chain
from stages import mulaw
from stages.llm import EchoLlm, Responder, complete
from stages.llm_openai import OpenAiCompatibleLlm
from stages.remote import CircuitBreaker, RemoteOptions
from stages.sentences import SpeechSplitter
from stages.stt import SttService
from stages.stt_remote import RemoteStt, _parse_transcription, pcm_wav
from stages.transcriber import Transcriber
from stages.tts import PiperTts, Synthesizer
from stages.tts_remote import RemoteTts, speech_samples
from stages.wav import decode_wav
from tests.fakes import FakeEnergyVad, FakeToneTts

SAID = "What time does the bakery open on Saturday?"
FALLBACK = "Sorry, I didn't catch that. Could you say it again?"


# --- the servers ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-servers")


def _serve(server: ModelServer, warm: str, **request: Any) -> Iterator[str]:
    try:
        httpx.post(server.url + warm, timeout=60, **request).raise_for_status()  # loads the model
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def whisper_url(logs: Path) -> Iterator[str]:
    port = free_port()
    server = start("faster-whisper-server", whisper_command(port), port, "/health", logs)
    wav = pcm_wav(np.zeros(8000, dtype=np.int16), 16000)
    yield from _serve(server, "/v1/audio/transcriptions", files={"file": ("a.wav", wav)})


@pytest.fixture(scope="session")
def llm_url(logs: Path) -> Iterator[str]:
    port = free_port()
    server = start("llama-cpp-server", llm_command(port), port, "/v1/models", logs)
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    yield from _serve(server, "/v1/chat/completions", json=body)


@pytest.fixture(scope="session")
def speech_url(logs: Path) -> Iterator[str]:
    port = free_port()
    command, env = speech_command(port, logs / "local-tts")
    server = start("local-tts-studio", command, port, "/v1/models", logs, env=env)
    yield from _serve(server, "/v1/audio/speech", json={"input": "Hello.", "voice": "alloy"})


@pytest.fixture
def caller_audio() -> np.ndarray:
    """What the caller said, as the phone line carries it (8 kHz, μ-law round trip)."""
    return telephony(padded(speech(SAID), 0.2, 0.2))


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def options(url: str, **changes: Any) -> RemoteOptions:
    return RemoteOptions(backend="openai", url=url, **{"timeout_s": 20.0, **changes})


def close_to(said: str, heard: str) -> bool:
    errors, words = word_errors(said, heard)
    return errors <= max(1, words // 8)


async def through(stages: Sequence[Any], *frames: Any, between: Any = None) -> list[Any]:
    """Frames through a chain of the reply path's stages; what came out. With ``between``
    (a function), each frame's first output is awaited and ``between()`` runs before the
    next frame goes in."""
    send, receive = trio.open_memory_channel[Any](len(frames))
    out: list[Any] = []
    with trio.fail_after(60):
        async with open_chain(*stages, source=receive) as chain:
            for index, frame in enumerate(frames):
                if index and between is not None:
                    while not _answered(out, frames[index - 1].reply):
                        out.append(await chain.outputs.receive())
                    between()
                await send.send(frame)
            await send.aclose()
            out += [frame async for frame in chain.outputs]
    return out


def _answered(out: list[Any], reply: Reply) -> bool:
    return any(getattr(frame, "reply", None) is reply for frame in out)


def caller_turn(samples: np.ndarray, turn: int = 1) -> CallerTurn:
    now = trio.current_time()
    reply = Reply(turn=turn, speech_ended_at=now, instructions="Answer in one short sentence.")
    return CallerTurn(reply=reply, samples=samples, captured_at=now)


# --- round trips ------------------------------------------------------------------------


async def test_transcription_round_trip(whisper_url: str, caller_audio: np.ndarray) -> None:
    stt = RemoteStt(whisper_url, options=options(whisper_url))
    async with stt.serving():
        transcript = await stt.transcribe(caller_audio, 8000)
        quiet = await stt.transcribe(np.zeros(8000, dtype=np.int16), 8000)
    assert close_to(SAID, transcript.text), transcript.text
    assert transcript.path == "remote"
    assert 0.3 < transcript.confidence <= 1.0
    assert transcript.no_speech_prob < 0.5
    assert (quiet.text, quiet.path) == ("", "silent")  # not sent: Whisper invents text
    stats = stt.statistics()
    assert (stats["requests"], stats["succeeded"], stats["failures"]) == (1, 1, 0)


async def test_speech_round_trip_through_both_servers(speech_url: str, whisper_url: str) -> None:
    """Remote TTS speaks telephone audio that the remote STT understands; the pcm format
    at its rate gives the same speech as wav; the fallback line is cached."""
    text = "We open at nine on Saturday morning."
    wav_voice = RemoteTts(speech_url, options=options(speech_url), cached_lines=[FALLBACK])
    pcm_voice = RemoteTts(
        speech_url, options=options(speech_url), response_format="pcm", pcm_rate=22050
    )
    stt = RemoteStt(whisper_url, options=options(whisper_url))
    async with wav_voice.serving(), pcm_voice.serving(), stt.serving():
        heard = {}
        for voice in (wav_voice, pcm_voice):
            audio = mulaw.decode(await voice.synthesize(text))
            heard[voice.response_format] = (len(audio) / 8000, await stt.transcribe(audio, 8000))
        assert await wav_voice.synthesize(FALLBACK) == wav_voice.cache[FALLBACK]
    (wav_s, wav_heard), (pcm_s, pcm_heard) = heard["wav"], heard["pcm"]
    assert close_to(text, wav_heard.text)
    assert close_to(text, pcm_heard.text)
    assert 1.0 < wav_s < 5.0
    assert 0.75 < pcm_s / wav_s < 1.33
    stats = wav_voice.statistics()
    assert (stats["requests"], stats["sentences"], stats["from_cache"]) == (2, 2, 1)


async def test_chat_round_trip(llm_url: str) -> None:
    llm = OpenAiCompatibleLlm(llm_url, max_tokens=12, temperature=0.0)
    async with llm.serving():
        text = await complete(llm, [Message("user", "Say hello to the caller.")])
    assert text.strip()
    stats = llm.statistics()
    assert (stats["replies"], stats["succeeded"], stats["failures"]) == (1, 1, 0)


async def test_a_caller_turn_through_the_reply_path_on_remote_services(
    whisper_url: str, llm_url: str, speech_url: str, caller_audio: np.ndarray
) -> None:
    stt = RemoteStt(whisper_url, options=options(whisper_url))
    llm = OpenAiCompatibleLlm(llm_url, max_tokens=24, temperature=0.0)
    tts = RemoteTts(speech_url, options=options(speech_url), cached_lines=[FALLBACK])
    async with stt.serving(), llm.serving(), tts.serving():
        stages = [
            Transcriber(stt, fallback_line=FALLBACK),
            Responder(llm, fallback_line=FALLBACK),
            SpeechSplitter(),
            Synthesizer(tts),
        ]
        turn = caller_turn(caller_audio)
        out = await through(stages, turn)
    spoken = [frame for frame in out if isinstance(frame, SpeechAudio)]
    reply = turn.reply
    assert close_to(SAID, reply.caller_text), reply.caller_text
    assert reply.error == ""
    assert not reply.llm_failed
    assert spoken
    assert reply.text
    assert reply.text != FALLBACK
    assert all(len(frame.mulaw) > 800 for frame in spoken)  # each piece > 0.1 s of speech


# --- faults: the call goes on with the fallback line ---------------------------------------

FAULTS = ["down", "slow", "500", "garbage"]


async def _stt_turns(stt: RemoteStt, audio: np.ndarray, between: Any = None) -> dict[int, str]:
    """Two caller turns through STT, an echo LLM and a voice: what was said, per turn."""
    stages = [
        Transcriber(stt, fallback_line=FALLBACK),
        Responder(EchoLlm()),
        SpeechSplitter(),
        Synthesizer(FakeToneTts()),
    ]
    async with stt.serving():
        out = await through(stages, caller_turn(audio, 1), caller_turn(audio, 2), between=between)
    said: dict[int, str] = {}
    for frame in out:
        if isinstance(frame, SpeechAudio):
            turn = frame.reply.turn
            said[turn] = f"{said[turn]} {frame.text}" if turn in said else frame.text
    return said


@pytest.mark.parametrize("fault", FAULTS)
async def test_stt_fault_is_answered_with_the_fallback_line(
    fault: str, whisper_url: str, caller_audio: np.ndarray
) -> None:
    if fault == "down":
        stt = RemoteStt(options=options(dead_url()))
        said = await _stt_turns(stt, caller_audio)
        assert said == {1: FALLBACK, 2: FALLBACK}  # the call went on
        assert stt.statistics()["failures_by_kind"] == {"connect": 2}
        return
    mode = {"garbage": "bad-json"}.get(fault, fault)
    heal = fault != "slow"  # a slow server stays slow: both turns time out
    with FaultyProxy(whisper_url, mode=mode, delay_s=30.0) as proxy:
        stt = RemoteStt(options=options(proxy.url, timeout_s=1.0 if fault == "slow" else 20.0))
        said = await _stt_turns(stt, caller_audio, between=lambda: heal and proxy.heal())
    assert said[1] == FALLBACK
    if heal:
        assert close_to(f"You said: {SAID}", said[2]), said  # the server healed: heard again
    else:
        assert said[2] == FALLBACK
    kind = {"slow": "timeout", "500": "http_5xx", "garbage": "malformed"}[fault]
    stats = stt.statistics()
    assert stats["failures_by_kind"] == {kind: 1 + (not heal)}
    assert stats["succeeded"] == int(heal)
    assert stats["retries"] == (1 if fault == "500" else 0)  # 5xx only, once


async def _llm_turn(llm: OpenAiCompatibleLlm) -> tuple[list[str], Reply]:
    tts = FakeToneTts()
    stages = [Responder(llm, fallback_line=FALLBACK), SpeechSplitter(), Synthesizer(tts)]
    turn = caller_turn(np.zeros(1, dtype=np.int16))
    heard = CallerText(reply=turn.reply, text="Hello?", captured_at=trio.current_time())
    async with llm.serving():
        await through(stages, heard)
    return tts.spoken, turn.reply


@pytest.mark.parametrize("fault", [*FAULTS, "not-audio"])
async def test_llm_fault_is_answered_with_the_fallback_line(fault: str, llm_url: str) -> None:
    if fault == "down":
        spoken, reply = await _llm_turn(OpenAiCompatibleLlm(dead_url()))
        assert spoken == [FALLBACK]
        assert "cannot connect" in reply.error
        return
    mode = {"garbage": "bad-json"}.get(fault, fault)
    with FaultyProxy(llm_url, mode=mode, delay_s=30.0) as proxy:
        llm = OpenAiCompatibleLlm(proxy.url, read_timeout=1.0, max_tokens=8)
        spoken, reply = await _llm_turn(llm)
    assert spoken == [FALLBACK]
    assert reply.llm_failed
    kind = {"slow": "timeout", "500": "http_5xx"}.get(fault, "malformed")
    assert llm.statistics()["failures_by_kind"] == {kind: 1}, reply.error


async def _voice_pieces(tts: RemoteTts, before: Any = None) -> tuple[list[str], Reply]:
    """A reply's two pieces, a sentence and the fallback line, through the Synthesizer
    (``before`` runs once the voice is set up): what was spoken."""
    turn = caller_turn(np.zeros(1, dtype=np.int16))
    now = trio.current_time()
    texts = ("We open at nine.", FALLBACK)
    pieces = [SpeakableText(reply=turn.reply, text=text, captured_at=now) for text in texts]
    async with tts.serving():
        if before is not None:
            before()
        out = await through([Synthesizer(tts)], *pieces)
    return [frame.text for frame in out if isinstance(frame, SpeechAudio)], turn.reply


@pytest.mark.parametrize("fault", FAULTS)
async def test_tts_fault_leaves_the_piece_out_and_keeps_the_fallback_line(
    fault: str, speech_url: str
) -> None:
    """The Synthesizer leaves a failed piece out and the call goes on; the fallback line,
    cached while the server answered, is still spoken while it does not."""
    if fault == "down":  # never answered: no line cached, nothing said, the call goes on
        tts = RemoteTts(options=options(dead_url()), cached_lines=[FALLBACK])
        spoken, reply = await _voice_pieces(tts)
        assert spoken == []
        assert "cannot connect" in reply.error
        return
    mode = {"garbage": "not-audio"}.get(fault, fault)
    with FaultyProxy(speech_url, delay_s=30.0) as proxy:
        # the line is cached (in "pass" mode) within the deadline, even on busy cores
        deadline = 4.0 if fault == "slow" else 20.0
        tts = RemoteTts(options=options(proxy.url, timeout_s=deadline), cached_lines=[FALLBACK])
        spoken, reply = await _voice_pieces(tts, before=lambda: proxy.set(mode))
    assert spoken == [FALLBACK]
    assert "tts:" in reply.error
    kind = {"slow": "timeout", "500": "http_5xx", "garbage": "malformed"}[fault]
    assert tts.statistics()["failures_by_kind"] == {kind: 1}


# --- resilience -----------------------------------------------------------------------------


async def test_the_circuit_opens_fails_fast_and_closes_again(
    whisper_url: str, caller_audio: np.ndarray
) -> None:
    with FaultyProxy(whisper_url, mode="500") as proxy:
        policy = options(proxy.url, retries=0, failure_threshold=2, reset_after_s=0.3)
        stt = RemoteStt(options=policy)
        transcriber = Transcriber(stt, fallback_line=FALLBACK)
        async with stt.serving():

            async def attempt() -> str:
                try:
                    return (await stt.transcribe(caller_audio, 8000)).text
                except SttError as exc:
                    return str(exc)

            assert "HTTP 500" in await attempt()
            assert "HTTP 500" in await attempt()
            assert (proxy.seen, stt.endpoint.breaker.state) == (2, "open")
            # open: the reply path says its line at once, and the server is not called
            out = await through([transcriber], caller_turn(caller_audio))
            assert [f.text for f in out if isinstance(f, SpeakableText)] == [FALLBACK]
            assert "circuit open" in out[0].reply.error
            assert proxy.seen == 2
            await trio.sleep(0.35)  # the cool-down: one trial goes through, fails, re-opens
            assert stt.endpoint.breaker.state == "half-open"
            assert "HTTP 500" in await attempt()
            assert proxy.seen == 3
            assert "circuit open" in await attempt()
            assert proxy.seen == 3
            proxy.mode = "pass"  # the server recovers
            await trio.sleep(0.35)
            assert close_to(SAID, await attempt())
            assert proxy.seen == 4
            assert stt.endpoint.breaker.state == "closed"
    stats = stt.statistics()
    assert stats["circuit_opened"] == 1
    assert stats["failures_by_kind"]["circuit_open"] == 2
    assert stats["failures_by_kind"]["http_5xx"] == 3
    assert stats["succeeded"] == 1


async def test_the_fallback_line_is_cached_once_the_server_answers_again(speech_url: str) -> None:
    with FaultyProxy(speech_url, mode="500") as proxy:
        tts = RemoteTts(options=options(proxy.url, retries=0), cached_lines=[FALLBACK])
        async with tts.serving():
            assert FALLBACK not in tts.cache  # the server failed at start-up
            proxy.mode = "pass"
            assert await tts.synthesize("Hello there.")
            with trio.fail_after(20):
                await tts.lines_cached.wait()  # in the background, after that success
            assert FALLBACK in tts.cache


async def test_a_streamed_reply_is_never_sent_twice_once_a_token_came() -> None:
    """5xx before the stream is retried; a stream that breaks after its first token is not
    (the caller heard that token)."""
    connections = []
    answers = [
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
        b'data: {"choices": [{"index": 0, "delta": {"content": "Hello"}}]}\n\n',
    ]

    async def handle(stream: trio.SocketStream) -> None:
        connections.append(1)
        request = b""
        while b"\r\n\r\n" not in request:  # the whole request, or the client sees a reset
            request += await stream.receive_some()
        head, body = request.split(b"\r\n\r\n", 1)
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += await stream.receive_some()
        await stream.send_all(answers[min(len(connections), len(answers)) - 1])
        await stream.aclose()  # the stream breaks before [DONE]

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, handle, 0)
        port = listeners[0].socket.getsockname()[1]
        llm = OpenAiCompatibleLlm(f"http://127.0.0.1:{port}", retries=2)
        got: list[str] = []

        async def listen() -> None:
            async for delta in llm.stream([Message("user", "Hi")]):
                got.append(delta)

        async with llm.serving():
            with pytest.raises(LlmError, match="ended before"):
                await listen()
        nursery.cancel_scope.cancel()
    assert got == ["Hello"]
    assert len(connections) == 2
    assert llm.statistics()["retries"] == 1


def test_circuit_breaker_states_on_a_virtual_clock() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=5.0, clock=lambda: now[0])
    assert breaker.admit() is False
    breaker.failed()
    assert breaker.state == "closed"
    breaker.failed()
    assert breaker.state == "open"
    assert breaker.opened == 1
    with pytest.raises(Exception, match=r"next try in 5\.0 s"):
        breaker.admit()
    now[0] = 5.0
    assert breaker.admit() is True  # the one trial
    with pytest.raises(Exception, match="circuit open"):
        breaker.admit()  # others wait for its verdict
    breaker.failed(trial=True)
    assert breaker.state == "open"
    assert breaker.opened == 1
    now[0] = 10.0
    trial = breaker.admit()
    breaker.abandoned(trial)  # a barge-in cancelled the trial: no verdict
    assert breaker.admit() is True
    breaker.succeeded(trial=True)
    assert breaker.state == "closed"
    assert breaker.failures_in_a_row == 0
    assert breaker.rejected == 2


def test_speech_answers_are_checked_and_mixed_down() -> None:
    buffer = io.BytesIO()
    stereo = np.array([[1000, 3000]] * 100, dtype="<i2")
    with wave.open(buffer, "wb") as out:
        out.setnchannels(2), out.setsampwidth(2), out.setframerate(24000)
        out.writeframes(stereo.tobytes())
    samples, rate = speech_samples(buffer.getvalue(), "audio/wav", "wav", 0)
    assert rate == 24000
    assert np.allclose(samples, 2000 / 32768)
    samples, rate = speech_samples(b"\x00\x10" * 10, "audio/pcm", "pcm", 22050)
    assert (len(samples), rate) == (10, 22050)
    for body, kind, fmt, why in [
        (b'{"error": "x"}', "application/json", "wav", "not audio"),
        (b"RIFF....", "audio/wav", "wav", "not a WAV"),
        (b"\x00\x10\x00", "audio/pcm", "pcm", "odd length"),
    ]:
        with pytest.raises(ValueError, match=why):
            speech_samples(body, kind, fmt, 24000)
    wav = decode_wav(pcm_wav(np.arange(16, dtype=np.int16), 16000))
    assert (wav.sample_rate, wav.bits_per_sample, len(wav.data)) == (16000, 16, 32)


# --- configuration ------------------------------------------------------------------------


def test_bot_toml_chooses_remote_services(tmp_path: Path) -> None:
    path = tmp_path / "bot.toml"
    path.write_text(
        '[bot]\nfallback_line = "One moment, please."\n'
        '[stt]\nbackend = "openai"\nurl = "http://stt:8000"\nmodel = "Systran/tiny.en"\n'
        "timeout_s = 4.0\nretries = 2\n"
        '[tts]\nbackend = "openai"\nurl = "http://tts:8880/v1"\nvoice = "af_heart"\n'
        'model = "kokoro"\nresponse_format = "pcm"\npcm_rate = 24000\napi_key = "sekret"\n'
    )
    config = load_config(path)
    services = SpeechServices.from_config(config, vad=FakeEnergyVad(), llm=EchoLlm())
    stt, tts = services.stt, services.tts
    assert isinstance(stt, RemoteStt)
    assert isinstance(tts, RemoteTts)
    assert stt.endpoint.url == "http://stt:8000/v1/audio/transcriptions"
    assert stt.form()["model"] == "Systran/tiny.en"
    assert stt.endpoint.options.retries == 2
    assert tts.endpoint.url == "http://tts:8880/v1/audio/speech"
    assert tts.request_body("Hi")["voice"] == "af_heart"
    assert tts.pcm_rate == 24000
    assert tts.endpoint.headers["Authorization"] == "Bearer sekret"
    assert "sekret" not in repr(config.tts)
    assert tts.cached_lines == ("One moment, please.",)
    local = SpeechServices.from_config(load_config(None), vad=FakeEnergyVad(), llm=EchoLlm())
    assert isinstance(local.stt, SttService)
    assert isinstance(local.tts, PiperTts)
    path.write_text('[stt]\nbackend = "grpc"\n')
    with pytest.raises(ConfigError, match="backend must be one of local, openai"):
        load_config(path)


async def test_a_tts_error_is_a_tts_error_and_json_transcripts_are_accepted() -> None:
    with pytest.raises(TtsError, match="setup"):
        await RemoteTts(dead_url()).synthesize("Hi")
    answer = httpx.Response(200, content=json.dumps({"text": " Hello. "}).encode())
    assert _parse_transcription(answer) == ("Hello.", 0.0, 0.0)


def test_readmes_remote_example_is_a_valid_bot_toml(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Remote speech services") :]
    example = section[section.index("```toml\n") + 8 : section.index("```\n", 8)]
    (tmp_path / "bot.toml").write_text(example)
    config = load_config(tmp_path / "bot.toml")
    assert (config.stt.backend, config.tts.backend) == ("openai", "openai")
    assert config.stt.timeout_s == 4.0
