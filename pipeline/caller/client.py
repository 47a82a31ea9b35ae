"""A call client: the call emulator grown into something a person or a program talks through.

:class:`CallClient` is the platform's side of one call
(:class:`~pipeline.caller.emulator.CallerSide`:
the 20 ms packet clock, ``speak``, the bot audio heard) on a connection it manages the
way the AloAudio SDK does (``../shared/seeds/000``-``002``):

- ``connect()`` / ``disconnect()``, with typed events: :class:`ConnectionChange` through
  ``ACQUIRING_ACCESS`` (opening the audio devices) → ``CONNECTING`` → ``CONNECTED``, and
  ``RECONNECT_PENDING`` (``pending_restart_seconds``), ``ERROR`` (``message``),
  ``DISCONNECTED``; :class:`Disconnect` with ``{"state": "DISCONNECTED"}`` when asked for,
  ``{"state": "ERROR", "message": "Lost connection to the server"}`` on a drop.
- A dropped connection is re-dialled with the same ``callId`` after a growing delay
  (:class:`ReconnectPolicy`); :meth:`CallClient.force_reconnect_when_pending` retries at
  once. A refused key (close 1008) gives :class:`InvalidAuthenticationToken` and no retry:
  :meth:`CallClient.set_user_auth_token`, then ``connect()`` again.
- Full duplex ``mute()`` / ``unmute()`` / ``toggle_mute()``: muted, the client still sends a
  silence packet every 20 ms (the platform never stops sending). Push-to-talk
  (``push_to_talk=True``): caller audio only between ``ptt_start()`` and ``ptt_end()``.
- Devices (:mod:`pipeline.caller.devices`): input from a file, a generator or a microphone,
  output to a file or a speaker, switched while connected.

What counts as a drop: the socket breaking (1006) or the server going away or failing
(1001, 1011-1014). The bot hanging up (1000) ends the call; a protocol error (1002,
1003, 1007, 1009, 1010) is reported, not retried, since it would happen again.
"""

from __future__ import annotations

import enum
import secrets
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from pipeline.caller.devices import (
    AudioInput,
    AudioOutput,
    DeviceError,
    MediaDevice,
    MicrophoneInput,
    NullOutput,
    SilenceInput,
    SpeakerOutput,
    get_media_list,
)
from pipeline.caller.emulator import (
    PACKET_SAMPLES,
    SILENCE_PACKET,
    BotAudio,
    CallerSide,
    Impairments,
    RegistrationError,
    auth_headers,
    register,
)
from pipeline.protocol.events import CLOSE_TIMEOUT, CloseCode, Greeting, SpeechChunk
from pipeline.protocol.platform_side import ClientProtocol
from pipeline.runtime.errors import CallError
from stages import mulaw

__all__ = [
    "LOST_CONNECTION",
    "AuthenticationError",
    "CallClient",
    "ClientEvent",
    "ConnectError",
    "ConnectionChange",
    "ConnectionState",
    "Connector",
    "Disconnect",
    "InvalidAuthenticationToken",
    "ReconnectPolicy",
    "open_client",
]

LOST_CONNECTION = "Lost connection to the server"
FATAL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1009, 1010})

Connector = Callable[
    [str, list[tuple[bytes, bytes]] | None], AbstractAsyncContextManager[WebSocketConnection]
]
"""How to open a WebSocket to ``url`` with these extra headers (tests pass in-memory ones)."""


class ConnectionState(enum.Enum):
    ACQUIRING_ACCESS = "ACQUIRING_ACCESS"
    CONNECTING = "CONNECTING"
    CONNECTED = "CONNECTED"
    RECONNECT_PENDING = "RECONNECT_PENDING"
    ERROR = "ERROR"
    DISCONNECTED = "DISCONNECTED"


@dataclass(frozen=True, slots=True)
class ConnectionChange:
    """``onConnectionChange``: the connection moved to ``state``."""

    state: ConnectionState
    message: str | None = None
    pending_restart_seconds: float | None = None

    @property
    def detail(self) -> dict[str, Any]:
        detail: dict[str, Any] = {"state": self.state.value}
        if self.message is not None:
            detail["message"] = self.message
        if self.pending_restart_seconds is not None:
            detail["pendingRestartSeconds"] = self.pending_restart_seconds
        return detail


@dataclass(frozen=True, slots=True)
class Disconnect:
    """``onDisconnect``: the call's connection ended, on request (``DISCONNECTED``) or not
    (``ERROR`` with a message)."""

    state: ConnectionState
    message: str | None = None

    @property
    def detail(self) -> dict[str, Any]:
        detail: dict[str, Any] = {"state": self.state.value}
        if self.message is not None:
            detail["message"] = self.message
        return detail


