"""The parrot bot: says every stretch of caller speech back, as one WAV chunk.

It exercises the whole transport with no speech models: RTP depacketizer →
jitter buffer → μ-law decode → energy gate → μ-law encode → WAV → media out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from pipeline.server.call import Call
from stages import mulaw
from stages.energy import EnergyGateConfig, EnergySegmenter
from stages.jitter import JitterConfig
from stages.playout import JitterStage
from stages.rtp import RtpDepacketizer

__all__ = ["ParrotBot"]


@dataclass
class ParrotBot:
    gate: EnergyGateConfig = field(default_factory=EnergyGateConfig)
    jitter: JitterConfig = field(default_factory=JitterConfig)
    finished: list[dict[str, Any]] = field(default_factory=list)

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        mulaw.warm_up()
        yield

    async def handle_call(self, call: Call) -> None:
        stages = (
            RtpDepacketizer(),
            JitterStage(self.jitter),
            mulaw.MulawDecoder(),
            EnergySegmenter(self.gate),
        )
        async with call.open_pipeline(*stages) as chain:
            async for utterance in chain.outputs:
                call.log.info(
                    "utterance",
                    extra={"start_sample": utterance.start_sample, "seconds": utterance.duration},
                )
                await call.send_speech(mulaw.encode(utterance.samples))
