"""The demo's assets: caller turns (a neural voice, 8 kHz μ-law) and the bakery bot.

Library code, the bench tool and the platform emulator all speak these turns, so they
live here rather than in the ``demo`` command.
"""

from __future__ import annotations

import json
from importlib import resources
from importlib.abc import Traversable

import numpy as np

from pipeline.caller.audiofile import load_audio

__all__ = ["DEMO_AUDIO", "demo_config_text", "demo_turns"]

DEMO_AUDIO: Traversable = resources.files(__name__)
"""The folder of shipped caller turns, their ``turns.json`` manifest and ``bot.toml``."""


def demo_turns() -> list[tuple[str, str, np.ndarray]]:
    """The shipped caller turns: (file name, what is said, 8 kHz samples)."""
    manifest = json.loads((DEMO_AUDIO / "turns.json").read_text())
    turns = []
    for entry in manifest:
        with resources.as_file(DEMO_AUDIO / entry["file"]) as path:
            turns.append((entry["file"], entry["text"], load_audio(path)))
    return turns


def demo_config_text() -> str:
    """The demo bot's ``bot.toml`` (the bakery)."""
    return (DEMO_AUDIO / "bot.toml").read_text()
