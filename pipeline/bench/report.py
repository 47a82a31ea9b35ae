"""Where bench results go: one JSON for machines, one PNG for people, a table on the terminal.

Every document names the machine it ran on, the date, the command, the models and
the parameters, because a figure without those cannot be compared with anything.
Progress goes to stderr so the table (or JSON) on stdout stays clean.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "command_line",
    "cpu_model",
    "describe_run",
    "distribution",
    "machine",
    "progress",
    "save_figure",
    "table",
    "write_json",
]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """What a reader needs to judge a figure: cores, CPU model, memory, Python, OS."""
    memory_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gb": memory_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def describe_run(
    name: str,
    results: dict[str, Any],
    *,
    models: dict[str, Any] | None = None,
    parameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole document of one run: what ran, where, when, with what, and its results."""
    return {
        "benchmark": name,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command_line(),
        "machine": machine(),
        "models": models or {},
        "parameters": parameters or {},
        "results": results,
    }


def command_line() -> str:
    """How this run was started, as a user would type it again."""
    program = Path(sys.argv[0])
    if program.name == "__main__.py":
        return " ".join(["python -m", program.parent.name, *sys.argv[1:]])
    if program.suffix == ".py":
        return " ".join([Path(sys.executable).name, *sys.argv])
    return " ".join([program.name, *sys.argv[1:]])


def write_json(path: Path, document: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(document), indent=2, default=str) + "\n")
    return path


def save_figure(figure: Figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def progress(message: str) -> None:
    """Long benches say what they are doing, on stderr so stdout stays machine-readable."""
    print(message, file=sys.stderr, flush=True)


def distribution(values: Iterable[float | None]) -> dict[str, Any]:
    """count, p50, p95, p99, max (in the values' unit, rounded to 0.1); None when empty."""
    data = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if not len(data):
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}
    p50, p95, p99 = np.percentile(data, [50, 95, 99])
    return {
        "count": len(data),
        "p50": round(float(p50), 1),
        "p95": round(float(p95), 1),
        "p99": round(float(p99), 1),
        "max": round(float(data.max()), 1),
    }


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table: first column left, the others right."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = [_row(header, widths), "-+-".join("-" * w for w in widths)]
    lines += [_row(row, widths) for row in cells]
    return "\n".join(lines)


def _row(values: Sequence[Any], widths: Sequence[int]) -> str:
    parts = [
        str(v).ljust(w) if i == 0 else str(v).rjust(w)
        for i, (v, w) in enumerate(zip(values, widths, strict=True))
    ]
    return " | ".join(parts)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if math.isfinite(value) else "-"
    return str(value)


def _finite(value: Any) -> Any:
    """NaN and infinities are not JSON: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
