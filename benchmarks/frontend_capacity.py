"""Front-end capacity: how many calls one core of bot front-end carries, models remote.

    python -m benchmarks.frontend_capacity [--server-cpus 0] [--other-cpus 1] [--quick]
        [--bus auto|redis|none] [--turns semantic|words|hangover]

The front-end is what stays in the bot process once STT, the LLM and TTS run on model
servers: the transport (WebSocket, RTP, jitter buffer, μ-law), Silero VAD, end of turn
(the Smart Turn model, a shared service, and the turn judge), the conversation bus
(``serve --bus`` on a private ``redis-server`` when one is installed) and the HTTP
clients of the remote services. To measure only that, the model servers are
:class:`~benchmarks.canned_model_servers.FakeCannedModelServers` (canned answers after
fixed delays, standing in for GPU servers), and the cores are split: the ``serve``
process is pinned to ``--server-cpus`` (one core), the fakes, redis, the load callers
(:mod:`pipeline.bench.load_caller`) and this script to ``--other-cpus``, and the
server's CPU is read
from ``/proc`` (:mod:`pipeline.bench.process_usage`).

Two ramps of ``voicegraph bench capacity`` on the same pinned core, same caller
behaviour (speak a demo turn, listen to the whole reply, pause, speak again; calls
dialled over ``--ramp`` seconds, each starting at a random offset):

- baseline: the parrot bot (transport only: it echoes the caller's speech);
- front-end: the voice bot with ``[stt]``, ``[llm]``, ``[tts]`` ``backend = "openai"``
  pointed at the fakes, ``[turns] mode = "semantic"`` (Silero + Smart Turn + words);
- the same with ``turn_model = "none"`` (``--words-steps``; ``none`` skips it): the end
  of turn from the words and pitch alone, what the front-end costs once Smart Turn (the
  largest piece of it) runs elsewhere.

A step meets the target when every call was answered, every turn answered, no packet
dropped, at most 1 % of packets late and the voice-to-voice p95 (caller side, fake
model delays included) within ``--target-p95``. Reported per step: calls, voice-to-
voice p50/p95, unanswered turns, drops, late packets, server cores used and CPU per
call-second, RSS/PSS, the load average (a busy machine shows there), and the most calls
per core meeting the target; also the CPU-bound estimate ``1000 / (server CPU ms per
call-second)``, the calls a fully used core would carry at the cost measured.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.canned_model_servers import CannedAnswers, FakeCannedModelServers
from benchmarks.report import progress, write_report
from pipeline.bench import cpu_list, run_ramp

VOICE_STEPS = (10, 10, 40)  # start, step, last: every step runs (about 5 min in all)
PARROT_STEPS = (50, 25, 100)
WORDS_STEPS = (30, 10, 60)  # the voice bot without Smart Turn: see --words-steps
LABELS = {
    "parrot": "parrot (transport only)",
    "voice": "voice front-end",
    "voice_words": "voice, Smart Turn off (words + pitch)",
}
STYLES = {"parrot": ("s--", "C0"), "voice": ("o-", "C1"), "voice_words": ("^-", "C2")}
MAX_LATE_PCT = 1.0

BOT_TOML = """\
# The voice bot of benchmarks/frontend_capacity.py: every model on the (fake) servers.
[bot]
system_prompt = "You answer the phone at Rosie's Bakery. Be brief: one or two short sentences."
greeting = "Hello, Rosie's Bakery. How can I help you?"

[stt]
backend = "openai"
url = "{url}"

[llm]
backend = "openai"
url = "{url}"

[tts]
backend = "openai"
url = "{url}"

