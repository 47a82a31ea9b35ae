"""``GET /metrics``: the server's calls and transport in Prometheus's text format.

Built on ``prometheus-client``. Each server has its own :class:`Metrics` (a dedicated
``CollectorRegistry``, never the library's global one), so tests and several servers in
one process do not see each other's series. Other layers add their own metrics to the
same object (the bot's turns: :mod:`pipeline.bot.turn_metrics`).

Cheap on the hot path: nothing is recorded per packet or per message. The server already
counts those (each call's :class:`~pipeline.server.call.CallStatistics`, its pipeline's
stage counters, the HTTP front's and the server's counters); they are *read* when
metrics are collected (before every scrape and, in a fleet, once a second) and the
Prometheus counters are advanced by what changed since the last read (:class:`FedCounter`).
A finished call adds its final counts once, through the server's ``call_observers``,
its stages' counters (packets late, duplicate, stale, malformed) included: those count
when the call ends, since building a stage's statistics is too dear to do for every
live call at every collection.

Several workers (``serve --workers N``): a scrape behind ``SO_REUSEPORT`` reaches any one
worker, so every worker must answer for the fleet. The supervisor gives the fleet a
fresh directory in ``PROMETHEUS_MULTIPROC_DIR`` (:func:`fleet_metrics_dir`); there
``prometheus-client``'s multiprocess mode keeps each process's values in files, a scrape
sums every process's files (``MultiProcessCollector``), counters of a worker that died
are kept (fleet totals never go back), and :func:`forget_worker` (``mark_process_dead``)
drops a dead worker's live gauges. Gauges are ``livesum``: the fleet's live calls.
Without the variable (one process) a plain registry is exposed.

Who may scrape: as ``/health``'s details, the key's holder when a key is set (``401``
otherwise), and without a key only this host (``403`` from elsewhere).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

from pipeline.protocol.events import CloseCode
from pipeline.server.auth import credentials_from_request, is_trusted
from pipeline.server.http_front import HostedServer, HttpRequest, HttpResponse

__all__ = [
    "MULTIPROC_DIR_ENV",
    "FedCounter",
    "Metrics",
    "ServerMetrics",
    "call_outcome",
    "fleet_metrics_dir",
    "forget_worker",
    "serve_metrics",
]

logger = logging.getLogger("voicegraph.metrics")

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
SYNC_INTERVAL_S = 1.0
"""In a fleet, how often each worker publishes what its counters read (a scrape may
see another worker's live counts this much late; finished calls count at once)."""

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The classic text format (0.0.4), which every Prometheus version reads: our names are
plain, so ``generate_latest``'s output needs none of format 1.0.0's escaping."""

HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class FedCounter:
    """A Prometheus counter advanced from running totals kept elsewhere.

    :meth:`feed` gets the current total (per label values) and adds what grew since the
    last feed. A total that went down (a re-dialled call briefly out of the live set)
    adds nothing until it is back above what was fed: nothing is counted twice.
    """

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self._fed: dict[tuple[str, ...], float] = {}

    def declare(self, *labels: str) -> None:
        """Show the series at 0 before anything is counted (dashboards see it exists)."""
        self.counter.labels(*labels)

    def feed(self, total: float, *labels: str) -> None:
        fed = self._fed.get(labels, 0.0)
        if total > fed:
            (self.counter.labels(*labels) if labels else self.counter).inc(total - fed)
            self._fed[labels] = total


class Metrics:
    """One server's metrics: its registry, the readers run before each collection, and
    the ``/metrics`` handler. In a fleet (``PROMETHEUS_MULTIPROC_DIR`` set when the
    process started) the exposition sums every worker's values."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        directory = os.environ.get(MULTIPROC_DIR_ENV)
        self.multiprocess_dir: Path | None = Path(directory) if directory else None
        self._readers: list[Callable[[], None]] = []

    # --- defining metrics ---------------------------------------------------------

    def counter(self, name: str, documentation: str, labels: Iterable[str] = ()) -> Counter:
        return Counter(name, documentation, list(labels), registry=self.registry)

    def fed_counter(self, name: str, documentation: str, labels: Iterable[str] = ()) -> FedCounter:
        return FedCounter(self.counter(name, documentation, labels))

    def gauge(self, name: str, documentation: str, labels: Iterable[str] = ()) -> Gauge:
        """A gauge summed over the live workers of a fleet (``livesum``)."""
        return Gauge(
            name, documentation, list(labels), registry=self.registry, multiprocess_mode="livesum"
        )

    def histogram(
        self,
        name: str,
        documentation: str,
        buckets: Iterable[float],
        labels: Iterable[str] = (),
    ) -> Histogram:
        return Histogram(
            name, documentation, list(labels), registry=self.registry, buckets=tuple(buckets)
        )

    # --- collecting ---------------------------------------------------------------

    def on_collect(self, reader: Callable[[], None]) -> None:
        """Run ``reader`` before every collection: it feeds counters from the totals it
        reads. It must be quick (it runs in the event loop) and must not raise."""
        self._readers.append(reader)

    def read(self) -> None:
        """Bring every fed counter and gauge up to date (this process's part)."""
        for reader in self._readers:
            try:
                reader()
            except Exception:  # a broken reader must not cost the scrape
                logger.exception("metrics reader failed")

    def exposition(self) -> bytes:
        """The text format: this process's registry, or the fleet's files summed."""
        self.read()
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        fleet = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(fleet, str(self.multiprocess_dir))
        return generate_latest(fleet)

    def handler(self, api_key: str | None) -> HttpHandler:
        """``GET /metrics`` for whoever may see it (module doc): 401 without the key when
        one is set, 403 from another host when none is."""

        async def metrics(request: HttpRequest) -> HttpResponse:
            headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in request.headers]
            offered = credentials_from_request(request.target, headers)
            if not is_trusted(api_key, offered, request.peer):
                if api_key is None:
                    return HttpResponse.json(403, {"error": "metrics are for this host only"})
                return HttpResponse.json(
                    401, {"error": "authentication required"}, (("www-authenticate", "Bearer"),)
                )
            return HttpResponse(200, self.exposition(), CONTENT_TYPE)

        return metrics

    async def keep_fleet_current(self, interval_s: float = SYNC_INTERVAL_S) -> None:
        """In a fleet, publish this worker's counts every ``interval_s`` (a scrape lands on
        another worker); one process reads them at each scrape instead. Runs until
        cancelled."""
        if self.multiprocess_dir is None:
            return
        while True:
            self.read()
            await trio.sleep(interval_s)

    def around(self, serve: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        """``serve(server)`` with :meth:`keep_fleet_current` beside it."""

        async def serve_with_metrics(server: Any) -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.keep_fleet_current)
                await serve(server)
                nursery.cancel_scope.cancel()

        return serve_with_metrics


