"""μ-law codec throughput: our numba kernels against ``audioop`` and a NumPy lookup table.

    python -m benchmarks.codec_bench [--quick]

All three run in the same process, interleaved repeat by repeat, on the same
speech-like signal, and the figure reported is the median over repeats. A block
size is the μ-law side of the codec (bytes = samples): decode reads that many
bytes, encode reads that many int16 samples. Each timed call gets a different
block of a larger pool, so branch predictors cannot learn one block by heart.
Every implementation returns its natural output: ours and NumPy's decode an
int16 array, ``audioop`` bytes; all three encoders return bytes.

Writes ``benchmarks/results/codec.json`` and ``codec.png``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from stages import mulaw

from .report import progress, write_report

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:  # the stdlib module before 3.13; the audioop-lts package installs the same name after
        import audioop
    except ImportError:  # pragma: no cover - only if some build ships it under its own name
        import audioop_lts as audioop

BLOCK_SIZES = (160, 1024, 4096, 16384, 65536, 262144, 1048576)
IMPLEMENTATIONS = ("ours", "audioop", "numpy")
TARGET_FROM_BYTES = 4096

DECODE_TABLE = np.frombuffer(audioop.ulaw2lin(bytes(range(256)), 2), dtype=np.int16)
ENCODE_TABLE = np.frombuffer(
    audioop.lin2ulaw(np.arange(65536, dtype=np.uint16).tobytes(), 2), dtype=np.uint8
)


@dataclass(frozen=True)
class Settings:
    pool_samples: int  # signal the blocks are cut from
    samples_per_timing: int  # each timing covers about this many samples
    repeats: int


FULL = Settings(pool_samples=4 << 20, samples_per_timing=2 << 20, repeats=21)
QUICK = Settings(pool_samples=1 << 20, samples_per_timing=1 << 18, repeats=5)


def speech_like(samples: int, seed: int = 2024) -> np.ndarray:
    """Laplacian samples (speech's amplitude distribution) with a varying loudness."""
    rng = np.random.default_rng(seed)
    loudness = np.repeat(rng.uniform(200, 6000, samples // 160 + 1), 160)[:samples]
    signal = rng.laplace(0.0, 1.0, samples) * loudness
    return np.clip(np.round(signal), -32768, 32767).astype(np.int16)


def decoders() -> dict[str, Callable[[bytes], Any]]:
    return {
        "ours": mulaw.decode,
        "audioop": lambda block: audioop.ulaw2lin(block, 2),
        "numpy": lambda block: DECODE_TABLE[np.frombuffer(block, dtype=np.uint8)],
    }


def encoders() -> dict[str, Callable[[np.ndarray], bytes]]:
    return {
        "ours": mulaw.encode,
        "audioop": lambda block: audioop.lin2ulaw(block, 2),
        "numpy": lambda block: ENCODE_TABLE[block.view(np.uint16)].tobytes(),
    }


def check_agreement(functions: dict[str, Callable[[Any], Any]], block: Any, name: str) -> None:
    """A benchmark of wrong answers is worthless: all three must agree bit for bit."""
    outputs = {key: bytes(memoryview(fn(block))) for key, fn in functions.items()}
    if len(set(outputs.values())) != 1:
        raise AssertionError(f"{name}: implementations disagree on a {len(block)}-sample block")


def time_calls(function: Callable[[Any], Any], blocks: Sequence[Any], calls: int) -> float:
    """Nanoseconds per call over ``calls`` calls, cycling through ``blocks``."""
    count = len(blocks)
    start = time.perf_counter_ns()
    for index in range(calls):
        function(blocks[index % count])
    return (time.perf_counter_ns() - start) / calls


def measure(
    functions: dict[str, Callable[[Any], Any]],
    blocks: Sequence[Any],
    size: int,
    settings: Settings,
) -> dict[str, list[float]]:
    """Per-call times of every implementation, interleaved so drift hits all alike."""
    calls = max(2, settings.samples_per_timing // size)
    times: dict[str, list[float]] = {key: [] for key in functions}
    for function in functions.values():  # warm caches and allocator
        function(blocks[0])
    order = list(functions)
    for repeat in range(settings.repeats):
        rotation = order[repeat % len(order) :] + order[: repeat % len(order)]
        for key in rotation:
            times[key].append(time_calls(functions[key], blocks, calls))
    return times


def summarise(times: dict[str, list[float]], size: int) -> dict[str, Any]:
    row: dict[str, Any] = {"block_bytes": size}
    medians = {key: statistics.median(values) for key, values in times.items()}
    for key, median in medians.items():
        row[f"{key}_ns_per_call"] = median
        row[f"{key}_ns_per_sample"] = median / size
        row[f"{key}_mb_per_s"] = size / median * 1e3  # bytes/ns -> MB/s
        row[f"{key}_spread_ns_per_call"] = [min(times[key]), max(times[key])]
    # Speed-up: how many times faster ours is (> 1 means ours wins).
    row["speedup_vs_audioop"] = medians["audioop"] / medians["ours"]
    row["speedup_vs_numpy"] = medians["numpy"] / medians["ours"]
    return row


def run_direction(
    name: str,
    functions: dict[str, Callable[[Any], Any]],
    make_blocks: Callable[[int], list[Any]],
    settings: Settings,
) -> list[dict[str, Any]]:
    rows = []
    for size in BLOCK_SIZES:
        progress(f"{name}: {size} B blocks")
        blocks = make_blocks(size)
        check_agreement(functions, blocks[0], name)
        rows.append(summarise(measure(functions, blocks, size, settings), size))
    return rows


def format_size(size: int) -> str:
    for unit, scale in (("MB", 1 << 20), ("KB", 1 << 10)):
        if size >= scale:
            return f"{size // scale} {unit}"
    return f"{size} B"


def print_table(name: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{name} (throughput in MB/s of μ-law = Msamples/s; ns/sample in brackets)")
    columns = [f"{'block':>7}", *(f"{key:>17}" for key in IMPLEMENTATIONS)]
    header = " | ".join([*columns, f"{'×audioop':>8}", f"{'×numpy':>7}"])
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = [
            f"{row[f'{key}_mb_per_s']:8.0f} ({row[f'{key}_ns_per_sample']:5.2f})"
            for key in IMPLEMENTATIONS
        ]
        print(
            f"{format_size(row['block_bytes']):>7} | "
            + " | ".join(f"{cell:>17}" for cell in cells)
            + f" | {row['speedup_vs_audioop']:8.2f} | {row['speedup_vs_numpy']:7.2f}"
        )


def plot(results: dict[str, Any]) -> plt.Figure:
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    styles = {"ours": "o-", "audioop": "s--", "numpy": "^:"}
    labels = {"ours": "ours (numba)", "audioop": "audioop", "numpy": "NumPy lookup table"}
    for axis, direction in zip(axes, ("decode", "encode"), strict=True):
        rows = results[direction]
        sizes = [row["block_bytes"] for row in rows]
        for key in IMPLEMENTATIONS:
            axis.plot(
                sizes, [row[f"{key}_mb_per_s"] for row in rows], styles[key], label=labels[key]
            )
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xticks(sizes, [format_size(size) for size in sizes], rotation=30)
        axis.set_title(f"μ-law {direction}")
        axis.set_xlabel("block size (μ-law bytes = samples)")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("throughput (MB/s of μ-law)")
    axes[0].legend()
    figure.suptitle("G.711 μ-law codec throughput, median of interleaved repeats")
    return figure


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller pool, fewer repeats")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL

    mulaw.warm_up()
    pool = speech_like(settings.pool_samples)
    pool_codes = audioop.lin2ulaw(pool, 2)

    def code_blocks(size: int) -> list[bytes]:
        return [pool_codes[at : at + size] for at in range(0, len(pool_codes) - size + 1, size)]

    def sample_blocks(size: int) -> list[np.ndarray]:
        return [pool[at : at + size] for at in range(0, len(pool) - size + 1, size)]

    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        results: dict[str, Any] = {
            "settings": {**settings.__dict__, "quick": args.quick, "block_sizes": BLOCK_SIZES},
            "decode": run_direction("decode", decoders(), code_blocks, settings),
            "encode": run_direction("encode", encoders(), sample_blocks, settings),
        }
    finally:
        if gc_was_enabled:
            gc.enable()

    large = [row for row in results["decode"] if row["block_bytes"] >= TARGET_FROM_BYTES]
    results["targets"] = {
        "decode_at_least_audioop_from_4KB": all(row["speedup_vs_audioop"] >= 1 for row in large),
        "decode_min_speedup_vs_audioop_from_4KB": min(row["speedup_vs_audioop"] for row in large),
    }
    print_table("decode", results["decode"])
    print_table("encode", results["encode"])
    verdict = "met" if results["targets"]["decode_at_least_audioop_from_4KB"] else "NOT met"
    print(
        f"\ntarget (decode >= audioop on blocks >= 4 KB): {verdict}; smallest speed-up "
        f"{results['targets']['decode_min_speedup_vs_audioop_from_4KB']:.2f}×"
    )
    json_path, png_path = write_report("codec", results, plot(results))
    print(f"wrote {json_path} and {png_path}")
    return results


if __name__ == "__main__":
    main()
