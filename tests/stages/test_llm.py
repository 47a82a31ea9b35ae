"""The LLM adapter: echo fake, OpenAI-compatible client against a real local HTTP server,
and the bundled local model (the last section loads SmolLM2, ~100 MB, once)."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from pipeline.runtime.dialogue import CallerText, Reply
from pipeline.runtime.graph import open_chain
from stages.llm import EchoLlm, LlmBackend, LlmError, Message, Responder, complete, create_llm
from stages.llm_local import LlamaCppLlm
from stages.llm_openai import OpenAiCompatibleLlm, chat_completions_url
from stages.llm_pool import LlmShed

HELLO = [Message("system", "You are terse."), Message("user", "What time do you open?")]


async def collect(deltas: AsyncIterator[str], into: list[str]) -> None:
    """Append every delta to ``into`` (so a test sees what came before an error)."""
    async with aclosing(deltas):
        async for delta in deltas:
            into.append(delta)


# --- echo ------------------------------------------------------------------------------


async def test_echo_streams_the_last_user_message_word_by_word() -> None:
    llm = EchoLlm()
    await llm.setup()
    deltas = [delta async for delta in llm.stream(HELLO)]
    assert deltas == ["You", " said:", " What", " time", " do", " you", " open?"]
    assert "".join(deltas) == "You said: What time do you open?"
    assert await complete(llm, HELLO) == llm.reply_text(HELLO)


async def test_echo_streams_in_time_and_stops_when_cancelled(autojump_clock: Any) -> None:
    llm = EchoLlm(token_delay=0.1)
    got: list[tuple[float, str]] = []
    start = trio.current_time()
    with trio.move_on_after(0.35) as scope:
        async with aclosing(llm.stream(HELLO)) as deltas:
            async for delta in deltas:
                got.append((trio.current_time() - start, delta))
    assert scope.cancelled_caught
    assert [delta for _, delta in got] == ["You", " said:", " What"]
    assert [round(at, 3) for at, _ in got] == [0.1, 0.2, 0.3]


@pytest.mark.parametrize("words", [0, 3])
async def test_echo_fail_mode_raises_llm_error_after_some_words(words: int) -> None:
    llm = EchoLlm(fail_after_words=words)
    got: list[str] = []
    with pytest.raises(LlmError, match="on purpose"):
        await collect(llm.stream(HELLO), got)
    assert len(got) == words


def test_create_llm_by_name() -> None:
    echo = create_llm("echo", template="Echo: {text}")
    assert isinstance(echo, EchoLlm)
    assert isinstance(echo, LlmBackend)
    openai = create_llm("openai", url="http://127.0.0.1:9/v1", model="m")
    assert isinstance(openai, OpenAiCompatibleLlm)
    assert isinstance(openai, LlmBackend)
    with pytest.raises(ValueError, match="local, openai, echo"):
        create_llm("gpt")
    with pytest.raises(ValueError, match="template"):
        EchoLlm(template="no placeholder")


def test_endpoint_from_any_base_url() -> None:
    assert chat_completions_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    url = "http://h:1/api/v1/chat/completions"
    assert chat_completions_url(url) == url


# --- a real local OpenAI-compatible server ---------------------------------------------


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


Handler = Callable[[trio.SocketStream, Request], Awaitable[None]]


@dataclass
class FakeServer:
    """A tiny HTTP/1.1 server on 127.0.0.1 speaking raw bytes, one behaviour per test."""

    handler: Handler
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    disconnected: trio.Event = field(default_factory=trio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some()
            if not chunk:
                return
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        headers = {name.lower(): value for name, value in headers.items()}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            body += await stream.receive_some()
        request = Request(lines[0].split(" ")[1], headers, json.loads(body))
        self.requests.append(request)
        try:
            await self.handler(stream, request)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.disconnected.set()
        finally:
            await stream.aclose()


@asynccontextmanager
async def fake_server(handler: Handler) -> AsyncIterator[FakeServer]:
    server = FakeServer(handler)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, host="127.0.0.1"), server.serve, 0)
        server.port = listeners[0].socket.getsockname()[1]
        yield server
        nursery.cancel_scope.cancel()


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
)


async def send_chunk(stream: trio.SocketStream, data: bytes) -> None:
    """One HTTP chunk (chunked transfer encoding), as streaming servers send them."""
    await stream.send_all(b"%x\r\n%s\r\n" % (len(data), data))


def event(content: str | None = None, finish: str | None = None, role: bool = False) -> bytes:
    delta: dict[str, str] = {"role": "assistant"} if role else {}
    if content is not None:
        delta["content"] = content
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


@asynccontextmanager
async def client(url: str, **options: Any) -> AsyncIterator[OpenAiCompatibleLlm]:
    llm = OpenAiCompatibleLlm(url, "test-model", **options)
    await llm.setup()
    try:
        yield llm
    finally:
        await llm.aclose()


async def test_openai_client_streams_deltas_as_they_arrive() -> None:
    first_seen = trio.Event()

    async def handler(stream: trio.SocketStream, request: Request) -> None:
        await stream.send_all(SSE_HEAD)
        await send_chunk(stream, event(role=True) + event("We open"))
        # The rest only once the client has shown the first delta to its caller:
        # a client that waited for the whole body would hang here.
        await first_seen.wait()
        await send_chunk(stream, b": keep-alive\n\n" + event(" at nine") + event("."))
        await send_chunk(stream, event(finish="stop") + b"data: [DONE]\n\n")
        await send_chunk(stream, b"")

    async with fake_server(handler) as server, client(server.url, api_key="sekret") as llm:
        got = []
        with trio.fail_after(5):
            async for delta in llm.stream(HELLO):
                got.append(delta)
                first_seen.set()
    assert got == ["We open", " at nine", "."]
    (request,) = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sekret"
    assert request.body["stream"] is True
    assert request.body["model"] == "test-model"
    assert request.body["messages"] == [message.as_dict() for message in HELLO]


async def test_openai_client_accepts_a_non_streamed_json_reply() -> None:
    async def handler(stream: trio.SocketStream, request: Request) -> None:
        body = json.dumps({"choices": [{"message": {"role": "assistant", "content": "Hi."}}]})
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        await stream.send_all(f"{head}\r\n\r\n{body}".encode())

    async with fake_server(handler) as server, client(server.url) as llm:
        assert await complete(llm, HELLO) == "Hi."


async def test_cancelling_a_reply_closes_the_connection_promptly() -> None:
    async def endless(stream: trio.SocketStream, request: Request) -> None:
        await stream.send_all(SSE_HEAD)
        while True:
            await send_chunk(stream, event(" blah"))
            await trio.sleep(0.01)

    async with fake_server(endless) as server, client(server.url) as llm:
        got = 0
        with trio.move_on_after(10) as scope:
            async for _ in llm.stream(HELLO):
                got += 1
                if got == 5:
                    scope.cancel()  # what a barge-in does to the reply's scope
        assert got == 5
        with trio.fail_after(5):
            await server.disconnected.wait()  # the server saw the client go away


async def test_server_down_is_an_llm_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with client(f"http://127.0.0.1:{port}") as llm:
        with pytest.raises(LlmError, match="cannot connect"):
            await complete(llm, HELLO)
    assert llm.failures == 1


async def test_stalled_server_times_out_as_an_llm_error() -> None:
    async def stall(stream: trio.SocketStream, request: Request) -> None:
        await stream.send_all(SSE_HEAD)
        await send_chunk(stream, event("Let me think"))
        await trio.sleep_forever()

    async with fake_server(stall) as server, client(server.url, read_timeout=0.3) as llm:
        got: list[str] = []
        with trio.fail_after(5), pytest.raises(LlmError, match="timed out"):
            await collect(llm.stream(HELLO), got)
    assert got == ["Let me think"]


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"data: {not json\n\n", "not JSON"),
        (b'data: {"object": "chat.completion.chunk"}\n\n', "no 'choices'"),
        (b'data: {"choices": [{"index": 0}]}\n\n', "no 'delta'"),
        (b'data: {"error": {"message": "out of memory"}}\n\n', "out of memory"),
        (event("Half a reply"), "ended before \\[DONE\\]"),
    ],
    ids=["not-json", "no-choices", "no-delta", "error-event", "truncated"],
)
async def test_malformed_stream_is_an_llm_error(body: bytes, match: str) -> None:
    async def handler(stream: trio.SocketStream, request: Request) -> None:
        await stream.send_all(SSE_HEAD)
        await send_chunk(stream, body)
        await send_chunk(stream, b"")

    async with fake_server(handler) as server, client(server.url) as llm:
        with trio.fail_after(5), pytest.raises(LlmError, match=match):
            await complete(llm, HELLO)


async def test_http_error_status_is_an_llm_error_with_the_reason() -> None:
    async def handler(stream: trio.SocketStream, request: Request) -> None:
        body = b'{"error": "model not loaded"}'
        await stream.send_all(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )

    async with fake_server(handler) as server, client(server.url) as llm:
        with pytest.raises(LlmError, match=r"HTTP 503.*model not loaded"):
            await complete(llm, HELLO)


async def test_stream_before_setup_and_bad_url_are_llm_errors() -> None:
    with pytest.raises(LlmError, match="setup"):
        await complete(OpenAiCompatibleLlm("http://127.0.0.1:9"), HELLO)
    with pytest.raises(LlmError, match="http://"):
        await OpenAiCompatibleLlm("127.0.0.1:9").setup()


# --- the bundled local model: loads SmolLM2-135M-Instruct (~100 MB GGUF) once ------------


@pytest.fixture(scope="module")
def smollm2() -> LlamaCppLlm:
    llm = LlamaCppLlm(max_tokens=24, temperature=0.0, seed=0, contexts=2)
    llm.load()
    return llm


async def test_local_smollm2_streams_a_nonempty_reply(smollm2: LlamaCppLlm) -> None:
    deltas: list[str] = []
    with trio.fail_after(60):
        await collect(smollm2.stream([Message("user", "Say hello to the caller.")]), deltas)
    assert len(deltas) > 1, "streamed in several deltas"
    assert any(ch.isalpha() for ch in "".join(deltas))
    assert smollm2.statistics()["tokens"] >= len(deltas)


async def test_local_generation_stops_promptly_when_cancelled(smollm2: LlamaCppLlm) -> None:
    messages = [Message("user", "Count from one to one hundred.")]
    stopped_before = smollm2.stopped_early
    got = 0
    with trio.move_on_after(60) as scope:
        async for _ in smollm2.stream(messages):
            got += 1
            if got == 2:
                scope.cancel()
                cancelled_at = trio.current_time()
    assert got == 2
    assert trio.current_time() - cancelled_at < 1.0, "no waiting for the rest of the reply"
    assert smollm2.stopped_early == stopped_before + 1
    # The model is free again at once (the limiter was released) and still answers.
    with trio.fail_after(60):
        assert (await complete(smollm2, messages)).strip()


async def test_local_replies_to_concurrent_calls_run_side_by_side(smollm2: LlamaCppLlm) -> None:
    # Two contexts: two calls' replies are generated at once, and a call's next turn
    # goes back to the context holding its conversation. (Greedy text is not compared
    # with a reply made alone: llama-cpp's reuse of a cached prefix changes it, with one
    # context as with two.)
    system = Message("system", "You are terse.")
    questions = [
        [system, Message("user", "Name a fruit.")],
        [system, Message("user", "Name a color.")],
    ]
    busy: list[int] = []
    texts = ["", ""]
    waited = smollm2.statistics()["waited"]

    async def ask(index: int) -> None:
        async for delta in smollm2.stream(questions[index]):
            busy.append(smollm2.statistics()["busy_contexts"])
            texts[index] += delta

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, 0)
            nursery.start_soon(ask, 1)
    assert all(text.strip() for text in texts), texts
    assert smollm2.statistics()["waited"] == waited, "neither reply waited for the other"
    assert busy[0] == 2, "both contexts were generating when the first token came"
    hits = smollm2.statistics()["affinity_hits"]
    follow_up = [*questions[0], Message("assistant", texts[0]), Message("user", "Another.")]
    with trio.fail_after(60):
        await complete(smollm2, follow_up)
    assert smollm2.statistics()["affinity_hits"] == hits + 1


async def test_local_single_context_replies_do_not_interleave() -> None:
    # One context has one KV cache: a second call's reply waits for the first to end.
    llm = LlamaCppLlm(max_tokens=12, temperature=0.0, seed=0, contexts=1)
    llm.load()
    questions = [[Message("user", "Name a fruit.")], [Message("user", "Name a color.")]]
    order: list[int] = []

    async def ask(index: int) -> None:
        async for _ in llm.stream(questions[index]):
            order.append(index)
            await trio.lowlevel.checkpoint()  # let the other call try to get in

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, 0)
            nursery.start_soon(ask, 1)
    await llm.aclose()
    assert set(order) == {0, 1}
    first = order[0]
    switch = order.index(1 - first)
    assert order[switch:] == [1 - first] * (len(order) - switch), order


async def test_local_speculative_reply_is_shed_when_no_context_is_free(
    smollm2: LlamaCppLlm,
) -> None:
    question = [Message("user", "Count from one to twenty.")]
    shed: list[LlmShed] = []
    release = trio.Event()

    async def committed(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with aclosing(smollm2.stream(question)) as deltas:
            async for _ in deltas:
                task_status.started()  # generating: its context is busy
                await release.wait()
                break

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(committed)
            await nursery.start(committed)  # both contexts busy now
            try:
                await complete_speculative(smollm2, question)
            except LlmShed as exc:
                shed.append(exc)
            release.set()
    assert len(shed) == 1
    assert smollm2.statistics()["speculative_shed"] >= 1
    with trio.fail_after(60):  # idle contexts again: a speculative reply runs
        assert (await complete_speculative(smollm2, question)).strip()


async def complete_speculative(llm: LlamaCppLlm, messages: list[Message]) -> str:
    return "".join([delta async for delta in llm.stream(messages, speculative=True)])


async def test_local_model_missing_or_broken_is_a_clear_error_at_setup(tmp_path: Path) -> None:
    with pytest.raises(LlmError, match=r"model not found: .*nowhere\.gguf"):
        await LlamaCppLlm(tmp_path / "nowhere.gguf").setup()
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF but not really")
    with pytest.raises(LlmError, match="cannot load local LLM"):
        await LlamaCppLlm(broken).setup()
    with pytest.raises(LlmError, match="setup"):
        await complete(LlamaCppLlm(broken), HELLO)


# --- the responder's failure note ------------------------------------------------------


async def test_an_llm_failure_keeps_the_earlier_failure_of_the_turn() -> None:
    """An STT timeout, then the LLM failing on the fallback words: /metrics counts both
    services (it reads the ``service:`` prefixes), so the LLM's note must not erase the
    STT's."""
    reply = Reply(turn=1, speech_ended_at=0.0)
    reply.note_failure("stt", "no transcript in 5 s")
    send, receive = trio.open_memory_channel[Any](1)
    send.send_nowait(CallerText(reply=reply, text="hello", captured_at=0.0))
    send.close()
    async with open_chain(Responder(EchoLlm(fail_after_words=0)), source=receive) as chain:
        _ = [frame async for frame in chain.outputs]
    assert reply.llm_failed
    failed = "llm: echo LLM failing on purpose after 0 words"
    assert reply.error == f"stt: no transcript in 5 s; {failed}"
