"""One family of exceptions: every public exception derives from VoicegraphError, sits in
the family the issue names, keeps its built-in base, and is defined once; the telephone
rate, the message-size limit, the close allowance and ``to_int16`` are defined once too;
and ``voicegraph serve`` reports any library failure at start-up as one line."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import trio

import pipeline
import stages
from pipeline.cli.serve import run_reporting_startup_errors
from pipeline.runtime import errors
from pipeline.runtime.errors import (
    CallError,
    ConfigError,
    ProtocolError,
    ServiceError,
    StageFailed,
    VoicegraphError,
)

ROOT = Path(__file__).resolve().parent.parent


def project_modules() -> list[ModuleType]:
    """Every module of ``pipeline`` and ``stages`` (``__main__`` would run the CLI)."""
    modules = []
    for package in (pipeline, stages):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.rsplit(".", 1)[-1] != "__main__":
                modules.append(importlib.import_module(info.name))
    return modules


def public_exceptions() -> dict[str, type[BaseException]]:
    """``module.Name`` → class, for each public exception class where it is defined."""
    found = {}
    for module in project_modules():
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
                and not name.startswith("_")
            ):
                found[f"{module.__name__}.{name}"] = value
    return found


def test_every_public_exception_derives_from_voicegraph_error():
    found = public_exceptions()
    assert len(found) >= 29  # the walk really found them (28 before errors.py, + families)
    outside = sorted(name for name, cls in found.items() if not issubclass(cls, VoicegraphError))
    assert outside == []


def test_private_exceptions_stay_private_and_outside_the_family():
    """Control flow inside a module is not a failure a user is told about."""
    from pipeline.platform.emulator import _Refused
    from pipeline.server.http_front import _Reply
    from pipeline.server.voice_stream import _CallEnded

    for cls in (_Refused, _Reply, _CallEnded):
        assert not issubclass(cls, VoicegraphError)


FAMILIES = [
    # (where it is raised, name, family, the built-in base it always had)
    ("pipeline.bot.config", "ConfigError", ConfigError, ValueError),
    ("pipeline.bench.subject", "PipelineError", ConfigError, ValueError),
    ("pipeline.protocol.payload", "PayloadError", ProtocolError, ValueError),
    ("pipeline.protocol.bot_side", "MessageTooBig", ProtocolError, ValueError),
    ("pipeline.protocol.bot_side", "LocalProtocolError", ProtocolError, RuntimeError),
    ("stages.rtp", "RtpError", ProtocolError, ValueError),
    ("stages.wav", "WavError", ProtocolError, ValueError),
    ("pipeline.caller.audiofile", "AudioFileError", ProtocolError, ValueError),
    ("stages.vad", "VadError", ServiceError, RuntimeError),
    ("stages.stt", "SttError", ServiceError, RuntimeError),
    ("stages.llm", "LlmError", ServiceError, RuntimeError),
    ("stages.tts", "TtsError", ServiceError, RuntimeError),
    ("stages.smart_turn", "TurnModelError", ServiceError, RuntimeError),
    ("stages.llm_pool", "LlmShed", ServiceError, RuntimeError),
    ("stages.remote", "CircuitOpen", ServiceError, RuntimeError),
    ("pipeline.runtime.stage", "StageFailed", StageFailed, Exception),
    ("pipeline.caller.client", "ConnectError", CallError, ConnectionError),
    ("pipeline.caller.client", "AuthenticationError", CallError, ConnectionError),
    ("pipeline.caller.emulator", "RegistrationError", CallError, ConnectionError),
    ("pipeline.caller.devices", "DeviceError", CallError, RuntimeError),
    ("pipeline.caller.devices", "SoftphoneUnavailable", CallError, RuntimeError),
    ("pipeline.platform.rest", "RestError", CallError, Exception),
    ("pipeline.platform.rest", "InvalidCallRequest", CallError, ValueError),
    ("pipeline.platform.rest", "CallRejected", CallError, Exception),
    ("pipeline.platform.rest", "PlatformError", CallError, Exception),
    ("pipeline.platform.rest", "PlatformUnreachable", CallError, Exception),
    ("pipeline.platform.rest", "PlatformTimeout", CallError, Exception),
    ("pipeline.platform.rest", "UnexpectedResponse", CallError, Exception),
    ("pipeline.bot.messages", "ConversationEnded", CallError, RuntimeError),
    ("pipeline.bot.redis_bus", "BusUnavailable", ServiceError, RuntimeError),
]


@pytest.mark.parametrize(("module", "name", "family", "builtin"), FAMILIES)
def test_each_exception_is_in_its_family_and_keeps_its_builtin_base(module, name, family, builtin):
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, family)
    assert issubclass(cls, builtin)  # ``except ValueError:`` written before still catches it


def test_every_public_exception_is_listed_in_a_family():
    """A new exception must be placed in a family on purpose (add it to FAMILIES)."""
    families = {errors.VoicegraphError, ConfigError, ProtocolError, ServiceError, CallError}
    listed = {getattr(importlib.import_module(m), n) for m, n, _, _ in FAMILIES}
    unlisted = {
        name
        for name, cls in public_exceptions().items()
        if cls not in listed and cls not in families
    }
    assert unlisted == set()


def test_the_families_are_disjoint():
    """One failure, one family: a handler for one family never catches another's."""
    families = [ConfigError, ProtocolError, ServiceError, CallError, StageFailed]
    for cls in public_exceptions().values():
        assert sum(issubclass(cls, family) for family in families) <= 1, cls


