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

import math
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import trio

from pipeline.runtime.dialogue import BotText, CallerText, Message, Reply, Role, SpeakableText
from pipeline.runtime.errors import ConfigError, LlmError
from pipeline.runtime.service import Service
from pipeline.runtime.stage import Outbox, Stage
from stages.guards import LengthLimit, RepeatWatch, ReplyConfig, pick_fallback, without_replies
from stages.llm_pool import LlmShed, speculating

__all__ = [
    "BACKENDS",
    "EchoLlm",
    "LlmBackend",
    "LlmConfig",
    "LlmError",
    "Message",
    "Responder",
    "Role",
    "complete",
    "create_llm",
]


@runtime_checkable
class LlmBackend(Protocol):
    """What a voice bot needs from an LLM: serve for the server's lifetime, stream replies.

    :class:`~pipeline.runtime.service.Service` gives ``serving()`` from ``setup()`` and
    ``aclose()``; a backend raises :class:`LlmError` from either when it cannot serve.
    A backend with few replies at a time (a local model's context pool) serves a reply
    made inside :func:`~stages.llm_pool.speculating` only on idle capacity, raising
    :class:`~stages.llm_pool.LlmShed` otherwise; the :class:`Responder` handles it.
    """

    name: str

    def serving(self) -> AbstractAsyncContextManager[None]:
        """Load or connect once, before the first call; free at the end of the block."""
        ...

    def stream(self, messages: Sequence[Message]) -> AsyncIterator[str]:
        """Text deltas of the assistant's reply to ``messages``, as they are generated."""
        ...


