"""Where benchmark results go: one JSON for machines and one PNG for people, per run.

The machine description, JSON and PNG writing live in the installed package
(:mod:`pipeline.bench.report`, used by ``voicegraph bench``); this module keeps
the signature the scripts in ``benchmarks/`` use and their results folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from pipeline.bench import cpu_model, describe_run, machine, progress, save_figure
from pipeline.bench import write_json as _write_json

__all__ = ["RESULTS_DIR", "cpu_model", "machine", "progress", "timing_summary", "write_report"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def timing_summary(ns: np.ndarray) -> dict[str, float]:
    """Per-item timings (nanoseconds) as the microsecond percentiles every benchmark reports."""
    us = np.asarray(ns, dtype=np.float64) / 1000.0
    p50, p90, p99, p999 = np.percentile(us, [50, 90, 99, 99.9])
    return {
        "median_us": float(p50),
        "p90_us": float(p90),
        "p99_us": float(p99),
        "p999_us": float(p999),
        "mean_us": float(us.mean()),
        "max_us": float(us.max()),
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
    json_path = _write_json(directory / f"{name}.json", describe_run(name, results))
    png_path = save_figure(figure, directory / f"{name}.png") if figure is not None else None
    return json_path, png_path