[turns]
{turns}
"""
TURNS = {  # what decides the end of a turn (the VAD runs in every one)
    "semantic": 'mode = "semantic"  # Smart Turn + the words + pitch',
    "words": 'mode = "semantic"\nturn_model = "none"  # the words + pitch, no Smart Turn',
    "hangover": 'mode = "hangover"  # a fixed silence',
}


@contextlib.contextmanager
def redis_bus(mode: str, cpus: frozenset[int]) -> Iterator[str | None]:
    """``--bus``: a private ``redis-server`` on a free loopback port, on ``cpus`` (``auto``:
    if one is installed), its URL for ``serve --bus``; ``none``: the in-process bus."""
    binary = shutil.which("redis-server")
    if mode == "none" or (mode == "auto" and binary is None):
        yield None
        return
    if binary is None:
        raise SystemExit("--bus redis: redis-server is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {port} did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _steps(text: str) -> tuple[int, int, int] | None:
    if text == "none":
        return None
    parts = tuple(int(part) for part in text.split(","))
    if len(parts) != 3 or min(parts) < 1 or parts[0] > parts[2]:
        raise argparse.ArgumentTypeError(f"want START,STEP,LAST with START <= LAST: {text!r}")
    return parts  # type: ignore[return-value]


def ramp(
    bot: str,
    steps: tuple[int, int, int],
    args: argparse.Namespace,
    config: Path | None,
    bus: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One ``bench capacity`` ramp on the pinned cores: its rows and its settings."""
    start, step, last = steps
    argv = ["--bot", bot, "--start", str(start), "--step", str(step), "--max-calls", str(last)]
    argv += ["--seconds", str(args.seconds), "--ramp", str(args.ramp)]
    argv += ["--target-p95", str(args.target_p95), "--max-late-pct", str(MAX_LATE_PCT)]
    argv += ["--server-cpus", ",".join(map(str, sorted(args.server_cpus)))]
    argv += ["--caller-cpus", ",".join(map(str, sorted(args.other_cpus)))]
    if config is not None:
        argv += ["--config", str(config)]
    argv += ["--keep-going"]  # the whole curve: a busy moment does not end the ramp
    if bus:
        argv += ["--bus", bus]
    progress(f"{bot} ramp: bench capacity {' '.join(argv)}")
    rows, resolved = run_ramp(argv)
    for row in rows:  # every turn answered, on top of bench capacity's own target
        if row["turns_unanswered"] and row["meets_target"]:
            row["meets_target"] = False
            row["misses"].append(f"{row['turns_unanswered']} turns unanswered")
        spent = row["server_cpu_ms_per_call_second"]
        row["cpu_bound_calls_per_core"] = round(1000 / spent, 1) if spent else None
    settings = {
        "argv": argv,
        "audio": [str(path) for path in resolved.audio_files or []] or "speech-like noise",
    }
    return rows, settings


def best(rows: Sequence[dict[str, Any]], cores: int) -> dict[str, Any]:
    """The largest step that met the target (and every smaller one did), per core."""
    met = None
    for row in rows:
        if not row["meets_target"]:
            break
        met = row
    return {
        "max_calls_meeting_target": met["calls_placed"] if met else None,
        "calls_per_core": round(met["calls_placed"] / cores, 1) if met else None,
        "server_cpu_ms_per_call_second_there": met["server_cpu_ms_per_call_second"]
        if met
        else None,
        "cpu_bound_calls_per_core": max(
            (r["cpu_bound_calls_per_core"] or 0 for r in rows if r["calls_answered"]),
            default=None,
        ),
    }


