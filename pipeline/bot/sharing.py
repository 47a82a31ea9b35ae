"""Several voice bots on one server, one set of loaded models: bots whose model and LLM
settings are the same share them.

A server with one bot per WebSocket path (one per phone number) would otherwise load the
VAD, STT, TTS and LLM once per path. The first bot of each group of equal settings loads
them; the others borrow them and keep their own prompt and greeting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from pipeline.bot.config import BotConfig
from pipeline.server.call import Bot, Call

__all__ = ["BorrowingVoiceBot", "models_key", "share_models"]


def models_key(config: BotConfig) -> Hashable:
    """What must be equal for two voice bots to share their loaded models."""
    return (config.vad, config.stt, config.tts, config.llm)


def share_models(bots: Mapping[str, Bot]) -> dict[str, Bot]:
    """``bots`` (by path, in route order) with every voice bot after the first of its
    settings replaced by a :class:`BorrowingVoiceBot` on that first one's models."""
    shared: dict[str, Bot] = {}
    owners: dict[Hashable, Any] = {}
    for path, bot in bots.items():
        config = getattr(bot, "config", None)
        if isinstance(config, BotConfig):
            owner = owners.setdefault(models_key(config), bot)
            if owner is not bot:
                bot = BorrowingVoiceBot(bot, owner)
        shared[path] = bot
    return shared


class BorrowingVoiceBot:
    """A voice bot that runs on another voice bot's loaded models (same settings):
    one VAD batcher, STT pool, TTS and LLM for both, its own prompt and greeting.

    The owner must be serving first; the server enters bots in route order and the
    owner is always the earlier route.
    """

    def __init__(self, bot: Any, owner: Any) -> None:
        self.bot = bot
        self.owner = owner
        self.config = bot.config

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        services = self.owner.services
        if services is None:
            raise RuntimeError("the owning voice bot is not serving yet")
        self.bot.services = services
        self.bot.greeting = await self.bot.prepare_greeting(services.tts)
        try:
            yield
        finally:
            self.bot.services = None

    async def handle_call(self, call: Call) -> None:
        await self.bot.handle_call(call)
