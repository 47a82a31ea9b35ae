"""Fault injection for the speech services: a wrapper that makes one raise, hang or slow down.

:func:`faulty` wraps a real service or a named fake (``vad``, ``stt``, ``llm``, ``tts``,
``turn``: the end-of-turn model) in a :class:`FaultyService` of the same interface:
everything passes through to the wrapped service except on the requests its
:class:`FaultPlan` names, which raise (by default the service's own error: ``VadError``,
``SttError``, ``LlmError``, ``TtsError``, ``ServiceError``), hang (until cancelled) or
are slowed by ``delay_s``. A plan strikes at start-up (``at="start"``: entering
``serving()``) or mid-call (``at="call"``: the n-th request, counted from 0). A request
is one call's VAD stream (its windows from ``after_items`` on fail), one transcription,
one LLM reply (its words from ``after_items`` on), one piece of TTS or one end-of-turn
judgement. ``requests`` and ``strikes`` say what happened, so a test can check the
fault really was injected.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import trio

from pipeline.runtime.dialogue import Message
from pipeline.runtime.errors import LlmError, ServiceError, SttError, TtsError, VadError

__all__ = ["FaultPlan", "FaultyService", "faulty"]

Kind = Literal["raise", "hang", "slow"]
ERRORS: dict[str, type[Exception]] = {
    "vad": VadError,
    "stt": SttError,
    "llm": LlmError,
    "tts": TtsError,
    "turn": ServiceError,  # the end-of-turn model's service error
}


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What goes wrong, when, and for how many requests (``count=None``: all from
    ``first`` on). ``error``: what ``raise`` raises instead of the service's own error."""

    kind: Kind
    at: Literal["start", "call"] = "call"
    first: int = 0
    count: int | None = 1
    after_items: int = 0
    delay_s: float = 0.3
    error: Exception | None = None

    def hits(self, request: int) -> bool:
        if self.at != "call" or request < self.first:
            return False
        return self.count is None or request < self.first + self.count


class FaultyService:
    """A service with faults injected (see the module); build one with :func:`faulty`."""

    role = ""

    def __init__(self, inner: Any, plan: FaultPlan) -> None:
        self.inner = inner
        self.plan = plan
        self.requests = 0
        self.strikes = 0
        self.name = f"faulty-{getattr(inner, 'name', self.role)}"

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.inner, attribute)

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        if self.plan.at == "start":
            await self.strike("at start-up")
        serving: AbstractAsyncContextManager[None] = self.inner.serving()
        async with serving:
            yield

    def next_request(self) -> bool:
        """Count a request; True if the plan makes it fail."""
        request, self.requests = self.requests, self.requests + 1
        return self.plan.hits(request)

    async def strike(self, where: str) -> None:
        """The fault itself: raise, hang until cancelled, or sleep ``delay_s``."""
        self.strikes += 1
        plan = self.plan
        if plan.kind == "raise":
            raise plan.error or ERRORS[self.role](f"injected {self.role} fault {where}")
        if plan.kind == "hang":
            await trio.sleep_forever()
        await trio.sleep(plan.delay_s)


class _FaultyVadStream:
    def __init__(self, owner: FaultyVad, inner: Any, failing: bool) -> None:
        self.owner, self.inner, self.failing = owner, inner, failing
        self.windows = 0

    def __enter__(self) -> _FaultyVadStream:
        self.inner.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.__exit__(*exc)

    async def probability(self, window: np.ndarray) -> float:
        self.windows += 1
        if self.failing and self.windows > self.owner.plan.after_items:
            await self.owner.strike(f"in window {self.windows}")
        return await self.inner.probability(window)


class FaultyVad(FaultyService):
    role = "vad"

    def open_stream(self) -> _FaultyVadStream:
        return _FaultyVadStream(self, self.inner.open_stream(), self.next_request())


class FaultyStt(FaultyService):
    role = "stt"

    async def transcribe(self, samples: np.ndarray, sample_rate: int = 8000) -> Any:
        if self.next_request():
            await self.strike("in a transcription")
        return await self.inner.transcribe(samples, sample_rate)


class FaultyLlm(FaultyService):
    role = "llm"

    async def stream(self, messages: Sequence[Message]) -> AsyncIterator[str]:
        failing = self.next_request()
        words = 0
        if failing and self.plan.after_items == 0:
            await self.strike("before the first word")
        async for delta in self.inner.stream(messages):
            yield delta
            words += 1
            if failing and words >= self.plan.after_items:
                await self.strike(f"after {words} words")


class FaultyTts(FaultyService):
    role = "tts"

    async def synthesize(self, text: str) -> bytes:
        if self.next_request():
            await self.strike(f"voicing {text!r}")
        return await self.inner.synthesize(text)


class FaultyTurnModel(FaultyService):
    role = "turn"

    async def completion(self, samples: np.ndarray, sample_rate: int) -> float:
        if self.next_request():
            await self.strike("judging a turn")
        return await self.inner.completion(samples, sample_rate)


_BY_ROLE: dict[str, type[FaultyService]] = {
    "vad": FaultyVad,
    "stt": FaultyStt,
    "llm": FaultyLlm,
    "tts": FaultyTts,
    "turn": FaultyTurnModel,
}


def faulty(role: str, inner: Any, plan: FaultPlan) -> FaultyService:
    """``inner`` (the ``role`` service of a bot) with ``plan``'s faults injected."""
    return _BY_ROLE[role](inner, plan)
