"""A voice bot's configuration: one ``bot.toml``, every section optional.

::

    [bot]
    system_prompt = "You answer the phone for a small bakery. Reply in one or two sentences."
    greeting = "Hello, you are through to the bakery. How can I help?"
    # greeting_wav = "greeting.wav"   # play a recording instead of speaking the text
    barge_in = true                    # false: half duplex, the caller cannot interrupt
    max_history_messages = 16
    fallback_line = "Sorry, I did not catch that. Could you say it again?"

    [llm]
    backend = "local"                  # local (llama.cpp GGUF) | openai | echo
    model = ""                         # GGUF path (local) or model name (openai); "" = default
    url = "http://127.0.0.1:8000"      # openai: the server's base URL
    api_key = ""
    temperature = 0.7
    max_tokens = 96
    timeout_s = 10.0

    [tts]
    voice = ""                         # a Piper .onnx voice; "" = bundled en_US-joe-medium
    length_scale = 1.0                 # > 1 speaks slower

    [stt]
    model = ""                         # faster-whisper name or path; "" = bundled tiny.en

    [vad]
    model = ""                         # Silero VAD .onnx; "" = the vendored file

    [turns]                            # any field of stages.turns.TurnConfig
    min_silence_ms = 600

    [jitter]                           # any field of stages.jitter.JitterConfig
    max_delay = 0.3

Unknown sections or keys are errors, not silently ignored: a typo in a deployment
file should fail at start-up with its name.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.jitter import JitterConfig
from stages.turns import TurnConfig

__all__ = [
    "BotConfig",
    "ConfigError",
    "ConversationConfig",
    "LlmConfig",
    "ModelsConfig",
    "load_config",
]


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the file, section and key."""


@dataclass(frozen=True, slots=True)
class ConversationConfig:
    system_prompt: str = (
        "You are a friendly voice assistant on a telephone call. Answer in one or two short, "
        "plain sentences that sound natural when spoken aloud. No lists, no markdown."
    )
    greeting: str = "Hello! How can I help you today?"
    greeting_wav: str = ""
    barge_in: bool = True
    max_history_messages: int = 16
    fallback_line: str = "Sorry, I am having trouble answering right now. Could you say that again?"


@dataclass(frozen=True, slots=True)
class LlmConfig:
    backend: str = "local"
    model: str = ""
    url: str = "http://127.0.0.1:8000"
    api_key: str = ""
    temperature: float = 0.7
    max_tokens: int = 96
    timeout_s: float = 10.0
    threads: int = 0  # local backend: llama.cpp prompt threads (0: every core)


@dataclass(frozen=True, slots=True)
class ModelsConfig:
    tts_voice: str = ""
    tts_length_scale: float = 1.0
    tts_threads: int = 0  # ONNX Runtime threads per sentence (0: every core)
    stt_model: str = ""
    vad_model: str = ""


@dataclass(frozen=True, slots=True)
class BotConfig:
    conversation: ConversationConfig = field(default_factory=ConversationConfig)
    llm: LlmConfig = field(default_factory=LlmConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    turns: TurnConfig = field(default_factory=TurnConfig)
    jitter: JitterConfig = field(default_factory=JitterConfig)

    def with_overrides(self, **sections: dict[str, Any]) -> BotConfig:
        """A copy with some fields replaced, e.g. ``llm={"backend": "echo"}`` (CLI flags)."""
        changed = {}
        for name, values in sections.items():
            values = {key: value for key, value in values.items() if value is not None}
            if values:
                changed[name] = _build(
                    type(getattr(self, name)), values, name, "overrides", base=getattr(self, name)
                )
        return dataclasses.replace(self, **changed)


# TOML section -> (BotConfig field, {TOML key: dataclass field})
_SECTIONS: dict[str, tuple[str, dict[str, str] | None]] = {
    "bot": ("conversation", None),
    "llm": ("llm", None),
    "tts": (
        "models",
        {"voice": "tts_voice", "length_scale": "tts_length_scale", "threads": "tts_threads"},
    ),
    "stt": ("models", {"model": "stt_model"}),
    "vad": ("models", {"model": "vad_model"}),
    "turns": ("turns", None),
    "jitter": ("jitter", None),
}


def _build(cls: type, values: dict[str, Any], section: str, source: str, *, base: Any = None):
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)} in [{section}]; "
            f"known: {', '.join(sorted(known))}"
        )
    current = dataclasses.asdict(base) if base is not None else {}
    for key, value in values.items():
        default = current.get(key, known[key].default)
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{source}: [{section}] {key} must be true or false")
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if isinstance(default, int | float) and not isinstance(default, bool) and not is_number:
            raise ConfigError(f"{source}: [{section}] {key} must be a number")
        if isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"{source}: [{section}] {key} must be a string")
    try:
        return cls(**{**current, **values})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: [{section}] {exc}") from exc


def load_config(path: str | Path | None) -> BotConfig:
    """Read ``bot.toml`` (None: all defaults). Raises :class:`ConfigError` with the reason."""
    if path is None:
        return BotConfig()
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read bot config {str(path)!r}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    unknown = sorted(set(document) - set(_SECTIONS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown section(s) {', '.join(unknown)}; known: {', '.join(_SECTIONS)}"
        )
    config = BotConfig()
    for section, values in document.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        target, renames = _SECTIONS[section]
        if renames is not None:
            unknown_keys = sorted(set(values) - set(renames))
            if unknown_keys:
                raise ConfigError(
                    f"{path}: unknown key(s) {', '.join(unknown_keys)} in [{section}]; "
                    f"known: {', '.join(renames)}"
                )
            values = {renames[key]: value for key, value in values.items()}
        built = _build(
            type(getattr(config, target)), values, section, str(path), base=getattr(config, target)
        )
        config = dataclasses.replace(config, **{target: built})
    return config
