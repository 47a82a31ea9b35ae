"""The ``voicegraph`` command line: one sub-command per job, each defined next to its code."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pipeline import __version__

# name -> module defining ``configure(parser)`` and ``main(args) -> int``
COMMANDS: dict[str, str] = {
    "demo": "pipeline.cli.demo",
    "serve": "pipeline.cli.serve",
    "call": "pipeline.cli.call",
    "transcribe": "pipeline.cli.transcribe",
    "dial": "pipeline.cli.dial",
    "emulator": "pipeline.cli.emulator",
    "bench": "pipeline.cli.bench",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voicegraph",
        description="Offline telephone voice bots on Trio: serve, dial, demo, benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"voicegraph {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=module.__doc__.strip().splitlines()[0])
        module.configure(sub)
        sub.set_defaults(_main=module.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_main", None) is None:
        parser.print_help(sys.stderr)
        return 2
    return int(args._main(args) or 0)
