"""Dependencies point one way (DESIGN.md section 2), checked on the imports themselves.

The checker reads every module of ``pipeline`` and ``stages`` with :mod:`ast` (nothing is
imported) and fails naming the module, the import, its line and the rule broken:

- ``runtime-alone``: the stage runtime (``pipeline.runtime``) imports nothing else of the project;
- ``stages-on-runtime``: ``stages`` import only the runtime and each other;
- ``protocol-without-trio``: the sans-IO protocol (``pipeline.protocol``) reaches no Trio,
  directly or through the project modules it imports;
- ``server-without-bot``: the server (``pipeline.server``) never imports the bot (``pipeline.bot``);
- ``cli-is-a-leaf``: nothing outside ``pipeline.cli`` imports it (``python -m pipeline`` aside);
- ``bench-is-a-tool``: library code (``pipeline`` outside ``pipeline.bench`` and ``pipeline.cli``)
  never imports the bench tool;
- ``no-cycles``: no import cycle between modules;
- ``module-size``: no module over 600 lines.

Every import counts, a lazy one inside a function too: it is still a dependency. One under
``if TYPE_CHECKING:`` counts for the direction rules but not for cycles or Trio's reach
(it never runs). A package ``__init__`` that only re-exports (a facade) is left out of the
cycle check, and an import from a facade counts as an import of where the facade takes
those names from: ``from pipeline.server import Bot`` imports ``pipeline.server.call``.
(At run time, importing any ``pipeline`` module runs ``pipeline/__init__`` first; that
file loads only the runtime at once, the rest on first use, so this is no cycle.)
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages")
MAX_LINES = 600
TRIO = ("trio", "trio_websocket", "pytest_trio")

# Known, owned elsewhere and being fixed: each entry is (rule, module, imported module).
# Empty this as the fixes land; an entry that no longer matches a violation fails too.
KNOWN_VIOLATIONS: set[tuple[str, str, str]] = set()


@dataclass(frozen=True)
class Source:
    """One module's text, and whether it is a package ``__init__``."""

    text: str
    package: bool = False
    path: str = ""


@dataclass(frozen=True)
class Import:
    """One import statement's target as a module name (a project module, or a top-level
    third-party package), the names it takes from there, and where it was written."""

    importer: str
    target: str
    line: int
    text: str
    type_only: bool = False
    names: tuple[str, ...] = ()  # ``from target import names``; () for a whole module


@dataclass(frozen=True)
class Violation:
    rule: str
    module: str
    target: str
    line: int
    detail: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.rule, self.module, self.target)

    def __str__(self) -> str:
        what = f"imports {self.target} ({self.detail})" if self.target else self.detail
        return f"{self.module}:{self.line}: {self.rule}: {what}"


def read_tree(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, Source]:
    """Every module under ``packages`` in ``root``, by dotted name."""
    sources: dict[str, Source] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            name = ".".join(parts)
            sources[name] = Source(path.read_text(encoding="utf-8"), is_package, str(path))
    return sources


