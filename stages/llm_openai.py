"""LLM backend for any OpenAI-compatible server: llama.cpp server, vLLM, Ollama, ...

Streams ``POST /v1/chat/completions`` with ``"stream": true`` through
``httpx.AsyncClient``, which runs on Trio (httpcore picks its Trio backend), and
reads the Server-Sent Events: ``data: {json}`` events carrying
``choices[0].delta.content``, ended by ``data: [DONE]``.

Everything that can go wrong with a remote server becomes :class:`LlmError` with
the URL and the cause: connection refused, connect or read timeout (the read
timeout bounds the wait for *each* chunk, so a stalled server is noticed while a
slow-but-alive one is not cut off), an HTTP error status (with the start of the
body, where servers put the reason), a stream that is not valid SSE/JSON, or
one that stops before ``[DONE]`` and before any ``finish_reason``. A whole-reply
deadline belongs to the caller (``trio.fail_after`` around the turn).

The request goes through the resilience layer the remote STT and TTS use
(:mod:`stages.remote`): connection errors and 5xx answers are retried (``retries``,
with back-off) only until the stream's status line has come, so no token is ever
generated twice; ``failure_threshold`` failed replies in a row open a circuit
breaker for ``reset_after_s``, during which a reply fails at once and the reply
path says its fallback line without waiting.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import httpx

from pipeline.runtime.dialogue import Message
from pipeline.runtime.errors import LlmError
from pipeline.runtime.service import Service
from stages.remote import RemoteEndpoint, RemoteOptions

__all__ = ["OpenAiCompatibleLlm", "chat_completions_url"]


def chat_completions_url(url: str) -> str:
    """Accept a server root, a ``/v1`` base or the full endpoint; return the endpoint."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return f"{url}/chat/completions"
    return f"{url}/v1/chat/completions"


class _SseDecoder:
    """Server-Sent Events from lines: one ``data`` string per event (multi-line joined)."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def line(self, line: str) -> Iterator[str]:
        if not line:
            if self._data:
                yield "\n".join(self._data)
                self._data = []
            return
        if line.startswith(":"):
            return  # comment / keep-alive
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        # "event", "id", "retry" and unknown fields carry nothing we use

    def end(self) -> Iterator[str]:
        yield from self.line("")


class OpenAiCompatibleLlm(Service):
    """Stream chat completions from an OpenAI-compatible HTTP server.

    ``url`` is the server root (``http://127.0.0.1:8080``), its ``/v1`` base or the
    full ``/chat/completions`` endpoint. ``api_key`` goes in an ``Authorization:
    Bearer`` header. ``max_tokens``, ``temperature`` and ``extra_body`` (any other
    request field, e.g. ``{"top_p": 0.9}``) are sent when set.
    """

    name = "openai"

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        model: str = "default",
        *,
        api_key: str | None = None,
        connect_timeout: float = 3.0,
        read_timeout: float = 15.0,
        max_tokens: int | None = 200,
        temperature: float | None = 0.7,
        extra_body: Mapping[str, Any] | None = None,
        retries: int = 1,
        failure_threshold: int = 3,
        reset_after_s: float = 10.0,
    ) -> None:
        self.url = url
        self.endpoint_url = chat_completions_url(url)
        self.model = model
        self.timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        options = RemoteOptions(
            backend="openai",
            url=url,
            api_key=api_key or "",
            timeout_s=read_timeout,
            retries=retries,
            failure_threshold=failure_threshold,
            reset_after_s=reset_after_s,
        )
        self.endpoint = RemoteEndpoint(
            self.endpoint_url,
            options,
            error=LlmError,
            what="LLM server",
            headers={"Accept": "text/event-stream"},
            timeout=self.timeout,
            deadline=False,  # per chunk (httpx) and per turn (the Responder)
        )
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.extra_body = dict(extra_body or {})
        self.replies = 0

    @property
    def failures(self) -> int:
        """Replies that failed (the circuit's fast refusals included)."""
        return int(self.endpoint.statistics()["failures"])

    async def setup(self) -> None:
        """Open the connection pool. The server is not contacted: it may start later."""
        await self.endpoint.open()

    async def aclose(self) -> None:
        await self.endpoint.aclose()

    def request_body(self, messages: Sequence[Message]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [message.as_dict() for message in messages],
            "stream": True,
        }
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            body["temperature"] = self.temperature
        body.update(self.extra_body)
        return body

    async def stream(self, messages: Sequence[Message]) -> AsyncIterator[str]:
        client = self.endpoint.client()
        self.replies += 1
        where = self.endpoint.where
        request = client.build_request("POST", self.endpoint_url, json=self.request_body(messages))
        async with self.endpoint.streaming(request) as response:
            content_type = response.headers.get("content-type", "")
            if content_type.startswith("application/json"):
                # A server that ignored "stream": the whole reply in one document.
                text = self._whole_reply(await response.aread(), where)
                if text:
                    yield text
                return
            decoder = _SseDecoder()
            finished = False
            async for line in response.aiter_lines():
                for data in decoder.line(line):
                    if data.strip() == "[DONE]":
                        return
                    delta, done = self._parse_event(data, where)
                    finished = finished or done
                    if delta:
                        yield delta
            for data in decoder.end():
                if data.strip() != "[DONE]":
                    delta, done = self._parse_event(data, where)
                    finished = finished or done
                    if delta:
                        yield delta
                finished = True
            if not finished:
                raise LlmError(f"malformed stream from {where}: it ended before [DONE]")

    @staticmethod
    def _parse_event(data: str, where: str) -> tuple[str, bool]:
        """(content delta, whether a finish_reason was given) of one ``data:`` event."""
        try:
            event = json.loads(data)
        except ValueError as exc:
            raise LlmError(f"malformed stream from {where}: not JSON: {data[:120]!r}") from exc
        if not isinstance(event, dict):
            raise LlmError(f"malformed stream from {where}: event is not an object: {data[:120]!r}")
        if "error" in event:
            error = event["error"]
            detail = error.get("message", error) if isinstance(error, dict) else error
            raise LlmError(f"{where} reported an error mid-stream: {detail}")
        choices = event.get("choices")
        if not isinstance(choices, list):
            raise LlmError(f"malformed stream from {where}: no 'choices' in {data[:120]!r}")
        if not choices:
            return "", False  # usage-only chunks
        choice = choices[0]
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            raise LlmError(f"malformed stream from {where}: no 'delta' in {data[:120]!r}")
        content = delta.get("content") or ""
        if not isinstance(content, str):
            raise LlmError(f"malformed stream from {where}: content is not text: {data[:120]!r}")
        return content, choice.get("finish_reason") is not None

    @staticmethod
    def _whole_reply(raw: bytes, where: str) -> str:
        try:
            document = json.loads(raw)
            content = document["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise LlmError(f"malformed reply from {where}: {raw[:120]!r}") from exc
        if not isinstance(content, str):
            raise LlmError(f"malformed reply from {where}: content is not text")
        return content

    def statistics(self) -> dict[str, Any]:
        return {"replies": self.replies, **self.endpoint.statistics()}
