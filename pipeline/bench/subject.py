"""What a bench runs: the bot (the default voice bot, the parrot, or the user's own), its
configuration, and the caller audio it is fed.

The user's pipeline is named ``module:factory``. The factory is called with one
argument, the :class:`~pipeline.bot.config.BotConfig` of the run (``--config`` and
the CLI overrides; all defaults without them), and returns a
:class:`~pipeline.server.call.Bot`: anything with ``serving()`` (an async context manager
entered once, where shared models load) and ``async handle_call(call)`` (one call:
``call.open_pipeline(*stages)``, then answer with ``call.send_speech``). To put a
stage of your own into the default graph, wrap the default bot with
:func:`pipeline.server.with_stages`, which edits the stage list of every call.
"""

from __future__ import annotations

import importlib
import itertools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.bot.config import BotConfig, ConfigError, load_config
from pipeline.caller.audiofile import load_audio
from pipeline.demo import DEMO_AUDIO, demo_turns
from pipeline.server.call import Bot

__all__ = [
    "DEMO_AUDIO",
    "PipelineError",
    "Subject",
    "caller_turns",
    "load_factory",
    "make_subject",
]


class PipelineError(ConfigError):
    """``--pipeline`` does not name a usable factory; the message says why."""


@dataclass(slots=True)
class Subject:
    """The bot under test and how to describe it in a report."""

    bot: Bot
    config: BotConfig
    kind: str  # "voice", "parrot" or "pipeline"
    description: dict[str, Any]


def load_factory(spec: str, app_dir: str | Path = ".") -> Callable[[BotConfig], Bot]:
    """Import ``module:factory`` (``app_dir`` is searched first, like ``python -m``)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise PipelineError(f"--pipeline must look like module:factory, got {spec!r}")
    folder = str(Path(app_dir).resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PipelineError(f"cannot import {module_name!r} for --pipeline: {exc}") from exc
    factory: Any = module
    for part in attribute.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise PipelineError(f"{module_name!r} has no attribute {attribute!r}")
    if not callable(factory):
        raise PipelineError(f"{spec} is not callable")
    return factory


def _is_bot(value: object) -> bool:
    return callable(getattr(value, "serving", None)) and callable(
        getattr(value, "handle_call", None)
    )


def demo_config_path() -> Path:
    with resources.as_file(DEMO_AUDIO / "bot.toml") as path:
        return Path(path)


def make_subject(
    *,
    bot: str,
    config_path: Path | None,
    overrides: dict[str, Any],
    pipeline: str | None = None,
    app_dir: str | Path = ".",
    shipped_audio: bool = True,
    record: Path | None = None,
) -> Subject:
    """Build the bot. With the shipped caller audio and no ``--config``, the voice bot
    uses the shipped ``bot.toml`` (the bakery the demo caller phones)."""
    if config_path is None and shipped_audio and bot == "voice":
        config_path = demo_config_path()
    config = load_config(config_path).with_overrides(llm=overrides)
    description: dict[str, Any] = {"config": str(config_path) if config_path else None}
    if pipeline is not None:
        built = load_factory(pipeline, app_dir)(config)
        if not _is_bot(built):
            raise PipelineError(
                f"{pipeline} returned {type(built).__name__}, not a bot (an object with "
                "serving() and handle_call(call))"
            )
        description.update(bot="pipeline", pipeline=pipeline, bot_class=type(built).__name__)
        return Subject(built, config, "pipeline", description)
    if bot == "parrot":
        from pipeline.bot.parrot import ParrotBot

        return Subject(
            ParrotBot(jitter=config.jitter), config, "parrot", {**description, "bot": "parrot"}
        )
    from pipeline.bot.voicebot import VoiceBot

    return Subject(
        VoiceBot(config, record_dir=record), config, "voice", {**description, "bot": "voice"}
    )


def caller_turns(files: Sequence[Path] | None, count: int) -> list[tuple[str, np.ndarray]]:
    """``count`` caller turns: the user's files (or the shipped ones), cycled in order."""
    if files:
        pool = [(Path(f).name, load_audio(f)) for f in files]
    else:
        pool = [(name, samples) for name, _, samples in demo_turns()]
    if count < 1:
        raise ConfigError("--turns must be at least 1")
    return list(itertools.islice(itertools.cycle(pool), count))
