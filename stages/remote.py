"""What every remote speech service shares: a deadline, bounded retries, a circuit breaker.

Model servers (STT, LLM, TTS) sit across a network and fail in their own ways: refused
connections while one restarts, 5xx while one is overloaded, a stall, or a body that is
not what the API promises. A phone call cannot wait for any of that, so each remote
service talks to its server through one :class:`RemoteEndpoint`:

- **deadline**: a whole request (retries and back-off included) gets ``timeout_s``; the
  caller hears the fallback line after that, never later;
- **bounded retries** with exponential back-off, for connection errors and 5xx answers
  only, and only while nothing of the answer has been used: a streamed reply whose first
  token was spoken is never sent again (the caller would hear it twice);
- **circuit breaker** (:class:`CircuitBreaker`): after ``failure_threshold`` failures in
  a row the endpoint stops calling the server and fails at once (the reply path says its
  fallback line without waiting for a timeout); after ``reset_after_s`` one trial request
  goes through (half-open), and its outcome closes or re-opens the circuit;
- **counters** for ``statistics()``: requests, retries, failures by kind, rejections.

A 4xx answer that concerns one request (400, 413, 415, 422: this text, this audio) is
that request's failure, not the server's, and does not count toward opening the circuit.

httpx is the client: a maintained HTTP client whose ``AsyncClient`` runs on Trio (its
transport, httpcore, has a Trio backend picked through anyio/sniffio), already a
dependency for the LLM, with connection pooling and multipart uploads built in.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import trio

from pipeline.runtime.errors import ServiceError

__all__ = [
    "BACKENDS",
    "CircuitBreaker",
    "CircuitOpen",
    "RemoteEndpoint",
    "RemoteOptions",
    "endpoint_url",
]

T = TypeVar("T")

BACKENDS = ("local", "openai")

# answers about one request, not about the server: they do not open the circuit
REQUEST_SPECIFIC = frozenset({400, 413, 415, 422})


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteOptions:
    """The ``[stt]``/``[tts]`` keys that choose a remote server and how to treat it.

    ``backend``: ``local`` (the in-process model) or ``openai`` (an OpenAI-compatible
    server at ``url``: a server root, its ``/v1`` base, or the endpoint). ``api_key``
    goes in an ``Authorization: Bearer`` header. ``timeout_s`` bounds a whole request,
    retries included; ``retries``: extra attempts after a connection error or a 5xx;
    ``failure_threshold`` failures in a row open the circuit for ``reset_after_s``.
    """

    backend: str = "local"
    url: str = "http://127.0.0.1:8000"
    api_key: str = field(default="", repr=False)  # not in logs
    timeout_s: float = 10.0
    retries: int = 1
    failure_threshold: int = 3
    reset_after_s: float = 10.0

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.timeout_s <= 0 or self.reset_after_s < 0:
            raise ValueError("timeout_s must be > 0 and reset_after_s >= 0")
        if self.retries < 0 or self.failure_threshold < 1:
            raise ValueError("retries must be >= 0 and failure_threshold >= 1")


def endpoint_url(url: str, path: str) -> str:
    """Accept a server root, a ``/v1`` base or the full endpoint; return the endpoint.

    ``endpoint_url("http://h:8000", "audio/speech")`` → ``http://h:8000/v1/audio/speech``.
    """
    url = url.rstrip("/")
    if url.endswith("/" + path):
        return url
    if url.endswith("/v1"):
        return f"{url}/{path}"
    return f"{url}/v1/{path}"


class CircuitOpen(ServiceError):
    """Raised by :meth:`CircuitBreaker.admit` while the circuit is open."""

    def __init__(self, retry_in: float, failures: int) -> None:
        super().__init__(
            f"circuit open after {failures} failures in a row; next try in {retry_in:.1f} s"
        )
        self.retry_in = retry_in


class CircuitBreaker:
    """Closed → open after ``failure_threshold`` failures in a row → half-open after
    ``reset_after_s`` (one trial request) → closed on its success, open again on its failure.

    ``clock`` is Trio's by default, so tests can drive it with virtual time.
    """

    def __init__(
        self,
        failure_threshold: int = 3,
        reset_after_s: float = 10.0,
        *,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self.clock = clock
        self.failures_in_a_row = 0
        self.opened_at: float | None = None
        self.trial_in_flight = False
        self.opened = 0  # how many times the circuit opened
        self.rejected = 0  # requests refused while open

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self.trial_in_flight or self.clock() - self.opened_at >= self.reset_after_s:
            return "half-open"
        return "open"

    def admit(self) -> bool:
        """Let a request through (True if it is the half-open trial), or raise
        :class:`CircuitOpen`."""
        if self.opened_at is None:
            return False
        waited = self.clock() - self.opened_at
        if waited >= self.reset_after_s and not self.trial_in_flight:
            self.trial_in_flight = True
            return True
        self.rejected += 1
        raise CircuitOpen(max(0.0, self.reset_after_s - waited), self.failures_in_a_row)

    def succeeded(self, trial: bool = False) -> None:
        self.failures_in_a_row = 0
        self.opened_at = None
        if trial:
            self.trial_in_flight = False

    def failed(self, trial: bool = False) -> None:
        self.failures_in_a_row += 1
        if trial:
            self.trial_in_flight = False
        if trial or (self.opened_at is None and self.failures_in_a_row >= self.failure_threshold):
            self.opened += self.opened_at is None  # a failed trial re-opens: not counted again
            self.opened_at = self.clock()

    def abandoned(self, trial: bool = False) -> None:
        """A request cancelled by its caller (a barge-in): no verdict on the server."""
        if trial:
            self.trial_in_flight = False


class _Failure(Exception):
    """One attempt's failure: its kind, whether a retry may help, and the message."""

    def __init__(self, kind: str, message: str, *, retry: bool = False, counts: bool = True):
        super().__init__(message)
        self.kind, self.retry, self.counts = kind, retry, counts


