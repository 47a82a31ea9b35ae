"""Frames: the units of work that travel between stages, each carrying its own timing.

Every frame remembers when the audio it holds was captured (``captured_at``, on the
Trio clock) and collects a :class:`Stamp` from every stage that emitted it, so the
latency of each stage can be read off any frame of any run without extra wiring.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "TELEPHONE_RATE",
    "Concealment",
    "Frame",
    "MulawAudio",
    "PcmAudio",
    "RawPacket",
    "Stamp",
    "Utterance",
]

TELEPHONE_RATE = 8000
"""Samples per second of telephone audio (G.711): every call's timeline counts in them."""


@dataclass(slots=True, frozen=True)
class Stamp:
    """One stage's emission of a frame: which stage, and when (Trio clock, seconds)."""

    stage: str
    at: float


@dataclass(slots=True, kw_only=True)
class Frame:
    """Base of everything that flows through a pipeline and should be timed."""

    captured_at: float
    stamps: list[Stamp] = field(default_factory=list)

    def stamp(self, stage: str, at: float) -> None:
        self.stamps.append(Stamp(stage, at))

    def stage_latencies(self) -> list[tuple[str, float]]:
        """Seconds each stage held this frame: from the previous stamp (or capture) to its own."""
        previous = self.captured_at
        latencies = []
        for stamp in self.stamps:
            latencies.append((stamp.stage, stamp.at - previous))
            previous = stamp.at
        return latencies

    def age(self, now: float) -> float:
        """Seconds from capture to ``now``: the end-to-end latency so far."""
        return now - self.captured_at

    def inherit_timing(self, source: Frame) -> None:
        """Carry the capture time and stamps of the frame this one was derived from."""
        self.captured_at = source.captured_at
        self.stamps = list(source.stamps)


@dataclass(slots=True, kw_only=True)
class RawPacket(Frame):
    """One inbound media payload exactly as the transport received it (an RTP packet)."""

    data: bytes


class Concealment(enum.Enum):
    """Whether a frame holds received audio or audio made up to hide a gap."""

    NONE = "none"
    SILENCE = "silence"
    REPEAT = "repeat"


@dataclass(slots=True, kw_only=True)
class MulawAudio(Frame):
    """G.711 μ-law bytes on the call's 8 kHz timeline.

    ``start_sample`` is the position of the first sample in the call's audio, counted
    from the first sample played out, so segments and latencies can be pinned to
    exact sample positions.
    """

    payload: bytes
    start_sample: int
    sample_rate: int = 8000
    concealment: Concealment = Concealment.NONE

    @property
    def duration(self) -> float:
        return len(self.payload) / self.sample_rate


@dataclass(slots=True, kw_only=True)
class PcmAudio(Frame):
    """Linear 16-bit PCM samples (mono) on the call's timeline."""

    samples: np.ndarray
    start_sample: int
    sample_rate: int = 8000
    concealment: Concealment = Concealment.NONE

    @property
    def end_sample(self) -> int:
        return self.start_sample + len(self.samples)

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass(slots=True, kw_only=True)
class Utterance(Frame):
    """One stretch of caller speech, cut out of the call's audio at exact sample positions.

    ``captured_at`` is when the last speech sample arrived, so the stage that
    emits an utterance is charged exactly the end-of-turn wait it added.
    """

    samples: np.ndarray
    start_sample: int
    end_sample: int
    sample_rate: int = 8000

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate
