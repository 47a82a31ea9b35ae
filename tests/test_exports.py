"""One public API: what the package ``__init__`` files export resolves, and the code users
copy (README's examples, ``examples/``, ``benchmarks/``) imports nothing else.

In the spirit of trio's ``_tests/test_exports.py``: public names are the ``__all__`` of
``pipeline`` and of each ``pipeline`` subpackage (its modules are private), of ``stages``
and of each stage module (``stages/`` is flat: one public module per stage family).
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = (
    "runtime", "protocol", "server", "bot", "caller", "platform", "bench", "cli", "demo"
)  # fmt: skip
PUBLIC_PACKAGES = ("pipeline", *(f"pipeline.{name}" for name in SUBPACKAGES), "stages")

# Files owned elsewhere that still import private modules; each entry is (file, module).
# Empty this as they move to public names; an entry that no longer matches fails too.
NOT_YET_PUBLIC: set[tuple[str, str]] = set()


@pytest.mark.parametrize("name", PUBLIC_PACKAGES)
def test_every_public_name_resolves(name):
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(exported) == len(set(exported)), f"{name}.__all__ has duplicates"
    missing = [attr for attr in exported if not hasattr(module, attr)]
    assert not missing, f"{name}.__all__ names what it does not have: {missing}"
    assert set(exported) <= set(dir(module))


@pytest.mark.parametrize("name", [f"pipeline.{sub}" for sub in SUBPACKAGES])
def test_a_subpackage_exports_its_own_names(name):
    """``pipeline.server`` exports the server's names, not the runtime's or the bot's."""
    module = importlib.import_module(name)
    foreign = []
    for attr in module.__all__:
        home = getattr(getattr(module, attr), "__module__", None) or ""
        ours = home.startswith(("pipeline.", "stages."))
        if ours and not (home == name or home.startswith(name + ".")):
            foreign.append(f"{attr} ({home})")
    assert not foreign, f"{name} re-exports other layers' names: {foreign}"


def test_top_level_names_are_the_subpackages_objects():
    """``pipeline.X`` is the very object its subpackage exports (one class, not two)."""
    for attr in pipeline.__all__:
        value = getattr(pipeline, attr)
        home = pipeline._LAZY.get(attr, "pipeline.runtime")
        assert getattr(importlib.import_module(home), attr) is value, attr
    runtime = importlib.import_module("pipeline.runtime")
    assert set(runtime.__all__) <= set(pipeline.__all__), "every runtime name is top level"


def test_lazy_names_match_what_type_checkers_see():
    """The names ``pipeline`` loads on first use are the ones its ``TYPE_CHECKING`` block
    imports, from the same subpackages: a type checker sees what users get."""
    tree = ast.parse((ROOT / "pipeline" / "__init__.py").read_text())
    (block,) = [
        node
        for node in tree.body
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
    ]
    seen = {
        alias.name: node.module
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert seen == pipeline._LAZY
    assert set(pipeline._LAZY) <= set(pipeline.__all__)


def test_unknown_top_level_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = pipeline.no_such_name  # type: ignore[attr-defined]


def _project_modules() -> list[str]:
    names = []
    for package in ("pipeline", "stages"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            names.append(".".join(parts))
    return [name for name in names if name != "pipeline.__main__"]  # that one runs the CLI


FRESH_IMPORTS = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m.split(".")[0] in ("pipeline", "stages")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
print("\\n".join(failed))
"""


def test_every_module_imports_first():
    """Whatever a program imports first (``stages.vad``, ``pipeline.bot``, ...), no import
    cycle leaves a half-initialised module behind."""
    result = subprocess.run(
        [sys.executable, "-c", FRESH_IMPORTS, *_project_modules()],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=True,
    )
    assert result.stdout.strip() == "", "import fails when first:\n" + result.stdout


# --- code users copy imports only public names --------------------------------------------


def public_names(module_name: str) -> set[str] | None:
    """The names ``from module_name import ...`` may take, or None if the module is private."""
    if module_name in PUBLIC_PACKAGES:
        module = importlib.import_module(module_name)
        names = set(module.__all__)
        if module_name == "stages":  # the stage modules themselves: ``from stages import mulaw``
            names |= {path.stem for path in (ROOT / "stages").glob("[!_]*.py")}
        return names
    if module_name.startswith("stages.") and (ROOT / "stages" / f"{module_name[7:]}.py").exists():
        module = importlib.import_module(module_name)
        exported = getattr(module, "__all__", None)
        return (
            set(exported)
            if exported is not None
            else {name for name in vars(module) if not name.startswith("_")}
        )
    return None


def private_imports(code: str) -> list[str]:
    """Each project import in ``code`` that names a private module or name."""
    found = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module.split(".")[0] not in ("pipeline", "stages"):
                continue
            allowed = public_names(node.module)
            if allowed is None:
                found.append(f"line {node.lineno}: {node.module} is private")
                continue
            hidden = [alias.name for alias in node.names if alias.name not in allowed]
            if hidden:
                found.append(f"line {node.lineno}: {node.module} does not export {hidden}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                root = alias.name.split(".")[0]
                if root in ("pipeline", "stages") and public_names(alias.name) is None:
                    found.append(f"line {node.lineno}: {alias.name} is private")
    return found


def readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def users_code() -> dict[str, str]:
    code = {f"README.md python block {i}": block for i, block in enumerate(readme_blocks())}
    for folder in ("examples", "benchmarks"):
        for path in sorted((ROOT / folder).glob("*.py")):
            code[f"{folder}/{path.name}"] = path.read_text()
    return code


def test_users_code_imports_only_public_names():
    problems = []
    for where, code in users_code().items():
        for problem in private_imports(code):
            module = problem.split(": ")[1].split(" ")[0]
            if (where, module) not in NOT_YET_PUBLIC:
                problems.append(f"{where}, {problem}")
    assert not problems, "private imports in code users copy:\n" + "\n".join(problems)


def test_not_yet_public_entries_are_still_real():
    real = set()
    for where, code in users_code().items():
        for problem in private_imports(code):
            real.add((where, problem.split(": ")[1].split(" ")[0]))
    assert not (NOT_YET_PUBLIC - real), f"fixed, remove: {sorted(NOT_YET_PUBLIC - real)}"


def test_readme_has_python_examples():
    assert len(readme_blocks()) >= 4  # the check above must have something to check


def test_private_import_checker_flags_a_private_module_and_name():
    code = (
        "from pipeline import Stage\n"
        "from pipeline.server.call import Bot\n"
        "from pipeline.server import Nope\n"
        "from stages import mulaw\n"
        "import pipeline.bot.voicebot\n"
    )
    assert private_imports(code) == [
        "line 2: pipeline.server.call is private",
        "line 3: pipeline.server does not export ['Nope']",
        "line 5: pipeline.bot.voicebot is private",
    ]