def figure(results: dict[str, Any], target_p95_s: float) -> plt.Figure:
    fig, (cpu_axis, cores_axis, latency_axis) = plt.subplots(1, 3, figsize=(16, 4.8))
    for name in (name for name in LABELS if name in results):
        (style, color), label = STYLES[name], LABELS[name]
        rows = results[name]["rows"]
        calls = [row["calls_placed"] for row in rows]
        costs = [r["server_cpu_ms_per_call_second"] for r in rows]
        cpu_axis.plot(calls, costs, style, color=color, label=label)
        behind = [i for i, r in enumerate(rows) if r["turns_unanswered"] or r["packets_dropped"]]
        cpu_axis.plot(
            [calls[i] for i in behind],
            [costs[i] for i in behind],
            "x",
            color="black",
            label="work left undone (understated)" if behind and name == "voice" else None,
        )
        cores_axis.plot(
            calls, [r["server_cores_used"] for r in rows], style, color=color, label=label
        )
        for key, marker in (("p50", ":"), ("p95", "-")):
            values = [r["voice_to_voice_ms"][key] for r in rows]
            latency_axis.plot(
                calls,
                [float("nan") if v is None else v for v in values],
                style[0] + marker,
                color=color,
                alpha=0.6 if key == "p50" else 1.0,
                label=f"{name} {key}",
            )
        for row in rows:
            if not row["meets_target"]:
                latency_axis.annotate(
                    "missed",
                    (row["calls_placed"], row["voice_to_voice_ms"]["p95"] or 0),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(0, 6),
                    ha="center",
                )
    cpu_axis.set_title("server CPU ms per call-second")
    cores_axis.set_title("server cores used (pinned to one)")
    cores_axis.axhline(1.0, color="red", linewidth=0.8)
    latency_axis.set_title("voice-to-voice at the callers (fake model delays included)")
    latency_axis.axhline(target_p95_s * 1000, color="red", linewidth=0.8, label="target p95")
    latency_axis.set_ylabel("ms")
    for axis in (cpu_axis, cores_axis, latency_axis):
        axis.set_xlabel("concurrent calls")
        axis.set_ylim(bottom=0)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    summary = results["summary"]
    fig.suptitle(
        "front-end capacity on one pinned core, calls per core meeting the target: voice "
        f"{summary['voice_calls_per_core'] or 'none'}"
        + (
            f", Smart Turn off {summary['voice_words_calls_per_core'] or 'none'}"
            if "voice_words" in results
            else ""
        )
        + f", parrot {summary['parrot_calls_per_core'] or 'none'}; load average "
        f"{results['load_average']['start'][0]:.1f} at start (2 cores: >1 means a busy machine)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--server-cpus", type=cpu_list, default=cpu_list("0"), metavar="CPUS")
    parser.add_argument("--other-cpus", type=cpu_list, default=cpu_list("1"), metavar="CPUS")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each call (20)")
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds to dial a step (5)")
    parser.add_argument("--target-p95", type=float, default=1.5, help="voice-to-voice, s")
    parser.add_argument("--voice-steps", type=_steps, default=VOICE_STEPS, metavar="S,STEP,LAST")
    parser.add_argument("--parrot-steps", type=_steps, default=PARROT_STEPS, metavar="S,STEP,LAST")
    parser.add_argument(
        "--words-steps",
        type=_steps,
        default=WORDS_STEPS,
        metavar="S,STEP,LAST|none",
        help="a third ramp: the voice bot with Smart Turn off (words + pitch decide)",
    )
    parser.add_argument("--stt-delay-ms", type=float, default=150.0)
    parser.add_argument("--llm-first-token-ms", type=float, default=100.0)
    parser.add_argument("--tts-delay-ms", type=float, default=100.0)
    parser.add_argument(
        "--turns", choices=sorted(TURNS), default="semantic", help="end of turn (semantic)"
    )
    parser.add_argument(
        "--bus",
        choices=("auto", "redis", "none"),
        default="auto",
        help="the voice bot's event bus: a private redis-server (auto: if installed) or none",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 small steps each")
    parser.add_argument("--name", default="frontend_capacity", help="results/<name>.json/.png")
    args = parser.parse_args(argv)
    if args.server_cpus & args.other_cpus:
        parser.error("--server-cpus and --other-cpus must not share a core")
    if args.voice_steps is None or args.parrot_steps is None:
        parser.error("only --words-steps may be none")
    if args.quick:
        args.seconds, args.ramp = 10.0, 2.0
        args.voice_steps, args.parrot_steps = (2, 2, 4), (5, 5, 10)
        args.words_steps = args.words_steps and (2, 2, 4)
    answers = CannedAnswers(
        stt_delay_s=args.stt_delay_ms / 1000,
        llm_first_token_s=args.llm_first_token_ms / 1000,
        tts_delay_s=args.tts_delay_ms / 1000,
    )
    cores = len(args.server_cpus)
    os.sched_setaffinity(0, args.other_cpus)  # nothing of ours but the server on its cores
    load_start, started = os.getloadavg(), time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="voicegraph-frontend-") as tmp,
        FakeCannedModelServers(answers, cpus=set(args.other_cpus)) as fakes,
        redis_bus(args.bus, args.other_cpus) as bus,
    ):
        config = Path(tmp) / "bot.toml"
        config.write_text(BOT_TOML.format(url=fakes.url, turns=TURNS[args.turns]))
        parrot_rows, parrot_settings = ramp("parrot", args.parrot_steps, args, None)
        voice_rows, voice_settings = ramp("voice", args.voice_steps, args, config, bus)
        ramps = {}
        if args.words_steps:
            words = Path(tmp) / "words.toml"
            words.write_text(BOT_TOML.format(url=fakes.url, turns=TURNS["words"]))
            rows, settings = ramp("voice", args.words_steps, args, words, bus)
            ramps["voice_words"] = {"best": best(rows, cores), "settings": settings, "rows": rows}
        served = fakes.stats()
    parrot, voice = best(parrot_rows, cores), best(voice_rows, cores)
    results: dict[str, Any] = {
        "summary": {
            "voice_calls_per_core": voice["calls_per_core"],
            "parrot_calls_per_core": parrot["calls_per_core"],
            "voice_cpu_bound_calls_per_core": voice["cpu_bound_calls_per_core"],
            "parrot_cpu_bound_calls_per_core": parrot["cpu_bound_calls_per_core"],
            "target_calls_per_core": 50,
            "meets_50_calls_per_core": bool(voice["calls_per_core"])
            and voice["calls_per_core"] >= 50,
            **{
                f"{name}_{key}": ramp_result["best"][key]
                for name, ramp_result in ramps.items()
                for key in ("calls_per_core", "cpu_bound_calls_per_core")
            },
            **_cost_ratio(parrot_rows, voice_rows),
        },
        "target": {
            "every_call_and_turn_answered": True,
            "max_drops": 0,
            "max_late_pct": MAX_LATE_PCT,
            "voice_to_voice_p95_s": args.target_p95,
        },
        "pinning": {
            "server_cpus": sorted(args.server_cpus),
            "fakes_and_callers_cpus": sorted(args.other_cpus),
        },
        "fake_model_servers": {**answers.describe(), "requests_served": served},
        "event_bus": "redis-server (serve --bus), voice bot only; on --other-cpus"
        if bus
        else "in-process (no redis-server, or --bus none)",
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "seconds": round(time.monotonic() - started, 1),
        "voice_bot_toml": BOT_TOML.format(url="(the fakes)", turns=TURNS[args.turns]),
        "parrot": {"best": parrot, "settings": parrot_settings, "rows": parrot_rows},
        "voice": {"best": voice, "settings": voice_settings, "rows": voice_rows},
        **ramps,
    }
    _print(results)
    json_path, png_path = write_report(args.name, results, figure(results, args.target_p95))
    progress(f"wrote {json_path} and {png_path}")


