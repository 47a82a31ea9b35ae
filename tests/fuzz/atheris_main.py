"""The coverage-guided fuzzer's process: ``python -m tests.fuzz.atheris_main [libFuzzer flags]
CORPUS_DIR``. benchmarks/fuzz_run.py runs it and reads its statistics.

The parser modules' functions and methods are instrumented in place after import
(``atheris.instrument_imports`` would instrument every module the ``stages`` package
loads, and Numba cannot compile instrumented bytecode), so libFuzzer sees their
branches; any exception escaping :func:`tests.fuzz.targets.parse_one` is a crash, and
libFuzzer saves the input that raised it.
"""

from __future__ import annotations

import importlib
import sys
from types import FunctionType, ModuleType

import atheris

INSTRUMENTED = [
    "pipeline.protocol.bot_side",
    "pipeline.protocol.platform_side",
    "pipeline.protocol.payload",
    "pipeline.protocol.identifiers",
    "pipeline.protocol.events",
    "stages.rtp",
    "stages.wav",
    "tests.fuzz.targets",
]


def instrument(module: ModuleType) -> int:
    """Instrument every function and method defined in ``module``; how many."""
    count = 0

    def visit(value: object) -> None:
        nonlocal count
        if isinstance(value, classmethod | staticmethod):
            value = value.__func__
        if isinstance(value, property):
            for accessor in (value.fget, value.fset):
                visit(accessor)
        elif isinstance(value, FunctionType) and value.__module__ == module.__name__:
            atheris.instrument_func(value)
            count += 1

    for value in list(vars(module).values()):
        if isinstance(value, type) and value.__module__ == module.__name__:
            for member in list(vars(value).values()):
                visit(member)
        else:
            visit(value)
    return count


def main() -> None:
    modules = [importlib.import_module(name) for name in INSTRUMENTED]
    for module in modules:
        instrument(module)
    from tests.fuzz.targets import parse_one

    atheris.Setup(sys.argv, parse_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
