"""The lifecycle every shared model service has: load once, serve every call, free.

A voice bot enters each of its services' :meth:`Service.serving` once for the
server's lifetime (DESIGN.md §4: models are shared services, not per-call copies),
so a bad model path fails at start-up and no call pays for a load. Most services
only need :meth:`~Service.setup` and :meth:`~Service.aclose`; one that runs a task
of its own (the batched VAD) overrides ``serving`` instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

__all__ = ["CLEANUP_TIMEOUT", "Service"]

CLEANUP_TIMEOUT = 5.0
"""Seconds a service may take to free what it holds when the server stops."""


class Service:
    """Base of the shared speech services (VAD, STT, LLM, TTS): ``async with s.serving():``."""

    name: str = ""

    async def setup(self) -> None:
        """Load or connect (once, before the first call). Raise the service's error."""

    async def aclose(self) -> None:
        """Free what :meth:`setup` took."""

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """Set up, serve for the block's duration, then free (bounded and shielded)."""
        await self.setup()
        try:
            yield
        finally:
            with trio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                await self.aclose()
