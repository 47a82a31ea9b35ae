"""The LLM adapter: conversation messages in, a stream of text deltas out.

Every backend is one shared service (DESIGN.md §4): a server builds it once,
``await backend.setup()`` at start-up (so a missing model or a bad option fails
before the first call, not during it), then every call streams replies from it::

    llm = LlamaCppLlm()          # or OpenAiCompatibleLlm(url=...), EchoLlm()
    await llm.setup()
    async with aclosing(llm.stream([Message("user", "Hi!")])) as deltas:
        async for delta in deltas:
            ...                   # feed a stages.sentences.SentenceSplitter
    await llm.aclose()            # at server shutdown

``stream`` is an async generator: cancelling the task that iterates it (a
barge-in cancelling the reply's scope) stops generation at the next token, and
backends free what they hold (a worker thread, an HTTP connection) on the way
out. Iterate it inside ``contextlib.aclosing`` when breaking out early, so that
happens at once rather than when the generator is garbage-collected.

Backends report every failure (server down, timeout, malformed stream, model
error) as :class:`LlmError` with a message fit for a log line, so a turn manager
needs exactly one ``except`` to end the reply with a spoken fallback.

A generator rather than a channel-plus-background-task design because an async
generator cannot own a nursery in Trio; backends that run blocking code hop to a
worker thread per token instead (see :mod:`stages.llm_local`).

Backends: :class:`EchoLlm` (here, a test fake), :class:`~stages.llm_local.LlamaCppLlm`
(local GGUF through llama.cpp, the default), and
:class:`~stages.llm_openai.OpenAiCompatibleLlm` (any ``/v1/chat/completions``
server). :func:`create_llm` builds one by name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import trio

__all__ = [
    "BACKENDS",
    "EchoLlm",
    "LlmBackend",
    "LlmError",
    "Message",
    "Role",
    "complete",
    "create_llm",
]

Role = Literal["system", "user", "assistant"]


class LlmError(RuntimeError):
    """The LLM could not produce (the rest of) a reply; the message says why."""


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of the conversation, in the roles every chat model understands."""

    role: Role
    content: str

    def as_dict(self) -> dict[str, str]:
        """The OpenAI / llama.cpp chat-message shape."""
        return {"role": self.role, "content": self.content}


@runtime_checkable
class LlmBackend(Protocol):
    """What a turn manager needs from an LLM: load once, stream replies, close."""

    name: str

    async def setup(self) -> None:
        """Load or connect once, before the first call; raise :class:`LlmError` if impossible."""
        ...

    def stream(self, messages: Sequence[Message]) -> AsyncIterator[str]:
        """Text deltas of the assistant's reply to ``messages``, as they are generated."""
        ...

    async def aclose(self) -> None:
        """Free what :meth:`setup` took (connections, models)."""
        ...


def _last_user_text(messages: Sequence[Message]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            return message.content
    return ""


class EchoLlm:
    """A deterministic test fake: repeats the caller's last message in a fixed template.

    The reply is streamed word by word (each delta after the first starts with its
    space), with ``token_delay`` seconds before each word, so tests can observe
    streaming, time a barge-in in the middle of a reply, and check the caller's
    words made it through STT. ``fail_after_words`` makes it raise
    :class:`LlmError` after that many words (0: before the first), to exercise the
    failure path.
    """

    name = "echo"

    def __init__(
        self,
        template: str = "You said: {text}",
        *,
        token_delay: float = 0.0,
        fail_after_words: int | None = None,
    ) -> None:
        if "{text}" not in template:
            raise ValueError("the echo template must contain {text}")
        self.template = template
        self.token_delay = token_delay
        self.fail_after_words = fail_after_words
        self.replies = 0

    async def setup(self) -> None:
        """Nothing to load."""

    def reply_text(self, messages: Sequence[Message]) -> str:
        """The whole reply :meth:`stream` yields for ``messages``."""
        return self.template.format(text=_last_user_text(messages).strip())

    async def stream(self, messages: Sequence[Message]) -> AsyncIterator[str]:
        self.replies += 1
        for index, word in enumerate(self.reply_text(messages).split()):
            if self.fail_after_words is not None and index >= self.fail_after_words:
                raise LlmError(f"echo LLM failing on purpose after {index} words")
            if self.token_delay > 0:
                await trio.sleep(self.token_delay)
            else:
                await trio.lowlevel.checkpoint()
            yield word if index == 0 else f" {word}"
        if self.fail_after_words is not None:
            raise LlmError("echo LLM failing on purpose at the end of the reply")

    async def aclose(self) -> None:
        """Nothing to free."""


async def complete(llm: LlmBackend, messages: Sequence[Message]) -> str:
    """The whole reply as one string (tools, greetings, tests)."""
    async with aclosing(llm.stream(messages)) as deltas:
        return "".join([delta async for delta in deltas])


BACKENDS = ("local", "openai", "echo")


def create_llm(backend: str, **options: Any) -> LlmBackend:
    """Build a backend by the name a config file or CLI flag uses.

    ``local`` → :class:`~stages.llm_local.LlamaCppLlm`, ``openai`` →
    :class:`~stages.llm_openai.OpenAiCompatibleLlm`, ``echo`` → :class:`EchoLlm`;
    ``options`` go to its constructor. Heavy imports happen only for the one chosen.
    """
    if backend == "echo":
        return EchoLlm(**options)
    if backend == "local":
        from stages.llm_local import LlamaCppLlm

        return LlamaCppLlm(**options)
    if backend == "openai":
        from stages.llm_openai import OpenAiCompatibleLlm

        return OpenAiCompatibleLlm(**options)
    raise ValueError(f"unknown LLM backend {backend!r}; choose one of {', '.join(BACKENDS)}")
