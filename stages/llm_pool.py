"""Which model context serves which reply: a small pool with cache affinity and priorities.

A llama.cpp context holds one KV cache, so it generates one reply at a time; a pool
of contexts lets several calls' replies be generated side by side (the weights are
memory-mapped once and shared; each context adds its cache and compute buffers).
The pool decides three things:

- **Affinity.** A context remembers the messages it last evaluated. A request gets
  the free context sharing the longest leading run of messages with it (a call's
  next turn returns to the context holding its conversation, so only the new words
  are evaluated); ties go to the least recently used context, which keeps the
  caches of calls that spoke recently.
- **Priority.** A *committed* request (a caller is waiting for the answer) waits in
  line, first come first served. A *speculative* one (a reply started while the
  caller may still go on) only ever uses idle capacity: with no free context it is
  shed at once (:class:`LlmShed`), never queued.
- **Pre-emption.** When a committed request has to wait and a context is running a
  speculative reply, that reply is asked to stop (:attr:`Slot.preempted`, checked by
  the backend before each token) and its context goes to the committed request.

Who marks a reply speculative: the backend's ``speculative=True``, or, without any
backend argument, the stage that knows (the responder, for a reply started at a
pause) with :func:`speculating`, which travels in a context variable as
:func:`stages.priority.urgent` does. ``speculating(still)`` keeps a reply speculative
only while ``still()`` is true: once its turn is committed, or once it has said words
that are on their way to the voice (stopping it then would lose them), it is
committed work and is neither shed nor stopped.

The pool holds no model itself (``Slot.resource`` is whatever the backend put there),
so its policy is tested without one.
"""

from __future__ import annotations

import contextvars
import itertools
from collections.abc import AsyncIterator, Callable, Hashable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from pipeline.runtime.errors import LlmError

__all__ = ["ContextPool", "LlmShed", "Slot", "shared_prefix", "speculating"]

Speculation = Callable[[], bool]
"""Whether a request is still speculative, asked when it arrives and when it could be
stopped."""

_SPECULATION: contextvars.ContextVar[Speculation | None] = contextvars.ContextVar(
    "voicegraph_speculation", default=None
)


def _always() -> bool:
    return True


@contextmanager
def speculating(still: Speculation = _always) -> Iterator[None]:
    """Make the replies requested inside the block speculative while ``still()`` holds."""
    token = _SPECULATION.set(still)
    try:
        yield
    finally:
        _SPECULATION.reset(token)


class LlmShed(LlmError):
    """A speculative reply was not started, or was stopped, to serve committed ones first.

    Not a failure of the model: the turn, once committed, asks again."""


