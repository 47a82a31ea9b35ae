"""A voice bot's configuration: one ``bot.toml``, every section optional.

Each section is the configuration object of what it configures, field for field, so
everything a service or stage can be told is settable from the file::

    [bot]                              # pipeline.bot.config.ConversationConfig
    system_prompt = "You answer the phone for a small bakery. Reply in one or two sentences."
    greeting = "Hello, you are through to the bakery. How can I help?"
    # greeting_wav = "greeting.wav"   # play a recording instead of speaking the text
    barge_in = true                    # false: half duplex, the caller cannot interrupt
    max_history_messages = 16
    fallback_line = "Sorry, I did not catch that. Could you say it again?"

    [llm]                              # stages.llm.LlmConfig
    backend = "local"                  # local (llama.cpp GGUF) | openai | echo
    model = ""                         # GGUF path (local) or model name (openai); "" = default
    url = "http://127.0.0.1:8000"      # openai: the server's base URL
    temperature = 0.7
    max_tokens = 96
    timeout_s = 10.0

    [stt]                              # stages.stt.SttConfig (every field)
    backend = "local"                  # local (faster-whisper) | openai (a server at url)
    model = ""                         # faster-whisper name or path (local), or the
    beam_size = 1                      #   server's model name; "" = tiny.en / whisper-1
    # openai: url, api_key, timeout_s, retries, failure_threshold, reset_after_s
    #   (stages.remote.RemoteOptions: deadline, retries, circuit breaker)

    [tts]                              # stages.tts.TtsConfig
    backend = "local"                  # local (Piper) | openai (a server at url)
    voice = ""                         # a Piper .onnx voice (local) or the server's voice
    length_scale = 1.0                 # > 1 speaks slower
    # openai: url, api_key, model, response_format (wav | pcm), pcm_rate, and the
    #   RemoteOptions keys as in [stt]

    [vad]                              # stages.vad.VadConfig
    model = ""                         # Silero VAD .onnx; "" = the vendored file

    [faq]                              # stages.faq.FaqConfig: answered without the LLM
    min_score = 0.6
    [[faq.facts]]
    questions = ["When are you open?", "What are your opening hours?"]
    answer = "We are open Monday to Saturday, 7 am to 6 pm."

    [reply]                            # stages.guards.ReplyConfig: guards on LLM replies
    max_spoken_words = 40              # end at the first sentence end past this (0: no limit)
    no_repeats = true                  # never say an earlier reply of the call again
    repeat_fallback_lines = ["Is there anything else I can help you with?"]

    [turns]                            # stages.turns.TurnConfig
    mode = "semantic"                  # semantic (audio model + words) | hangover (fixed)
    max_wait_ms = 2000                 # semantic: commit after this silence anyway
    turn_model = ""                    # Smart Turn .onnx; "" = vendored; "none" = words only
    complete_threshold = 0.6           # semantic: P(finished) >= this: commit at once
    incomplete_threshold = 0.3         # semantic: below this: keep listening
    unsure_wait_ms = 1200              # semantic: in between, commit after at most this
    continuation_ms = 1500             # semantic: speech again within this: same sentence
    graded_wait = true                 # semantic: the less unsure, the shorter the wait
    use_confidence = true              # semantic: poorly heard words cannot end the turn
    use_pitch = false                  # semantic: a final fall / a held level counts
    turn_model_deadline_ms = 400       # semantic: later, the words judge without the model
    min_silence_ms = 600               # hangover: the end-of-turn silence

    [jitter]                           # stages.jitter.JitterConfig
    max_delay = 0.3

Unknown sections or keys, and values of the wrong type, are errors naming the file,
section and key, not silently ignored: a typo in a deployment file should fail at
start-up.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.runtime.errors import ConfigError
from stages.faq import FaqConfig, FaqEntry
from stages.guards import ReplyConfig
from stages.jitter import JitterConfig
from stages.llm import LlmConfig
from stages.stt import SttConfig
from stages.tts import TtsConfig
from stages.turns import TurnConfig
from stages.vad import VadConfig

__all__ = [
    "BotConfig",
    "ConfigError",
    "ConversationConfig",
    "LlmConfig",
    "load_config",
]


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
class BotConfig:
    conversation: ConversationConfig = field(default_factory=ConversationConfig)
    llm: LlmConfig = field(default_factory=LlmConfig)
    stt: SttConfig = field(default_factory=SttConfig)
    tts: TtsConfig = field(default_factory=TtsConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    faq: FaqConfig = field(default_factory=FaqConfig)
    reply: ReplyConfig = field(default_factory=ReplyConfig)
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


# TOML section -> BotConfig field (the others are named as their section)
_SECTIONS: dict[str, str] = {
    "bot": "conversation",
    "llm": "llm",
    "stt": "stt",
    "tts": "tts",
    "vad": "vad",
    "faq": "faq",
    "reply": "reply",
    "turns": "turns",
    "jitter": "jitter",
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
        if isinstance(default, tuple) and isinstance(value, tuple):
            continue  # already built (the facts of [faq])
        if isinstance(default, frozenset):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{source}: [{section}] {key} must be a list of strings")
            values = {**values, key: frozenset(value)}
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
        target = _SECTIONS[section]
        if section == "faq":
            values = _with_facts(values, str(path))
        built = _build(
            type(getattr(config, target)), values, section, str(path), base=getattr(config, target)
        )
        config = dataclasses.replace(config, **{target: built})
    return config


def _with_facts(values: dict[str, Any], source: str) -> dict[str, Any]:
    """``[[faq.facts]]`` tables (``questions`` = a list of phrasings, ``answer``) built
    into :class:`~stages.faq.FaqEntry` values."""
    facts = values.get("facts", [])
    if not isinstance(facts, list) or not all(isinstance(fact, dict) for fact in facts):
        raise ConfigError(f"{source}: [faq] facts must be [[faq.facts]] tables")
    entries = []
    for number, fact in enumerate(facts, 1):
        where = f"[[faq.facts]] #{number}"
        unknown = sorted(set(fact) - {"questions", "answer"})
        if unknown:
            raise ConfigError(f"{source}: {where}: unknown key(s) {', '.join(unknown)}")
        questions, answer = fact.get("questions"), fact.get("answer")
        if not isinstance(questions, list) or not questions:
            raise ConfigError(f"{source}: {where}: questions must be a non-empty list")
        if not all(isinstance(q, str) and q.strip() for q in questions):
            raise ConfigError(f"{source}: {where}: every question must be a non-empty string")
        if not isinstance(answer, str) or not answer.strip():
            raise ConfigError(f"{source}: {where}: answer must be a non-empty string")
        entries.append(FaqEntry(tuple(questions), answer.strip()))
    return {**values, "facts": tuple(entries)}
