"""Where benchmark results go: one JSON for machines and one PNG for people, per run.

Every report names the machine it ran on, the date and the command, because a
figure without those cannot be compared with anything.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """What a reader needs to judge a figure: cores, CPU model, Python, OS."""
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_report(
    name: str,
    results: dict[str, Any],
    figure: plt.Figure | None = None,
    *,
    directory: Path | None = None,
) -> tuple[Path, Path | None]:
    """Write ``<name>.json`` (results + machine + date + command) and ``<name>.png``."""
    directory = directory or RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": name,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "results": results,
    }
    json_path = directory / f"{name}.json"
    json_path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    png_path = None
    if figure is not None:
        png_path = directory / f"{name}.png"
        figure.savefig(png_path, dpi=110, bbox_inches="tight")
        plt.close(figure)
    return json_path, png_path


def progress(message: str) -> None:
    """Long benchmarks say what they are doing, on stderr so JSON on stdout stays clean."""
    print(message, file=sys.stderr, flush=True)
