"""Call lifecycle webhooks from the platform, received by the bot server.

When a call is placed over the REST API, the platform reports its lifecycle
(initiated, answered, completed, ...) to the ``webhook_details.url`` it was given,
with the header/value pair configured there. The bot server answers these on the
same port as the calls. The platform's exact webhook shape is not documented, so
the receiver is tolerant: any JSON object (or form/query fields) carrying a call id
(``callId``, ``call_id``), with the event name in ``event`` or ``status``; unknown
fields are kept as they are. What it cannot file gets 400 and ``{"success": false,
"error": ...}``, never a traceback: a body that is not JSON (or nested past what the
parser can follow), not an object, a callId that is not 1 to 128 printable ASCII
characters (it names a log field and a folder), an event name that is not a short string.

Each accepted event is logged with its callId, kept per call on the receiver,
handed to observers (the hook for a future per-call event stream) and, with
``--record``, appended to the call's ``transcript.jsonl`` as a ``platform`` line.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import trio

from pipeline.protocol.identifiers import call_id_problem, text_field_problem
from pipeline.server.http_front import HttpRequest, HttpResponse
from pipeline.server.limits import RateLimitedLog
from pipeline.server.logs import CallLogger
from pipeline.server.recordings import record_platform_event

__all__ = ["PlatformEvent", "WebhookReceiver"]

logger = logging.getLogger("voicegraph.webhooks")

CALL_ID_KEYS = ("callId", "call_id", "callid", "CallId")
EVENT_KEYS = ("event", "status", "type")
CALLS_KEPT = 1000
EVENTS_PER_CALL = 100


@dataclass(frozen=True, slots=True)
class PlatformEvent:
    """One accepted webhook: which call, what happened, and everything it said."""

    call_id: str
    event: str
    data: dict[str, Any] = field(repr=False)
    received_at: float  # wall clock, seconds since the epoch


class WebhookReceiver:
    """The HTTP handler for the webhook path, and the events it accepted.

    ``header``/``value``: the pair the platform was told to send (``api_key`` and
    ``api_value`` in ``webhook_details``); a request without the header gets 401, one
    with another value 403. With no header configured every request is accepted.
    """

    def __init__(
        self,
        *,
        header: str | None = None,
        value: str | None = None,
        record_dir: Path | None = None,
    ) -> None:
        if bool(header) != bool(value):
            raise ValueError("the webhook header and its value go together")
        self.header = header.lower() if header else None
        self._value = value
        self.record_dir = record_dir
        self.events: OrderedDict[str, list[PlatformEvent]] = OrderedDict()
        self.observers: list[Callable[[PlatformEvent], None]] = []
        self.counters: dict[str, int] = {
            "accepted": 0,
            "unauthorized": 0,  # 401: no header
            "forbidden": 0,  # 403: wrong value
            "invalid": 0,  # 400: not an event we can file
            "dropped": 0,  # accepted, but past EVENTS_PER_CALL for its call
        }
        self._changed = trio.Event()
        self._log = RateLimitedLog(logger)  # refusals are counted, logged once per interval

    def events_for(self, call_id: str) -> list[PlatformEvent]:
        return list(self.events.get(call_id, ()))

    async def wait_for(self, call_id: str, event: str) -> PlatformEvent:
        """The first ``event`` for ``call_id`` (wrap in a timeout)."""
        while True:
            for received in self.events.get(call_id, ()):
                if received.event == event:
                    return received
            await self._changed.wait()

    async def handle(self, request: HttpRequest) -> HttpResponse:
        refused = self._check_credentials(request)
        if refused is not None:
            return refused
        try:
            data = _fields(request)
        except ValueError as exc:
            self.counters["invalid"] += 1
            return HttpResponse.json(400, {"success": False, "error": str(exc)})
        call_id = next((_as_text(data[key]) for key in CALL_ID_KEYS if data.get(key)), None)
        name = next((_as_text(data[key]) for key in EVENT_KEYS if data.get(key)), "unknown")
        problem = "no callId in the event" if call_id is None else call_id_problem(call_id)
        problem = problem or text_field_problem(name, "event name")
        if problem is not None:
            self.counters["invalid"] += 1
            return HttpResponse.json(400, {"success": False, "error": problem})
        assert call_id is not None
        self.publish(PlatformEvent(call_id, name, data, time.time()))
        return HttpResponse.json(200, {"success": True})

    def publish(self, event: PlatformEvent) -> None:
        """File an accepted event: log, per-call list, observers, transcript (the first
        ``EVENTS_PER_CALL`` of each call; later ones are only counted)."""
        self.counters["accepted"] += 1
        CallLogger(logger, event.call_id).info("platform event", extra={"event": event.event})
        kept = self.events.setdefault(event.call_id, [])
        self.events.move_to_end(event.call_id)
        while len(self.events) > CALLS_KEPT:
            self.events.popitem(last=False)
        if len(kept) >= EVENTS_PER_CALL:  # a runaway sender cannot fill memory or disk
            self.counters["dropped"] += 1
            return
        kept.append(event)
        for observer in list(self.observers):
            try:
                observer(event)
            except Exception:
                logger.exception("webhook observer failed", extra={"callId": event.call_id})
        if self.record_dir is not None:
            try:
                record_platform_event(self.record_dir, event.call_id, event.event, event.data)
            except OSError:
                logger.exception("cannot record platform event", extra={"callId": event.call_id})
        self._changed.set()
        self._changed = trio.Event()

    def _check_credentials(self, request: HttpRequest) -> HttpResponse | None:
        if self.header is None or self._value is None:
            return None
        offered = request.header(self.header)
        if offered is None:
            self.counters["unauthorized"] += 1
            self._log.warning("webhook without credentials", path=request.path[:200])
            return HttpResponse.json(401, {"success": False, "error": "missing credentials"})
        if not hmac.compare_digest(offered.strip().encode(), self._value.encode()):
            self.counters["forbidden"] += 1
            self._log.warning("webhook with wrong credentials", path=request.path[:200])
            return HttpResponse.json(403, {"success": False, "error": "wrong credentials"})
        return None


def _as_text(value: Any) -> Any:
    """A call id or event name as text: numbers are accepted as their digits; anything
    else is left as it is, for the identifier check to refuse."""
    return str(value) if type(value) is int else value


def _fields(request: HttpRequest) -> dict[str, Any]:
    """The event's fields: a JSON object, form fields, or (GET) query parameters."""
    if request.method == "GET" or not request.body:
        return {key: values[0] for key, values in request.query.items()}
    content_type = (request.header("content-type") or "").lower()
    if content_type.startswith("application/x-www-form-urlencoded"):
        form = parse_qs(request.body.decode("utf-8", "replace"))
        return {key: values[0] for key, values in form.items()}
    try:
        document = request.json()
    except (UnicodeDecodeError, ValueError):
        raise ValueError("the body is not JSON") from None
    except RecursionError:
        raise ValueError("the body is JSON nested too deeply") from None
    if not isinstance(document, dict):
        raise ValueError("the body must be a JSON object")
    return document