# --- the fleet --------------------------------------------------------------------------


def fleet_metrics_dir(fleet_dir: Path) -> Path:
    """A fresh, empty directory for one fleet's multiprocess metrics."""
    directory = fleet_dir / "metrics"
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    return directory


def forget_worker(pid: int, directory: Path) -> None:
    """A worker exited: drop its live gauges (its counters and histograms stay counted)."""
    prometheus_multiprocess.mark_process_dead(pid, str(directory))


# --- the server's own metrics -----------------------------------------------------------


class _Server(HostedServer, Protocol):
    """What :class:`ServerMetrics` reads of a :class:`~pipeline.server.VoiceStreamServer`."""

    counters: dict[str, int]
    call_observers: list[Callable[[dict[str, Any]], None]]

    @property
    def front(self) -> Any: ...


_OUTCOMES = {
    CloseCode.GOING_AWAY: "going_away",
    CloseCode.PROTOCOL_ERROR: "protocol_error",
    1007: "protocol_error",  # invalid UTF-8 in a text frame
    CloseCode.MESSAGE_TOO_BIG: "message_too_big",
    CloseCode.INTERNAL_ERROR: "internal_error",
}


def call_outcome(code: int, reason: str) -> str:
    """How a registered call ended, from its close code and reason (a label value)."""
    if code == CloseCode.NORMAL:
        if reason == "closed by peer":
            return "caller_hung_up"
        return "inactive" if reason.startswith("inactive") else "bot_hung_up"
    if code == CloseCode.POLICY_VIOLATION:
        return "replaced" if reason.startswith("replaced") else "policy_violation"
    return _OUTCOMES.get(code, "other")


# call statistics → (counter, label): what a call counts, read live and at its end
_DROP_KEYS = {  # a pipeline stage's counter → why a packet was not played
    "late": "late",
    "duplicate": "duplicate",
    "stale": "stale",
    "malformed": "malformed",
    "wrong_payload_type": "malformed",
}
_REFUSALS = {  # where the count is kept → reason label
    ("server", "auth_refused"): "auth_failed",
    ("server", "registration_timeouts"): "registration_timeout",
    ("server", "refused_draining"): "draining",
    ("front", "refused_busy"): "busy",
    ("front", "refused_per_source"): "per_source",
}
_SERVER_ERRORS = {
    ("server", "protocol_errors"): "protocol",
    ("server", "internal_errors"): "internal",
    ("front", "websocket_protocol_errors"): "websocket_frame",
    ("front", "bad_requests"): "bad_http_request",
    ("front", "handler_errors"): "http_handler",
    ("front", "accept_capacity_errors"): "accept_capacity",
}


def live_counts(stats: Any) -> dict[tuple[str, str], float]:
    """A live call's own counters (its :class:`CallStatistics`), keyed (metric, label):
    attribute reads, a microsecond. Its stages' counters (late, duplicate, stale,
    malformed) are left to its end: building a stage's statistics costs far more."""
    counts: dict[tuple[str, str], float] = {
        ("messages", ""): stats.messages_received,
        ("packets", ""): stats.media_packets,
        ("dropped", "inbound_full"): stats.packets_dropped,
        ("interrupts", ""): stats.interrupts_sent,
        ("speech_messages", ""): stats.speech_messages_sent,
        ("speech_seconds", ""): stats.speech_bytes_sent / 8000,
    }
    for reason, count in stats.skipped_reasons.items():
        counts["skipped", reason] = count
    return counts


