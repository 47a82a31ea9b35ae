"""``bench compare A.json B.json``: two runs side by side, with the ratio B / A.

What a user wants from it is the effect of one change (a model, a parameter, a
stage), so the table lists every number of the runs' ``summary`` (every numeric
leaf of the results with ``--all``), and below it what else differs between the
runs: the machine, the models, the parameters. A ratio from two machines, or two
configurations, is worth knowing about before it is believed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from pipeline.bench.report import describe_run, table, write_json

__all__ = ["compare_documents", "configure", "flatten", "main"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", type=Path, metavar="A.json", help="the reference run")
    parser.add_argument("b", type=Path, metavar="B.json", help="the run compared with it")
    parser.add_argument("--all", action="store_true", help="every number, not just the summary")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the comparison as JSON")
    parser.set_defaults(bench_main=main)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts → ``{"a.b.c": leaf}``; lists are kept whole (as one leaf)."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _metrics(document: dict[str, Any], every: bool) -> dict[str, float]:
    results = document.get("results", {})
    source = results if every or "summary" not in results else results["summary"]
    return {key: value for key, value in flatten(source).items() if _is_number(value)}


def compare_documents(
    a: dict[str, Any], b: dict[str, Any], *, every: bool = False
) -> dict[str, Any]:
    """Rows of (metric, A, B, B/A) for the metrics both runs have, and the context that
    differs (machine, models, parameters, benchmark, date)."""
    ours, theirs = _metrics(a, every), _metrics(b, every)
    rows = []
    for metric in [key for key in ours if key in theirs]:
        left, right = ours[metric], theirs[metric]
        ratio = right / left if left else None
        rows.append({"metric": metric, "a": left, "b": right, "ratio": ratio})
    only = {"a": sorted(set(ours) - set(theirs)), "b": sorted(set(theirs) - set(ours))}
    context = {}
    for section in ("benchmark", "date", "command", "machine", "models", "parameters"):
        left, right = flatten(a.get(section), section), flatten(b.get(section), section)
        for key in sorted(set(left) | set(right)):
            if left.get(key) != right.get(key):
                context[key] = {"a": left.get(key), "b": right.get(key)}
    return {"rows": rows, "only_in": only, "differences": context}


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 1] + "…"


def main(args: argparse.Namespace) -> int:
    try:
        a = json.loads(args.a.read_text())
        b = json.loads(args.b.read_text())
    except (OSError, ValueError) as exc:
        print(f"voicegraph bench compare: {exc}", file=sys.stderr)
        return 2
    comparison = compare_documents(a, b, every=args.all)
    print(f"A = {args.a}  ({a.get('benchmark')}, {a.get('date')})")
    print(f"B = {args.b}  ({b.get('benchmark')}, {b.get('date')})\n")
    rows = [
        [row["metric"], row["a"], row["b"], "-" if row["ratio"] is None else f"{row['ratio']:.2f}×"]
        for row in comparison["rows"]
    ]
    print(table(["metric", "A", "B", "B / A"], rows) if rows else "no metric in common")
    for side, names in comparison["only_in"].items():
        if names:
            print(f"\nonly in {side.upper()}: {', '.join(names)}")
    differences = {
        key: value
        for key, value in comparison["differences"].items()
        if not key.startswith(("date", "command"))
    }
    if differences:
        print("\nwhat else differs between the runs:")
        for key, value in differences.items():
            print(f"  {key}: A {_short(value['a'])} | B {_short(value['b'])}")
    if args.json:
        document = describe_run(
            "compare", comparison, parameters={"a": str(args.a), "b": str(args.b)}
        )
        write_json(args.json, document)
    return 0
