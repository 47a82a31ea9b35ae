"""Placing outgoing calls over the platform's REST API.

``POST /v1/voice-stream/call`` with the ``x-metro-api-key`` header asks the
platform to phone ``mobile_number`` from ``did`` and stream the call to our bot at
``ws_url``; lifecycle events go to ``webhook_details.url``. The answer is either
``{"success": true, "response": {"message", "status", "callId"}}`` or
``{"success": false, "error": {"code", "reason"}}``.

Everything is checked before anything is sent, so a typo costs no request; every
way it can fail afterwards is a distinct exception (all :class:`RestError`):

====================  =========================================================
exception             when
====================  =========================================================
InvalidCallRequest    a field is wrong before sending (``.field`` names it)
CallRejected          the platform said no: the failure shape, or a 4xx
PlatformError         the platform failed: a 5xx
PlatformUnreachable   no connection, TLS failure, connection dropped
PlatformTimeout       no complete answer within the timeout (a PlatformUnreachable)
UnexpectedResponse    an answer that is neither documented shape
====================  =========================================================

The API key is never part of any message, ``repr`` or log line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio

from pipeline.runtime.errors import CallError

__all__ = [
    "CALL_PATH",
    "DEFAULT_BASE_URL",
    "CallRejected",
    "CallRequest",
    "CallStarted",
    "InvalidCallRequest",
    "PlatformClient",
    "PlatformError",
    "PlatformTimeout",
    "PlatformUnreachable",
    "RestError",
    "UnexpectedResponse",
    "WebhookDetails",
    "check_number",
    "check_webhook_url",
    "check_ws_url",
    "place_call",
]

DEFAULT_BASE_URL = "https://voice-stream.alohaa.ai"
CALL_PATH = "/v1/voice-stream/call"
HEALTH_PATH = "/health"
WEBHOOK_METHODS = ("POST", "PUT", "GET")
DEFAULT_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 5.0

_TEN_DIGITS = re.compile(r"[0-9]{10}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class RestError(CallError):
    """Any failure to place a call. ``http_status``/``code`` when the platform answered."""

    def __init__(
        self, message: str, *, http_status: int | None = None, code: int | None = None
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.reason = message


class InvalidCallRequest(RestError, ValueError):
    """A field would be refused; nothing was sent."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class CallRejected(RestError):
    """The platform refused the call (its failure shape, or an HTTP 4xx)."""


class PlatformError(RestError):
    """The platform failed (HTTP 5xx); the request may be retried."""


class PlatformUnreachable(RestError):
    """No answer: cannot connect, TLS failed, or the connection dropped."""


class PlatformTimeout(PlatformUnreachable):
    """No complete answer within the timeout."""


class UnexpectedResponse(RestError):
    """An answer in neither documented shape."""


# --- validation (shared with the platform emulator) ---------------------------------------


def check_number(field: str, value: object) -> str:
    """A 10-digit number as a string; the message never echoes the number."""
    if not isinstance(value, str):
        raise InvalidCallRequest(field, "must be a string of 10 digits")
    if not _TEN_DIGITS.fullmatch(value):
        digits = sum(ch.isdigit() for ch in value)
        raise InvalidCallRequest(
            field, f"must be exactly 10 digits (got {len(value)} characters, {digits} digits)"
        )
    return value


def check_ws_url(value: object) -> str:
    """A ``ws://`` or ``wss://`` URL with a host."""
    return _check_url("ws_url", value, ("ws", "wss"))


def check_webhook_url(value: object) -> str:
    """An ``http://`` or ``https://`` URL with a host."""
    return _check_url("webhook_details.url", value, ("http", "https"))


def _check_url(field: str, value: object, schemes: tuple[str, ...]) -> str:
    wanted = " or ".join(f"{scheme}://" for scheme in schemes)
    if not isinstance(value, str) or not value:
        raise InvalidCallRequest(field, f"must be a {wanted} URL")
    if any(ch.isspace() for ch in value):
        raise InvalidCallRequest(field, "must not contain spaces")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise InvalidCallRequest(field, f"is not a valid URL: {exc}") from None
    if parts.scheme.lower() not in schemes:
        raise InvalidCallRequest(field, f"must start with {wanted}")
    if not parts.hostname:
        raise InvalidCallRequest(field, "has no host")
    return value


@dataclass(frozen=True, slots=True)
class WebhookDetails:
    """Where the platform reports the call's lifecycle, and the header it sends there."""

    url: str
    request_type: str = "POST"
    api_key: str | None = None  # the header name the platform sends ...
    api_value: str | None = field(default=None, repr=False)  # ... and its value

    def validate(self) -> None:
        check_webhook_url(self.url)
        if self.request_type.upper() not in WEBHOOK_METHODS:
            raise InvalidCallRequest(
                "webhook_details.request_type", f"must be one of {', '.join(WEBHOOK_METHODS)}"
            )
        if bool(self.api_key) != bool(self.api_value):
            raise InvalidCallRequest(
                "webhook_details.api_key", "api_key (header name) and api_value go together"
            )
        if self.api_key and not _HEADER_NAME.fullmatch(self.api_key):
            raise InvalidCallRequest("webhook_details.api_key", "is not a valid header name")
        if self.api_value and any(ch in self.api_value for ch in "\r\n\0"):
            raise InvalidCallRequest("webhook_details.api_value", "must be one line")

    def as_dict(self) -> dict[str, str]:
        document = {"url": self.url, "request_type": self.request_type.upper()}
        if self.api_key and self.api_value:
            document.update(api_key=self.api_key, api_value=self.api_value)
        return document