def _resolve(name: str, modules: Mapping[str, Source]) -> str:
    """The longest known module that ``name`` starts with; else its top-level package."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return parts[0]


def _under_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str, modules: Mapping[str, Source]) -> list[Import]:
    """The imports written in ``module``, resolved against ``modules``."""
    source = modules[module]
    tree = ast.parse(source.text)
    package = module if source.package else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.If) and _under_type_checking(node):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_only)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            text = (ast.get_source_segment(source.text, node) or "").split("\n")[0]
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name, modules)
                found.append(Import(module, target, node.lineno, text, type_only))
            return
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            taken: dict[str, list[str]] = {}
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:  # ``from stages import mulaw``: the whole module
                    taken.setdefault(submodule, [])
                else:
                    taken.setdefault(_resolve(base, modules), []).append(alias.name)
            for target, names in taken.items():
                found.append(Import(module, target, node.lineno, text, type_only, tuple(names)))
            return
        for child in ast.iter_child_nodes(node):
            visit(child, type_only)

    visit(tree, False)
    return found


def is_facade(source: Source) -> bool:
    """A package ``__init__`` that only re-exports: docstring, imports, names, lazy loading."""
    if not source.package:
        return False
    for node in ast.parse(source.text).body:
        if isinstance(node, ast.Expr | ast.Import | ast.ImportFrom | ast.Assign | ast.AnnAssign):
            continue
        if isinstance(node, ast.If) and _under_type_checking(node):
            continue
        if isinstance(node, ast.FunctionDef) and node.name in {"__getattr__", "__dir__"}:
            continue
        return False
    return True


class Graph:
    """The project's imports, with facades expanded into what they re-export."""

    def __init__(self, modules: Mapping[str, Source]) -> None:
        self.modules = dict(modules)
        self.written = {name: imports_of(name, self.modules) for name in self.modules}
        self.facades = {name for name, source in self.modules.items() if is_facade(source)}

    def project(self, name: str) -> bool:
        return name in self.modules

    def reached(self, imp: Import, seen: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
        """(module, via) pairs ``imp`` brings in: names taken from a facade count as imports
        of the modules the facade takes them from; a whole facade, as all it imports."""
        if imp.target not in self.facades or imp.target in seen:
            return [(imp.target, "")]
        inner = self.written[imp.target]
        if imp.names:
            inner = [i for i in inner if set(i.names) & set(imp.names)]
        result: list[tuple[str, str]] = []
        for each in inner:
            for target, via in self.reached(each, seen | {imp.target}):
                result.append((target, via or f"via {imp.target}"))
        return result or [(imp.target, "")]

    def edges(self, module: str, *, runtime_only: bool) -> list[tuple[Import, str, str]]:
        """(import, module reached, via) for ``module``; ``runtime_only`` drops type-only ones."""
        out = []
        for imp in self.written[module]:
            if runtime_only and imp.type_only:
                continue
            for target, via in self.reached(imp):
                if target != module:
                    out.append((imp, target, via))
        return out


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def check(modules: Mapping[str, Source]) -> list[Violation]:
    """Every rule broken in ``modules`` (the module docstring lists them)."""
    graph = Graph(modules)
    found: list[Violation] = []

    reported: set[tuple[str, Import, str]] = set()

    def add(rule: str, imp: Import, target: str, why: str, via: str) -> None:
        if (rule, imp, via or target) in reported:
            return  # one report per import through a facade, naming the first module it brings
        reported.add((rule, imp, via or target))
        detail = f"{imp.text!r}{', ' + via if via else ''}: {why}"
        found.append(Violation(rule, imp.importer, target, imp.line, detail))

    for module in sorted(graph.modules):
        for imp, target, via in graph.edges(module, runtime_only=False):
            if not graph.project(target):
                continue
            if _in(module, "pipeline.runtime") and not _in(target, "pipeline.runtime"):
                add("runtime-alone", imp, target, "the runtime imports nothing else", via)
            if _in(module, "stages") and not (
                _in(target, "stages") or _in(target, "pipeline.runtime")
            ):
                add("stages-on-runtime", imp, target, "stages import only the runtime", via)
            if _in(module, "pipeline.server") and _in(target, "pipeline.bot"):
                add("server-without-bot", imp, target, "the server knows bots by protocol", via)
            if _in(target, "pipeline.cli") and not (
                _in(module, "pipeline.cli") or module == "pipeline.__main__"
            ):
                add("cli-is-a-leaf", imp, target, "nothing imports the CLI", via)
            if (
                _in(target, "pipeline.bench")
                and _in(module, "pipeline")
                and not (_in(module, "pipeline.bench") or _in(module, "pipeline.cli"))
            ):
                add("bench-is-a-tool", imp, target, "library code never needs the bench", via)
    found.extend(_trio_in_protocol(graph))
    found.extend(_cycles(graph))
    for module, source in sorted(graph.modules.items()):
        lines = source.text.count("\n")
        if lines > MAX_LINES:
            found.append(
                Violation("module-size", module, "", 1, f"{lines} lines, at most {MAX_LINES}")
            )
    return found


def _trio_in_protocol(graph: Graph) -> list[Violation]:
    """Each protocol import that leads to Trio, with the chain that gets there."""
    chains: dict[str, list[str] | None] = {}

    def trio_chain(module: str, stack: tuple[str, ...]) -> list[str] | None:
        if module in chains:
            return chains[module]
        chains[module] = None  # while visiting: a cycle adds nothing
        for _imp, target, _via in graph.edges(module, runtime_only=True):
            if target in TRIO:
                chains[module] = [target]
                return chains[module]
            if graph.project(target) and target not in stack:
                rest = trio_chain(target, (*stack, target))
                if rest is not None:
                    chains[module] = [target, *rest]
                    return chains[module]
        return None

    found = []
    for module in sorted(m for m in graph.modules if _in(m, "pipeline.protocol")):
        for imp, target, via in graph.edges(module, runtime_only=True):
            chain = [target] if target in TRIO else None
            if chain is None and graph.project(target) and not _in(target, "pipeline.protocol"):
                rest = trio_chain(target, (module, target))
                chain = None if rest is None else [target, *rest]
            if chain is not None:
                why = "the protocol is sans-IO, no Trio: " + " -> ".join([module, *chain])
                detail = f"{imp.text!r}{', ' + via if via else ''}: {why}"
                found.append(Violation("protocol-without-trio", module, target, imp.line, detail))
    return found


def _cycles(graph: Graph) -> list[Violation]:
    """One violation per import cycle (strongly connected set of modules), facades left out."""
    nodes = [m for m in graph.modules if m not in graph.facades]
    successors = {
        m: sorted(
            {
                target
                for _imp, target, _via in graph.edges(m, runtime_only=True)
                if graph.project(target) and target not in graph.facades
            }
        )
        for m in nodes
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def connect(node: str) -> None:  # Tarjan's algorithm
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in successors[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(nodes):
        if node not in index:
            connect(node)
    found = []
    for component in components:
        first = component[0]
        members = set(component)
        imp, target = next(
            (imp, target)
            for imp, target, _via in graph.edges(first, runtime_only=True)
            if target in members
        )
        detail = f"{imp.text!r}: import cycle between {', '.join(component)}"
        found.append(Violation("no-cycles", first, target, imp.line, detail))
    return found


# --- the tree ----------------------------------------------------------------------------


def test_dependencies_point_one_way():
    violations = check(read_tree())
    new = [str(v) for v in violations if v.key not in KNOWN_VIOLATIONS]
    assert not new, "forbidden imports:\n" + "\n".join(new)


def test_known_violations_are_still_real():
    """An entry that no longer matches anything must go, so the allow-list only shrinks."""
    keys = {v.key for v in check(read_tree())}
    assert not (KNOWN_VIOLATIONS - keys), f"fixed, remove: {sorted(KNOWN_VIOLATIONS - keys)}"


def test_a_forbidden_import_added_to_the_tree_fails_it():
    tree = read_tree()
    events = tree["pipeline.protocol.events"]
    tree["pipeline.protocol.events"] = Source(events.text + "import trio\n", False, events.path)
    new = [v for v in check(tree) if v.key not in KNOWN_VIOLATIONS]
    assert ("protocol-without-trio", "pipeline.protocol.events", "trio") in {v.key for v in new}
    assert {v.rule for v in new} == {"protocol-without-trio"}


# --- the checker itself, on synthetic trees ----------------------------------------------

CLEAN = {
    "pipeline": Source('"""Facade."""\nfrom pipeline.runtime.stage import Stage\n', True),
    "pipeline.runtime": Source("", True),
    "pipeline.runtime.stage": Source("import trio\n"),
    "pipeline.protocol": Source("", True),
    "pipeline.protocol.events": Source("import json\n"),
    "pipeline.server": Source("from pipeline.server.call import Bot\n", True),
    "pipeline.server.call": Source("from pipeline.runtime.stage import Stage\n"),
    "pipeline.bot": Source("", True),
    "pipeline.bot.voicebot": Source(
        "from pipeline.server import Bot\nfrom stages.vad import Vad\n"
    ),
    "pipeline.cli": Source("", True),
    "pipeline.cli.serve": Source("from pipeline.bot.voicebot import VoiceBot\n"),
    "pipeline.bench": Source("", True),
    "pipeline.bench.subject": Source("from pipeline.bot.voicebot import VoiceBot\n"),
    "stages": Source("", True),
    "stages.vad": Source("from pipeline.runtime.stage import Stage\nfrom . import mulaw\n"),
    "stages.mulaw": Source("import numpy\n"),
}


def with_module(name: str, text: str, package: bool = False) -> dict[str, Source]:
    return {**CLEAN, name: Source(text, package)}


def test_checker_passes_a_clean_tree():
    assert check(CLEAN) == []


@pytest.mark.parametrize(
    ("module", "text", "rule", "target"),
    [
        ("pipeline.runtime.graph", "from stages.vad import Vad\n", "runtime-alone", "stages.vad"),
        (
            "stages.tts",
            "from pipeline.bot.voicebot import X\n",
            "stages-on-runtime",
            "pipeline.bot.voicebot",
        ),
        (
            "stages.tts",
            "def f():\n    import pipeline.server.call\n",
            "stages-on-runtime",
            "pipeline.server.call",
        ),
        ("pipeline.protocol.payload", "import trio\n", "protocol-without-trio", "trio"),
        (
            "pipeline.protocol.payload",
            "from stages import vad\n",
            "protocol-without-trio",
            "stages.vad",
        ),
        (
            "pipeline.server.http_front",
            "from pipeline.bot.voicebot import VoiceBot\n",
            "server-without-bot",
            "pipeline.bot.voicebot",
        ),
        (
            "pipeline.bot.config",
            "from pipeline.cli import serve\n",
            "cli-is-a-leaf",
            "pipeline.cli.serve",
        ),
        (
            "pipeline.server.logs",
            "from pipeline.bench.subject import S\n",
            "bench-is-a-tool",
            "pipeline.bench.subject",
        ),
    ],
)
def test_checker_reports_a_forbidden_import(module, text, rule, target):
    violations = check(with_module(module, text))
    assert [(v.rule, v.module, v.target) for v in violations] == [(rule, module, target)]
    message = str(violations[0])
    assert module in message
    assert rule in message
    assert target in message


def test_checker_sees_through_a_facade():
    """``from pipeline.bot import X`` is an import of what the bot's facade re-exports."""
    tree = with_module("pipeline.bot", "from pipeline.bot.voicebot import VoiceBot\n", True)
    tree["pipeline.server.auth"] = Source("from pipeline.bot import VoiceBot\n")
    (violation,) = check(tree)
    assert violation.key == ("server-without-bot", "pipeline.server.auth", "pipeline.bot.voicebot")
    assert "via pipeline.bot" in str(violation)


def test_checker_follows_names_through_a_facade_to_their_module():
    """``from pipeline import Stage`` is the runtime (fine in a stage); the same facade's
    ``VoiceBot`` is the bot (not fine)."""
    facade = (
        "from pipeline.runtime.stage import Stage\nfrom pipeline.bot.voicebot import VoiceBot\n"
    )
    tree = with_module("pipeline", facade, True)
    assert check({**tree, "stages.tts": Source("from pipeline import Stage\n")}) == []
    tree["stages.tts"] = Source("from pipeline import Stage, VoiceBot\n")
    (violation,) = check(tree)
    assert violation.key == ("stages-on-runtime", "stages.tts", "pipeline.bot.voicebot")


def test_checker_ignores_type_only_imports_for_trio():
    text = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import trio\n"
    assert check(with_module("pipeline.protocol.payload", text)) == []


def test_checker_finds_a_cycle():
    tree = with_module("stages.mulaw", "from stages.vad import Vad\n")
    (violation,) = check(tree)
    assert violation.rule == "no-cycles"
    assert "stages.mulaw" in str(violation)
    assert "stages.vad" in str(violation)


def test_checker_counts_lines():
    (violation,) = check(with_module("stages.mulaw", "x = 1\n" * (MAX_LINES + 1)))
    assert violation.key == ("module-size", "stages.mulaw", "")
