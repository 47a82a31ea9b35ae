"""Where benchmark results go: one JSON for machines and one PNG for people, per run.

The machine description, JSON and PNG writing live in the installed package
(:mod:`pipeline.benchkit.report`, used by ``voicegraph bench``); this module keeps
the signature the scripts in ``benchmarks/`` use and their results folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from pipeline.benchkit.report import cpu_model, describe_run, machine, progress, save_figure
from pipeline.benchkit.report import write_json as _write_json

__all__ = ["RESULTS_DIR", "cpu_model", "machine", "progress", "write_report"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


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