class RemoteEndpoint:
    """One remote server as a service sees it: an HTTP client, a policy, a breaker.

    ``error`` is the service's own error type (:class:`~pipeline.runtime.errors.SttError`,
    ...): every failure reaches the service's caller as one of those, with the server and
    the cause in its message. ``deadline=False`` leaves the whole-request deadline to the
    caller (a streamed LLM reply is bounded per chunk by httpx and by the turn's timer).
    """

    def __init__(
        self,
        url: str,
        options: RemoteOptions,
        *,
        error: type[ServiceError],
        what: str,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
        deadline: bool = True,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.url = url
        self.options = options
        self.error = error
        self.what = what  # "STT server", "TTS server", "LLM server"
        self.headers = dict(headers or {})
        if options.api_key:
            self.headers["Authorization"] = f"Bearer {options.api_key}"
        connect = min(3.0, options.timeout_s)
        self.timeout = timeout or httpx.Timeout(options.timeout_s, connect=connect)
        self.deadline = options.timeout_s if deadline else math.inf
        self.breaker = CircuitBreaker(options.failure_threshold, options.reset_after_s, clock=clock)
        self.backoff_s = 0.1
        self._client: httpx.AsyncClient | None = None
        self.requests = 0
        self.succeeded = 0
        self.retries = 0
        self.failures: dict[str, int] = {}

    @property
    def where(self) -> str:
        return f"{self.what} {self.url}"

    async def open(self) -> None:
        """Open the connection pool; the server is not contacted (it may start later)."""
        if not self.url.startswith(("http://", "https://")):
            raise self.error(f"{self.what} URL must start with http:// or https://: {self.url!r}")
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout, headers=self.headers)

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise self.error(f"the {self.what} client is not set up; await setup() first")
        return self._client

    async def call(
        self,
        send: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]],
        parse: Callable[[httpx.Response], T],
    ) -> T:
        """One logical request: ``send`` it (again on connection errors and 5xx, within
        the deadline) and ``parse`` the answer (a ``ValueError`` there: a malformed
        answer). Raises the service's error; fast while the circuit is open."""
        client = self.client()
        trial = self._admit()
        try:
            with trio.move_on_after(self.deadline) as scope:
                response = await self._attempts(lambda: send(client), scope)
                try:
                    result = parse(response)
                except ValueError as exc:
                    message = f"malformed answer from {self.where}: {exc}"
                    raise _Failure("malformed", message) from exc
        except _Failure as failure:
            raise self._failed(failure, trial) from failure.__cause__
        except BaseException:
            self.breaker.abandoned(trial)
            raise
        if scope.cancelled_caught:
            raise self._failed(self._timed_out(), trial)
        self._succeeded(trial)
        return result

    @asynccontextmanager
    async def streaming(self, request: httpx.Request) -> AsyncIterator[httpx.Response]:
        """A streamed answer, retried like :meth:`call` only until its status line has
        come (nothing of it is used before); the block reads the body. An error raised
        in the block counts as the server's failure; a cancellation counts as nothing."""
        client = self.client()
        trial = self._admit()
        try:
            with trio.move_on_after(self.deadline) as scope:
                response = await self._attempts(lambda: client.send(request, stream=True), scope)
            if scope.cancelled_caught:
                raise self._timed_out()
        except _Failure as failure:
            raise self._failed(failure, trial) from failure.__cause__
        except BaseException:
            self.breaker.abandoned(trial)
            raise
        try:
            yield response
        except self.error as exc:
            self._failed(_Failure(getattr(exc, "kind", "malformed"), str(exc)), trial)
            raise
        except httpx.HTTPError as exc:
            raise self._failed(self._classify(exc), trial) from exc
        except BaseException:
            self.breaker.abandoned(trial)
            raise
        else:
            self._succeeded(trial)
        finally:
            with trio.CancelScope(shield=True):
                await response.aclose()

    def _admit(self) -> bool:
        self.requests += 1
        try:
            return self.breaker.admit()
        except CircuitOpen as exc:
            self.failures["circuit_open"] = self.failures.get("circuit_open", 0) + 1
            raise self.error(f"{self.where} not called: {exc}") from None

    async def _attempts(
        self, send: Callable[[], Awaitable[httpx.Response]], scope: trio.CancelScope
    ) -> httpx.Response:
        """Send until an answer that is not a 5xx, a failure a retry cannot help, or the
        retries are spent; back off exponentially while the deadline allows."""
        attempt = 0
        while True:
            try:
                response = await send()
                failure = await self._status_failure(response)
                if failure is None:
                    return response
            except httpx.HTTPError as exc:
                failure = self._classify(exc)
                failure.__cause__ = exc
            delay = self.backoff_s * 2**attempt
            if not failure.retry or attempt >= self.options.retries:
                raise failure
            if trio.current_time() + delay >= scope.deadline:
                raise failure
            attempt += 1
            self.retries += 1
            await trio.sleep(delay)

    async def _status_failure(self, response: httpx.Response) -> _Failure | None:
        status = response.status_code
        if status < 400:
            return None
        body = (await response.aread()).decode("utf-8", "replace").strip()
        await response.aclose()
        message = f"{self.where} answered HTTP {status}: {body[:300]}"
        if status >= 500:
            return _Failure("http_5xx", message, retry=True)
        return _Failure("http_4xx", message, counts=status not in REQUEST_SPECIFIC)

    def _classify(self, exc: httpx.HTTPError) -> _Failure:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            reason = str(exc) or "connection refused"
            return _Failure("connect", f"cannot connect to {self.where}: {reason}", retry=True)
        if isinstance(exc, httpx.TimeoutException):
            kind = type(exc).__name__.replace("Timeout", " timeout").lower()
            return _Failure("timeout", f"{self.where} timed out ({kind}, limits {self.timeout})")
        return _Failure("transport", f"{self.where} failed: {type(exc).__name__}: {exc}")

    def _timed_out(self) -> _Failure:
        return _Failure(
            "timeout", f"{self.where} timed out: no answer within {self.options.timeout_s:g} s"
        )

    def _failed(self, failure: _Failure, trial: bool) -> ServiceError:
        self.failures[failure.kind] = self.failures.get(failure.kind, 0) + 1
        if failure.counts:
            self.breaker.failed(trial)
        else:
            self.breaker.abandoned(trial)
        error = self.error(str(failure))
        error.kind = failure.kind  # type: ignore[attr-defined]
        return error

    def _succeeded(self, trial: bool) -> None:
        self.succeeded += 1
        self.breaker.succeeded(trial)

    def statistics(self) -> dict[str, Any]:
        """Counters of this endpoint, prefixed for a service's own ``statistics()``."""
        return {
            "requests": self.requests,
            "succeeded": self.succeeded,
            "retries": self.retries,
            "failures": sum(self.failures.values()),
            "failures_by_kind": dict(sorted(self.failures.items())),
            "circuit": self.breaker.state,
            "circuit_opened": self.breaker.opened,
        }
