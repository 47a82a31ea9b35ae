"""``bench capacity``: ramp concurrent calls until the bot no longer meets a target.

The server (``python -m pipeline serve``) and the callers
(``python -m pipeline.bench.load_caller``, one process per 100 calls) are
separate processes, so callers never share an interpreter with the server they
load. One server serves the whole ramp (the voice bot loads its models once);
each step places its calls with a callId prefix of its own, and for that step
we read the server's CPU time from ``/proc``, its ``call ended`` log lines
(packets dropped, jitter buffer counters), its ``turn`` lines (server-side
first byte sent, voice bot) and the callers' reports (calls answered,
voice-to-voice of every turn, their CPU and event-loop lag).

A step meets the target when every call was answered, no more than
``--max-drops`` packets were dropped, and the voice-to-voice p95 (a turn left
unanswered counts as infinitely late) is at most ``--target-p95`` seconds. The ramp
stops at the first step that misses it (``--keep-going`` runs every step) and
reports the largest number of calls that met it. Every child process is stopped
on the way out, whatever happens (and, on Linux, if the bench itself is killed).

``--server-cpus`` / ``--caller-cpus`` pin the server and the callers (and the bench
itself, while it measures) to separate cores (``sched_setaffinity`` in the child before
exec; threads and workers inherit it), so "calls per core" means a core the server has
to itself, not a share of all of them. ``--bus`` is passed to ``serve --bus``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.bench.capacity_report import plot, print_rows
from pipeline.bench.models import describe_models
from pipeline.bench.process_usage import tree_cpu_seconds, tree_memory_mb
from pipeline.bench.report import (
    describe_run,
    distribution,
    progress,
    save_figure,
    write_json,
)
from pipeline.bot.config import ConfigError, load_config
from pipeline.demo import DEMO_AUDIO

__all__ = [
    "Children",
    "configure",
    "cpu_list",
    "main",
    "meets_target",
    "process_cpu_seconds",
    "run_ramp",
    "server_log",
    "sigterm_as_exit",
    "start_server",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")
CALLS_PER_WORKER = 100
# not ``-m pipeline.bench.load_caller``: the package imports that module first, and runpy
# warns about running a module already imported
LOAD_CALLER = "import sys; from pipeline.bench.load_caller import main; sys.exit(main())"
SERVER_START_TIMEOUT_S = 180.0
WARM_UP_CALL_S = 10.0  # the voice bot loads four models first
DEFAULTS = {
    "voice": {"step": 1, "max_calls": 6, "max_late_pct": None},
    "parrot": {"step": 25, "max_calls": 200, "max_late_pct": 1.0},
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bot", choices=("voice", "parrot"), default="voice")
    parser.add_argument("--config", type=Path, metavar="BOT.TOML", help="voice bot configuration")
    parser.add_argument("--llm", choices=("local", "echo", "openai"), help="LLM backend")
    parser.add_argument("--llm-url", help="OpenAI-compatible server base URL")
    parser.add_argument("--llm-model", help="GGUF path (local) or model name (openai)")
    parser.add_argument("--audio", type=Path, nargs="+", metavar="FILE", help="caller turns")
    parser.add_argument("--start", type=int, help="calls in the first step (default: --step)")
    parser.add_argument("--step", type=int, help="calls added per step (voice 1, parrot 25)")
    parser.add_argument("--max-calls", type=int, help="last step (voice 6, parrot 200)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each call (30)")
    parser.add_argument("--ramp", type=float, default=2.0, help="seconds to dial a step's calls")
    parser.add_argument("--target-p95", type=float, default=1.5, help="voice-to-voice p95, s")
    parser.add_argument("--max-drops", type=int, default=0, help="packets a step may drop (0)")
    parser.add_argument(
        "--max-late-pct",
        type=float,
        help="late packets a step may have, %% (parrot 1; voice: not checked)",
    )
    parser.add_argument("--workers", type=int, default=1, help="serve --workers N (1)")
    parser.add_argument(
        "--bus", metavar="redis://HOST:PORT", help="serve --bus: the shared event bus (none)"
    )
    parser.add_argument(
        "--server-cpus",
        type=cpu_list,
        metavar="CPUS",
        help="pin the server to these cores, e.g. 0 or 0-1 (default: not pinned)",
    )
    parser.add_argument(
        "--caller-cpus",
        type=cpu_list,
        metavar="CPUS",
        help="pin the load callers to these cores, e.g. 1 (default: not pinned)",
    )
    parser.add_argument(
        "--voices", type=int, default=3, help="caller voice variants, one per call in turn (3)"
    )
    parser.add_argument("--keep-going", action="store_true", help="run every step")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON")
    parser.add_argument("--plot", type=Path, metavar="OUT.png", help="write the plots as PNG")
    parser.set_defaults(bench_main=main)


def cpu_list(text: str) -> frozenset[int]:
    """``0``, ``0-3`` or ``0,2`` (as taskset -c takes them) as a set of cores this
    machine has (not only those this process may use: the bench pins itself to the
    callers' cores); anything else is an argparse error."""
    cores: set[int] = set()
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            cores.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a core list like 0 or 0-1 or 0,2: {text!r}"
        ) from None
    machine = set(range(os.cpu_count() or 1))
    if not cores or not cores <= machine:
        raise argparse.ArgumentTypeError(
            f"cores {text!r} are not all among this machine's cores {sorted(machine)}"
        )
    return frozenset(cores)


