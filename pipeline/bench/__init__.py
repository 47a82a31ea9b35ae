"""The machinery of ``voicegraph bench``: run a pipeline on the real transport and measure it.

Public pieces a user composing a pipeline needs: :func:`with_stages` (put a stage of
your own into a bot's per-call chain) and :func:`insert_after`.
"""

from pipeline.bench.instrument import InstrumentedBot, StageProbe, insert_after, with_stages

__all__ = ["InstrumentedBot", "StageProbe", "insert_after", "with_stages"]
