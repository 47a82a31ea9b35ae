"""Who may open a call: an API key checked in constant time.

The platform only lets a customer configure a WebSocket URL, so the key has to
fit in one: we accept it as a ``token`` query parameter, and also as an
``Authorization: Bearer`` or ``x-api-key`` header for clients that can set headers.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from urllib.parse import parse_qs, urlsplit

__all__ = ["credentials_from_request", "is_authorized"]


def credentials_from_request(path: str, headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """Every key the request offers, from the query string and the headers."""
    offered = list(parse_qs(urlsplit(path).query).get("token", []))
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1").strip()
        if name == "x-api-key":
            offered.append(value)
        elif name == "authorization":
            scheme, _, credential = value.partition(" ")
            if scheme.lower() == "bearer":
                offered.append(credential.strip())
    return offered


def is_authorized(expected: str | None, offered: Iterable[str]) -> bool:
    """True when no key is configured, or one offered key matches it.

    Each comparison is constant-time so the response time leaks nothing about
    how much of a guessed key was right.
    """
    if expected is None:
        return True
    wanted = expected.encode()
    matched = False
    for candidate in offered:
        matched |= hmac.compare_digest(candidate.encode(), wanted)
    return matched