@dataclass(frozen=True, slots=True)
class InvalidAuthenticationToken:
    """``onInvalidAuthenticationToken``: the server refused the key; set a new one and
    ``connect()`` again."""

    message: str

    @property
    def detail(self) -> dict[str, Any]:
        return {"message": self.message}


ClientEvent = ConnectionChange | Disconnect | InvalidAuthenticationToken


class ConnectError(CallError, ConnectionError):
    """The first connection attempt failed (unreachable, rejected, not registered)."""


class AuthenticationError(ConnectError):
    """The server refused the key (close code 1008)."""


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """Delays before re-dialling a dropped call: ``initial_delay * factor**n``, at most
    ``max_delay``; give up after ``max_attempts`` failed attempts (None: never)."""

    initial_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 30.0
    max_attempts: int | None = 10
    enabled: bool = True

    def delay(self, attempt: int) -> float:
        """The wait before attempt number ``attempt`` (1 for the first retry)."""
        return min(self.max_delay, self.initial_delay * self.factor ** (attempt - 1))


class CallClient(CallerSide):
    """One call to a bot, connected and re-connected on demand. Use :func:`open_client`."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        call_id: str | None = None,
        mobile_no: str = "9876543210",
        audio_input: AudioInput | None = None,
        audio_output: AudioOutput | None = None,
        push_to_talk: bool = False,
        payload_format: str = "buffer",
        impairments: Impairments | None = None,
        ssl_context: ssl.SSLContext | None = None,
        reconnect: ReconnectPolicy | None = None,
        registration_timeout: float = 10.0,
        connector: Connector | None = None,
    ) -> None:
        super().__init__(
            call_id or secrets.token_hex(12),
            payload_format=payload_format,
            impairments=impairments or Impairments(),
        )
        self.url = url
        self.token = token
        self.mobile_no = mobile_no
        self.audio_input = audio_input or SilenceInput()
        self.audio_output = audio_output or NullOutput()
        self.push_to_talk = push_to_talk
        self.ssl_context = ssl_context
        self.reconnect = reconnect or ReconnectPolicy()
        self.registration_timeout = registration_timeout
        self._connector = connector or self._dial
        self.state = ConnectionState.DISCONNECTED
        self.history: list[ClientEvent] = []
        self.listeners: list[Callable[[ClientEvent], None]] = []
        self.muted = False
        self.ptt_held = False
        self.connections = 0
        self.audio_packets = 0  # packets that carried the input's audio
        self.silenced_packets = 0  # packets replaced by silence (muted, push-to-talk released)
        self.ws: WebSocketConnection | None = None
        self._nursery: trio.Nursery | None = None
        self._manager: trio.CancelScope | None = None
        self._manager_done = trio.Event()
        self._manager_done.set()
        self._force = trio.Event()
        self._hanging_up = False
        self._devices_open = False

    # --- events ---------------------------------------------------------------------

    def add_listener(self, listener: Callable[[ClientEvent], None]) -> None:
        """Call ``listener(event)`` for every event from now on (on the event loop)."""
        self.listeners.append(listener)

    def _emit(self, event: ClientEvent) -> None:
        if isinstance(event, ConnectionChange):
            self.state = event.state
        self.history.append(event)
        for listener in self.listeners:
            listener(event)
        self._notify()

    def _change(self, state: ConnectionState, message: str | None = None, **extra: Any) -> None:
        self._emit(ConnectionChange(state, message, **extra))

    def _fail(self, message: str) -> None:
        self._change(ConnectionState.ERROR, message)
        self._emit(Disconnect(ConnectionState.ERROR, message))

    def states(self) -> list[ConnectionState]:
        """Every state the connection went through, in order."""
        return [event.state for event in self.history if isinstance(event, ConnectionChange)]

    async def wait_for_state(self, state: ConnectionState, since: int = 0) -> int:
        """Wait for a change to ``state`` at or after ``history[since]``; return the index
        just past it (pass that as ``since`` to wait for the next one)."""
        while True:
            for index in range(since, len(self.history)):
                event = self.history[index]
                if isinstance(event, ConnectionChange) and event.state is state:
                    return index + 1
            await self._wait_change()

    # --- connecting -----------------------------------------------------------------

    def set_user_auth_token(self, token: str | None) -> None:
        """The key for the next connection attempt (after an invalid-token event)."""
        self.token = token

    async def connect(self) -> None:
        """Open the devices, dial and register; return once ``CONNECTED``.

        Raises :class:`AuthenticationError` when the key is refused and
        :class:`ConnectError` when the first attempt fails otherwise (no retry then: a
        wrong URL does not heal). Once connected, drops are retried in the background.
        """
        if self._nursery is None:
            raise RuntimeError("connect() outside `async with open_client(...)`")
        if not self._manager_done.is_set():
            raise RuntimeError(f"already {self.state.value}")
        self._hanging_up = False
        self._change(ConnectionState.ACQUIRING_ACCESS)
        try:
            await self._open_devices()
        except DeviceError as exc:
            self._fail(str(exc))
            raise
        try:
            await self._nursery.start(self._manage)
        except BaseException as exc:
            await self._close_devices()
            if isinstance(exc, RuntimeError):  # disconnect() during the first attempt
                raise ConnectError("disconnected while connecting") from exc
            raise

    async def disconnect(self) -> None:
        """Hang up (close 1000) and stop any reconnecting; ``DISCONNECTED`` follows."""
        if self._manager is not None:
            self._hanging_up = True
            self._manager.cancel()
        await self._manager_done.wait()
        await self._close_devices()

    async def wait_ended(self) -> None:
        """Wait until the connection has ended for good (hung up, refused, given up)."""
        await self._manager_done.wait()

    def force_reconnect_when_pending(self) -> bool:
        """Re-dial now instead of waiting out ``pending_restart_seconds``; False if no
        reconnect is pending."""
        if self.state is not ConnectionState.RECONNECT_PENDING:
            return False
        self._force.set()
        return True

    def _dial(
        self, url: str, headers: list[tuple[bytes, bytes]] | None
    ) -> AbstractAsyncContextManager[WebSocketConnection]:
        return open_websocket_url(url, self.ssl_context, extra_headers=headers)

    async def _manage(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The connection's whole life: attempts, drops, delays, until it ends."""
        self._manager_done = trio.Event()
        try:
            with trio.CancelScope() as self._manager:
                await self._connection_loop(task_status)
            if self._hanging_up:
                self._change(ConnectionState.DISCONNECTED)
                self._emit(Disconnect(ConnectionState.DISCONNECTED))
        finally:
            self._manager = None
            self._manager_done.set()

    async def _connection_loop(self, task_status: trio.TaskStatus[None]) -> None:
        attempt = 0
        started = False

        def connected() -> None:
            nonlocal attempt, started
            attempt = 0
            if not started:
                started = True
                task_status.started()

        while True:
            self._change(ConnectionState.CONNECTING)
            try:
                closed = await self._connect_once(connected)
            except RegistrationError as exc:
                if exc.code == CloseCode.POLICY_VIOLATION:
                    self._refused(str(exc))
                    if not started:
                        raise AuthenticationError(str(exc)) from None
                    return
                failure: Exception = exc
            except (OSError, HandshakeError, ConnectionClosed, trio.BrokenResourceError) as exc:
                failure = exc
            else:
                code, reason = closed.reason.code, closed.reason.reason or ""
                if code == CloseCode.NORMAL:
                    message = f"call ended by the server: {reason}".rstrip(": ")
                    self._change(ConnectionState.DISCONNECTED, message)
                    self._emit(Disconnect(ConnectionState.DISCONNECTED, message))
                    return
                if code == CloseCode.POLICY_VIOLATION:
                    self._refused(f"the server refused the key: {reason}")
                    return
                if code in FATAL_CLOSE_CODES or not self.reconnect.enabled:
                    self._fail(f"closed by the server: {code} {reason}".strip())
                    return
                self._fail(LOST_CONNECTION)
                attempt = 1
                await self._wait_pending(self.reconnect.delay(attempt))
                continue
            message = f"cannot connect to {self.url}: {failure or type(failure).__name__}"
            if not started:
                self._fail(message)
                raise ConnectError(message) from failure
            limit = self.reconnect.max_attempts
            if limit is not None and attempt >= limit:
                self._fail(f"gave up after {attempt} reconnect attempts: {message}")
                return
            self._change(ConnectionState.ERROR, message)
            attempt += 1
            await self._wait_pending(self.reconnect.delay(attempt))

    def _refused(self, message: str) -> None:
        self._emit(InvalidAuthenticationToken(message))
        self._fail(message)

    async def _wait_pending(self, delay: float) -> None:
        self._force = trio.Event()
        self._change(ConnectionState.RECONNECT_PENDING, pending_restart_seconds=delay)
        with trio.move_on_after(delay):
            await self._force.wait()

    async def _connect_once(self, connected: Callable[[], None]) -> ConnectionClosed:
        """Dial, register, and exchange audio until the socket closes."""
        protocol = ClientProtocol(self.call_id, self.mobile_no)
        async with self._connector(self.url, auth_headers(self.token)) as ws:
            try:
                with trio.fail_after(self.registration_timeout):
                    await register(ws, protocol)
            except trio.TooSlowError:
                raise RegistrationError("the bot did not acknowledge registration") from None
            self.ws = ws
            self.connections += 1
            self._first_packet = True
            try:
                self._change(ConnectionState.CONNECTED)
                connected()
                return await self._exchange(ws, protocol)
            finally:
                self.ws = None
                if self._hanging_up:
                    with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                        await ws.aclose(code=CloseCode.NORMAL, reason="caller hung up")

    # --- talking --------------------------------------------------------------------

    def mute(self) -> None:
        """Send silence instead of the input (packets keep flowing)."""
        self.muted = True

    def unmute(self) -> None:
        self.muted = False

    def toggle_mute(self) -> bool:
        """Flip mute; return whether the client is now muted."""
        self.muted = not self.muted
        return self.muted

    def ptt_start(self) -> bool:
        """Hold push-to-talk: the input's audio is sent until :meth:`ptt_end`. One caller
        per call, so the talk lock is always granted (True)."""
        if not self.push_to_talk:
            raise RuntimeError("push-to-talk is off: open the client with push_to_talk=True")
        self.ptt_held = True
        return True

    def ptt_end(self) -> None:
        self.ptt_held = False

    @property
    def transmitting(self) -> bool:
        """Whether caller audio goes out now (else silence packets do)."""
        return not self.muted and (not self.push_to_talk or self.ptt_held)

    def _next_chunk(self, nominal: float) -> bytes:
        if self._turn is not None:  # speak(): a scripted turn goes before the input
            chunk = super()._next_chunk(nominal)
        else:
            samples = self.audio_input.read(PACKET_SAMPLES)
            chunk = SILENCE_PACKET if samples is None else mulaw.encode(samples)
            chunk += SILENCE_PACKET[len(chunk) :]
        if not self.transmitting:
            self.silenced_packets += 1
            return SILENCE_PACKET
        self.audio_packets += 1
        return chunk

    # --- devices --------------------------------------------------------------------

    def get_media_list(self) -> list[MediaDevice]:
        """The machine's microphones and speakers (empty without the softphone extra)."""
        return get_media_list()

    async def change_audio_input(self, device: AudioInput | MediaDevice | str | int) -> None:
        """Switch the caller's audio source; the new one is opened before the old closes,
        so a device that fails to open leaves the call as it was."""
        new = device if isinstance(device, AudioInput) else MicrophoneInput(_device_id(device))
        if self._devices_open:
            await trio.to_thread.run_sync(new.open)
        old, self.audio_input = self.audio_input, new
        if self._devices_open:
            await trio.to_thread.run_sync(old.close)

    async def change_audio_output(self, device: AudioOutput | MediaDevice | str | int) -> None:
        """Switch where bot speech plays from the next chunk on."""
        new = device if isinstance(device, AudioOutput) else SpeakerOutput(_device_id(device))
        if self._devices_open:
            now = trio.current_time()
            await trio.to_thread.run_sync(new.open, now)
        old, self.audio_output = self.audio_output, new
        if self._devices_open:
            await trio.to_thread.run_sync(old.close)

    async def _open_devices(self) -> None:
        if self._devices_open:
            return
        await trio.to_thread.run_sync(self.audio_input.open)
        try:
            now = trio.current_time()
            await trio.to_thread.run_sync(self.audio_output.open, now)
        except BaseException:
            await trio.to_thread.run_sync(self.audio_input.close)
            raise
        self._devices_open = True

    async def _close_devices(self) -> None:
        if not self._devices_open:
            return
        self._devices_open = False
        for device in (self.audio_input, self.audio_output):
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):  # one stuck cannot keep the other
                await trio.to_thread.run_sync(device.close)

    def _record_audio(self, event: Greeting | SpeechChunk, now: float) -> BotAudio:
        audio = super()._record_audio(event, now)
        if audio.mulaw:
            self.audio_output.play(mulaw.decode(audio.mulaw), now)
        return audio

    def _interrupted(self, now: float) -> None:
        super()._interrupted(now)
        self.audio_output.interrupt(now)


def _device_id(device: MediaDevice | str | int) -> str | int:
    return device.device_id if isinstance(device, MediaDevice) else device


@asynccontextmanager
async def open_client(url: str, **options: Any) -> AsyncIterator[CallClient]:
    """A :class:`CallClient` (options as its constructor's) whose background tasks live
    in this block; leaving it disconnects and closes the devices."""
    client = CallClient(url, **options)
    async with trio.open_nursery() as nursery:
        client._nursery = nursery
        try:
            yield client
        finally:
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await client.disconnect()
            nursery.cancel_scope.cancel()
            client._nursery = None
