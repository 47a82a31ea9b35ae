"""Work a caller is waiting for goes first: a capacity limiter with an urgent lane.

A shared model service runs a few jobs at a time from every call. When they queue,
plain first-come order makes a call's *first* sentence of a reply (the caller hears
silence until it is made) wait behind another call's third sentence (which that
caller will not hear for seconds: the first two are still playing).
:class:`PriorityLimiter` is a drop-in for :class:`trio.CapacityLimiter` wherever
``trio.to_thread.run_sync(..., limiter=...)`` or ``async with limiter`` is used; a
waiter marked :func:`urgent` is served before every waiter that is not, and within a
lane in arrival order. Urgency travels in a context variable, so the stage that knows
(the synthesizer: is this the reply's first piece?) marks it, and the service that
queues needs no new argument::

    with urgent(not reply.first_audio.is_set()):
        audio = await tts.synthesize(text)

The flag may also be a predicate, asked when the waiter arrives and each time a token
is handed on: work that becomes urgent while it waits (a speculative turn's
transcription, once the turn is committed: ``urgent(reply.committed.is_set)``) moves
to the urgent lane then, in its original arrival order.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

__all__ = ["PriorityLimiter", "is_urgent", "urgent"]

Urgency = bool | Callable[[], bool]

_URGENT: contextvars.ContextVar[Urgency] = contextvars.ContextVar(
    "voicegraph_urgent", default=False
)


@contextmanager
def urgent(flag: Urgency = True) -> Iterator[None]:
    """Mark the work queued inside the block as urgent (``flag``, or while ``flag()``)."""
    token = _URGENT.set(flag)
    try:
        yield
    finally:
        _URGENT.reset(token)


def _now(flag: Urgency) -> bool:
    return bool(flag()) if callable(flag) else flag


def is_urgent() -> bool:
    """Whether work queued here now is marked urgent."""
    return _now(_URGENT.get())


@dataclass(slots=True)
class _Waiter:
    borrower: Any
    urgency: Urgency
    event: trio.Event = field(default_factory=trio.Event)


class PriorityLimiter:
    """``total_tokens`` jobs at a time; urgent waiters first, then first come first served."""

    def __init__(self, total_tokens: int) -> None:
        if total_tokens < 1:
            raise ValueError(f"total_tokens must be at least 1, not {total_tokens}")
        self.total_tokens = total_tokens
        self._borrowers: set[Any] = set()
        self._waiters: list[_Waiter] = []
        self.urgent_served = 0
        self.jumped = 0  # urgent waiters served before a non-urgent one that came earlier

    @property
    def borrowed_tokens(self) -> int:
        return len(self._borrowers)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire_on_behalf_of(self, borrower: Any) -> None:
        if borrower in self._borrowers:
            raise RuntimeError("this borrower already holds a token of the limiter")
        urgency = _URGENT.get()
        if len(self._borrowers) < self.total_tokens and not self._waiters:
            self._borrowers.add(borrower)
            self.urgent_served += _now(urgency)
            await trio.lowlevel.cancel_shielded_checkpoint()  # as CapacityLimiter does
            return
        waiter = _Waiter(borrower, urgency)
        self._waiters.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.event.is_set():  # granted as we were cancelled: pass it on
                self.release_on_behalf_of(borrower)
            else:
                self._waiters.remove(waiter)
            raise

    async def acquire(self) -> None:
        await self.acquire_on_behalf_of(trio.lowlevel.current_task())

    def release_on_behalf_of(self, borrower: Any) -> None:
        self._borrowers.remove(borrower)
        while self._waiters and len(self._borrowers) < self.total_tokens:
            waiter = self._next_waiter()
            self._borrowers.add(waiter.borrower)
            waiter.event.set()

    def _next_waiter(self) -> _Waiter:
        """The earliest urgent waiter (urgency asked now), else the earliest waiter."""
        first = self._waiters[0]  # in arrival order
        chosen = next((w for w in self._waiters if _now(w.urgency)), None)
        if chosen is None:
            chosen = first
        else:
            self.urgent_served += 1
            self.jumped += chosen is not first
        self._waiters.remove(chosen)
        return chosen

    def release(self) -> None:
        self.release_on_behalf_of(trio.lowlevel.current_task())

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()
