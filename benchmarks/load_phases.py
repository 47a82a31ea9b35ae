"""The transport benchmark's second part: concurrent calls over loopback, real processes.

The server and the callers (``pipeline.bench.load_caller``, the same worker as
``voicegraph bench capacity``, whose process handling this shares) run as separate
processes; each phase measures CPU per call-second, packets sent, dropped, late and
concealed, calls answered and echo latency.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.bench import Children, process_cpu_seconds, server_log, start_server

from .inbound_path import CLK_TCK, REGISTRATION_TIMEOUT
from .report import progress


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine, to see what others were using."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values[:8]) - idle, sum(values[:8])


def split(calls: int, workers: int) -> list[int]:
    return [calls // workers + (index < calls % workers) for index in range(workers)]


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def run_phase(
    children: Children, calls: int, seconds: float, ramp: float, workers: int, workdir: Path
) -> dict[str, Any]:
    """One call count: fresh server, callers, measurements, SIGTERM; a summary row."""
    serve = [sys.executable, "-m", "pipeline", "serve", "--host", "127.0.0.1", "--port", "0"]
    serve += ["--bot", "parrot", "--log-level", "info"]
    phase_dir = workdir / f"calls-{calls}"
    phase_dir.mkdir()
    server, url, log = start_server(children, serve, phase_dir)
    time.sleep(0.5)  # let start-up (imports, kernel warm-up) finish before counting CPU
    cpu_start, busy_start = process_cpu_seconds(server.pid), machine_busy_ticks()
    wall_start = time.monotonic()
    outs, callers = [], []
    for index, share in enumerate(split(calls, workers)):
        out = workdir / f"callers-{calls}-{index}.json"
        argv = [sys.executable, "-m", "pipeline.bench.load_caller", "--url", url]
        argv += ["--calls", str(share), "--seconds", str(seconds), "--out", str(out)]
        argv += ["--ramp", str(ramp), "--prefix", f"c{calls}w{index}-", "--seed", str(index + 1)]
        argv += ["--greeting-wait", "0"]  # the parrot does not greet
        callers.append(children.start(argv, stdin=subprocess.DEVNULL))
        outs.append(out)
    samples: list[tuple[float, float]] = []
    deadline = wall_start + ramp + seconds + REGISTRATION_TIMEOUT + 60
    next_report = wall_start + 5
    while any(c.poll() is None for c in callers) and time.monotonic() < deadline:
        time.sleep(0.5)
        now = time.monotonic()
        used = process_cpu_seconds(server.pid, cpu_start + samples[-1][1] if samples else cpu_start)
        samples.append((now - wall_start, used - cpu_start))
        if now >= next_report:
            progress(
                f"  {calls} calls: {now - wall_start:5.1f} s, server CPU {samples[-1][1]:.1f} s"
            )
            next_report += 5
    last = cpu_start + samples[-1][1] if samples else cpu_start
    cpu_server = process_cpu_seconds(server.pid, last) - cpu_start
    busy_end, wall = machine_busy_ticks(), time.monotonic() - wall_start
    stragglers = [c for c in callers if c.poll() is None]
    for caller in stragglers:
        caller.kill()
    time.sleep(0.5)  # the last "call ended" lines
    server.send_signal(signal.SIGTERM)
    try:
        exit_code: int | None = server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        exit_code = None
    reports = [json.loads(out.read_text()) for out in outs if out.exists()]
    return summarise_phase(
        calls=calls,
        seconds=seconds,
        workers=workers,
        reports=reports,
        log=server_log(log, prefix=""),  # every line: call ends and the server's own
        cpu_server=cpu_server,
        samples=samples,
        steady=steady_window(reports, wall_start, ramp, seconds),
        machine=(busy_end[0] - busy_start[0], busy_end[1] - busy_start[1]),
        wall=wall,
        exit_code=exit_code,
        stragglers=len(stragglers),
    )


def steady_window(
    reports: Sequence[dict[str, Any]], wall_start: float, ramp: float, seconds: float
) -> tuple[float, float]:
    """From every call up (last worker's ramp done, +2 s) to the first hang-up (-1 s)."""
    starts = [report["started_monotonic"] - wall_start for report in reports] or [0.0]
    return max(starts) + ramp + 2.0, min(starts) + seconds - 1.0


def steady_utilisation(
    samples: Sequence[tuple[float, float]], window: tuple[float, float]
) -> tuple[float | None, float | None]:
    """Server CPU per wall second (1.0 = one core) while every call was up."""
    inside = [(t, cpu) for t, cpu in samples if window[0] <= t <= window[1]]
    if len(inside) < 2:
        return None, None
    mean = (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])
    step = min(2, len(inside) - 1)  # samples are 0.5 s apart: peak over ~1 s windows
    peak = max(
        (inside[i + step][1] - inside[i][1]) / (inside[i + step][0] - inside[i][0])
        for i in range(len(inside) - step)
    )
    return mean, peak


