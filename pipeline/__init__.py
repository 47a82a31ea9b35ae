"""voicegraph: Trio-based real-time audio pipelines for offline telephone voice bots.

The public API lives here and in each subpackage's ``__init__`` (``pipeline.runtime``,
``pipeline.protocol``, ``pipeline.server``, ``pipeline.bot``, ``pipeline.caller``,
``pipeline.platform``, ``pipeline.bench``); the modules behind them are private.

The stage runtime's names are imported at once. The others load on first use: the
stages (``stages/``) import the runtime, which runs this file first, and the bot imports
the stages, so importing the bot from here eagerly would make ``import stages.vad``
(before anything else) meet a half-initialised ``stages``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pipeline.runtime import (
    TELEPHONE_RATE,
    BotText,
    CallError,
    CallerText,
    CallerTurn,
    Concealment,
    ConfigError,
    Frame,
    Inbound,
    InboundStatistics,
    LatencySummary,
    LlmError,
    Message,
    MulawAudio,
    Outbox,
    PcmAudio,
    ProtocolError,
    RawPacket,
    Reply,
    Role,
    RunningChain,
    Service,
    ServiceError,
    SpeakableText,
    SpeechAudio,
    Stage,
    StageEdit,
    StageFailed,
    StageLatencies,
    Stamp,
    SttError,
    Tee,
    TtsError,
    Utterance,
    VadError,
    VoicegraphError,
    insert_after,
    open_chain,
    run_stage,
    sleep_until,
)

if TYPE_CHECKING:  # what _LAZY loads, spelled out for type checkers and the layering test
    from pipeline.bot import (
        BotConfig,
        Conversation,
        ConversationBus,
        ParrotBot,
        TurnRecord,
        VoiceBot,
        load_config,
    )
    from pipeline.caller import (
        CallClient,
        FileInput,
        FileOutput,
        Impairments,
        converse,
        open_call,
        open_client,
    )
    from pipeline.platform import (
        CallRequest,
        PlatformClient,
        PlatformEmulator,
        WebhookDetails,
    )
    from pipeline.server import Bot, Call, ServerConfig, VoiceStreamServer, with_stages

__version__ = "0.1.0"

_LAZY_FROM: dict[str, tuple[str, ...]] = {
    "pipeline.server": ("Bot", "Call", "ServerConfig", "VoiceStreamServer", "with_stages"),
    "pipeline.bot": (
        "BotConfig",
        "Conversation",
        "ConversationBus",
        "ParrotBot",
        "TurnRecord",
        "VoiceBot",
        "load_config",
    ),
    "pipeline.caller": (
        "CallClient",
        "FileInput",
        "FileOutput",
        "Impairments",
        "converse",
        "open_call",
        "open_client",
    ),
    "pipeline.platform": ("CallRequest", "PlatformClient", "PlatformEmulator", "WebhookDetails"),
}
"""Public names loaded on first use, by the subpackage they come from."""
_LAZY = {name: package for package, names in _LAZY_FROM.items() for name in names}


def __getattr__(name: str) -> Any:
    package = _LAZY.get(name)
    if package is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(package), name)
    globals()[name] = value  # next time, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "TELEPHONE_RATE",
    "Bot",
    "BotConfig",
    "BotText",
    "Call",
    "CallClient",
    "CallError",
    "CallRequest",
    "CallerText",
    "CallerTurn",
    "Concealment",
    "ConfigError",
    "Conversation",
    "ConversationBus",
    "FileInput",
    "FileOutput",
    "Frame",
    "Impairments",
    "Inbound",
    "InboundStatistics",
    "LatencySummary",
    "LlmError",
    "Message",
    "MulawAudio",
    "Outbox",
    "ParrotBot",
    "PcmAudio",
    "PlatformClient",
    "PlatformEmulator",
    "ProtocolError",
    "RawPacket",
    "Reply",
    "Role",
    "RunningChain",
    "ServerConfig",
    "Service",
    "ServiceError",
    "SpeakableText",
    "SpeechAudio",
    "Stage",
    "StageEdit",
    "StageFailed",
    "StageLatencies",
    "Stamp",
    "SttError",
    "Tee",
    "TtsError",
    "TurnRecord",
    "Utterance",
    "VadError",
    "VoiceBot",
    "VoiceStreamServer",
    "VoicegraphError",
    "WebhookDetails",
    "converse",
    "insert_after",
    "load_config",
    "open_call",
    "open_chain",
    "open_client",
    "run_stage",
    "sleep_until",
    "with_stages",
]
