"""A stage of your own in the default voice bot's graph, and what it costs.

    voicegraph bench stages --json base.json
    voicegraph bench stages --pipeline examples.keyword_spotter:make_bot --json spot.json
    voicegraph bench compare base.json spot.json

:class:`KeywordSpotter` sits right after the endpointer. Each finished caller turn
(a :class:`~stages.turns.SpeechSegment`) is transcribed with the bot's shared STT
service; if it holds one of :data:`KEYWORDS`, the call's log says so (a deployment
would transfer the call). The turn then goes on, unchanged, to the conversation.

The bench shows the price of this design: the spotter's row in the stage table is
one extra Whisper pass per turn, in series before the bot may answer, and the
endpointing mark of every turn moves by as much. Spotting on ``SpeechPaused`` (the
speculative end of turn) instead would hide most of it.
"""

from __future__ import annotations

import re
from typing import Any

import trio

from pipeline import Bot, BotConfig, Outbox, Stage, VoiceBot, insert_after, with_stages
from stages.turns import SpeechSegment, TurnEvent, TurnStage

KEYWORDS = frozenset({"operator", "agent", "human", "manager"})


class KeywordSpotter(Stage[TurnEvent, TurnEvent]):
    """Passes turn events on; finds :data:`KEYWORDS` in each finished turn first."""

    def __init__(self, bot: VoiceBot, keywords: frozenset[str] = KEYWORDS) -> None:
        super().__init__()
        self.bot = bot
        self.keywords = keywords
        self.turns = 0
        self.spotted: list[str] = []

    async def run(
        self, inbox: trio.MemoryReceiveChannel[TurnEvent], outbox: Outbox[TurnEvent]
    ) -> None:
        async for event in inbox:
            if isinstance(event, SpeechSegment) and self.bot.services is not None:
                transcript = await self.bot.services.stt.transcribe(
                    event.samples, event.sample_rate
                )
                self.turns += 1
                found = self.keywords & set(re.findall(r"[a-z]+", transcript.text.lower()))
                self.spotted.extend(sorted(found))
            await outbox.send(event)

    def statistics(self) -> dict[str, Any]:
        return {"turns": self.turns, "spotted": list(self.spotted)}


def make_bot(config: BotConfig) -> Bot:
    """The ``--pipeline`` factory: the default voice bot with the spotter after endpointing."""
    bot = VoiceBot(config)
    return with_stages(bot, lambda stages: insert_after(stages, TurnStage, KeywordSpotter(bot)))
