"""voicegraph: Trio-based real-time audio pipelines for offline telephone voice bots.

The public API lives here; the modules behind it are private to the package.
"""

from pipeline.runtime.frames import (
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
from pipeline.runtime.stage import Outbox, Stage, StageFailed, run_stage

__version__ = "0.1.0"

__all__ = [
    "Concealment",
    "Frame",
    "Inbound",
    "InboundStatistics",
    "LatencySummary",
    "MulawAudio",
    "Outbox",
    "PcmAudio",
    "RawPacket",
    "RunningChain",
    "Stage",
    "StageFailed",
    "StageLatencies",
    "Stamp",
    "Tee",
    "Utterance",
    "open_chain",
    "run_stage",
]
