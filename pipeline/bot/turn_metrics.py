"""The voice bot's turns as Prometheus metrics: latency of each step, voice-to-voice,
barge-ins, false interruptions resumed, service errors by family, conversation events.

Fed from the observation point that already exists: every finished
:class:`~pipeline.bot.conversation.TurnRecord` (its ``timings_ms`` are the steps the reply
path marked, milliseconds from the end of the caller's speech), handed to the bot's
``turn_observers``. Nothing is timed twice. Not the conversation-event bus: its messages
lack the error and the resumptions, a subscriber may lose events, and a shared bus would
carry other workers' turns (counted twice in a fleet's totals).

Cost: one turn is a handful of histogram observations and counter increments (see the
README's metrics section for the measured figure), once per turn, never per packet.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.bot.conversation import TurnRecord
from pipeline.bot.messages import ConversationBus
from pipeline.bot.sharing import BorrowingVoiceBot
from pipeline.bot.voicebot import VoiceBot
from pipeline.server.prometheus import Metrics

__all__ = [
    "STEP_BUCKETS_S",
    "VOICE_TO_VOICE_BUCKETS_S",
    "TurnMetrics",
    "failed_services",
    "voice_bot_of",
]

logger = logging.getLogger("voicegraph.metrics")

STEP_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10)
VOICE_TO_VOICE_BUCKETS_S = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1, 1.2, 1.5, 2, 3, 5, 10)
DURATION_STEPS = frozenset({"stt_compute"})
"""Timings that are a duration of their own, not a moment after the caller's speech."""
MAX_STEP_NAMES = 32
"""Distinct step labels kept (a stage added to the reply path may mark its own steps);
later names are left out and counted in :attr:`TurnMetrics.steps_left_out`."""
SERVICES = ("stt", "llm", "tts")


def voice_bot_of(bot: Any) -> VoiceBot | None:
    """The voice bot whose turns ``bot`` runs (itself, or the one a borrowing bot wraps);
    None for a bot without turns (the parrot)."""
    if isinstance(bot, BorrowingVoiceBot):
        return voice_bot_of(bot.bot)
    return bot if isinstance(bot, VoiceBot) else None


def failed_services(record: TurnRecord) -> set[str]:
    """Which services failed in a turn: ``stt``/``tts`` from the ``error`` prefixes the
    reply path writes (``"stt: ..."``), ``llm`` from ``llm_failed``; ``other`` for an
    error of none of them."""
    failed = set()
    for part in record.error.split("; "):
        prefix = part.partition(":")[0].strip()
        if prefix in ("stt", "tts"):
            failed.add(prefix)
    if record.llm_failed:
        failed.add("llm")
    if record.error and not failed:
        failed.add("other")
    return failed


class TurnMetrics:
    """The turn metrics of every voice bot it :meth:`watch`es, in ``metrics``."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.turns = metrics.counter(
            "voicegraph_turns",
            "Finished turns, by source (caller, greeting, operator) and what ended the "
            "caller's turn (hangover, complete, unsure, max_wait, withdrawn; none)",
            ("source", "end_of_turn"),
        )
        self.steps = metrics.histogram(
            "voicegraph_turn_step_seconds",
            "Caller turns: time from the end of the caller's speech until each step "
            "(endpointing, stt, llm_first_token, first_clause, tts_first_chunk, first_send, ...)",
            STEP_BUCKETS_S,
            ("step",),
        )
        self.stt_compute = metrics.histogram(
            "voicegraph_stt_compute_seconds", "STT time per caller turn", STEP_BUCKETS_S
        )
        self.voice_to_voice = metrics.histogram(
            "voicegraph_voice_to_voice_seconds",
            "Caller turns answered: end of the caller's speech (received audio) to the "
            "first bot audio sent",
            VOICE_TO_VOICE_BUCKETS_S,
        )
        self.interrupted = metrics.counter(
            "voicegraph_replies_interrupted",
            "Replies cut by the caller (barge-in), by source",
            ("source",),
        )
        self.resumed = metrics.counter(
            "voicegraph_false_interrupts_resumed",
            "Replies that went on after a barge-in without words",
        )
        self.errors = metrics.counter(
            "voicegraph_service_errors",
            "Turns in which a speech service failed, by service (stt, llm, tts, other)",
            ("service",),
        )
        for service in (*SERVICES, "other"):
            self.errors.labels(service)
        self.events = metrics.fed_counter(
            "voicegraph_events", "Conversation events published (message.new, call.state)"
        )
        self.events_dropped = metrics.fed_counter(
            "voicegraph_events_dropped", "Conversation events lost by subscribers too slow"
        )
        self._step_names: set[str] = set()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.steps_left_out = 0

    def observe(self, record: TurnRecord) -> None:
        """A turn observer: count ``record`` (once, when the turn is finished)."""
        source = record.source
        self._child(self.turns, source, record.end_of_turn or "none").inc()
        if record.interrupted:
            self._child(self.interrupted, source).inc()
        if record.resumed:
            self.resumed.inc(record.resumed)
        for service in failed_services(record):
            self._child(self.errors, service).inc()
        if source != "caller":
            return
        for step, ms in record.timings_ms.items():
            if step in DURATION_STEPS:
                if step == "stt_compute":
                    self.stt_compute.observe(ms / 1000)
            elif self._known_step(step):
                self._child(self.steps, step).observe(max(ms, 0.0) / 1000)
        first_send = record.timings_ms.get("first_send")
        if first_send is not None:
            self.voice_to_voice.observe(max(first_send, 0.0) / 1000)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once (``labels()`` costs more than a count)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _known_step(self, step: str) -> bool:
        if step in self._step_names:
            return True
        if len(self._step_names) < MAX_STEP_NAMES:
            self._step_names.add(step)
            return True
        self.steps_left_out += 1
        return False

    def watch(self, bot: Any) -> bool:
        """Count the turns of ``bot`` (a voice bot, or one borrowing another's models);
        False for a bot without turns (the parrot)."""
        voice = voice_bot_of(bot)
        if voice is None:
            return False
        if self.observe not in voice.turn_observers:
            voice.turn_observers.append(self.observe)
        return True

    def watch_bus(self, bus: ConversationBus) -> None:
        """Count ``bus``'s published and dropped events (read at each collection)."""

        def read() -> None:  # another bus (shared) may count otherwise: then nothing here
            self.events.feed(getattr(bus, "published", 0))
            self.events_dropped.feed(getattr(bus, "dropped", 0))

        self.metrics.on_collect(read)
