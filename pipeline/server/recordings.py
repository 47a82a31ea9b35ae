"""Where ``--record DIR`` keeps a call: its folder, and the platform's lines in its transcript.

Both the server (platform webhooks, which arrive before a call is registered and after
it has ended) and the bot's recorder (what was said and heard) write into the same
``DIR/<callId>/``, so the folder's naming lives here, on the server's side, where the bot
may import it and the server need not know the bot.
"""

from __future__ import annotations

import hashlib
import json
import string
import time
from pathlib import Path
from typing import Any

__all__ = ["MAX_FOLDER_NAME", "call_folder", "record_platform_event"]

MAX_FOLDER_NAME = 200
"""Bytes of a folder name (file systems allow 255)."""

_KEPT = frozenset(string.ascii_letters + string.digits + "-_.")


def call_folder(root: Path, call_id: str) -> Path:
    """``root/<callId>``, the id written as one safe folder name, and no two ids the same.

    Ids come off the network: letters, digits, ``-``, ``_`` and ``.`` stay as they are;
    every other byte (of its UTF-8) becomes ``~XX`` in hex, ``~`` included, so ``a/b`` is
    ``a~2Fb`` and never ``a_b``'s folder; an id of dots only (``.``, ``..``) has its dots
    escaped too. A name past :data:`MAX_FOLDER_NAME` keeps its start and ends in ``~~``
    and a hash of the whole id (``~~`` appears in no escaped name).
    """
    escaped = "".join(
        ch if ch in _KEPT else "".join(f"~{byte:02X}" for byte in ch.encode("utf-8"))
        for ch in call_id
    )
    if not escaped.strip("."):
        escaped = escaped.replace(".", "~2E") or "~"
    if len(escaped) > MAX_FOLDER_NAME:
        digest = hashlib.sha256(call_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        escaped = escaped[: MAX_FOLDER_NAME - 34] + "~~" + digest
    return Path(root) / escaped


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
