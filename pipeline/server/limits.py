"""Bounds on what one server takes from the network: how many connections in all and
per source address, the process's file descriptors, and how many log lines an abuser
can make it write.

Without them, whoever reaches the port decides how much memory, how many file
descriptors and how much log the server spends: 300 idle connections took 300 MB, at
the descriptor limit new calls waited seconds while stderr filled with tracebacks, and
every refused key wrote a line.
"""

from __future__ import annotations

import errno
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from pipeline.server.auth import is_loopback

__all__ = [
    "ACCEPT_CAPACITY_ERRNOS",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_CONNECTIONS_PER_SOURCE",
    "UNREGISTERED_MESSAGE_SIZE",
    "ConnectionGate",
    "ConnectionLimits",
    "RateLimitedLog",
    "raise_fd_limit",
]

DEFAULT_MAX_CONNECTIONS = 1024
"""Open connections of every kind (calls, ``/events``, HTTP) at once."""

DEFAULT_MAX_CONNECTIONS_PER_SOURCE = 256
"""From one source address. The platform dials every call from a few media servers, so
this must stay well above one server's concurrent calls."""

UNREGISTERED_MESSAGE_SIZE = 16 * 1024
"""The largest WebSocket message before ``connected`` (a registration is ~100 bytes); the
protocol's 1 MB applies once the call is registered."""

FD_RESERVE = 64
"""Descriptors kept back from connections: listeners, log files, recordings, models."""

ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
"""``accept()`` failures that mean "out of resources for now", not a broken listener."""

LOG_INTERVAL = 10.0
"""Seconds between two log lines of one kind from :class:`RateLimitedLog`."""


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_per_source: int = DEFAULT_MAX_CONNECTIONS_PER_SOURCE

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_per_source < 1:
            raise ValueError("connection limits must be at least 1")


class ConnectionGate:
    """Counts open connections, in all and per source, and turns away those over a limit.

    Loopback sources and None (an in-process stream) count toward the total only: this
    host is one operator (a load test, a proxy on the same host), not one abuser.
    """

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open = 0
        self.by_source: Counter[str] = Counter()
        self.counters = {"refused_busy": 0, "refused_per_source": 0}

    def admit(self, source: str | None) -> str | None:
        """Take a place for a connection from ``source``; None, or why it is refused."""
        if self.open >= self.limits.max_connections:
            self.counters["refused_busy"] += 1
            return f"server busy: {self.limits.max_connections} connections open"
        source = None if is_loopback(source) else source
        if source is not None and self.by_source[source] >= self.limits.max_per_source:
            self.counters["refused_per_source"] += 1
            return f"too many connections from one address (limit {self.limits.max_per_source})"
        self.open += 1
        if source is not None:
            self.by_source[source] += 1
        return None

    def release(self, source: str | None) -> None:
        self.open -= 1
        source = None if is_loopback(source) else source
        if source is not None:
            self.by_source[source] -= 1
            if not self.by_source[source]:
                del self.by_source[source]


def raise_fd_limit() -> tuple[int, int] | None:
    """Raise this process's soft limit on open files to its hard limit (a server needs
    one descriptor per connection; distributions often start processes at 1024).
    Returns (before, after), or None where the platform has no such limit."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Unix
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):
        return soft, soft
    return soft, wanted


def connections_within_fd_limit(max_connections: int, fd_limit: int | None) -> int:
    """``max_connections``, lowered so the connections cannot use up the descriptors the
    rest of the process needs (:data:`FD_RESERVE`)."""
    if fd_limit is None or fd_limit <= 0:
        return max_connections
    return max(1, min(max_connections, fd_limit - FD_RESERVE))


class RateLimitedLog:
    """One log line per kind per :data:`LOG_INTERVAL`; the rest are counted, and the next
    line written says how many were left out (``suppressed``).

    For events an outsider can repeat at will (refused keys, protocol errors, accept
    failures): each is still counted in the server's counters, but cannot fill the log.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._next_at: dict[str, float] = {}
        self.suppressed: Counter[str] = Counter()

    def log(self, level: int, message: str, **fields: Any) -> bool:
        """Log ``message`` (the kind) unless one was logged within the interval; True if
        it was written."""
        now = self._clock()
        if now < self._next_at.get(message, float("-inf")):
            self.suppressed[message] += 1
            return False
        self._next_at[message] = now + self.interval
        left_out = self.suppressed.pop(message, 0)
        extra = {**fields, "suppressed": left_out} if left_out else fields
        self.logger.log(level, message, extra=extra)
        return True

    def warning(self, message: str, **fields: Any) -> bool:
        return self.log(logging.WARNING, message, **fields)

    def summary(self) -> dict[str, int]:
        """What was left out of the log since each kind's last line."""
        return dict(self.suppressed)
