"""Graceful drain for rolling updates: stop taking calls, let live calls finish, then stop.

A front-end being replaced must not cut its callers off mid-sentence, and must not take
new calls it will not live to finish. On the first SIGTERM or SIGINT, or an operator's
``POST /admin/drain``:

1. new call WebSockets are refused with HTTP ``503`` (``retry-after: 1``) *before* the
   upgrade, so a load balancer retries them on another front-end (HAProxy: ``retry-on
   503`` with ``option redispatch``); ``/events``, webhooks and ``/health`` still answer;
2. ``GET /health`` answers ``503 {"status": "draining"}`` (with ``calls``, the live call
   count, for the key's holder), so health checks take the front-end out of rotation;
3. live calls go on until they end, or until the deadline (``serve --drain-timeout``,
   default 30 s); the calls still live then are closed with 1001 "server going away",
   which the platform reads as "dial again";
4. the server stops and ``serve`` exits 0.

A second signal stops at once (every live call closed with 1001 now), as does a drain
deadline of 0: what a single signal did before draining existed. ``/admin/drain`` is for
the key's holder (or, with no key set, this host); others get 403. In a ``--workers``
fleet the request is passed to the supervisor (SIGTERM to the parent), which forwards it
to every worker, so the whole fleet drains, not just the worker that answered.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import AsyncIterator
from typing import Any, Protocol

import trio

from pipeline.server.auth import credentials_from_request, is_trusted
from pipeline.server.http_front import HostedServer, HttpRequest, HttpResponse

__all__ = ["DEFAULT_DRAIN_TIMEOUT", "DRAIN_PATH", "Drain"]

logger = logging.getLogger("voicegraph.drain")

DEFAULT_DRAIN_TIMEOUT = 30.0
DRAIN_PATH = "/admin/drain"


class Drainable(HostedServer, Protocol):
    """What a drain needs of :class:`~pipeline.server.voice_stream.VoiceStreamServer`."""

    def start_draining(self) -> None: ...

    async def wait_until_idle(self) -> None: ...

    def shutdown(self) -> None: ...


class Drain:
    """Drains ``server`` once asked (:meth:`request`, a signal, ``POST /admin/drain``).

    :meth:`run` waits for the request, drains for at most ``timeout_s`` and shuts the
    server down; :meth:`stop_now` cuts the wait short. ``supervisor_pid``: in a fleet
    worker, the parent to pass ``/admin/drain`` on to.
    """

    def __init__(
        self, server: Drainable, timeout_s: float, *, supervisor_pid: int | None = None
    ) -> None:
        if timeout_s < 0:
            raise ValueError(f"drain timeout must be 0 or more seconds, not {timeout_s}")
        self.server = server
        self.timeout_s = timeout_s
        self.supervisor_pid = supervisor_pid
        self.requested = trio.Event()
        self.outcome: str | None = None  # "idle", "deadline" or "stopped", once over
        self._wait = trio.CancelScope()
        self._signals = 0
        self._asked_supervisor = False

    def install(self) -> None:
        """Answer ``POST /admin/drain`` on the server (before it serves)."""
        self.server.add_http_route("POST", DRAIN_PATH, self.handle_request)

    def request(self, why: str) -> None:
        """Start draining (a second request changes nothing)."""
        if self.requested.is_set():
            return
        logger.info(
            "draining",
            extra={"why": why, "calls": len(self.server.calls), "timeout_s": self.timeout_s},
        )
        self.requested.set()

    def stop_now(self) -> None:
        """Close the live calls now instead of waiting for them (1001)."""
        self.request("stop now")
        self._wait.cancel()

    def on_signal(self, signum: int) -> None:
        """The first signal drains, the second stops at once."""
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            self.request(name)
        else:
            logger.warning("second signal: stopping now", extra={"signal": name})
            self.stop_now()

    async def handle_request(self, request: HttpRequest) -> HttpResponse:
        """``POST /admin/drain``: 202 and the drain starts; 403 without the key."""
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in request.headers]
        offered = credentials_from_request(request.target, headers)
        if not is_trusted(self.server.config.api_key, offered, request.peer):
            return HttpResponse.json(403, {"error": "forbidden"})
        answer: dict[str, Any] = {
            "status": "draining",
            "calls": len(self.server.calls),
            "timeout_s": self.timeout_s,
        }
        if self.supervisor_pid is not None:  # the whole fleet drains, this worker with it
            # once: a second SIGTERM to the supervisor would stop the fleet at once
            if not (self.requested.is_set() or self._asked_supervisor):
                self._asked_supervisor = True
                os.kill(self.supervisor_pid, signal.SIGTERM)
            answer["fleet"] = True
        else:
            self.request(DRAIN_PATH)
        return HttpResponse.json(202, answer)

    async def run(self, signals: AsyncIterator[int] | None = None) -> None:
        """Wait for a request (or the first of ``signals``), drain, shut the server down."""
        async with trio.open_nursery() as nursery:
            if signals is not None:
                nursery.start_soon(self._follow, signals)
            await self.requested.wait()
            await self._drain()
            nursery.cancel_scope.cancel()

    async def _follow(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            self.on_signal(signum)

    async def _drain(self) -> None:
        self.server.start_draining()
        self.outcome = "stopped"
        with self._wait:
            with trio.move_on_after(self.timeout_s):
                await self.server.wait_until_idle()
                self.outcome = "idle"
            if self.outcome != "idle":
                self.outcome = "deadline"
        left = len(self.server.calls)
        logger.info("drained", extra={"outcome": self.outcome, "calls_closed": left})
        self.server.shutdown()
