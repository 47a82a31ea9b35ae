"""The library's exceptions: one base, :class:`VoicegraphError`, and a family per kind of failure.

A program that starts a bot catches ``VoicegraphError`` once and prints its message; anything
else is a bug and keeps its traceback. Families let a caller be more precise when it can act
on the difference: a :class:`ConfigError` is fixed by editing a file, a :class:`ServiceError`
by installing or pointing at a model, a :class:`ProtocolError` is the peer's (or a file's)
fault, a :class:`CallError` is a call that could not be placed, connected or kept.

Each family keeps the built-in base its members always had (``ValueError``, ``RuntimeError``,
``ConnectionError``), so code written as ``except ValueError:`` still catches them. Members
live next to the code that raises them and derive from their family here; the service errors
and :class:`StageFailed` live here, and their stage modules re-export them.

This module imports nothing of the project: the stage runtime depends on nothing else, and
everything may import the runtime.
"""

from __future__ import annotations

__all__ = [
    "CallError",
    "ConfigError",
    "LlmError",
    "ProtocolError",
    "ServiceError",
    "StageFailed",
    "SttError",
    "TtsError",
    "VadError",
    "VoicegraphError",
]


class VoicegraphError(Exception):
    """Base of every exception the library raises on purpose: its message is for the user."""


class ConfigError(VoicegraphError, ValueError):
    """A configuration cannot be used; the message names the file, section and key (or flag)."""


class ProtocolError(VoicegraphError):
    """Data that breaks a format we speak: a voice-stream message or payload, RTP, WAV, an
    audio file; or our own code misusing the protocol. Members are ``ValueError`` for bad
    input and ``RuntimeError`` for local misuse, as before."""


class ServiceError(VoicegraphError, RuntimeError):
    """A shared model service (VAD, STT, LLM, TTS) cannot be loaded or run: usually found at
    start-up, fixed by installing or pointing at the model."""


class VadError(ServiceError):
    """The VAD model could not be loaded or run."""


class SttError(ServiceError):
    """The STT model could not be found, loaded or run."""


class LlmError(ServiceError):
    """The LLM could not produce (the rest of) a reply; the message says why."""


class TtsError(ServiceError):
    """The voice could not be found, loaded or run."""


class StageFailed(VoicegraphError):
    """A stage raised: the call it belongs to must end, and the log must say which stage."""

    def __init__(self, stage: str) -> None:
        super().__init__(f"stage {stage!r} failed")
        self.stage = stage


class CallError(VoicegraphError):
    """A call could not be placed, connected or carried on: the caller and platform clients
    (connect, registration, REST, audio devices) and a conversation whose call has ended."""