def summarise_phase(
    *,
    calls: int,
    seconds: float,
    workers: int,
    reports: list[dict[str, Any]],
    log: list[dict[str, Any]],
    cpu_server: float,
    samples: list[tuple[float, float]],
    steady: tuple[float, float],
    machine: tuple[int, int],
    wall: float,
    exit_code: int | None,
    stragglers: int,
) -> dict[str, Any]:
    records = [record for report in reports for record in report["calls"]]
    answered = [r for r in records if r["registered"]]
    ended = [line for line in log if line.get("message") == "call ended"]
    jitter = [line.get("pipeline", {}).get("jitter", {}) for line in ended]
    call_seconds = sum(r["connected_s"] for r in records)
    latencies = [ms for r in records for ms in r["voice_to_voice_ms"]]
    registration = [r["registration_ms"] for r in answered]
    caller_cpu = sum(report["cpu_s"] for report in reports)
    close_codes: dict[str, int] = {}
    for record in records:
        key = "caller hung up" if record["close_code"] is None else str(record["close_code"])
        if not record["registered"]:
            key = "not answered"
        close_codes[key] = close_codes.get(key, 0) + 1
    server_codes: dict[str, int] = {}
    for line in ended:
        key = f"{line.get('code')} {line.get('reason')}"
        server_codes[key] = server_codes.get(key, 0) + 1
    mean_util, peak_util = steady_utilisation(samples, steady)
    busy, total = machine
    cores = os.cpu_count() or 1
    row = {
        "calls_placed": calls,
        "calls_answered": len(answered),
        "caller_workers": workers,
        "seconds_per_call": seconds,
        "call_seconds": call_seconds,
        "registration_ms_median": percentile(registration, 50),
        "registration_ms_max": max(registration, default=None),
        "turns_spoken": sum(r["turns_spoken"] for r in records),
        "echoes_received": sum(r["answered_turns"] for r in records),
        "echo_latency_ms_median": percentile(latencies, 50),
        "echo_latency_ms_p95": percentile(latencies, 95),
        "echo_latency_ms_max": max(latencies, default=None),
        "packets_sent": sum(r["packets_sent"] for r in records),
        "offered_load": (
            sum(r["packets_sent"] for r in records) / (call_seconds * 50) if call_seconds else None
        ),
        "server_media_packets": sum_media(ended),
        "packets_dropped": sum(line.get("packets_dropped", 0) for line in ended),
        "jitter_late": sum(j.get("late", 0) for j in jitter),
        "jitter_concealed": sum(j.get("concealed", 0) for j in jitter),
        "jitter_max_tick_lag_ms": max((j.get("max_tick_lag", 0) for j in jitter), default=0) * 1000,
        "calls_ended_logged": len(ended),
        "caller_close_codes": close_codes,
        "server_close_codes": server_codes,
        "caller_errors": sorted({r["error"] for r in records if r["error"]})[:5],
        "server_cpu_s": cpu_server,
        "server_cpu_per_call_second": cpu_server / call_seconds if call_seconds else None,
        "server_cpu_us_per_media_packet": (
            cpu_server / media * 1e6 if (media := sum_media(ended)) else None
        ),
        "server_cores_used_steady": mean_util,
        "server_cores_used_peak": peak_util,
        "caller_cpu_s": caller_cpu,
        "caller_cpu_per_call_second": caller_cpu / call_seconds if call_seconds else None,
        "caller_loop_lag_ms_p99": max((r["loop_lag_ms"]["p99"] for r in reports), default=None),
        "caller_loop_lag_ms_max": max((r["loop_lag_ms"]["max"] for r in reports), default=None),
        "machine_cores_busy": busy / total * cores if total else None,
        "other_processes_cores": (
            (busy / CLK_TCK - cpu_server - caller_cpu) / wall if total and wall else None
        ),
        "wall_s": wall,
        "server_exit_code": exit_code,
        "server_stopped_cleanly": exit_code == 0
        and any(x.get("message") == "stopped" for x in log),
        "callers_killed": stragglers,
    }
    return {**row, **audio_accounting(row)}


def audio_accounting(row: dict[str, Any]) -> dict[str, Any]:
    """Every way a caller's packet can fail to become audio, from the row's raw counts.

    A server that cannot read fast enough pushes back through TCP, so the callers send
    less than 50 packets a second (not offered); packets it had not read when the call
    closed are unprocessed; then come inbound-queue drops and packets that reached the
    jitter buffer after their turn to play (late).
    """
    expected = row["call_seconds"] * 50
    return {
        "packets_expected": round(expected),
        "packets_not_offered": max(0, round(expected) - row["packets_sent"]),
        "packets_unprocessed": max(0, row["packets_sent"] - row["server_media_packets"]),
    }


def sum_media(ended: Sequence[dict[str, Any]]) -> int:
    return sum(line.get("media_packets", 0) for line in ended)


def measure_load(
    counts: Sequence[int], seconds: float, ramp: float, workers: int | None
) -> list[dict[str, Any]]:
    rows = []
    children = Children()
    try:
        with tempfile.TemporaryDirectory(prefix="transport-bench-") as tmp:
            for calls in counts:
                share = workers or (1 if calls <= 50 else 2)
                progress(f"load: {calls} calls for {seconds:g} s, callers in {share} process(es)")
                rows.append(run_phase(children, calls, seconds, ramp, share, Path(tmp)))
                row = rows[-1]
                progress(
                    f"  answered {row['calls_answered']}/{calls}, dropped "
                    f"{row['packets_dropped']}, server exit {row['server_exit_code']}"
                )
    finally:
        children.stop_all()
    return rows


# --- output --------------------------------------------------------------------------
