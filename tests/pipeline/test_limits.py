"""Bounded under abuse (issue 18): connection caps in all and per source, the open-files
limit, a small message limit until registration, bounded identifiers, recordings that no
two calls share, EMFILE without a traceback storm, and log lines an outsider cannot
multiply. Real sockets on loopback; the EMFILE listener is a named fake.
"""

from __future__ import annotations

import errno
import json
import logging
import resource
from collections.abc import Callable
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
import soundfile
import trio
from hypothesis import given, settings
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from pipeline.bot.recorder import CallRecorder
from pipeline.caller.emulator import open_call
from pipeline.cli import serve as serve_command
from pipeline.protocol.bot_side import ServerProtocol
from pipeline.protocol.events import Connected, ProtocolViolation
from pipeline.protocol.identifiers import MAX_CALL_ID_CHARS, MAX_MOBILE_NO_CHARS
from pipeline.runtime.frames import PcmAudio
from pipeline.server import http_front
from pipeline.server.http_front import HttpFront
from pipeline.server.limits import (
    ConnectionGate,
    ConnectionLimits,
    RateLimitedLog,
    connections_within_fd_limit,
)
from pipeline.server.recordings import call_folder

from .conftest import start_server


async def until(condition: Callable[[], object], seconds: float = 5) -> None:
    with trio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 - a server's plain state, not an event
            await trio.sleep(0.01)


@pytest.fixture
def log_records(caplog, monkeypatch):
    """Every voicegraph log record, whatever an earlier test's ``configure_logging`` left
    behind (it stops propagation to the root logger that caplog listens on)."""
    root = logging.getLogger("voicegraph")
    monkeypatch.setattr(root, "propagate", True)
    monkeypatch.setattr(root, "handlers", [])
    caplog.set_level(logging.DEBUG)
    return caplog


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].strip("/"))


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    received = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(4096):
            received += chunk
    return received


# --- connection caps ---------------------------------------------------------------------


async def test_over_the_connection_cap_is_refused_with_503_and_counted(nursery):
    server, url = await start_server(nursery, max_connections=2, max_connections_per_source=10)
    idle = [await trio.open_tcp_stream("127.0.0.1", port_of(url)) for _ in range(2)]
    await until(lambda: server.front.gate.open == 2)
    refused = await trio.open_tcp_stream("127.0.0.1", port_of(url))
    answer = await read_until_closed(refused)
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert b"retry-after: 1" in answer
    assert b"server busy" in answer
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(url):
            pass
    assert rejected.value.status_code == 503
    assert server.front.counters["refused_busy"] == 2
    await idle[0].aclose()
    await until(lambda: server.front.gate.open == 1)
    async with open_call(url, call_id="after-cap"):
        pass  # a place freed is a place taken again
    await idle[1].aclose()


async def test_over_the_per_source_cap_is_refused_with_503_and_counted(nursery, monkeypatch):
    monkeypatch.setattr(http_front, "_peer_address", lambda stream: "203.0.113.7")
    server, url = await start_server(nursery, max_connections=10, max_connections_per_source=1)
    idle = await trio.open_tcp_stream("127.0.0.1", port_of(url))
    await until(lambda: server.front.gate.open == 1)
    answer = await read_until_closed(await trio.open_tcp_stream("127.0.0.1", port_of(url)))
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert b"too many connections from one address" in answer
    assert server.front.counters["refused_per_source"] == 1
    assert server.front.counters["refused_busy"] == 0
    await idle.aclose()


def test_the_gate_counts_per_source_and_gives_places_back():
    gate = ConnectionGate(ConnectionLimits(max_connections=3, max_per_source=2))
    assert gate.admit("10.0.0.1") is None
    assert gate.admit("10.0.0.1") is None
    assert gate.admit("10.0.0.1") is not None
    assert gate.admit(None) is None  # in-process: counted in the total only
    assert gate.by_source == {"10.0.0.1": 2}
    assert gate.admit("10.0.0.2") is not None  # the total is full
    gate.release("10.0.0.1")
    assert gate.admit("10.0.0.2") is None
    assert gate.counters == {"refused_busy": 1, "refused_per_source": 1}
    assert gate.by_source == {"10.0.0.1": 1, "10.0.0.2": 1}
    gate.release(None)
    many = ConnectionGate(ConnectionLimits(max_connections=10, max_per_source=1))
    assert [many.admit("127.0.0.1") for _ in range(3)] == [None] * 3  # this host: total only