def shared_prefix(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """How many leading items ``a`` and ``b`` have in common."""
    count = 0
    for left, right in zip(a, b, strict=False):
        if left != right:
            break
        count += 1
    return count


@dataclass(eq=False, slots=True)
class Slot:
    """One context of the pool: its resource and what its cache holds."""

    index: int
    resource: Any = None
    cached: tuple[Hashable, ...] = ()  # the messages last evaluated, in order
    busy: bool = False
    speculation: Speculation | None = None  # None: committed work
    stop_asked: bool = False
    last_used: int = 0

    @property
    def speculative(self) -> bool:
        """Whether the reply holding it is speculative now (it may become committed)."""
        return self.speculation is not None and self.speculation()

    @property
    def preempted(self) -> bool:
        """Whether the backend must stop the reply: asked to, and still speculative (a
        reply committed since then goes on, and the waiter waits for the next context)."""
        return self.stop_asked and self.speculative


@dataclass(eq=False, slots=True)
class _Waiter:
    key: tuple[Hashable, ...]
    order: int
    granted: Slot | None = None
    event: trio.Event = field(default_factory=trio.Event)


class ContextPool:
    """``async with pool.using(messages) as slot:`` — one context for one reply."""

    def __init__(self, resources: Sequence[Any]) -> None:
        if not resources:
            raise ValueError("a context pool needs at least one context")
        self.slots = [Slot(index, resource) for index, resource in enumerate(resources)]
        self._waiters: list[_Waiter] = []
        self._clock = itertools.count(1)
        self.granted = 0
        self.waited = 0
        self.shed = 0
        self.preempted = 0
        self.affinity_hits = 0  # granted a context that held more than the first message

    @property
    def busy(self) -> int:
        return sum(slot.busy for slot in self.slots)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _best_free(self, key: tuple[Hashable, ...]) -> Slot | None:
        free = [slot for slot in self.slots if not slot.busy]
        if not free:
            return None
        return max(free, key=lambda slot: (shared_prefix(slot.cached, key), -slot.last_used))

    def _grant(
        self, slot: Slot, key: tuple[Hashable, ...], speculation: Speculation | None
    ) -> Slot:
        slot.busy, slot.speculation, slot.stop_asked = True, speculation, False
        slot.last_used = next(self._clock)
        self.granted += 1
        if shared_prefix(slot.cached, key) > 1:
            self.affinity_hits += 1
        return slot

    def _release(self, slot: Slot) -> None:
        slot.busy, slot.speculation, slot.stop_asked = False, None, False
        while self._waiters:
            waiter = self._waiters[0]
            free = self._best_free(waiter.key)
            if free is None:
                break
            self._waiters.pop(0)
            waiter.granted = self._grant(free, waiter.key, None)
            waiter.event.set()

    def _preempt_one_speculative(self) -> None:
        """Ask one running speculative reply to stop, unless one already was for each waiter."""
        stopping = sum(slot.preempted for slot in self.slots)
        if stopping >= len(self._waiters):
            return
        for slot in self.slots:
            if slot.busy and slot.speculative and not slot.stop_asked:
                slot.stop_asked = True
                self.preempted += 1
                return

    @asynccontextmanager
    async def using(
        self, messages: Sequence[Hashable], *, speculative: bool = False
    ) -> AsyncIterator[Slot]:
        """Hold the best context for ``messages`` for the block; on the way out it
        remembers ``messages`` (what its cache now starts with, unless the block says
        otherwise by setting ``slot.cached``). Raises :class:`LlmShed` for a speculative
        request (``speculative``, or made inside :func:`speculating`) when every context
        is busy."""
        key = tuple(messages)
        speculation = _always if speculative else _SPECULATION.get()
        if speculation is not None and not speculation():
            speculation = None  # committed by now
        slot = self._best_free(key) if not self._waiters else None
        if slot is not None:
            self._grant(slot, key, speculation)
        elif speculation is not None:
            self.shed += 1
            raise LlmShed("every LLM context is busy: speculative reply not started")
        else:
            slot = await self._wait(key)
        slot.cached = key
        try:
            yield slot
        finally:
            self._release(slot)

    async def _wait(self, key: tuple[Hashable, ...]) -> Slot:
        waiter = _Waiter(key, next(self._clock))
        self._waiters.append(waiter)
        self.waited += 1
        self._preempt_one_speculative()
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted is not None:  # granted as we were cancelled: pass it on
                self._release(waiter.granted)
            else:
                self._waiters.remove(waiter)
            raise
        assert waiter.granted is not None
        return waiter.granted

    @asynccontextmanager
    async def all_contexts(self) -> AsyncIterator[list[Slot]]:
        """Hold every context (loading, priming, freeing): waits for replies in progress."""
        async with AsyncExitStack() as stack:
            yield [await stack.enter_async_context(self.using(())) for _ in self.slots]

    def statistics(self) -> dict[str, Any]:
        return {
            "contexts": len(self.slots),
            "busy_contexts": self.busy,
            "waiting": self.waiting,
            "granted": self.granted,
            "waited": self.waited,
            "affinity_hits": self.affinity_hits,
            "speculative_shed": self.shed,
            "speculative_preempted": self.preempted,
        }
