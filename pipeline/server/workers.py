"""Several server processes on one port (``voicegraph serve --workers N``), supervised.

A Trio server is one thread: its event loop never uses more than one core. N worker
processes, each a whole ``voicegraph serve`` with its own loop and its own bot,
listen on the same port with ``SO_REUSEPORT`` (Linux): the kernel spreads incoming
connections over them by a hash of the addresses, and a worker's calls live and end
in that worker. Each worker also loads its own models: a voice bot's weights are
memory-mapped or small (LLM weights are shared through the page cache, the ONNX and
CTranslate2 ones are copied), so N workers cost about N times a worker's private
memory; the README's "Sizing a machine" has the figures. That is why the default is
one worker, not one per core: the model services already use several cores from one
process (thread pools), and a second worker pays off first for the transport
(many calls of a light bot, where one event loop is the ceiling).

The listening sockets are opened by the unchanged server code
(``trio.open_tcp_listeners``); in a worker, :func:`serve_as_worker` installs a Trio
socket factory that sets ``SO_REUSEPORT`` on every TCP socket before it is bound.
The parent holds a bound, not listening, socket on the port for the fleet's lifetime
(so ``--port 0`` gives every worker the same free port, and the port stays the
fleet's while a worker restarts); a socket that does not listen receives no
connections.

The parent (:class:`Supervisor`) starts the workers in their own session (a
terminal's Ctrl-C reaches only the parent; a worker whose parent is gone stops
itself gracefully: its heartbeat checks. Not ``PR_SET_PDEATHSIG``, which follows
the parent *thread*, and Trio spawns from a worker thread that exits when idle),
restarts one that exits (after 0.5 s, doubling to 10 s while it keeps failing
within a minute of starting), forwards SIGTERM/SIGINT to every worker for a graceful
stop (each drains: :mod:`pipeline.server.drain`) and a second signal too (stop at once),
restarts none of them then, kills what is left after a grace period (the drain deadline
and a margin), and exits 0.
A worker that fails before it ever listened (a bad model path, a port in use) stops
the fleet with that worker's exit status: restarting would fail the same way.

Health: ``GET /health`` stays per worker (the one the kernel gave the connection).
``GET /health/workers`` answers for the fleet, from any worker: the parent keeps
``fleet.json`` (each worker's pid, restarts) and every worker writes a heartbeat
(its live calls, once a second) in a private directory; a worker is alive when its
heartbeat is fresh and from the pid the parent started. ``GET /metrics`` also answers
for the fleet: the parent gives the workers one ``PROMETHEUS_MULTIPROC_DIR``
(:mod:`pipeline.server.prometheus`). Like ``/health``'s details
it is for the key's holder (or, with no key set, this host); others get
``{"status": "ok"}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio

from pipeline.server.auth import credentials_from_request, is_trusted
from pipeline.server.http_front import HostedServer, HttpRequest, HttpResponse
from pipeline.server.prometheus import MULTIPROC_DIR_ENV, fleet_metrics_dir, forget_worker

__all__ = [
    "FLEET_DIR_ENV",
    "WORKER_INDEX_ENV",
    "ReusePortSockets",
    "Supervisor",
    "fleet_health",
    "reserve_port",
    "serve_as_worker",
    "worker_index",
]

logger = logging.getLogger("voicegraph.workers")

WORKER_INDEX_ENV = "VOICEGRAPH_WORKER_INDEX"
FLEET_DIR_ENV = "VOICEGRAPH_FLEET_DIR"
HEARTBEAT_S = 1.0
STALE_AFTER_S = 3.0
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0
STABLE_AFTER_S = 60.0  # a worker that ran this long restarts after the first backoff again
STOP_GRACE_S = 15.0


def worker_index() -> int | None:
    """This process's index in a fleet (None: not a worker)."""
    value = os.environ.get(WORKER_INDEX_ENV)
    return int(value) if value is not None and value.isdigit() else None


# --- the shared port ------------------------------------------------------------------


def _reuse_port(sock: socket.socket) -> None:
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("--workers needs SO_REUSEPORT (Linux, BSD, macOS)")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


class ReusePortSockets(trio.abc.SocketFactory):
    """Trio's sockets as usual, with ``SO_REUSEPORT`` set on TCP ones (before bind)."""

    def socket(
        self,
        family: socket.AddressFamily | int = socket.AF_INET,
        type: socket.SocketKind | int = socket.SOCK_STREAM,
        proto: int = 0,
    ) -> trio.socket.SocketType:
        sock = socket.socket(family, type, proto)
        if family in (socket.AF_INET, socket.AF_INET6) and type == socket.SOCK_STREAM:
            _reuse_port(sock)
        return trio.socket.from_stdlib_socket(sock)


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, not listening, ``SO_REUSEPORT`` socket on ``host:port`` (port 0: a free
    one): the port the workers bind, kept the fleet's while they come and go."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _reuse_port(sock)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


