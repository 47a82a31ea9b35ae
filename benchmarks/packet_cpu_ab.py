"""A/B of CPU per call-second, server and emulated callers: this tree against a git ref.

    python -m benchmarks.packet_cpu_ab [--base REF] [--calls 100 200] [--rounds 2]
        [--seconds 20]

The machine's speed drifts (a shared 2-core VM: the same run is 25% slower at some
hours), so a figure from another hour is no baseline. This runs the same parrot
``bench capacity`` step on the code at ``--base`` (``git archive`` into a temporary
folder; nothing in the checkout changes) and on this working tree, alternating
base/ours, back to back, ``--rounds`` times per call count. Each run is a fresh
server (``serve --workers 2``) and fresh load callers; CPU is read from ``/proc``
(server process tree) and ``getrusage`` (callers), per second of call time, so it
does not depend on how long the run took. Late packets, drops and voice-to-voice
come with each run, but at a machine's edge those swing with its speed; the CPU
figures are the comparison.

Writes ``benchmarks/results/packet_cpu_ab.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from .report import progress, write_report

ROOT = Path(__file__).resolve().parents[1]
FIELDS = (
    "calls_answered",
    "packets_dropped",
    "media_packets",
    "jitter_late",
    "late_packets_pct",
    "server_cpu_ms_per_call_second",
    "caller_cpu_ms_per_call_second",
    "caller_loop_lag_p99_ms",
    "load_average_1m",
)


def export(ref: str, into: Path) -> str:
    """The tree at ``ref`` under ``into``; returns the commit."""
    commit = subprocess.run(
        ["git", "rev-parse", ref], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return commit


def run_step(tree: Path, calls: int, seconds: float, out: Path) -> dict[str, Any]:
    """One capacity step on ``tree``'s code (its folder first on the path, and the cwd,
    so the server and caller subprocesses import it too)."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    command = [
        sys.executable,
        "-c",
        "import sys; from pipeline.cli import main; sys.exit(main())",
        "bench", "capacity", "--bot", "parrot", "--workers", "2",
        "--start", str(calls), "--step", "100", "--max-calls", str(calls),
        "--seconds", str(seconds), "--keep-going", "--json", str(out),
    ]  # fmt: skip
    started = time.strftime("%H:%M:%S", time.gmtime())
    subprocess.run(command, cwd=tree, env=env, capture_output=True, check=True, timeout=900)
    row = json.loads(out.read_text())["results"]["rows"][0]
    return {
        "started_utc": started,
        **{name: row[name] for name in FIELDS},
        "voice_to_voice_p95_ms": row["voice_to_voice_ms"]["p95"],
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for calls in sorted({run["calls"] for run in runs}):
        figures: dict[str, Any] = {}
        for side in ("server", "caller"):
            key = f"{side}_cpu_ms_per_call_second"
            base = [r[key] for r in runs if r["calls"] == calls and r["variant"] == "base"]
            ours = [r[key] for r in runs if r["calls"] == calls and r["variant"] == "ours"]
            figures[side] = {
                "base_mean": round(float(np.mean(base)), 2),
                "ours_mean": round(float(np.mean(ours)), 2),
                "ours_over_base": round(float(np.mean(ours) / np.mean(base)), 3),
            }
        total_base = figures["server"]["base_mean"] + figures["caller"]["base_mean"]
        total_ours = figures["server"]["ours_mean"] + figures["caller"]["ours_mean"]
        figures["total"] = {
            "base_mean": round(total_base, 2),
            "ours_mean": round(total_ours, 2),
            "ours_over_base": round(total_ours / total_base, 3),
        }
        summary[f"calls_{calls}"] = figures
    return summary


def plot(results: dict[str, Any]) -> plt.Figure:
    summary = results["summary"]
    figure, axes = plt.subplots(1, len(summary), figsize=(5.5 * len(summary), 4.2), squeeze=False)
    for axis, (label, figures) in zip(axes[0], summary.items(), strict=True):
        x = np.arange(2)
        for offset, variant, color in ((-0.2, "base", "#999999"), (0.2, "ours", "#2a7ab9")):
            values = [figures[side][f"{variant}_mean"] for side in ("server", "caller")]
            axis.bar(x + offset, values, 0.4, label=variant, color=color)
            for position, value in zip(x + offset, values, strict=True):
                axis.text(position, value, f"{value:.2f}", ha="center", va="bottom")
        axis.set_xticks(x, ["server (2 workers)", "load callers"])
        axis.set_ylabel("CPU ms per call-second")
        axis.set_title(f"{label.replace('_', ' ')}: total x{figures['total']['ours_over_base']}")
        axis.legend()
    figure.suptitle(f"parrot calls, base {results['base_commit'][:10]} vs this tree (A/B)")
    return figure


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--base", default="HEAD", help="git ref to compare against (HEAD)")
    parser.add_argument("--calls", type=int, nargs="+", default=[100, 200])
    parser.add_argument("--rounds", type=int, default=2, help="base/ours pairs per call count")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each call")
    args = parser.parse_args(argv)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="voicegraph-ab-") as scratch:
        base_tree = Path(scratch) / "base"
        commit = export(args.base, base_tree)
        for calls in args.calls:
            for round_index in range(args.rounds):
                for variant, tree in (("base", base_tree), ("ours", ROOT)):
                    progress(f"{calls} calls, round {round_index + 1}, {variant}")
                    out = Path(scratch) / f"{variant}-{calls}-{round_index}.json"
                    run = run_step(tree, calls, args.seconds, out)
                    runs.append({"calls": calls, "variant": variant, **run})
    results = {
        "base": args.base,
        "base_commit": commit,
        "seconds_per_call": args.seconds,
        "runs": runs,
        "summary": summarize(runs),
    }
    json_path, png_path = write_report("packet_cpu_ab", results, plot(results))
    print(json.dumps(results["summary"], indent=2))
    print(f"wrote {json_path}, {png_path}")
    return results


if __name__ == "__main__":
    main()
