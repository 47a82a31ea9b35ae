"""Structured logs: one JSON object per line, the callId on every line of a call.

Phone numbers are personal data; with redaction on, only their last two digits
reach the log.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

__all__ = ["CallLogger", "configure_logging", "redact_number"]

_RESERVED = frozenset(vars(logging.makeLogRecord({})))


def redact_number(number: str) -> str:
    """Keep the last two digits so support can still tell calls apart."""
    digits = "".join(ch for ch in number if ch.isdigit())
    if len(digits) <= 2:
        return "*" * len(number)
    return "*" * (len(digits) - 2) + digits[-2:]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


def configure_logging(level: str = "info", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("voicegraph")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class CallLogger(logging.LoggerAdapter):
    """Adds ``callId`` (and anything else given) to every record of one call."""

    def __init__(self, logger: logging.Logger, call_id: str, **fields: Any) -> None:
        super().__init__(logger, {"callId": call_id, **fields})

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra: Mapping[str, Any] = kwargs.get("extra") or {}
        kwargs["extra"] = {**self.extra, **extra}
        return msg, kwargs
