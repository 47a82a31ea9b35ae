"""A coverage-guided fuzz run of the network parsers (atheris / libFuzzer), reported as JSON + PNG.

    python -m benchmarks.fuzz_run                 # 100,000 inputs from the committed corpus
    python -m benchmarks.fuzz_run --runs 1000000
    python -m benchmarks.fuzz_run --write-seeds   # rewrite tests/fuzz/corpus/ (then commit it)

The target is :func:`tests.fuzz.targets.parse_one` (the bot's and the platform's protocol
messages, media payloads, RTP, WAV and μ-law WAV), run by ``tests/fuzz/atheris_main.py`` in
its own process on a copy of the seed corpus, so the committed corpus only changes on
purpose. Reported: inputs executed, libFuzzer's coverage (edges, features) as it grew,
crashes (any exception a parser does not declare, with the input libFuzzer saved), and the
line coverage of each parser module when the final corpus is replayed.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from io import BytesIO
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROGRESS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
STAT = re.compile(r"^stat::(\w+):\s+(\d+)")
MODULES = [
    "pipeline/protocol/bot_side.py",
    "pipeline/protocol/platform_side.py",
    "pipeline/protocol/payload.py",
    "pipeline/protocol/identifiers.py",
    "stages/rtp.py",
    "stages/wav.py",
    "stages/mulaw.py",
]


# --- the seed corpus ------------------------------------------------------------------


def seeds() -> dict[str, bytes]:
    """One or more valid inputs per parser, made with the library's own encoders."""
    from pipeline.protocol import ServerProtocol, encode_base64, encode_buffer_object
    from stages.rtp import RtpPacket
    from stages.wav import encode_mulaw_wav
    from tests.fuzz.targets import REGISTER, selector

    packet = RtpPacket(0, 4242, 160_000, 0xDEADBEEF, b"\xff" * 160, marker=True).serialize()
    rich = RtpPacket(
        0, 1, 2, 3, b"\x7f" * 20, csrc=(7, 8), extension_profile=0xBEDE, extension=b"\x01" * 4
    ).serialize()
    media = [
        json.dumps({"event": "media", "callId": "fuzz-1", "payload": form, "timestamp": 5})
        for form in (encode_buffer_object(packet), encode_base64(packet), list(packet))
    ]
    mulaw = encode_mulaw_wav(b"\x80\xff\x00" * 50, 8000)
    pcm = BytesIO()
    with wave.open(pcm, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\x00\x10" * 100)
    bot = ServerProtocol()
    bot.receive_message(REGISTER)
    to_platform = [
        bot.acknowledge(),
        bot.greeting(mulaw),
        *bot.speech(b"\xff" * 400, 1000),
        bot.interrupt(),
    ]
    lines = [
        ("protocol_unregistered", "register_then_media", [REGISTER, *media]),
        ("protocol_unregistered", "garbage", ['{"event":', "[1,2]", '{"callId": 3}']),
        ("protocol_registered", "media_forms", media),
        ("protocol_registered", "odd_events", ['{"event":"stop"}', REGISTER, "null"]),
        ("platform_side", "bot_messages", to_platform),
    ]
    corpus = {
        f"{parser}-{name}": selector(parser) + "\n".join(text).encode()
        for parser, name, text in lines
    }
    corpus["protocol_registered-binary"] = selector("protocol_registered") + b"\x00" + packet
    for index, form in enumerate((encode_buffer_object(packet), encode_base64(packet))):
        corpus[f"payload-{index}"] = selector("payload") + json.dumps(form).encode()
    corpus["rtp-plain"] = selector("rtp") + packet
    corpus["rtp-csrc-extension"] = selector("rtp") + rich
    for parser in ("wav", "mulaw_wav"):
        corpus[f"{parser}-mulaw"] = selector(parser) + mulaw
        corpus[f"{parser}-pcm16"] = selector(parser) + pcm.getvalue()
    return corpus


def write_seeds(directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.iterdir():
        old.unlink()
    made = seeds()
    for name, data in made.items():
        (directory / name).write_bytes(data)
    return len(made)


# --- line coverage of the parsers, replaying a corpus -----------------------------------


def executable_lines(path: Path) -> set[int]:
    """Lines inside the module's functions (what runs at import is left out)."""
    lines: set[int] = set()
    stack: list[CodeType] = [compile(path.read_text(), str(path), "exec")]
    while stack:
        code = stack.pop()
        if code.co_flags & inspect.CO_NEWLOCALS:  # a function, not the module or a class body
            body = {line for _, _, line in code.co_lines() if line is not None}
            lines.update(body - {code.co_firstlineno})
        stack.extend(const for const in code.co_consts if isinstance(const, CodeType))
    return lines


def replay_coverage(corpus: Path) -> dict[str, Any]:
    """Lines of each parser module run by the corpus (after import), as a fraction."""
    from tests.fuzz.targets import parse_one

    files = {str(ROOT / module): module for module in MODULES}
    hit: dict[str, set[int]] = {module: set() for module in MODULES}

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        module = files.get(frame.f_code.co_filename)
        if module is None:
            return None
        if event == "line":
            hit[module].add(frame.f_lineno)
        return tracer

    inputs = [path.read_bytes() for path in sorted(corpus.iterdir()) if path.is_file()]
    sys.settrace(tracer)
    try:
        for data in inputs:
            parse_one(data)
    finally:
        sys.settrace(None)
    report: dict[str, Any] = {}
    for module in MODULES:
        lines = executable_lines(ROOT / module)
        covered = len(hit[module] & lines)
        report[module] = {"lines": len(lines), "covered": covered}
    return {"inputs": len(inputs), "modules": report}


# --- the run ----------------------------------------------------------------------------


def fuzz(runs: int, seed: int, max_len: int, workdir: Path) -> dict[str, Any]:
    corpus = workdir / "corpus"
    shutil.copytree(ROOT / "tests" / "fuzz" / "corpus", corpus)
    seeds_count = len(list(corpus.iterdir()))
    command = [
        sys.executable,
        "-m",
        "tests.fuzz.atheris_main",
        f"-runs={runs}",
        f"-seed={seed}",
        f"-max_len={max_len}",
        "-print_final_stats=1",
        "-timeout=10",
        f"-artifact_prefix={workdir}/",
        str(corpus),
    ]
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    log = done.stderr.splitlines()
    progress, stats = [], {}
    for line in log:
        if match := PROGRESS.match(line):
            progress.append([int(match[1]), match[2], int(match[3]), int(match[4]), int(match[5])])
        elif match := STAT.match(line):
            stats[match[1]] = int(match[2])
    crashes = sorted(
        p.name for p in workdir.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-"))
    )
    (workdir / "fuzz.log").write_text(done.stderr)
    executed = stats.get("number_of_executed_units", progress[-1][0] if progress else 0)
    return {
        "command": " ".join(command[1:]),
        "exit_code": done.returncode,
        "seconds": round(seconds, 1),
        "seed_inputs": seeds_count,
        "inputs_executed": executed,
        "inputs_per_second": round(executed / seconds, 1),
        "edges_covered": progress[-1][2] if progress else None,
        "features": progress[-1][3] if progress else None,
        "corpus_after": len(list(corpus.iterdir())),
        "new_units": stats.get("new_units_added"),
        "peak_rss_mb": stats.get("peak_rss_mb"),
        "crashes": crashes,
        "crash_log": [line for line in log if "Traceback" in line or "Error" in line][:20],
        "progress": progress,
        "line_coverage": replay_coverage(corpus),
    }


def figure(results: dict[str, Any]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    progress = results["progress"]
    left.plot([p[0] for p in progress], [p[2] for p in progress], label="edges (cov)")
    left.plot([p[0] for p in progress], [p[3] for p in progress], label="features (ft)")
    left.set_xscale("symlog")
    left.set_xlabel("inputs executed")
    left.set_title(f"libFuzzer coverage; crashes: {len(results['crashes'])}")
    left.legend()
    modules = results["line_coverage"]["modules"]
    names = [Path(name).stem for name in modules]
    shares = [100 * m["covered"] / m["lines"] for m in modules.values()]
    right.barh(names, shares)
    right.set_xlim(0, 100)
    right.set_xlabel("% of function lines run by the final corpus (send paths included)")
    right.set_title("parser line coverage")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-len", type=int, default=4096)
    parser.add_argument("--write-seeds", action="store_true")
    options = parser.parse_args(argv)
    if options.write_seeds:
        count = write_seeds(ROOT / "tests" / "fuzz" / "corpus")
        print(json.dumps({"seeds_written": count}))
        return 0
    from benchmarks.report import write_report

    with tempfile.TemporaryDirectory(prefix="fuzz-") as folder:
        results = fuzz(options.runs, options.seed, options.max_len, Path(folder))
        if results["crashes"]:  # keep the inputs that crashed next to the report
            keep = ROOT / "benchmarks" / "results" / "fuzz_crashes"
            keep.mkdir(exist_ok=True)
            for name in results["crashes"]:
                shutil.copy(Path(folder) / name, keep / name)
    write_report("fuzz", results, figure(results))
    summary = {k: v for k, v in results.items() if k not in ("progress", "line_coverage")}
    print(json.dumps(summary, indent=2))
    return 1 if results["crashes"] or results["exit_code"] else 0


if __name__ == "__main__":
    sys.exit(main())