# --- child processes ----------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM me if the bench dies, even by SIGKILL."""
    with contextlib.suppress(Exception):  # Linux only; elsewhere try/finally must do
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _child_setup(cpus: frozenset[int] | None) -> Callable[[], None]:
    """What a child runs before exec: die with the bench, and stay on ``cpus`` if given
    (its threads and children inherit the affinity)."""

    def setup() -> None:
        _die_with_parent()
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


class Children:
    """Every process the bench started; all are stopped on the way out."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: Sequence[str], cpus: frozenset[int] | None = None, **kwargs: Any
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` (on ``cpus`` only, if given); it is stopped by :meth:`stop_all`."""
        process = subprocess.Popen(argv, preexec_fn=_child_setup(cpus), **kwargs)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the finally blocks stop every child process."""
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def process_cpu_seconds(pid: int, default: float = 0.0) -> float:
    """utime + stime of a process, from /proc; ``default`` once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return default
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def start_server(
    children: Children, argv: Sequence[str], workdir: Path, cpus: frozenset[int] | None = None
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """``voicegraph serve`` on a free loopback port (on ``cpus`` only, if given); its URL
    once it reports listening."""
    log, ready = workdir / "server.log", workdir / "server.out"
    with ready.open("wb") as out, log.open("wb") as err:
        server = children.start(argv, cpus, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = ready.read_text()
        if text.endswith("\n"):
            url = json.loads(text.splitlines()[0])["url"]
            if not url.startswith("ws://127.0.0.1:"):
                raise RuntimeError(f"the server is not on loopback: {url}")
            return server, url, log
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}: {log.read_text()}")
        time.sleep(0.1)
    raise RuntimeError(f"the server did not report its URL within {SERVER_START_TIMEOUT_S:g} s")


def server_log(path: Path, prefix: str) -> list[dict[str, Any]]:
    """The server's JSON log lines about calls whose callId starts with ``prefix``
    (``""``: every line, the server's own ones without a callId too)."""
    lines = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if str(entry.get("callId", "")).startswith(prefix):
                lines.append(entry)
    return lines


# --- one step -----------------------------------------------------------------------


def caller_argv(
    args: argparse.Namespace, url: str, calls: int, seconds: float, prefix: str, out: Path
) -> list[str]:
    argv = [sys.executable, "-c", LOAD_CALLER, "--url", url]
    argv += ["--calls", str(calls), "--seconds", str(seconds), "--out", str(out)]
    seed = zlib.crc32(prefix.encode()) % 997  # reproducible per step and worker
    argv += ["--ramp", str(args.ramp), "--prefix", prefix, "--seed", str(seed)]
    argv += ["--voices", str(args.voices)]
    if args.audio_files:
        argv += ["--audio", *map(str, args.audio_files)]
    if args.bot == "parrot":
        argv += ["--greeting-wait", "0"]
    return argv


def warm_up(children: Children, url: str, args: argparse.Namespace, workdir: Path) -> None:
    """One uncounted call: the first inference of each model is slow, once per server."""
    progress("warm-up call (not counted)")
    argv = caller_argv(args, url, 1, WARM_UP_CALL_S, "warmup-", workdir / "warmup.json")
    caller = children.start(argv, args.caller_cpus, stdin=subprocess.DEVNULL)
    caller.wait(timeout=WARM_UP_CALL_S + 60)


def run_step(
    children: Children,
    server: subprocess.Popen[bytes],
    url: str,
    log: Path,
    calls: int,
    args: argparse.Namespace,
    workdir: Path,
) -> dict[str, Any]:
    """``calls`` concurrent calls for ``args.seconds``; one summary row."""
    prefix = f"s{calls}-"
    workers = math.ceil(calls / CALLS_PER_WORKER)
    shares = [calls // workers + (i < calls % workers) for i in range(workers)]
    cpu_start, wall_start = tree_cpu_seconds(server.pid), time.monotonic()
    memory: list[dict[str, float]] = []
    outs, callers = [], []
    for index, share in enumerate(shares):
        out = workdir / f"callers-{calls}-{index}.json"
        argv = caller_argv(args, url, share, args.seconds, f"{prefix}w{index}-", out)
        callers.append(children.start(argv, args.caller_cpus, stdin=subprocess.DEVNULL))
        outs.append(out)
    deadline = wall_start + args.ramp + args.seconds + 60
    next_report = wall_start + 5
    cpu_now = cpu_start
    while any(c.poll() is None for c in callers) and time.monotonic() < deadline:
        time.sleep(0.25)
        cpu_now = tree_cpu_seconds(server.pid, cpu_now)
        if time.monotonic() >= next_report:
            memory.append(tree_memory_mb(server.pid) or {})
            elapsed = time.monotonic() - wall_start
            progress(f"  {calls} calls: {elapsed:4.0f} s, server CPU {cpu_now - cpu_start:.1f} s")
            next_report += 5
    cpu = tree_cpu_seconds(server.pid, cpu_now) - cpu_start
    wall = time.monotonic() - wall_start
    for caller in callers:
        if caller.poll() is None:
            caller.kill()
            caller.wait(timeout=10)
    reports = [json.loads(out.read_text()) for out in outs if out.exists()]
    answered = sum(call["registered"] for report in reports for call in report["calls"])
    lines: list[dict[str, Any]] = []
    settle = time.monotonic() + 10  # the server logs "call ended" once each call is closed
    while time.monotonic() < settle:
        lines = server_log(log, prefix)
        if sum(line.get("message") == "call ended" for line in lines) >= answered:
            break
        time.sleep(0.2)
    row = summarise_step(calls, reports, lines, cpu=cpu, wall=wall, args=args)
    row["load_average_1m"] = round(os.getloadavg()[0], 2)  # a busy machine shows here
    for key in ("rss", "pss"):  # the step's peak, sampled every 5 s while calls run
        row[f"server_{key}_mb"] = max((sample.get(key, 0.0) for sample in memory), default=None)
    return row


def summarise_step(
    calls: int,
    reports: Sequence[dict[str, Any]],
    lines: Sequence[dict[str, Any]],
    *,
    cpu: float,
    wall: float,
    args: argparse.Namespace,
) -> dict[str, Any]:
    records = [record for report in reports for record in report["calls"]]
    ended = [line for line in lines if line.get("message") == "call ended"]
    turns = [line for line in lines if line.get("message") == "turn"]
    jitter = [line.get("pipeline", {}).get("jitter", {}) for line in ended]
    call_seconds = sum(record["connected_s"] for record in records)
    latencies = [ms for record in records for ms in record["voice_to_voice_ms"]]
    unanswered = sum(record["unanswered_turns"] for record in records)
    caller_cpu = sum(report["cpu_s"] for report in reports)
    first_send = [
        line["timings_ms"]["first_send"]
        for line in turns
        if isinstance(line.get("timings_ms"), dict) and "first_send" in line["timings_ms"]
    ]
    row: dict[str, Any] = {
        "calls_placed": calls,
        "calls_answered": sum(record["registered"] for record in records),
        "call_seconds": round(call_seconds, 1),
        "turns_spoken": sum(record["turns_spoken"] for record in records),
        "turns_answered": len(latencies),
        "turns_unanswered": unanswered,
        "voice_to_voice_ms": distribution(latencies),
        "voice_to_voice_p95_ms_with_unanswered": _p95_with_misses(latencies, unanswered),
        "server_first_send_ms": distribution(first_send),
        "packets_dropped": sum(line.get("packets_dropped", 0) for line in ended),
        "media_packets": sum(line.get("media_packets", 0) for line in ended),
        "jitter_late": sum(j.get("late", 0) for j in jitter),
        "late_packets_pct": _percent(sum(j.get("late", 0) for j in jitter), ended),
        "jitter_concealed": sum(j.get("concealed", 0) for j in jitter),
        "calls_ended_logged": len(ended),
        "server_cpu_s": round(cpu, 2),
        "server_cpu_ms_per_call_second": round(cpu / call_seconds * 1000, 2)
        if call_seconds
        else None,
        "server_cores_used": round(cpu / wall, 3) if wall else None,
        "caller_cpu_ms_per_call_second": round(caller_cpu / call_seconds * 1000, 2)
        if call_seconds
        else None,
        "caller_loop_lag_p99_ms": max((r["loop_lag_ms"]["p99"] for r in reports), default=None),
        "caller_errors": sorted({r["error"] for r in records if r["error"]})[:5],
        "wall_s": round(wall, 1),
    }
    row["meets_target"], row["misses"] = meets_target(
        row, args.target_p95, args.max_drops, max_late_pct=args.max_late_pct
    )
    return row


def _percent(late: int, ended: Sequence[dict[str, Any]]) -> float | None:
    packets = sum(line.get("media_packets", 0) for line in ended)
    return round(100 * late / packets, 3) if packets else None


def _p95_with_misses(latencies: Sequence[float], misses: int) -> float | None:
    values = [*latencies, *([math.inf] * misses)]
    if not values:
        return None
    value = float(np.percentile(values, 95, method="higher"))
    return round(value, 1) if math.isfinite(value) else math.inf


def meets_target(
    row: dict[str, Any], target_p95_s: float, max_drops: int, *, max_late_pct: float | None = None
) -> tuple[bool, list[str]]:
    """Whether a step met the target, and if not, why (in words)."""
    misses = []
    late = row.get("late_packets_pct")
    if max_late_pct is not None and late is not None and late > max_late_pct:
        misses.append(f"{late:.2f}% packets late > {max_late_pct:g}%")
    if row["calls_answered"] < row["calls_placed"]:
        misses.append(f"{row['calls_placed'] - row['calls_answered']} calls not answered")
    if row["packets_dropped"] > max_drops:
        misses.append(f"{row['packets_dropped']} packets dropped")
    p95 = row["voice_to_voice_p95_ms_with_unanswered"]
    if p95 is None:
        misses.append("no turn answered")
    elif p95 > target_p95_s * 1000:
        shown = "unanswered turns" if math.isinf(p95) else f"{p95:.0f} ms"
        misses.append(f"voice-to-voice p95 {shown} > {target_p95_s * 1000:.0f} ms")
    return not misses, misses


# --- the ramp -----------------------------------------------------------------------


def _server_argv(args: argparse.Namespace) -> list[str]:
    argv = [sys.executable, "-m", "pipeline", "serve", "--host", "127.0.0.1", "--port", "0"]
    argv += ["--bot", args.bot, "--log-level", "info", "--workers", str(args.workers)]
    if args.bus:
        argv += ["--bus", args.bus]
    if args.bot == "voice":
        options = [
            ("--config", args.config_path),
            ("--llm", args.llm),
            ("--llm-url", args.llm_url),
            ("--llm-model", args.llm_model),
        ]
        for flag, value in options:
            if value:
                argv += [flag, str(value)]
    return argv


def _resolve(args: argparse.Namespace) -> None:
    """Defaults that depend on the bot: steps, the caller audio and the config file."""
    defaults = DEFAULTS[args.bot]
    args.step = args.step or defaults["step"]
    args.max_calls = args.max_calls or defaults["max_calls"]
    args.start = args.start or args.step
    if args.max_late_pct is None:
        args.max_late_pct = defaults["max_late_pct"]
    demo = DEMO_AUDIO
    args.audio_files = args.audio
    args.config_path = args.config
    if args.bot == "voice" and not args.audio_files:
        # the voice bot needs real speech: the shipped turns, and the bakery they phone
        manifest = json.loads((demo / "turns.json").read_text())
        args.audio_files = [Path(str(demo / entry["file"])) for entry in manifest]
        args.config_path = args.config_path or Path(str(demo / "bot.toml"))


def steps(start: int, step: int, max_calls: int) -> list[int]:
    counts = list(range(start, max_calls + 1, step))
    return counts or [max_calls]


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    children = Children()
    affinity = os.sched_getaffinity(0)
    if args.caller_cpus:  # the bench's own polling stays off the server's cores too
        os.sched_setaffinity(0, args.caller_cpus)
    try:
        with tempfile.TemporaryDirectory(prefix="voicegraph-capacity-") as tmp:
            workdir = Path(tmp)
            progress(f"starting the {args.bot} bot server (models load first)")
            server, url, log = start_server(children, _server_argv(args), workdir, args.server_cpus)
            if args.bot == "voice":
                warm_up(children, url, args, workdir)
            args.idle_memory = tree_memory_mb(server.pid)  # models loaded, no call
            for calls in steps(args.start, args.step, args.max_calls):
                progress(f"step: {calls} concurrent calls for {args.seconds:g} s")
                row = run_step(children, server, url, log, calls, args, workdir)
                rows.append(row)
                v2v = row["voice_to_voice_ms"]
                verdict = "meets the target" if row["meets_target"] else "; ".join(row["misses"])
                progress(
                    f"  answered {row['calls_answered']}/{calls}, dropped "
                    f"{row['packets_dropped']}, voice-to-voice p95 {v2v['p95']} ms: {verdict}"
                )
                if not row["meets_target"] and not args.keep_going:
                    break
            server.send_signal(signal.SIGTERM)
            try:
                exit_code = server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                exit_code = None
            if exit_code != 0:
                progress(f"note: the server exited with {exit_code} on SIGTERM")
    finally:
        children.stop_all()
        os.sched_setaffinity(0, affinity)
    return rows


def run_ramp(argv: Sequence[str]) -> tuple[list[dict[str, Any]], argparse.Namespace]:
    """The ramp ``bench capacity ARGV`` measures (same flags), for scripts that compare
    several: its rows and the arguments with their bot-dependent defaults filled in."""
    parser = argparse.ArgumentParser(prog="voicegraph bench capacity")
    configure(parser)
    args = parser.parse_args(argv)
    _resolve(args)
    return measure(args), args


def main(args: argparse.Namespace) -> int:
    _resolve(args)
    if args.start < 1 or args.step < 1 or args.max_calls < args.start:
        print(
            "voicegraph bench capacity: need 1 <= --start <= --max-calls, --step >= 1",
            file=sys.stderr,
        )
        return 2
    try:
        config = load_config(args.config_path).with_overrides(
            llm={"backend": args.llm, "url": args.llm_url, "model": args.llm_model}
        )
    except ConfigError as exc:
        print(f"voicegraph bench capacity: {exc}", file=sys.stderr)
        return 2
    with sigterm_as_exit():
        try:
            rows = measure(args)
        except RuntimeError as exc:
            print(f"voicegraph bench capacity: {exc}", file=sys.stderr)
            return 1
    passing = [row["calls_placed"] for row in rows if row["meets_target"]]
    best = max(passing) if passing else None
    print_rows(rows, best, args)
    results = {
        "summary": {
            "max_calls_meeting_target": best,
            **{
                f"calls_{r['calls_placed']}.server_cpu_ms_per_call_second": r[
                    "server_cpu_ms_per_call_second"
                ]
                for r in rows
            },
            **{
                f"calls_{r['calls_placed']}.voice_to_voice_p95_ms": r["voice_to_voice_ms"]["p95"]
                for r in rows
            },
            **{f"calls_{r['calls_placed']}.packets_dropped": r["packets_dropped"] for r in rows},
            **{f"calls_{r['calls_placed']}.server_pss_mb": r["server_pss_mb"] for r in rows},
            "server_idle_memory_mb": getattr(args, "idle_memory", None),
        },
        "target": {
            "voice_to_voice_p95_s": args.target_p95,
            "max_drops": args.max_drops,
            "max_late_pct": args.max_late_pct,
            "every_call_answered": True,
        },
        "rows": rows,
    }
    parameters = {
        "bot": args.bot,
        "config": str(args.config_path) if args.config_path else None,
        "audio": [str(p) for p in args.audio_files] if args.audio_files else "speech-like noise",
        "steps": steps(args.start, args.step, args.max_calls),
        "seconds_per_call": args.seconds,
        "ramp_s": args.ramp,
        "calls_per_caller_process": CALLS_PER_WORKER,
        "server_workers": args.workers,
        "bus": args.bus or "in-process",
        "caller_voices": args.voices,
        "server_cpus": sorted(args.server_cpus) if args.server_cpus else "not pinned",
        "caller_cpus": sorted(args.caller_cpus) if args.caller_cpus else "not pinned",
    }
    if args.json:
        document = describe_run(
            "capacity", results, models=describe_models(config, args.bot), parameters=parameters
        )
        progress(f"wrote {write_json(args.json, document)}")
    if args.plot:
        progress(f"wrote {save_figure(plot(rows, args), args.plot)}")
    return 0
