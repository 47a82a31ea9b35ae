"""The stage runtime: the stage contract, chains and their editing, timed frames, the
inbound edge, latency metrics, the shared timer, shared services and the library's errors.
It imports nothing else of the project.
"""

from pipeline.runtime.dialogue import (
    BotText,
    CallerText,
    CallerTurn,
    Message,
    Reply,
    Role,
    SpeakableText,
    SpeechAudio,
)
from pipeline.runtime.editing import StageEdit, insert_after
from pipeline.runtime.errors import (
    CallError,
    ConfigError,
    LlmError,
    ProtocolError,
    ServiceError,
    StageFailed,
    SttError,
    TtsError,
    VadError,
    VoicegraphError,
)
from pipeline.runtime.frames import (
    TELEPHONE_RATE,
    Concealment,
    Frame,
    MulawAudio,
    PcmAudio,
    RawPacket,
    Stamp,
    Utterance,
)
from pipeline.runtime.graph import RunningChain, Tee, open_chain
from pipeline.runtime.inbound import Inbound, InboundStatistics
from pipeline.runtime.metrics import LatencySummary, StageLatencies
from pipeline.runtime.service import Service
from pipeline.runtime.stage import Outbox, Stage, run_stage
from pipeline.runtime.timers import sleep_until

__all__ = [
    "TELEPHONE_RATE",
    "BotText",
    "CallError",
    "CallerText",
    "CallerTurn",
    "Concealment",
    "ConfigError",
    "Frame",
    "Inbound",
    "InboundStatistics",
    "LatencySummary",
    "LlmError",
    "Message",
    "MulawAudio",
    "Outbox",
    "PcmAudio",
    "ProtocolError",
    "RawPacket",
    "Reply",
    "Role",
    "RunningChain",
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
    "Utterance",
    "VadError",
    "VoicegraphError",
    "insert_after",
    "open_chain",
    "run_stage",
    "sleep_until",
]
