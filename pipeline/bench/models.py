"""Which models a run used: file names and sizes, so two results can be compared honestly.

A latency figure means little without the weights behind it: a bigger Whisper or
another GGUF changes every number. Paths are resolved the way the bot resolves
them (the configured file, else the bundled default) without loading anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.bot.config import BotConfig

__all__ = ["describe_models", "file_entry"]


def file_entry(path: Path | str | None) -> dict[str, Any]:
    """Name, path and size (MB) of a model file or folder; ``exists: false`` if missing."""
    if path is None:
        return {"name": None}
    path = Path(path).expanduser()
    entry: dict[str, Any] = {"name": path.name, "path": str(path)}
    if path.is_file():
        entry["size_mb"] = round(path.stat().st_size / 1e6, 1)
    elif path.is_dir():
        size = sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
        entry["size_mb"] = round(size / 1e6, 1)
    else:
        entry["exists"] = False
    return entry


def _bundled(kind: str) -> Path | None:
    """The bundled default of one model, or None if its package is not installed."""
    try:
        if kind == "vad":
            from stages.vad import DEFAULT_VAD_MODEL

            return DEFAULT_VAD_MODEL
        if kind == "stt":
            from stages.stt import bundled_model_path

            return bundled_model_path()
        if kind == "tts":
            from stages.tts import bundled_voice_path

            return bundled_voice_path()
        from stages.llm_local import bundled_model_path as bundled_llm

        return bundled_llm()
    except Exception:  # a missing optional package: say so rather than fail the report
        return None


def describe_models(config: BotConfig, bot: str = "voice") -> dict[str, Any]:
    """The models a ``bot`` built from ``config`` loads (the parrot bot loads none)."""
    if bot == "parrot":
        return {"note": "the parrot bot loads no models (energy gate, μ-law codec only)"}
    stt = str(config.stt.model or "")
    if not stt:
        stt_entry = {
            **file_entry(_bundled("stt")),
            "note": "Whisper tiny.en (CTranslate2), bundled",
        }
    elif Path(stt).expanduser().exists():
        stt_entry = file_entry(stt)
    else:
        stt_entry = {"name": stt, "note": "a faster-whisper model name"}
    llm: dict[str, Any] = {
        "backend": config.llm.backend,
        "max_tokens": config.llm.max_tokens,
        "temperature": config.llm.temperature,
    }
    if config.llm.backend == "local":
        llm.update(file_entry(config.llm.model or _bundled("llm")))
    elif config.llm.backend == "openai":
        llm.update(url=config.llm.url, model=config.llm.model or "default")
    return {
        "vad": file_entry(config.vad.model or _bundled("vad")),
        "stt": stt_entry,
        "tts": {
            **file_entry(config.tts.voice or _bundled("tts")),
            "length_scale": config.tts.length_scale,
        },
        "llm": llm,
    }
