"""Editing a chain before it runs: the stage list of a bot's graph goes through edits.

A bot builds its chains itself (the inbound chain of every call, the reply path of
every reply), so a user adding a stage to the default graph needs a way in that does
not mean copying the bot: an edit gets the fresh stage list and returns the list to
run (insert, replace or drop stages).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pipeline.runtime.stage import Stage

__all__ = ["StageEdit", "edited", "insert_after"]

StageEdit = Callable[[list[Stage[Any, Any]]], list[Stage[Any, Any]]]


def insert_after(
    stages: list[Stage[Any, Any]], kind: type, *new: Stage[Any, Any]
) -> list[Stage[Any, Any]]:
    """``stages`` with ``new`` right after the first stage of class ``kind`` (a typical edit)."""
    for index, stage in enumerate(stages):
        if isinstance(stage, kind):
            return [*stages[: index + 1], *new, *stages[index + 1 :]]
    names = ", ".join(type(stage).__name__ for stage in stages)
    raise ValueError(f"no {kind.__name__} in the chain ({names})")


def edited(stages: Iterable[Stage[Any, Any]], edits: Sequence[StageEdit]) -> list[Stage[Any, Any]]:
    """``stages`` after each of ``edits`` in turn: the list a chain should run."""
    chosen = list(stages)
    for edit in edits:
        chosen = edit(chosen)
    return chosen
