"""Where ``--record DIR`` keeps a call: its folder, and the platform's lines in its transcript.

Both the server (platform webhooks, which arrive before a call is registered and after
it has ended) and the bot's recorder (what was said and heard) write into the same
``DIR/<callId>/``, so the folder's naming lives here, on the server's side, where the bot
may import it and the server need not know the bot.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

__all__ = ["call_folder", "record_platform_event"]


def call_folder(root: Path, call_id: str) -> Path:
    """``root/<callId>``, with the id made safe as one folder name (ids come off the network)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in call_id)
    if not safe.strip("."):
        safe = "call" + safe  # never "", "." or ".."
    return Path(root) / safe


def record_platform_event(root: Path, call_id: str, event: str, data: dict[str, Any]) -> Path:
    """Append ``{"role": "platform", "event": ...}`` to the call's ``transcript.jsonl``.

    Platform webhooks arrive before the call is registered and after it has ended, so
    this opens, appends one line and closes, instead of going through a live recorder;
    lines are written whole, in append mode, so they interleave cleanly with its lines.
    """
    directory = call_folder(root, call_id)
    directory.mkdir(parents=True, exist_ok=True)
    line = {
        "role": "platform",
        "event": event,
        "received_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": data,
    }
    path = directory / "transcript.jsonl"
    with path.open("a", encoding="utf-8") as transcript:
        transcript.write(json.dumps(line) + "\n")
    return path
