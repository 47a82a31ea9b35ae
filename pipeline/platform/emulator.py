"""A local stand-in for the telephony platform: outgoing calls with no phone network.

It serves the REST API (``POST /v1/voice-stream/call``) with the documented
validation and answer shapes, then does what the platform does for an accepted
call: dials ``ws_url`` as the call's WebSocket client (:func:`pipeline.caller.emulator.open_call`,
speaking the caller audio), and reports the lifecycle to ``webhook_details.url``
with the configured header: ``initiated`` on acceptance, ``answered`` once the
bot acknowledged registration, ``completed`` after the hang-up (or ``failed`` if the
bot could not be reached). Every webhook carries ``callId``, ``event``/``status``
and millisecond timestamps.

The platform's own error codes are not documented beyond one example (1022); the
emulator uses these, always in the failure shape ``{"success": false, "error":
{"code", "reason"}}``:

====  ======  ==========================================================
code  HTTP    reason
====  ======  ==========================================================
1001  400     body is not a JSON object / a mandatory field is missing
1010  401     missing x-metro-api-key
1022  401     Organisation does not exists (wrong key, the documented example)
1030  400     mobile_number is not 10 digits
1031  400     did is not 10 digits
1032  400     ws_url is not a ws:// or wss:// URL
1033  400     webhook_details is not a JSON object with a valid url/request_type
1050  503     too many calls in progress
====  ======  ==========================================================
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import trio
from trio_websocket import ConnectionClosed, HandshakeError

from pipeline.caller.emulator import RegistrationError, TurnReport, converse, open_call
from pipeline.platform.rest import (
    CALL_PATH,
    InvalidCallRequest,
    WebhookDetails,
    check_number,
    check_ws_url,
)
from pipeline.server.http_front import HttpFront, HttpRequest, HttpResponse, Listening

__all__ = ["EmulatorConfig", "PlatformCall", "PlatformEmulator"]

logger = logging.getLogger("voicegraph.platform")

MAX_REQUEST_BODY = 16 * 1024
CALLS_KEPT = 1000


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """How the emulated platform behaves.

    ``api_key``: the only key accepted (None: any non-empty key). ``caller_turns``:
    what the caller says, one (name, 8 kHz int16 samples) per turn; empty: the shipped
    demo turns (``pipeline/demo``).
    """

    api_key: str | None = field(default=None, repr=False)
    caller_turns: tuple[tuple[str, np.ndarray], ...] = ()
    pause: float = 0.5
    reply_timeout: float = 20.0
    greeting_timeout: float = 5.0
    registration_timeout: float = 10.0
    webhook_timeout: float = 5.0
    max_calls: int = 20
    ssl_context: ssl.SSLContext | None = None  # for wss:// bots (None: system trust)


@dataclass(slots=True)
class PlatformCall:
    """One call the emulator placed, as the platform would track it."""

    call_id: str
    mobile_number: str
    did: str
    ws_url: str
    webhook: WebhookDetails | None
    status: str = "initiated"
    initiated_at: float = 0.0  # wall clock, seconds
    answered_at: float | None = None
    ended_at: float | None = None
    close_code: int | None = None
    hangup_by: str | None = None
    error: str | None = None
    reports: list[TurnReport] = field(default_factory=list)
    webhooks: list[tuple[str, int | str]] = field(default_factory=list)  # (event, status|error)
    done: trio.Event = field(default_factory=trio.Event)

    def summary(self) -> dict[str, Any]:
        return {
            "callId": self.call_id,
            "status": self.status,
            "close_code": self.close_code,
            "hangup_by": self.hangup_by,
            "error": self.error,
            "turns": [report.as_dict() for report in self.reports],
            "webhooks": [{"event": event, "result": result} for event, result in self.webhooks],
        }


class _Refused(Exception):
    def __init__(self, http_status: int, code: int, reason: str) -> None:
        super().__init__(reason)
        self.http_status = http_status
        self.code = code
        self.reason = reason


class PlatformEmulator:
    """Serve the REST API on loopback and play the platform for each accepted call.

    ``await nursery.start(emulator.serve, host, port)`` returns a
    :class:`~pipeline.server.http_front.Listening`; calls in progress end with it.
    ``on_event`` sees every lifecycle event, ``on_done`` every finished call (the CLI
    prints both).
    """

    def __init__(
        self,
        config: EmulatorConfig,
        *,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        on_done: Callable[[PlatformCall], None] | None = None,
    ) -> None:
        self.config = config
        self.turns = list(config.caller_turns) or _demo_turns()
        self.calls: dict[str, PlatformCall] = {}
        self.on_event = on_event
        self.on_done = on_done
        self.counters: dict[str, int] = {"requests": 0, "accepted": 0, "refused": 0}
        self.front = HttpFront()
        self.front.add_http_route(
            "POST", CALL_PATH, self._handle_request, max_body=MAX_REQUEST_BODY
        )
        self.front.add_http_route("GET", "/health", self._health)
        self._nursery: trio.Nursery | None = None
        self._http: httpx.AsyncClient | None = None

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[Listening] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        timeout = httpx.Timeout(self.config.webhook_timeout)
        async with httpx.AsyncClient(timeout=timeout) as http, trio.open_nursery() as nursery:
            self._http, self._nursery = http, nursery
            try:
                listening = await nursery.start(self.front.serve, host, port)
                logger.info("platform emulator listening", extra={"port": listening.port})
                task_status.started(listening)
                await trio.sleep_forever()
            finally:
                self._nursery = None
                nursery.cancel_scope.cancel()

    async def wait_call(self, call_id: str) -> PlatformCall:
        """The call once it has ended (wrap in a timeout)."""
        call = self.calls[call_id]
        await call.done.wait()
        return call

    # --- the REST API --------------------------------------------------------------------

    async def _health(self, request: HttpRequest) -> HttpResponse:
        live = sum(1 for call in self.calls.values() if not call.done.is_set())
        return HttpResponse.json(200, {"status": "ok", "calls_in_progress": live})

    async def _handle_request(self, request: HttpRequest) -> HttpResponse:
        self.counters["requests"] += 1
        try:
            self._check_key(request)
            call = self._parse(request)
            if sum(1 for c in self.calls.values() if not c.done.is_set()) >= self.config.max_calls:
                raise _Refused(503, 1050, "Too many calls in progress")
        except _Refused as refused:
            self.counters["refused"] += 1
            logger.info("call refused", extra={"code": refused.code, "reason": refused.reason})
            return HttpResponse.json(
                refused.http_status,
                {"success": False, "error": {"code": refused.code, "reason": refused.reason}},
            )
        if self._nursery is None:
            return HttpResponse.json(
                503, {"success": False, "error": {"code": 1050, "reason": "shutting down"}}
            )
        self.counters["accepted"] += 1
        self.calls[call.call_id] = call
        finished = [key for key, old in self.calls.items() if old.done.is_set()]
        for key in finished[: max(0, len(self.calls) - CALLS_KEPT)]:
            del self.calls[key]  # oldest finished calls first: dicts keep insertion order
        self._nursery.start_soon(self._run_call, call)
        return HttpResponse.json(
            200,
            {
                "success": True,
                "response": {
                    "message": "Call setup in progress",
                    "status": "initiated",
                    "callId": call.call_id,
                },
            },
        )

    def _check_key(self, request: HttpRequest) -> None:
        offered = request.header("x-metro-api-key")
        if not offered:
            raise _Refused(401, 1010, "x-metro-api-key header is required")
        expected = self.config.api_key
        if expected is not None and not hmac.compare_digest(offered.encode(), expected.encode()):
            raise _Refused(401, 1022, "Organisation does not exists")

    def _parse(self, request: HttpRequest) -> PlatformCall:
        try:
            body = request.json()
        except (UnicodeDecodeError, ValueError):
            raise _Refused(400, 1001, "body must be a JSON object") from None
        if not isinstance(body, dict):
            raise _Refused(400, 1001, "body must be a JSON object")
        for name in ("mobile_number", "did", "ws_url"):
            if name not in body:
                raise _Refused(400, 1001, f"{name} is mandatory")
        codes = {"mobile_number": 1030, "did": 1031, "ws_url": 1032}
        try:
            mobile = check_number("mobile_number", body["mobile_number"])
            did = check_number("did", body["did"])
            ws_url = check_ws_url(body["ws_url"])
            webhook = _webhook_details(body.get("webhook_details"))
        except InvalidCallRequest as exc:
            code = codes.get(exc.field, 1033)
            raise _Refused(400, code, str(exc)) from None
        return PlatformCall(
            call_id=secrets.token_hex(12),
            mobile_number=mobile,
            did=did,
            ws_url=ws_url,
            webhook=webhook,
            initiated_at=time.time(),
        )

    # --- playing the platform for one call ---------------------------------------------

    async def _run_call(self, call: PlatformCall) -> None:
        try:
            await self._report(call, "initiated")
            try:
                await self._dial(call)
            except (
                RegistrationError,
                HandshakeError,
                ConnectionClosed,
                OSError,
                trio.BrokenResourceError,
            ) as exc:
                call.status, call.error = "failed", str(exc) or type(exc).__name__
                call.ended_at = time.time()
                logger.info("call failed", extra={"callId": call.call_id, "error": call.error})
                await self._report(call, "failed", reason=call.error)
                return
            call.status = "completed"
            call.ended_at = time.time()
            await self._report(call, "completed")
        finally:
            call.done.set()
            if self.on_done is not None:
                self.on_done(call)

    async def _dial(self, call: PlatformCall) -> None:
        config = self.config
        ssl_context = config.ssl_context
        if ssl_context is None and call.ws_url.startswith("wss://"):
            ssl_context = ssl.create_default_context()
        async with open_call(
            call.ws_url,
            call_id=call.call_id,
            mobile_no=call.mobile_number,
            ssl_context=ssl_context,
            registration_timeout=config.registration_timeout,
        ) as emulated:
            call.status, call.answered_at = "answered", time.time()
            await self._report(call, "answered")
            async with trio.open_nursery() as nursery:

                async def talk() -> None:
                    greeting = None
                    with trio.move_on_after(config.greeting_timeout):
                        greeting = await emulated.wait_for_greeting()
                    if greeting is not None:  # a caller listens to the greeting first
                        await emulated.listen_until_quiet(config.pause)
                    call.reports = await converse(
                        emulated, self.turns, pause=config.pause, reply_timeout=config.reply_timeout
                    )
                    nursery.cancel_scope.cancel()

                async def watch_bot_hang_up() -> None:
                    await emulated.wait_closed()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(talk)
                nursery.start_soon(watch_bot_hang_up)
        call.close_code = emulated.close_code or 1000
        call.hangup_by = "bot" if emulated.close_code is not None else "caller"

    async def _report(self, call: PlatformCall, event: str, **extra: Any) -> None:
        """Tell the webhook (if any) and ``on_event``; a failing webhook never ends a call."""
        document = _lifecycle(call, event, **extra)
        if self.on_event is not None:
            self.on_event(document)
        if call.webhook is None or self._http is None:
            return
        hook = call.webhook
        headers = {hook.api_key: hook.api_value} if hook.api_key and hook.api_value else {}
        method = hook.request_type.upper()
        try:
            with trio.move_on_after(self.config.webhook_timeout * 2) as scope:
                if method == "GET":
                    params = {k: str(v) for k, v in document.items() if v is not None}
                    answer = await self._http.get(hook.url, params=params, headers=headers)
                else:
                    answer = await self._http.request(
                        method, hook.url, json=document, headers=headers
                    )
            result: int | str = "timeout" if scope.cancelled_caught else answer.status_code
        except httpx.HTTPError as exc:
            result = f"{type(exc).__name__}: {exc}"
        call.webhooks.append((event, result))
        if not isinstance(result, int) or result >= 300:
            logger.warning(
                "webhook not delivered",
                extra={"callId": call.call_id, "event": event, "result": result},
            )


def _demo_turns() -> list[tuple[str, np.ndarray]]:
    from pipeline.demo import demo_turns  # the shipped caller audio and its manifest

    return [(name, samples) for name, _, samples in demo_turns()]


def _webhook_details(value: object) -> WebhookDetails | None:
    """``webhook_details``: a stringified JSON (as documented) or an object (as in the sample)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise InvalidCallRequest("webhook_details", "is not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidCallRequest("webhook_details", "must be a JSON object")
    request_type = value.get("request_type", "POST")
    api_key, api_value = value.get("api_key"), value.get("api_value")
    if not isinstance(request_type, str):
        raise InvalidCallRequest("webhook_details.request_type", "must be a string")
    if not isinstance(api_key, str | None) or not isinstance(api_value, str | None):
        raise InvalidCallRequest("webhook_details.api_key", "api_key/api_value must be strings")
    details = WebhookDetails(value.get("url"), request_type.upper(), api_key, api_value)  # type: ignore[arg-type]
    details.validate()
    return details


def _lifecycle(call: PlatformCall, event: str, **extra: Any) -> dict[str, Any]:
    def ms(seconds: float | None) -> int | None:
        return None if seconds is None else int(seconds * 1000)

    document: dict[str, Any] = {
        "event": event,
        "status": event,
        "callId": call.call_id,
        "mobile_number": call.mobile_number,
        "did": call.did,
        "timestamp": ms(time.time()),
        "initiatedAt": ms(call.initiated_at),
    }
    if call.answered_at is not None:
        document["answeredAt"] = ms(call.answered_at)
    if call.ended_at is not None:
        document["endedAt"] = ms(call.ended_at)
        start = call.answered_at or call.ended_at
        document["durationSeconds"] = round(call.ended_at - start, 3)
    if event == "completed":
        document["closeCode"] = call.close_code
        document["hangupBy"] = call.hangup_by
    document.update(extra)
    return document
