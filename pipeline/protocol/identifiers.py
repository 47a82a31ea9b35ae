"""Bounds on the identifiers the platform sends: ``callId``, ``mobileNo`` and their kin.

They come off the network and go everywhere: on every log line of a call, into the
recordings' folder names, onto the conversation-event bus. Unbounded, one 900 kB
``mobileNo`` made 10.8 MB of log; with control characters or newlines a value could
forge log lines. So each has a length limit and a character set, checked once where it
enters (the ``connected`` message, a webhook, an ``/events`` request), and refused with
a message that says which rule it broke.
"""

from __future__ import annotations

__all__ = [
    "MAX_CALL_ID_CHARS",
    "MAX_FIELD_CHARS",
    "MAX_MOBILE_NO_CHARS",
    "call_id_problem",
    "mobile_no_problem",
    "text_field_problem",
]

MAX_CALL_ID_CHARS = 128
"""The platform's callIds are 24 hex digits; 128 leaves room for any other dialer."""

MAX_MOBILE_NO_CHARS = 32
"""E.164 numbers have at most 15 digits; 32 allows ``+``, spaces and dashes."""

MAX_FIELD_CHARS = 128
"""Any other short field that reaches a log line or the bus (an event name, a requestId)."""

_PRINTABLE_ASCII = frozenset(chr(code) for code in range(0x21, 0x7F))
_MOBILE_CHARACTERS = frozenset("0123456789+-() ")


def call_id_problem(value: object) -> str | None:
    """Why ``value`` cannot be a callId (None: it can): a string of 1 to
    :data:`MAX_CALL_ID_CHARS` printable ASCII characters, no spaces."""
    return _problem(value, "callId", MAX_CALL_ID_CHARS, _PRINTABLE_ASCII, "printable ASCII")


def mobile_no_problem(value: object) -> str | None:
    """Why ``value`` cannot be a mobileNo (None: it can): empty, or at most
    :data:`MAX_MOBILE_NO_CHARS` of digits, ``+``, ``-``, parentheses and spaces."""
    if value == "":
        return None
    return _problem(value, "mobileNo", MAX_MOBILE_NO_CHARS, _MOBILE_CHARACTERS, "digits")


def text_field_problem(value: object, name: str, limit: int = MAX_FIELD_CHARS) -> str | None:
    """Why ``value`` cannot be the short field ``name``: 1 to ``limit`` printable ASCII."""
    return _problem(value, name, limit, _PRINTABLE_ASCII, "printable ASCII")


def _problem(
    value: object, name: str, limit: int, allowed: frozenset[str], described: str
) -> str | None:
    if type(value) is not str:
        return f"{name} must be a string, not {type(value).__name__}"
    if not value:
        return f"{name} is empty"
    if len(value) > limit:
        return f"{name} of {len(value)} characters is over the {limit}-character limit"
    if not allowed.issuperset(value):
        return f"{name} must be {described} only"
    return None
