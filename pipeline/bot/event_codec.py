"""Conversation events and send results read back from their JSON wire form.

The inverse of the ``as_json`` methods of :mod:`pipeline.bot.messages`: what another
worker published on the shared bus (:mod:`pipeline.bot.redis_bus`) becomes the same typed
event a local call publishes, so a subscriber cannot tell (and need not care) where the
call runs. Whatever is not a well-formed event raises ``ValueError``: the bus counts it
and goes on.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pipeline.bot.messages import (
    CallState,
    CallStateChange,
    ChatMessage,
    ConversationEvent,
    MessageNew,
    SendResult,
)

__all__ = ["event_from_json", "message_from_json", "result_from_json"]


def message_from_json(data: Any) -> ChatMessage:
    """The :class:`ChatMessage` whose ``as_json()`` is ``data``."""
    try:
        metadata, parent_id = data["metadata"], data.get("parentId")
        if not isinstance(metadata, dict) or not isinstance(parent_id, str | None):
            raise ValueError("metadata must be an object and parentId a string")
        return ChatMessage(
            _text(data["id"]),
            _text(data["channelId"]),
            _text(data["content"]),
            metadata,
            parent_id,
            _moment(data["createdAt"]),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a chat message: {exc!r}") from None


def event_from_json(document: Any) -> ConversationEvent:
    """The event (``message.new`` or ``call.state``) whose ``as_json()`` is ``document``."""
    try:
        kind, data = document["type"], document["data"]
        if kind == MessageNew.type:
            return MessageNew(message_from_json(data["message"]))
        if kind == CallStateChange.type:
            message = data.get("message")
            if not isinstance(message, str | None):
                raise ValueError("a state's message must be a string")
            return CallStateChange(
                _text(data["channelId"]),
                CallState(data["state"]),
                message,
                _moment(data["createdAt"]),
            )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a conversation event: {exc!r}") from None
    raise ValueError(f"not a conversation event type: {str(kind)[:40]!r}")


def result_from_json(document: Any) -> SendResult:
    """The :class:`SendResult` whose ``as_json()`` is ``document``."""
    try:
        status = document["status"]
        if not isinstance(status, Mapping):
            raise TypeError("status must be an object")
        if status["error"]:
            error = status["errorData"]
            return SendResult.failed(int(error["statusCode"]), _text(error["message"]))
        return SendResult.ok(message_from_json(document["response"]["message"]))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a send result: {exc!r}") from None


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, not {type(value).__name__}")
    return value


def _moment(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("createdAt must be an ISO 8601 string")
    return datetime.fromisoformat(value)