def test_moved_exceptions_are_one_class_wherever_they_are_imported_from():
    from pipeline.bot.config import ConfigError as from_config
    from pipeline.runtime.stage import StageFailed as from_stage
    from stages.llm import LlmError
    from stages.stt import SttError
    from stages.tts import TtsError
    from stages.vad import VadError

    assert from_config is ConfigError
    assert from_stage is StageFailed
    assert (VadError, SttError, LlmError, TtsError) == (
        errors.VadError,
        errors.SttError,
        errors.LlmError,
        errors.TtsError,
    )


def test_errors_module_imports_nothing_of_the_project():
    """The stage runtime depends on nothing else; everything may import it."""
    tree = ast.parse((ROOT / "pipeline" / "runtime" / "errors.py").read_text())
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert [m for m in imported if m and m.split(".")[0] in ("pipeline", "stages")] == []


def module_level_definitions() -> list[tuple[str, str, ast.AST]]:
    """(file, name, value) for every module-level ``NAME = value`` and every top-level
    ``def`` (value: the def itself) in pipeline/ and stages/."""
    found = []
    for path in sorted([*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "stages").rglob("*.py")]):
        where = str(path.relative_to(ROOT))
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign):
                found += [
                    (where, t.id, node.value) for t in node.targets if isinstance(t, ast.Name)
                ]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                found.append((where, node.target.id, node.value))
            elif isinstance(node, ast.FunctionDef):
                found.append((where, node.name, node))
    return found


def test_each_shared_constant_is_defined_once():
    definitions = module_level_definitions()
    telephone = [
        (where, name)
        for where, name, value in definitions
        if isinstance(value, ast.Constant) and value.value == 8000
    ]
    assert telephone == [("pipeline/runtime/frames.py", "TELEPHONE_RATE")]
    for shared, home in [
        ("MAX_MESSAGE_SIZE", "pipeline/protocol/events.py"),
        ("CLOSE_TIMEOUT", "pipeline/protocol/events.py"),
        ("to_int16", "stages/resample.py"),
    ]:
        assert [where for where, name, _ in definitions if name == shared] == [home]


def test_the_shared_constants_are_the_ones_used():
    from pipeline.caller import audiofile, client
    from pipeline.protocol import events
    from pipeline.runtime.frames import TELEPHONE_RATE
    from pipeline.server import voice_stream
    from stages.resample import to_int16

    assert TELEPHONE_RATE == 8000
    assert voice_stream.ServerConfig().max_message_size == events.MAX_MESSAGE_SIZE == 1_048_576
    assert client.CLOSE_TIMEOUT is events.CLOSE_TIMEOUT
    assert audiofile.to_int16 is to_int16


# --- start-up failures: one handler ------------------------------------------------------


async def _fails_in_a_nursery(exc: BaseException) -> None:
    async def fail() -> None:
        raise exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fail)


def test_any_library_failure_at_start_up_becomes_one_line():
    """Not only the six types serve used to list: a protocol or call-side failure too."""

    def fails(exc: BaseException):
        return lambda: _fails_in_a_nursery(exc)

    assert run_reporting_startup_errors(fails(ProtocolError("bad greeting"))) == "bad greeting"
    assert run_reporting_startup_errors(fails(CallError("no route"))) == "no route"
    assert run_reporting_startup_errors(fails(errors.SttError("no model"))) == "no model"


def test_several_start_up_failures_are_reported_together():
    async def two_fail() -> None:
        async def fail(exc: Exception) -> None:
            raise exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail, errors.VadError("no vad"))
            nursery.start_soon(fail, errors.TtsError("no voice"))

    message = run_reporting_startup_errors(two_fail)
    assert sorted(message.split("; ")) == ["no vad", "no voice"]


def test_a_bug_at_start_up_keeps_its_traceback():
    async def buggy() -> None:
        await _fails_in_a_nursery(KeyError("bug"))

    with pytest.raises(BaseExceptionGroup) as caught:
        run_reporting_startup_errors(buggy)
    assert caught.group_contains(KeyError)

    async def mixed() -> None:  # a bug beside a library failure is still a bug
        async def fail(exc: Exception) -> None:
            raise exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail, errors.VadError("no vad"))
            nursery.start_soon(fail, KeyError("bug"))

    with pytest.raises(BaseExceptionGroup):
        run_reporting_startup_errors(mixed)


def serve(tmp_path: Path, toml: str, *flags: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "bot.toml"
    config.write_text(toml)
    command = [sys.executable, "-m", "pipeline", "serve", "--port", "0", "--config", str(config)]
    return subprocess.run(
        [*command, "--log-level", "warning", *flags],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_serve_with_a_bad_model_path_says_so_in_one_line(tmp_path):
    missing = tmp_path / "no" / "silero_vad.onnx"
    done = serve(tmp_path, f'[llm]\nbackend = "echo"\n\n[vad]\nmodel = "{missing}"\n')
    assert done.returncode == 2
    assert done.stdout == ""  # never announced that it was listening
    assert done.stderr.startswith("voicegraph serve: Silero VAD model not found")
    assert str(missing) in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_with_a_bad_bot_toml_names_the_key(tmp_path):
    done = serve(tmp_path, '[vad]\nmodle = "x"\n', "--bot", "parrot")
    assert done.returncode == 2
    assert "unknown key(s) modle in [vad]" in done.stderr
    assert "Traceback" not in done.stderr