def _last_user_text(messages: Sequence[Message]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            return message.content
    return ""


class EchoLlm(Service):
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


@dataclass(frozen=True, slots=True)
class LlmConfig:
    """``[llm]`` of ``bot.toml``: which backend, its model, and how it answers.

    ``model``: a GGUF path (local) or a model name (openai); "" = the bundled SmolLM2.
    ``threads``: llama.cpp prompt threads (0: every core), split between ``contexts``:
    replies the local model generates side by side, one context (KV cache) each, the
    weights shared (default 2: see README, Sizing a machine). ``timeout_s``: how long a
    reply may take to start before the caller hears the fallback line.
    """

    backend: str = "local"
    model: str = ""
    url: str = "http://127.0.0.1:8000"
    api_key: str = ""
    temperature: float = 0.7
    max_tokens: int = 96
    timeout_s: float = 10.0
    threads: int = 0
    contexts: int = 2

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.contexts < 1:
            raise ConfigError(f"contexts must be at least 1, not {self.contexts}")
        if self.threads < 0:
            raise ConfigError(f"threads must be 0 (every core) or more, not {self.threads}")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1, not {self.max_tokens}")
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout_s must be above 0, not {self.timeout_s}")


def create_llm(backend: str | LlmConfig, **options: Any) -> LlmBackend:
    """Build a backend from ``[llm]`` (an :class:`LlmConfig`) or by name with options.

    ``local`` → :class:`~stages.llm_local.LlamaCppLlm`, ``openai`` →
    :class:`~stages.llm_openai.OpenAiCompatibleLlm`, ``echo`` → :class:`EchoLlm`;
    by name, ``options`` go to its constructor. Heavy imports happen only for the one
    chosen.
    """
    if isinstance(backend, LlmConfig):
        return create_llm(backend.backend, **_options_of(backend))
    if backend == "echo":
        return EchoLlm(**options)
    if backend == "local":
        from stages.llm_local import LlamaCppLlm

        return LlamaCppLlm(**options)
    if backend == "openai":
        from stages.llm_openai import OpenAiCompatibleLlm

        return OpenAiCompatibleLlm(**options)
    raise ValueError(f"unknown LLM backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def _options_of(config: LlmConfig) -> dict[str, Any]:
    """The constructor options of ``config.backend`` that ``config`` sets."""
    if config.backend == "local":
        options: dict[str, Any] = {
            "max_tokens": config.max_tokens,
            "temperature": config.temperature,
        }
        if config.model:
            options["model_path"] = config.model
        if config.threads > 0:
            options["threads"] = config.threads
        options["contexts"] = config.contexts
        return options
    if config.backend == "openai":
        return {
            "url": config.url,
            "model": config.model or "default",
            "api_key": config.api_key or None,
            "max_tokens": config.max_tokens,
            "temperature": config.temperature,
            "read_timeout": config.timeout_s,
        }
    return {}


class Responder(Stage[Any, Any]):
    """The reply path's LLM step: the caller's words in, the bot's words out as they come.

    A :class:`~pipeline.runtime.dialogue.CallerText` is answered by ``llm`` with the
    reply's instructions and history; every other frame (a stage's own answer, an
    operator's line) passes through, so the LLM is asked only when nobody answered.
    Until the first speakable piece has been voiced the model waits: the caller waits
    for that audio alone, and the two would share the cores. A failure (or no first
    word within ``timeout_s``) ends the reply with ``fallback_line`` if nothing was
    said yet, and is noted on the reply (``llm_failed``); so does a stream that stalls
    for ``timeout_s`` between two words (the caller keeps what was said).

    A reply started before its turn is committed (at a pause, ``reply.committed`` not
    set) asks the model speculatively (:func:`~stages.llm_pool.speculating`): under load
    it is shed (:class:`~stages.llm_pool.LlmShed`, counted in ``shed`` and on the reply),
    and it then waits for the commit and asks again as committed work, losing nothing
    (a shed reply has said nothing). It stays speculative only until its turn is
    committed or it has said a word, after which nothing stops it.

    ``guards`` (a :class:`~stages.guards.ReplyConfig`; None: none) keep a small model
    from repeating an earlier reply of the call (held while it matches one, regenerated
    once without it, else a fallback line) and from talking past ``max_spoken_words``
    (the LLM stream is closed at the sentence end); what they did is noted on the reply
    (``guarded``).
    """

    def __init__(
        self,
        llm: LlmBackend,
        *,
        timeout_s: float = 10.0,
        fallback_line: str = "",
        guards: ReplyConfig | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.llm = llm
        self.timeout_s = timeout_s
        self.fallback_line = fallback_line
        self.guards = guards
        self.failures = 0
        self.shed = 0  # speculative attempts shed to serve committed replies first
        self.repeats = 0  # attempts found repeating an earlier reply
        self.regenerated = 0
        self.repeat_fallbacks = 0
        self.cut_long = 0
        self.held_s = 0.0  # time text of replies that did not repeat was held back

    async def run(self, inbox: trio.MemoryReceiveChannel[Any], outbox: Outbox[Any]) -> None:
        async for frame in inbox:
            if isinstance(frame, CallerText):
                await self._answer(frame, outbox)
            else:
                await outbox.send(frame)

    async def _answer(self, heard: CallerText, outbox: Outbox[Any]) -> None:
        reply = heard.reply
        reply.answered_by = self.llm.name or "llm"
        messages = reply.prompt(heard.text)
        earlier = [m.content for m in reply.history if m.role == "assistant"]
        try:
            _, repeated = await self._attempt(heard, messages, earlier, outbox)
            if repeated:
                self.regenerated += 1
                reply.mark("regenerated")
                _note(reply, "repeat")
                messages = without_replies(messages, repeated)
                _, repeated = await self._attempt(heard, messages, earlier, outbox)
            if repeated:
                assert self.guards is not None
                self.repeat_fallbacks += 1
                _note(reply, "repeat_fallback")
                line = pick_fallback(self.guards.repeat_fallback_lines, earlier)
                await self._say_whole(heard, line, outbox)
        except LlmError as exc:
            self.failures += 1
            reply.llm_failed = True
            reply.note_failure("llm", str(exc))
            if not reply.text and self.fallback_line:  # a failure mid-reply keeps its words
                await self._say_whole(heard, self.fallback_line, outbox)

    async def _attempt(
        self, heard: CallerText, messages: list[Message], earlier: list[str], outbox: Outbox[Any]
    ) -> tuple[bool, list[str]]:
        """Stream one reply to ``messages`` through the guards: (anything said, the earlier
        replies it repeated, if it did: then nothing of it was said). Speculative while
        its turn is not committed and it has said nothing; shed, it waits for the commit."""
        reply = heard.reply

        def still_speculative() -> bool:
            return not reply.committed.is_set() and not reply.text

        while True:
            try:
                with speculating(still_speculative):
                    return await self._stream_reply(heard, messages, earlier, outbox)
            except LlmShed:
                if not still_speculative():
                    raise  # committed work is never shed: a backend's failure
                self.shed += 1
                reply.llm_shed += 1
                reply.mark("llm_shed")
            await reply.committed.wait()

    async def _stream_reply(
        self, heard: CallerText, messages: list[Message], earlier: list[str], outbox: Outbox[Any]
    ) -> tuple[bool, list[str]]:
        reply, guards = heard.reply, self.guards
        watch = limit = None
        if guards is not None and guards.no_repeats:
            watch = RepeatWatch(
                earlier, ratio=guards.repeat_ratio, min_words=guards.repeat_min_words
            )
        if guards is not None and guards.max_spoken_words > 0:
            limit = LengthLimit(guards.max_spoken_words, guards.sentence_overrun_words)
        text, held, said = "", "", False
        held_since: float | None = None

        async def say(delta: str) -> None:
            nonlocal said
            reply.text += delta
            said = True
            await outbox.send(BotText(reply=reply, text=delta, captured_at=heard.captured_at))
            if reply.pieces_queued and not reply.first_audio.is_set():
                await reply.first_audio.wait()

        with trio.CancelScope(deadline=trio.current_time() + self.timeout_s) as wait:
            async with (
                aclosing(self.llm.stream(messages)) as stream,
                aclosing(_until_stalled(stream, self.timeout_s)) as deltas,
            ):
                async for delta in deltas:
                    if reply.ended:  # the voice failed, the fallback line was said instead
                        return said, []  # closing the stream stops the LLM
                    reply.mark("llm_first_token")
                    wait.deadline = math.inf
                    done = False
                    if limit is not None:
                        delta, done = limit.feed(delta)
                    text += delta
                    if watch is not None and watch.watching:
                        verdict = watch.feed(text)
                        if verdict == "repeat":
                            self.repeats += 1
                            return said, watch.repeated  # closing the stream stops the LLM
                        if verdict == "hold":
                            if held_since is None:
                                held_since = trio.current_time()
                            held, delta = held + delta, ""
                        else:
                            watch = None
                            delta, held = held + delta, ""
                            if held_since is not None:
                                self.held_s += trio.current_time() - held_since
                    if delta:
                        await say(delta)
                    if done:
                        self.cut_long += 1
                        _note(reply, "length")
                        break  # closing the stream stops the LLM: nobody would hear the rest
        if wait.cancelled_caught:
            raise LlmError(f"no reply within {self.timeout_s:g} s")
        if held:
            assert watch is not None
            if watch.end(text) == "repeat":
                self.repeats += 1
                return said, watch.repeated
            if held_since is not None:
                self.held_s += trio.current_time() - held_since
            await say(held)
        return said, []

    async def _say_whole(self, heard: CallerText, line: str, outbox: Outbox[Any]) -> None:
        """One fixed line, spoken whole (the splitter passes a piece through)."""
        heard.reply.text = line
        await outbox.send(
            SpeakableText(reply=heard.reply, text=line, captured_at=heard.captured_at)
        )

    def statistics(self) -> dict[str, Any]:
        return {
            "failures": self.failures,
            "shed": self.shed,
            "repeats": self.repeats,
            "regenerated": self.regenerated,
            "repeat_fallbacks": self.repeat_fallbacks,
            "cut_long": self.cut_long,
            "held_s": round(self.held_s, 3),
        }


async def _until_stalled(deltas: AsyncIterator[str], stall_s: float) -> AsyncIterator[str]:
    """``deltas`` as they come; :class:`LlmError` if one after the first takes over
    ``stall_s`` (the first has its own deadline, which TTS waits do not count against;
    neither do they here: only the wait for the next word does)."""
    first = True
    while True:
        with trio.move_on_after(math.inf if first else stall_s) as waited:
            try:
                delta = await anext(deltas)
            except StopAsyncIteration:
                return
        if waited.cancelled_caught:
            raise LlmError(f"the reply stalled for {stall_s:g} s")
        first = False
        yield delta


def _note(reply: Reply, guard: str) -> None:
    """Record on the reply what a guard did (comma-separated, for the turn's record)."""
    reply.guarded = f"{reply.guarded},{guard}" if reply.guarded else guard