@dataclass(frozen=True, slots=True)
class CallRequest:
    """One outgoing call: who to phone, from which number, and where our bot listens."""

    mobile_number: str
    did: str
    ws_url: str
    webhook: WebhookDetails | None = None

    def validate(self) -> None:
        """Raise :class:`InvalidCallRequest` naming the first wrong field."""
        check_number("mobile_number", self.mobile_number)
        check_number("did", self.did)
        check_ws_url(self.ws_url)
        if self.webhook is not None:
            self.webhook.validate()

    def body(self) -> dict[str, str]:
        """The documented body; ``webhook_details`` is a stringified JSON, as asked."""
        document = {"mobile_number": self.mobile_number, "did": self.did, "ws_url": self.ws_url}
        if self.webhook is not None:
            document["webhook_details"] = json.dumps(self.webhook.as_dict())
        return document


@dataclass(frozen=True, slots=True)
class CallStarted:
    """The platform accepted the call and is setting it up."""

    call_id: str
    status: str
    message: str
    http_status: int = 200

    def as_dict(self) -> dict[str, Any]:
        return {"callId": self.call_id, "status": self.status, "message": self.message}


class PlatformClient:
    """A connection pool to the platform's REST API (use as ``async with``).

    ``timeout`` bounds each call as a whole, from sending to the parsed answer;
    ``connect_timeout`` bounds the TCP and TLS set-up inside it.
    """

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: bool | str = True,
    ) -> None:
        if not api_key:
            raise InvalidCallRequest("api_key", "is required (x-metro-api-key)")
        if any(ch in api_key for ch in "\r\n\0"):
            raise InvalidCallRequest("api_key", "must be one line")
        _check_url("base_url", base_url, ("http", "https"))
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._api_key = api_key
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=min(connect_timeout, timeout)),
            transport=transport,
            verify=verify,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"PlatformClient(base_url={self.base_url!r})"

    async def __aenter__(self) -> PlatformClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        with trio.move_on_after(5, shield=True):
            await self._http.aclose()

    async def place_call(self, request: CallRequest) -> CallStarted:
        """Ask the platform to place ``request``; the typed answer or a RestError."""
        request.validate()
        headers = {"x-metro-api-key": self._api_key, "content-type": "application/json"}
        response = await self._send("POST", CALL_PATH, headers=headers, json=request.body())
        return _parse_call_response(response)

    async def health(self) -> dict[str, Any]:
        """``GET /health``: the platform answers at all (the real API documents no such
        path; the emulator serves it). Returns its JSON; raises like ``place_call``."""
        response = await self._send("GET", HEALTH_PATH)
        if response.status_code >= 500:
            raise PlatformError(
                f"health check failed: HTTP {response.status_code}",
                http_status=response.status_code,
            )
        if response.status_code >= 400:
            raise CallRejected(
                f"health check refused: HTTP {response.status_code}",
                http_status=response.status_code,
            )
        try:
            document = response.json()
        except ValueError:
            document = {"status": response.text.strip()[:200]}
        return document if isinstance(document, dict) else {"status": document}

    async def _send(self, method: str, path: str, **options: Any) -> httpx.Response:
        where = f"{self.base_url}{path}"
        try:
            with trio.fail_after(self.timeout):
                return await self._http.request(method, path, **options)
        except (trio.TooSlowError, httpx.TimeoutException):
            raise PlatformTimeout(f"no answer from {where} within {self.timeout:g} s") from None
        except httpx.TransportError as exc:
            raise PlatformUnreachable(
                f"cannot reach {where}: {exc or type(exc).__name__}"
            ) from None


async def place_call(
    request: CallRequest,
    *,
    api_key: str,
    base_url: str = DEFAULT_BASE_URL,
    request_timeout: float = DEFAULT_TIMEOUT,
) -> CallStarted:
    """Place one call with a short-lived client (validates first, sends nothing if wrong)."""
    request.validate()
    async with PlatformClient(api_key, base_url=base_url, timeout=request_timeout) as client:
        return await client.place_call(request)


def _parse_call_response(response: httpx.Response) -> CallStarted:
    status = response.status_code
    try:
        document = response.json()
    except ValueError:
        document = None
    if isinstance(document, dict) and document.get("success") is False:
        error = document.get("error")
        error = error if isinstance(error, dict) else {}
        code = error.get("code")
        code = code if isinstance(code, int) and not isinstance(code, bool) else None
        reason = str(error.get("reason") or "no reason given")
        text = f"platform refused the call (HTTP {status}, code {code}): {reason}"
        kind = PlatformError if status >= 500 else CallRejected
        raise kind(text, http_status=status, code=code)
    if status >= 500:
        raise PlatformError(
            f"platform error (HTTP {status}): {_excerpt(response)}", http_status=status
        )
    if status >= 400:
        meaning = "invalid parameters" if status == 400 else "refused"
        raise CallRejected(
            f"platform refused the call (HTTP {status}, {meaning}): {_excerpt(response)}",
            http_status=status,
        )
    if status != 200 or not isinstance(document, dict) or document.get("success") is not True:
        raise UnexpectedResponse(
            f"unexpected answer (HTTP {status}): {_excerpt(response)}", http_status=status
        )
    answer = document.get("response")
    if not isinstance(answer, dict) or not isinstance(answer.get("callId"), str):
        raise UnexpectedResponse(
            f"success without a callId (HTTP {status}): {_excerpt(response)}", http_status=status
        )
    return CallStarted(
        call_id=answer["callId"],
        status=str(answer.get("status", "")),
        message=str(answer.get("message", "")),
        http_status=status,
    )


def _excerpt(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return (text[:200] + "…") if len(text) > 200 else (text or "(empty body)")