def call_counts(statistics: Mapping[str, Any]) -> dict[tuple[str, str], float]:
    """A finished call's counters, from :meth:`Call.statistics` (its stages' included),
    keyed (metric, label)."""
    counts: dict[tuple[str, str], float] = {
        ("messages", ""): statistics["messages_received"],
        ("packets", ""): statistics["media_packets"],
        ("dropped", "inbound_full"): statistics["packets_dropped"],
        ("interrupts", ""): statistics["interrupts_sent"],
        ("speech_messages", ""): statistics["speech_messages_sent"],
        ("speech_seconds", ""): statistics["speech_bytes_sent"] / 8000,
    }
    for reason, count in statistics["skipped_reasons"].items():
        counts["skipped", reason] = count
    for stage in statistics.get("pipeline", {}).values():
        if not isinstance(stage, Mapping):
            continue
        for key, reason in _DROP_KEYS.items():
            value = stage.get(key)
            if isinstance(value, int):
                counts["dropped", reason] = counts.get(("dropped", reason), 0) + value
    return counts


class ServerMetrics:
    """Calls (live, started, ended by outcome), transport counts, refusals and errors of
    one server, fed from the counters it keeps (module doc)."""

    def __init__(self, metrics: Metrics, server: _Server) -> None:
        self.server = server
        self.active = metrics.gauge("voicegraph_calls_active", "Calls live now")
        self.started = metrics.fed_counter("voicegraph_calls", "Calls registered")
        self.ended = metrics.counter(
            "voicegraph_calls_ended",
            "Registered calls that ended, by close code and outcome",
            ("code", "outcome"),
        )
        m = metrics.fed_counter
        self.fed: dict[str, FedCounter] = {
            "messages": m("voicegraph_messages_received", "WebSocket messages received on calls"),
            "packets": m("voicegraph_media_packets", "Caller media packets received"),
            "dropped": m(
                "voicegraph_packets_dropped",
                "Caller packets not played: inbound_full (pipeline full), late (after their "
                "slot played), duplicate, stale (old stream), malformed (bad RTP)",
                ("reason",),
            ),
            "skipped": m("voicegraph_messages_skipped", "Messages skipped, by reason", ("reason",)),
            "interrupts": m("voicegraph_interrupts_sent", "interrupt events sent"),
            "speech_messages": m("voicegraph_speech_messages_sent", "Bot speech messages sent"),
            "speech_seconds": m("voicegraph_speech_sent_seconds", "Bot speech sent, seconds"),
        }
        self.refused = m(
            "voicegraph_connections_refused", "Connections refused, by reason", ("reason",)
        )
        self.errors = m("voicegraph_server_errors", "Server-side errors, by kind", ("kind",))
        for reason in {"inbound_full", *_DROP_KEYS.values()}:
            self.fed["dropped"].declare(reason)
        for reason in _REFUSALS.values():
            self.refused.declare(reason)
        for kind in _SERVER_ERRORS.values():
            self.errors.declare(kind)
        self._finished: dict[tuple[str, str], float] = {}
        server.call_observers.append(self.call_ended)
        metrics.on_collect(self.read)

    def call_ended(self, summary: Mapping[str, Any]) -> None:
        """A call's final counts (the server's call summary, with ``code`` and ``reason``)."""
        code = int(summary["code"])
        self.ended.labels(str(code), call_outcome(code, str(summary["reason"]))).inc()
        for key, value in call_counts(summary).items():
            self._finished[key] = self._finished.get(key, 0) + value

    def read(self) -> None:
        """Feed every counter from the finished calls' totals plus the live calls' counts."""
        live = list(self.server.calls.values())
        self.active.set(len(live))
        totals = dict(self._finished)
        for call in live:
            for key, value in live_counts(call.stats).items():
                totals[key] = totals.get(key, 0) + value
        for (name, label), total in totals.items():
            self.fed[name].feed(total, *((label,) if label else ()))
        sources = {"server": self.server.counters, "front": self.server.front.counters}
        self.started.feed(self.server.counters["calls"])
        for (where, key), reason in _REFUSALS.items():
            self.refused.feed(sources[where].get(key, 0), reason)
        for (where, key), kind in _SERVER_ERRORS.items():
            self.errors.feed(sources[where].get(key, 0), kind)


def serve_metrics(server: _Server, metrics: Metrics | None = None) -> Metrics:
    """Count ``server``'s calls and transport into ``metrics`` (a new one by default) and
    answer ``GET /metrics`` on its port, with its key. Call before ``serve``."""
    metrics = metrics or Metrics()
    ServerMetrics(metrics, server)
    server.add_http_route("GET", "/metrics", metrics.handler(server.config.api_key))
    return metrics
