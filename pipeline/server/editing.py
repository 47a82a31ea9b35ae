"""Editing a bot's per-call chain from outside the bot: wrap it, and every call's stage
list goes through an edit first.

A bot builds its per-call chain itself (``call.open_pipeline(*stages)``), so a bench, or
a user adding a stage to the default graph, needs a way in that does not mean copying
the bot. :func:`with_stages` wraps any :class:`~pipeline.server.call.Bot`: the edit is
handed to the :class:`~pipeline.server.call.Call`, which applies it when the bot opens its
pipeline. It works with any server, not only under the bench.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

from pipeline.runtime.editing import StageEdit
from pipeline.server.call import Bot, Call

__all__ = ["EditedBot", "with_stages"]


class EditedBot:
    """``bot`` with ``edit`` applied to the stage list of every call; otherwise ``bot``."""

    def __init__(self, bot: Bot, edit: StageEdit) -> None:
        self.bot = bot
        self.edit = edit

    def __getattr__(self, name: str) -> Any:  # finished, conversations, config, ...
        return getattr(self.bot, name)

    def serving(self) -> AbstractAsyncContextManager[None]:
        return self.bot.serving()

    async def handle_call(self, call: Call) -> None:
        call.stage_edits.append(self.edit)
        await self.bot.handle_call(call)


def with_stages(bot: Bot, edit: StageEdit) -> EditedBot:
    """Compose into a bot's graph: ``edit`` gets each call's fresh stage list and returns
    the list to run (insert, replace or drop stages). Works with ``serve`` as with ``bench``."""
    return EditedBot(bot, edit)
