"""Who may open a call, follow ``/events`` or read ``/health``'s details: an API key checked
in constant time, or, when no key is set, being on the same host.

The platform only lets a customer configure a WebSocket URL, so the key has to
fit in one: we accept it as a ``token`` query parameter, and also as an
``Authorization: Bearer`` or ``x-api-key`` header for clients that can set headers.
A request must offer exactly one key: one that offers several (hundreds of ``token``
parameters, a header and a parameter) is refused, so guesses cannot be batched.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from urllib.parse import parse_qs, urlsplit

__all__ = ["credentials_from_request", "is_authorized", "is_loopback", "is_trusted"]


def credentials_from_request(path: str, headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """Every key the request offers, from the query string and the headers."""
    offered = list(parse_qs(urlsplit(path).query, keep_blank_values=True).get("token", []))
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
    """True when no key is configured, or exactly one key is offered and it matches.

    The comparison is constant-time so the response time leaks nothing about
    how much of a guessed key was right.
    """
    if expected is None:
        return True
    offered = list(offered)
    if len(offered) != 1:
        return False
    return hmac.compare_digest(offered[0].encode(), expected.encode())


def is_loopback(peer: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 (also IPv4-mapped) and in-process streams (None)."""
    if peer is None:
        return True
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def is_trusted(expected: str | None, offered: Iterable[str], peer: str | None) -> bool:
    """For what only an operator may do (``/events``, ``/health``'s details): the key when
    one is set; without one, only a connection from this host (``peer`` on loopback)."""
    if expected is None:
        return is_loopback(peer)
    return is_authorized(expected, offered)