def _cost_ratio(
    parrot_rows: Sequence[dict[str, Any]], voice_rows: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Voice over parrot server CPU per call-second, each at its largest answered step."""
    costs = []
    for rows in (parrot_rows, voice_rows):
        answered = [r for r in rows if r["calls_answered"] and r["server_cpu_ms_per_call_second"]]
        costs.append(answered[-1]["server_cpu_ms_per_call_second"] if answered else None)
    parrot_cost, voice_cost = costs
    ratio = round(voice_cost / parrot_cost, 2) if parrot_cost and voice_cost else None
    return {
        "parrot_server_cpu_ms_per_call_second": parrot_cost,
        "voice_server_cpu_ms_per_call_second": voice_cost,
        "voice_over_parrot_cpu_ratio": ratio,
    }


def _print(results: dict[str, Any]) -> None:
    header = (
        f"{'bot':11} {'calls':>5} {'v2v p50':>8} {'v2v p95':>8} {'unans':>5} {'drop':>5} "
        f"{'late%':>6} {'cores':>6} {'ms/call-s':>9} {'RSS MB':>7} {'load':>5}  target"
    )
    print(header)
    for name in (name for name in LABELS if name in results):
        for r in results[name]["rows"]:
            v2v = r["voice_to_voice_ms"]
            verdict = "met" if r["meets_target"] else "; ".join(r["misses"])
            print(
                f"{name:11} {r['calls_placed']:5d} {v2v['p50'] or 0:8.0f} {v2v['p95'] or 0:8.0f} "
                f"{r['turns_unanswered']:5d} {r['packets_dropped']:5d} "
                f"{r['late_packets_pct'] or 0:6.2f} {r['server_cores_used'] or 0:6.2f} "
                f"{r['server_cpu_ms_per_call_second'] or 0:9.1f} {r['server_rss_mb'] or 0:7.0f} "
                f"{r['load_average_1m']:5.1f}  {verdict}"
            )
    print(results["summary"], file=sys.stderr)


if __name__ == "__main__":
    main()
