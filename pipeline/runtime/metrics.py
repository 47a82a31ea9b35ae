"""Per-stage latency read off frame stamps, summarised as percentiles."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from pipeline.runtime.frames import Frame

__all__ = ["LatencySummary", "StageLatencies"]


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Percentiles of one stage's latency, in milliseconds."""

    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> LatencySummary:
        if not seconds:
            return cls(0, float("nan"), float("nan"), float("nan"), float("nan"))
        ms = np.asarray(seconds) * 1000.0
        p50, p95, p99 = np.percentile(ms, [50, 95, 99])
        return cls(len(ms), float(p50), float(p95), float(p99), float(ms.max()))


class StageLatencies:
    """Accumulates how long each stage held each frame it saw."""

    def __init__(self) -> None:
        self._samples: dict[str, list[float]] = defaultdict(list)

    def record(self, frame: Frame) -> None:
        for stage, seconds in frame.stage_latencies():
            self._samples[stage].append(seconds)

    def samples(self, stage: str) -> list[float]:
        return list(self._samples.get(stage, ()))

    def summary(self) -> dict[str, LatencySummary]:
        return {stage: LatencySummary.of(values) for stage, values in self._samples.items()}