def test_serve_raises_the_soft_open_files_limit_to_the_hard_one(log_records):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(256, soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
        cap = serve_command.apply_limits(1024)
        now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert now == (hard if hard != resource.RLIM_INFINITY else max(lowered, 1 << 20))
    (line,) = [r for r in log_records.records if r.getMessage() == "open files limit"]
    assert (line.soft_before, line.soft_now) == (lowered, now)
    assert cap == min(1024, now - 64)
    assert connections_within_fd_limit(1024, 256) == 256 - 64
    assert connections_within_fd_limit(1024, 1 << 20) == 1024


# --- a small message limit until registration -------------------------------------------


async def test_unregistered_connections_get_16_kb_then_1_mb(nursery):
    server, url = await start_server(nursery)
    padding = "x" * 20_000
    async with open_websocket_url(url) as ws:
        await ws.send_message(json.dumps({"event": "connected", "callId": "big", "pad": padding}))
        with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert closed.value.reason.code == 1009
    async with open_call(url, call_id="registered") as call:
        await until(lambda: server.calls)
        await call.ws.send_message(json.dumps({"event": "note", "pad": padding * 10}))
        await until(lambda: server.calls["registered"].statistics()["messages_received"] >= 1)
        assert not call.ws.closed  # 200 kB after registration: skipped, not closed
    await until(lambda: server.finished_calls)
    assert server.finished_calls[-1]["code"] == 1000


# --- identifiers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"callId": "c" * (MAX_CALL_ID_CHARS + 1)},
        {"callId": "line\nbreak"},
        {"callId": "with space"},
        {"callId": "é"},
        {"callId": "ok", "mobileNo": "9" * (MAX_MOBILE_NO_CHARS + 1)},
        {"callId": "ok", "mobileNo": "98765\n{forged}"},
        {"callId": "ok", "mobileNo": "x" * 900_000},
    ],
    ids=["long callId", "newline", "space", "non-ASCII", "long number", "forged", "900 kB"],
)
def test_identifiers_out_of_bounds_close_with_1002(fields):
    server = ServerProtocol()
    (event,) = server.receive_message(json.dumps({"event": "connected", **fields}))
    assert isinstance(event, ProtocolViolation)
    assert event.code == 1002
    assert len(event.reason) <= 123


def test_identifiers_within_bounds_register():
    server = ServerProtocol()
    call_id = "a/b:" + "c" * (MAX_CALL_ID_CHARS - 4)
    message = {"event": "connected", "callId": call_id, "mobileNo": "+91 98765-43210"}
    (event,) = server.receive_message(json.dumps(message))
    assert isinstance(event, Connected)
    assert event.call_id == call_id


# --- recordings keyed safely ------------------------------------------------------------


def test_similar_call_ids_never_share_a_folder(tmp_path):
    ids = ["a/b", "a_b", "a~2Fb", "a b", "..", ".", "~", "a" * 128, "a" * 127 + "b"]
    folders = [call_folder(tmp_path, call_id) for call_id in ids]
    assert len(set(folders)) == len(ids)
    assert all(folder.parent == tmp_path for folder in folders)


@settings(max_examples=300, deadline=None)
@given(first=st.text(min_size=1, max_size=300), second=st.text(min_size=1, max_size=300))
def test_folder_names_are_one_to_one_and_safe(first, second):
    root = Path("/r")
    one, other = call_folder(root, first), call_folder(root, second)
    assert (one == other) == (first == second)
    assert one.parent == root
    assert one.name not in ("", ".", "..")
    assert len(one.name.encode()) <= 255  # what file systems allow


def test_a_redialled_call_does_not_overwrite_the_first_recording(tmp_path):
    loud = np.full(800, 1000, dtype=np.int16)
    quiet = np.zeros(800, dtype=np.int16)
    first = CallRecorder.for_call(tmp_path, "a/b", origin=0.0)
    second = CallRecorder.for_call(tmp_path, "a/b", origin=0.0)  # the re-dial
    other = CallRecorder.for_call(tmp_path, "a_b", origin=0.0)
    for recorder, samples in ((first, loud), (second, quiet), (other, quiet)):
        recorder.caller_audio(PcmAudio(samples=samples, start_sample=0, captured_at=0.1))
        recorder.close()
    assert first.directory == second.directory != other.directory
    assert (first.connection, second.connection) == (1, 2)
    heard, _ = soundfile.read(str(first.caller_path), dtype="int16")
    assert heard.max() == 1000  # still the first connection's audio
    assert second.caller_path.name == "caller-2.wav"
    assert soundfile.read(str(second.caller_path), dtype="int16")[0].max() == 0


# --- EMFILE on accept ---------------------------------------------------------------------


class FakeExhaustedListener(trio.abc.Listener[trio.abc.Stream]):
    """``accept()`` fails with EMFILE ``failures`` times, then waits forever; stands in for
    the TCP listeners ``HttpFront.serve`` opens."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.socket = self  # ``serve`` reads the bound port off ``socket.getsockname()``

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 9)

    async def accept(self) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError(errno.EMFILE, "Too many open files")
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_emfile_on_accept_is_counted_and_logged_once_per_interval(
    nursery, log_records, monkeypatch, autojump_clock
):
    listener = FakeExhaustedListener(failures=200)  # 20 s of retries, 0.1 s apart

    async def exhausted_listeners(port: int, host: str | None = None) -> list:
        return [listener]

    monkeypatch.setattr(trio, "open_tcp_listeners", exhausted_listeners)
    front = HttpFront()
    await nursery.start(front.serve, "127.0.0.1", 0)
    await until(lambda: listener.calls > 200, seconds=60)  # virtual time
    assert front.counters["accept_capacity_errors"] == 200
    lines = [r for r in log_records.records if "accept" in r.getMessage()]
    assert 1 <= len(lines) <= 3  # one per 10 s, not one per failure
    assert not any(record.exc_info for record in log_records.records)  # no tracebacks


# --- log lines an outsider cannot multiply -----------------------------------------------


def test_a_rate_limited_log_writes_one_line_per_interval_and_says_what_it_left_out(
    log_records,
):
    now = [0.0]
    log = RateLimitedLog(logging.getLogger("voicegraph.test"), interval=10.0, clock=lambda: now[0])
    written = [log.warning("refused", n=index) for index in range(100)]
    assert written.count(True) == 1
    assert log.summary() == {"refused": 99}
    now[0] = 10.0
    assert log.warning("refused")
    assert [getattr(r, "suppressed", 0) for r in log_records.records] == [0, 99]
    assert log.summary() == {}
