"""The jitter buffer's policy: how it trades delay against loss on a telephone line.

Its own module so the knobs a ``bot.toml`` sets (``[jitter]``) read apart from the
buffer's machinery in :mod:`stages.jitter`, which re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["JitterConfig"]


@dataclass(frozen=True, slots=True)
class JitterConfig:
    """How the buffer trades delay against loss. Defaults suit 8 kHz G.711 telephony."""

    frame_ms: int = 20
    """Every emitted frame lasts this long; 20 ms is what telephony packets carry."""
    sample_rate: int = 8000
    """RTP clock rate; for G.711 one byte is one sample."""
    min_delay: float = 0.04
    """Seconds: the delay never adapts below this, a floor against scheduling noise."""
    max_delay: float = 0.3
    """Seconds: beyond this a conversation feels broken, so we lose packets instead."""
    initial_delay: float = 0.04
    """Seconds of delay before the first frame, while the jitter is still unknown. Every
    millisecond of it is added to the bot's reaction time, so start at the floor and let
    measured jitter grow it (a stretched frame at a quiet moment)."""
    jitter_multiplier: float = 3.0
    """Target delay = clamp(multiplier × RFC 3550 jitter, min_delay, max_delay); 3 covers
    the spread of uniform or Gaussian arrival noise around its mean."""
    concealment: Literal["silence", "repeat"] = "repeat"
    """Fill a missing frame with silence, or repeat the last one (less audible for one
    lost packet, wrong for many: at most ``max_repeat`` in a row, then silence)."""
    max_repeat: int = 2
    resync_threshold: float = 1.0
    """Seconds: a packet this far from the cursor, ahead or behind, means the stream
    restarted; flush and re-anchor on it rather than wait or discard forever."""
    late_resync: int = 10
    """This many consecutive too-late packets also mean the stream moved under us
    (a sender that paused without advancing its timestamps): resync."""
    idle_after: float = 2.0
    """Seconds of consecutive concealment with an empty buffer before ticking stops.
    Generous so a VAD downstream still sees enough trailing silence to end a turn."""
    adapt_after: float = 0.5
    """Seconds the delay must stay off target before we skip or stretch a frame that is
    playing fine (the skip or stretch waits up to as long again for a quiet frame)."""

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.frame_ms <= 0:
            raise ValueError("sample_rate and frame_ms must be positive")
        if (self.sample_rate * self.frame_ms) % 1000:
            raise ValueError("frame_ms must hold a whole number of samples")
        if not 0 <= self.min_delay <= self.initial_delay <= self.max_delay:
            raise ValueError("need 0 <= min_delay <= initial_delay <= max_delay")
        if self.concealment not in ("silence", "repeat"):
            raise ValueError("concealment must be 'silence' or 'repeat'")
        if self.max_repeat < 0 or self.late_resync < 1:
            raise ValueError("max_repeat must be >= 0 and late_resync >= 1")
        if self.resync_threshold <= self.max_delay:
            raise ValueError("resync_threshold must exceed max_delay")
        if self.idle_after <= 0 or self.adapt_after <= 0 or self.jitter_multiplier <= 0:
            raise ValueError("idle_after, adapt_after and jitter_multiplier must be positive")

    @property
    def frame_samples(self) -> int:
        return self.sample_rate * self.frame_ms // 1000

    @property
    def frame_seconds(self) -> float:
        return self.frame_ms / 1000