# --- in a worker ----------------------------------------------------------------------


S = TypeVar("S", bound=HostedServer)


def serve_as_worker(serve: Callable[[S], Awaitable[None]]) -> Callable[[S], Awaitable[None]]:
    """``serve`` itself outside a fleet; in a worker, ``serve`` on the shared port with a
    heartbeat and ``GET /health/workers`` (run the result under ``trio.run``)."""
    index = worker_index()
    if index is None:
        return serve
    fleet = Path(os.environ.get(FLEET_DIR_ENV, ""))

    async def serve_in_fleet(server: S) -> None:
        trio.socket.set_custom_socket_factory(ReusePortSockets())
        server.add_http_route("GET", "/health/workers", _fleet_route(server, fleet, index))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_heartbeat, server, fleet, index)
            await serve(server)
            nursery.cancel_scope.cancel()

    return serve_in_fleet


async def _heartbeat(server: HostedServer, fleet: Path, index: int) -> None:
    """Tell the fleet how this worker is, once a second; stop gracefully (as on SIGTERM)
    if the supervisor is gone."""
    path, parent = fleet / f"worker-{index}.json", os.getppid()
    while True:
        if os.getppid() != parent:
            logger.warning("supervisor gone; stopping", extra={"worker": index})
            os.kill(os.getpid(), signal.SIGTERM)
            return
        beat = {"index": index, "pid": os.getpid(), "calls": len(server.calls), "at": time.time()}
        _write_atomically(path, beat)
        await trio.sleep(HEARTBEAT_S)


def _fleet_route(
    server: HostedServer, fleet: Path, index: int
) -> Callable[[HttpRequest], Awaitable[HttpResponse]]:
    async def health(request: HttpRequest) -> HttpResponse:
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in request.headers]
        offered = credentials_from_request(request.target, headers)
        if not is_trusted(server.config.api_key, offered, request.peer):
            return HttpResponse.json(200, {"status": "ok"})
        return HttpResponse.json(200, {**fleet_health(fleet), "answered_by": index})

    return health


def fleet_health(fleet: Path, now: float | None = None) -> dict[str, Any]:
    """The fleet's state from the parent's ``fleet.json`` and the workers' heartbeats."""
    now = time.time() if now is None else now
    state = _read_json(fleet / "fleet.json") or {"workers": []}
    workers = []
    for worker in state["workers"]:
        beat = _read_json(fleet / f"worker-{worker['index']}.json") or {}
        alive = beat.get("pid") == worker.get("pid") and now - beat.get("at", 0) < STALE_AFTER_S
        workers.append({**worker, "alive": alive, "calls": beat.get("calls") if alive else 0})
    alive_count = sum(worker["alive"] for worker in workers)
    return {
        "status": "ok" if workers and alive_count == len(workers) else "degraded",
        "workers": len(workers),
        "alive": alive_count,
        "calls": sum(worker["calls"] or 0 for worker in workers),
        "restarts": sum(worker["restarts"] for worker in workers),
        "detail": workers,
    }


def _write_atomically(path: Path, document: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(document))
    temporary.replace(path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --- the parent -------------------------------------------------------------------------


class _StartupFailed(Exception):
    """A worker exited before it ever listened: the fleet stops with its status."""

    def __init__(self, index: int, returncode: int) -> None:
        super().__init__(f"worker {index} exited with {returncode} before listening")
        self.returncode = returncode


@dataclass(slots=True)
class _Worker:
    index: int
    process: trio.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    listening: dict[str, Any] | None = None  # its first stdout line, once it printed it
    ready: trio.Event = field(default_factory=trio.Event)


class Supervisor:
    """Run ``workers`` copies of ``argv`` (a ``serve`` command line) until a signal.

    ``argv`` gets ``--port PORT`` appended (the reserved port) and the environment
    marks each process as worker ``i`` of ``fleet_dir``. Once every worker listens,
    :meth:`run` prints one line to stdout: the first worker's ``listening`` line with
    ``workers`` and their ``pids`` added (what a single ``serve`` prints, plus those).
    """

    def __init__(
        self,
        argv: Sequence[str],
        workers: int,
        *,
        host: str,
        port: int,
        fleet_dir: Path,
        stop_grace_s: float = STOP_GRACE_S,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self.argv = list(argv)
        self.fleet_dir = fleet_dir
        self.stop_grace_s = stop_grace_s
        self._reserved = reserve_port(host, port)
        self.port = self._reserved.getsockname()[1]
        self.workers = [_Worker(index) for index in range(workers)]
        self.metrics_dir = fleet_metrics_dir(fleet_dir)  # /metrics: the fleet's totals
        self.stopping = False

    async def run(self) -> int:
        """Supervise until SIGTERM/SIGINT (then stop gracefully, 0) or a start-up failure."""
        failure: _StartupFailed | None = None
        try:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                try:
                    async with trio.open_nursery() as nursery:
                        for worker in self.workers:
                            nursery.start_soon(self._keep_running, worker)
                        nursery.start_soon(self._announce)
                        async for signum in signals:
                            logger.info("stopping workers", extra={"signal": signum})
                            async with trio.open_nursery() as stopping:
                                stopping.start_soon(self._forward, signals)  # a second one
                                await self._stop(signum)
                                stopping.cancel_scope.cancel()
                            nursery.cancel_scope.cancel()
                            break
                except* _StartupFailed as group:
                    failure = group.exceptions[0]  # type: ignore[assignment]
                if failure is not None:  # the others are still running: stop them
                    await self._stop(signal.SIGTERM)
        finally:
            self._reserved.close()
        if failure is not None:
            print(f"voicegraph serve: {failure}", file=sys.stderr)
            return failure.returncode or 1
        return 0

    def _write_fleet(self) -> None:
        workers = [
            {
                "index": worker.index,
                "pid": worker.process.pid if worker.process else None,
                "restarts": worker.restarts,
                "started_at": worker.started_at,
            }
            for worker in self.workers
        ]
        _write_atomically(self.fleet_dir / "fleet.json", {"port": self.port, "workers": workers})

    async def _announce(self) -> None:
        for worker in self.workers:
            await worker.ready.wait()
        first = dict(self.workers[0].listening or {})
        first["workers"] = len(self.workers)
        first["pids"] = [worker.process.pid for worker in self.workers if worker.process]
        print(json.dumps(first), flush=True)

    async def _keep_running(self, worker: _Worker) -> None:
        backoff = FIRST_BACKOFF_S
        while not self.stopping:
            env = {
                **os.environ,
                WORKER_INDEX_ENV: str(worker.index),
                FLEET_DIR_ENV: str(self.fleet_dir),
                MULTIPROC_DIR_ENV: str(self.metrics_dir),
            }
            process = await trio.lowlevel.open_process(
                [*self.argv, "--port", str(self.port)],
                stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
            worker.process, worker.started_at = process, time.time()
            self._write_fleet()
            logger.info("worker started", extra={"worker": worker.index, "pid": process.pid})
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_stdout, worker, process)
                returncode = await process.wait()
            forget_worker(process.pid, self.metrics_dir)  # its live gauges; counts stay
            if self.stopping:
                return
            if worker.listening is None:
                raise _StartupFailed(worker.index, returncode)
            ran = time.time() - worker.started_at
            backoff = FIRST_BACKOFF_S if ran >= STABLE_AFTER_S else backoff
            logger.warning(
                "worker exited; restarting",
                extra={"worker": worker.index, "returncode": returncode, "after_s": backoff},
            )
            await trio.sleep(backoff)
            backoff = min(MAX_BACKOFF_S, backoff * 2)
            worker.restarts += 1

    async def _read_stdout(self, worker: _Worker, process: trio.Process) -> None:
        """A worker's first line says where it listens; later lines pass through."""
        assert process.stdout is not None
        buffer, first = b"", True
        async for chunk in process.stdout:
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if first:
                    first = False
                    with contextlib.suppress(ValueError):
                        worker.listening = json.loads(line)
                        worker.ready.set()
                        continue
                sys.stdout.buffer.write(line + b"\n")
                sys.stdout.flush()

    async def _forward(self, signals: AsyncIterator[int]) -> None:
        """While the workers stop, pass every further signal on (a second one: at once)."""
        async for signum in signals:
            for worker in self.workers:
                if worker.process is not None and worker.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        worker.process.send_signal(signum)

    async def _stop(self, signum: int) -> None:
        """Forward ``signum`` to every worker; kill those still running after the grace."""
        self.stopping = True
        running = [w.process for w in self.workers if w.process and w.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)
        with trio.move_on_after(self.stop_grace_s):
            for process in running:
                await process.wait()
        for process in running:
            if process.returncode is None:
                logger.warning("worker did not stop in time; killed", extra={"pid": process.pid})
                process.kill()
                await process.wait()
