"""What a channel hop between stages costs, and what running pure transforms inline saves.

In a call, packets travel one at a time (50 a second), so every stage that is a task
of its own costs a scheduler round trip per packet. This measures CPU time per item
through chains of 1 to 8 identity stages sent one at a time, with ``fuse=False`` (a
task per stage, the baseline) and with the default inline running of pure transforms,
in the same run, and reports the ratio.

    python -m benchmarks.hop_bench [--quick]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable, Sequence
from typing import Any

import matplotlib.pyplot as plt
import trio

from pipeline import Stage, open_chain

from .report import progress, write_report

DEPTHS = (1, 2, 4, 6, 8)


class Identity(Stage[Any, Any]):
    """A pure transform that does nothing: what remains is the runtime's own cost."""

    def process(self, item: Any) -> Iterable[Any]:
        return (item,)


async def cpu_per_item(depth: int, items: int, fuse: bool) -> float:
    """CPU µs per item through ``depth`` stages, each item sent alone and awaited out."""
    stages = [Identity(name=f"s{index}") for index in range(depth)]
    async with open_chain(*stages, fuse=fuse) as chain:
        assert chain.inbound is not None
        for _ in range(200):  # warm up
            chain.inbound.send_nowait(0)
            await chain.outputs.receive()
        started = time.process_time()
        for item in range(items):
            chain.inbound.send_nowait(item)
            await chain.outputs.receive()
        return (time.process_time() - started) / items * 1e6


async def measure(items: int, repeats: int) -> dict[str, Any]:
    rows = []
    for depth in DEPTHS:
        tasks = min([await cpu_per_item(depth, items, fuse=False) for _ in range(repeats)])
        inline = min([await cpu_per_item(depth, items, fuse=True) for _ in range(repeats)])
        rows.append(
            {
                "stages": depth,
                "task_per_stage_us": round(tasks, 2),
                "inline_us": round(inline, 2),
                "ratio_task_per_stage_vs_inline": round(tasks / inline, 2),
            }
        )
        progress(f"{depth} stages: a task each {tasks:.1f} µs, inline {inline:.1f} µs per item")
    return {"items": items, "repeats": repeats, "rows": rows}


def plot(results: dict[str, Any]) -> plt.Figure:
    rows = results["rows"]
    figure, axis = plt.subplots(figsize=(6, 4))
    depths = [row["stages"] for row in rows]
    axis.plot(depths, [row["task_per_stage_us"] for row in rows], "o-", label="a task per stage")
    axis.plot(depths, [row["inline_us"] for row in rows], "s-", label="pure transforms inline")
    axis.set_xlabel("stages in the chain")
    axis.set_ylabel("CPU µs per item (items sent one at a time)")
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.suptitle("voicegraph: cost of stage hops")
    return figure


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer items, one repeat")
    args = parser.parse_args(argv)
    items, repeats = (2000, 1) if args.quick else (10000, 3)
    results = trio.run(measure, items, repeats)
    print("stages | a task each (µs/item) | inline (µs/item) | ratio")
    for row in results["rows"]:
        print(
            f"{row['stages']:6} | {row['task_per_stage_us']:21.1f} | {row['inline_us']:16.1f} "
            f"| {row['ratio_task_per_stage_vs_inline']:5.2f}x"
        )
    json_path, png_path = write_report("hop", results, plot(results))
    print(f"wrote {json_path} and {png_path}")


if __name__ == "__main__":
    main()
