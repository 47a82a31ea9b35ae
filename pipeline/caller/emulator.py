"""The platform's side of a call, for testing bots with no phone network.

:func:`open_call` dials a bot exactly as the telephony platform does: it registers
with ``connected``, then streams 20 ms RTP packets of μ-law audio in real time,
silence included, until it hangs up. Network trouble can be injected (jitter, loss,
reordering, duplicates, from a seed), and everything the bot sends back is recorded
with its arrival time, so voice-to-voice latency is measured where a caller feels it:
from the end of the caller's speech in the stream to the first byte of bot audio.

:class:`CallerSide` is the platform's half of a call apart from any one connection
(the 20 ms packet clock, the turns being spoken, the bot audio heard);
:class:`EmulatedCall` binds it to one WebSocket, and :class:`pipeline.caller.client.CallClient`
to a connection that it re-dials when it drops.
"""

from __future__ import annotations

import heapq
import json
import random
import secrets
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from pipeline.caller.audiofile import save_wav
from pipeline.caller.frames import FrameSender
from pipeline.protocol.events import ConnectedAck, Greeting, Interrupt, SpeechChunk
from pipeline.protocol.platform_side import ClientProtocol
from pipeline.runtime.errors import CallError
from pipeline.runtime.timers import sleep_until
from stages import mulaw
from stages.energy import level_dbfs
from stages.rtp import FIXED_HEADER, PAYLOAD_TYPE_PCMU
from stages.wav import WavError, decode_wav

__all__ = [
    "BotAudio",
    "CallerSide",
    "EmulatedCall",
    "Impairments",
    "RegistrationError",
    "SpokenTurn",
    "auth_headers",
    "open_call",
    "register",
    "save_call",
    "speech_end_offset",
]

PACKET_SAMPLES = 160
PACKET_SECONDS = PACKET_SAMPLES / 8000
SILENCE_PACKET = bytes([mulaw.SILENCE_BYTE]) * PACKET_SAMPLES


class RegistrationError(CallError, ConnectionError):
    """The bot did not acknowledge ``connected`` (refused, closed, or too slow).

    ``code`` is the close code when the bot closed the socket (1008: the key was refused).
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Impairments:
    """Network trouble to inject on the way to the bot, reproducible from ``seed``."""

    jitter_ms: float = 0.0
    loss: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("loss", "reorder", "duplicate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        if self.jitter_ms < 0:
            raise ValueError("jitter_ms must not be negative")


@dataclass(frozen=True, slots=True)
class BotAudio:
    """One message of bot audio as received (greeting or media), decoded."""

    kind: str
    wav: bytes
    mulaw: bytes
    received_at: float

    @property
    def duration(self) -> float:
        return len(self.mulaw) / 8000


@dataclass(slots=True)
class SpokenTurn:
    """What the emulator sent for one turn, on the Trio clock."""

    started_at: float
    speech_end_at: float
    ended_at: float
    duration: float


def speech_end_offset(samples: np.ndarray, threshold_dbfs: float = -45.0) -> int:
    """Sample index just past the last 20 ms block louder than ``threshold_dbfs``."""
    for end in range(len(samples), 0, -PACKET_SAMPLES):
        start = max(0, end - PACKET_SAMPLES)
        if level_dbfs(samples[start:end]) > threshold_dbfs:
            return end
    return 0


@dataclass(slots=True)
class _Turn:
    """Caller audio being streamed, and where in it the speech ends."""

    payload: bytes
    speech_end_byte: int
    done: trio.Event
    sent: int = 0
    speech_end_at: float | None = None


class CallerSide:
    """The platform's side of one call, whatever connection carries it: speak into it,
    read what the bot sent back. Subclasses bind it to a connection."""

    def __init__(self, call_id: str, *, payload_format: str, impairments: Impairments) -> None:
        self.call_id = call_id
        self.payload_format = payload_format
        self.impairments = impairments
        self._rng = random.Random(impairments.seed)
        self.received: list[BotAudio] = []
        self.interrupts: list[float] = []
        self.packets_sent = 0
        self.packets_lost = 0
        self.packets_duplicated = 0
        self.packets_reordered = 0
        self._turn: _Turn | None = None
        self._changed = trio.Event()
        self._sequence = self._rng.randrange(1 << 16)
        self._timestamp = self._rng.randrange(1 << 32)
        self._ssrc = self._rng.randrange(1 << 32)
        self._first_packet = True
        self._playout_end = 0.0

    # --- speaking -------------------------------------------------------------------

    async def speak(self, samples: np.ndarray) -> SpokenTurn:
        """Stream 8 kHz int16 ``samples`` in real time; return when the last one is sent."""
        if self._turn is not None:
            raise RuntimeError("speak() while a previous turn is still being sent")
        samples = np.asarray(samples, dtype=np.int16)
        turn = _Turn(mulaw.encode(samples), speech_end_offset(samples), trio.Event())
        started_at = trio.current_time()
        self._turn = turn
        await turn.done.wait()
        assert turn.speech_end_at is not None
        return SpokenTurn(
            started_at, turn.speech_end_at, trio.current_time(), len(turn.payload) / 8000
        )

    def bot_audio_since(self, moment: float) -> list[BotAudio]:
        return [audio for audio in self.received if audio.received_at >= moment]

    @property
    def playout_end(self) -> float:
        """When the platform would finish playing what it has received (interrupts cut it)."""
        return self._playout_end

    async def wait_for_bot_audio(self, after: float) -> BotAudio:
        """First bot speech that arrived at or after ``after`` (wrap in a timeout)."""
        while True:
            for audio in self.received:
                if audio.received_at >= after and audio.kind == "media":
                    return audio
            await self._wait_change()

    async def wait_for_greeting(self) -> BotAudio:
        """The bot's ``greeting`` audio (wrap in a timeout: a bot need not send one)."""
        while True:
            for audio in self.received:
                if audio.kind == "greeting":
                    return audio
            await self._wait_change()

    async def listen_until_quiet(self, pause: float) -> None:
        """Wait while the platform would still be playing bot audio, then ``pause`` more."""
        while True:
            quiet_from = max(self._playout_end, trio.current_time())
            with trio.move_on_at(quiet_from + pause):
                await self._wait_change()
                continue
            return

    async def _wait_change(self) -> None:
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # --- the two tasks of a connection ----------------------------------------------

    async def _exchange(
        self, ws: WebSocketConnection, protocol: ClientProtocol
    ) -> ConnectionClosed:
        """Stream packets and take in the bot's messages until the socket closes."""
        closed: ConnectionClosed | None = None
        async with trio.open_nursery() as nursery:

            async def receive() -> None:
                nonlocal closed
                closed = await self._receive_loop(ws, protocol)
                nursery.cancel_scope.cancel()

            async def send() -> None:
                with suppress(ConnectionClosed):  # the receiving side reports how it closed
                    await self._send_loop(ws, protocol)

            nursery.start_soon(receive)
            nursery.start_soon(send)
        assert closed is not None
        return closed

    async def _send_loop(self, ws: WebSocketConnection, protocol: ClientProtocol) -> None:
        """One packet every 20 ms on a drift-free schedule; impairments on the way out."""
        send = FrameSender(ws).send  # ws.send_message's frames, for less CPU (see .frames)
        clean = self.impairments == Impairments(seed=self.impairments.seed)
        start = trio.current_time()
        queue: list[tuple[float, int, bytes | str]] = []
        order = 0
        tick = 0
        while True:
            nominal = start + tick * PACKET_SECONDS
            message = self._next_packet(nominal, protocol)
            tick += 1
            next_nominal = start + tick * PACKET_SECONDS
            if clean:  # a clean network: straight out, no random draws per packet
                await send(message)
                self.packets_sent += 1
                await sleep_until(next_nominal)  # the shared timer: hundreds of callers
                continue
            order += 1
            send_at = nominal
            if self._rng.random() < self.impairments.loss:
                self.packets_lost += 1
            else:
                if self.impairments.jitter_ms:
                    send_at += self._rng.uniform(0, self.impairments.jitter_ms) / 1000
                if self._rng.random() < self.impairments.reorder:
                    send_at += PACKET_SECONDS * 1.5
                    self.packets_reordered += 1
                heapq.heappush(queue, (send_at, order, message))
                if self._rng.random() < self.impairments.duplicate:
                    self.packets_duplicated += 1
                    heapq.heappush(queue, (send_at + 0.001, order, message))
            while queue and queue[0][0] < next_nominal:
                send_at, _, message = heapq.heappop(queue)
                if send_at > trio.current_time():  # already due (no jitter): no timer
                    await sleep_until(send_at)
                await send(message)
                self.packets_sent += 1
            await sleep_until(next_nominal)  # the shared timer: hundreds of callers are cheap

    def _next_packet(self, nominal: float, protocol: ClientProtocol) -> bytes | str:
        # the 12-byte header RtpPacket(...).serialize() writes, without building the tuple
        # (50 a second per call; tests/caller pins the bytes)
        header = FIXED_HEADER.pack(
            0x80,
            (0x80 if self._first_packet else 0) | PAYLOAD_TYPE_PCMU,
            self._sequence,
            self._timestamp,
            self._ssrc,
        )
        packet = header + self._next_chunk(nominal)
        self._first_packet = False
        self._sequence = (self._sequence + 1) & 0xFFFF
        self._timestamp = (self._timestamp + PACKET_SAMPLES) & 0xFFFF_FFFF
        return protocol.media(
            packet,
            timestamp=int(time.time() * 1000),
            payload_format=self.payload_format,  # type: ignore[arg-type]
        )

    def _next_chunk(self, nominal: float) -> bytes:
        """The next 20 ms of caller audio (μ-law): the turn being spoken, or silence."""
        turn = self._turn
        if turn is None:
            chunk = SILENCE_PACKET
        else:
            start = turn.sent
            chunk = turn.payload[start : start + PACKET_SAMPLES]
            turn.sent += len(chunk)
            if turn.speech_end_at is None and turn.speech_end_byte <= turn.sent:
                # the caller's mouth stopped inside this packet
                turn.speech_end_at = nominal + max(0, turn.speech_end_byte - start) / 8000
            if len(chunk) < PACKET_SAMPLES:
                chunk += SILENCE_PACKET[len(chunk) :]
            if turn.sent >= len(turn.payload):
                self._turn = None
                turn.done.set()
        return chunk

    async def _receive_loop(
        self, ws: WebSocketConnection, protocol: ClientProtocol
    ) -> ConnectionClosed:
        """The bot's messages until the socket closes; returns how it closed."""
        try:
            while True:
                message = await ws.get_message()
                now = trio.current_time()
                for event in protocol.receive_message(message):
                    if isinstance(event, Interrupt):
                        self._interrupted(now)
                    elif isinstance(event, Greeting | SpeechChunk):
                        self._record_audio(event, now)
                self._notify()
        except ConnectionClosed as closed:
            self._notify()
            return closed

    def _interrupted(self, now: float) -> None:
        self.interrupts.append(now)
        self._playout_end = now

    def _record_audio(self, event: Greeting | SpeechChunk, now: float) -> BotAudio:
        wav = event.audio if isinstance(event, Greeting) else event.wav
        kind = "greeting" if isinstance(event, Greeting) else "media"
        try:
            payload = decode_wav(wav).data
        except WavError:
            payload = b""
        audio = BotAudio(kind=kind, wav=wav, mulaw=payload, received_at=now)
        self.received.append(audio)
        self._playout_end = max(self._playout_end, now) + audio.duration
        return audio


class EmulatedCall(CallerSide):
    """A live emulated call on one WebSocket, as :func:`open_call` gives it."""

    def __init__(
        self,
        ws: WebSocketConnection,
        protocol: ClientProtocol,
        *,
        payload_format: str,
        impairments: Impairments,
    ) -> None:
        super().__init__(protocol.call_id, payload_format=payload_format, impairments=impairments)
        self.ws = ws
        self.protocol = protocol
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._closed = trio.Event()

    async def wait_closed(self) -> int:
        """Wait until the bot closes the call; return its close code."""
        await self._closed.wait()
        assert self.close_code is not None
        return self.close_code

    async def _run(self) -> None:
        closed = await self._exchange(self.ws, self.protocol)
        self.close_code = closed.reason.code
        self.close_reason = closed.reason.reason
        self._closed.set()
        self._notify()


def auth_headers(api_key: str | None) -> list[tuple[bytes, bytes]] | None:
    """How the emulator offers a key: the ``x-api-key`` header."""
    return [(b"x-api-key", api_key.encode())] if api_key else None


async def register(ws: WebSocketConnection, protocol: ClientProtocol) -> None:
    """Send ``connected`` and wait for the acknowledgement (under the caller's deadline);
    :class:`RegistrationError` if the bot closes instead (``code`` says how)."""
    await ws.send_message(protocol.connect())
    try:
        while True:
            events = protocol.receive_message(await ws.get_message())
            if any(isinstance(event, ConnectedAck) for event in events):
                return
    except ConnectionClosed as closed:
        raise RegistrationError(
            f"bot closed the call during registration: {closed.reason.code} "
            f"{closed.reason.reason or ''}".strip(),
            closed.reason.code,
        ) from None


@asynccontextmanager
async def open_call(
    url: str,
    *,
    call_id: str | None = None,
    mobile_no: str = "9876543210",
    api_key: str | None = None,
    payload_format: str = "buffer",
    impairments: Impairments | None = None,
    ssl_context: ssl.SSLContext | None = None,
    registration_timeout: float = 10.0,
) -> AsyncIterator[EmulatedCall]:
    """Dial ``url``, register, and keep streaming until the block ends (then hang up, 1000)."""
    protocol = ClientProtocol(call_id or secrets.token_hex(12), mobile_no)
    async with open_websocket_url(url, ssl_context, extra_headers=auth_headers(api_key)) as ws:
        try:
            with trio.fail_after(registration_timeout):
                await register(ws, protocol)
        except trio.TooSlowError:
            raise RegistrationError("bot did not acknowledge registration in time") from None
        call = EmulatedCall(
            ws, protocol, payload_format=payload_format, impairments=impairments or Impairments()
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call._run)
            try:
                yield call
            finally:
                nursery.cancel_scope.cancel()
        if call.close_code is None:
            with trio.move_on_after(5, shield=True):
                await ws.aclose(code=1000, reason="caller hung up")


@dataclass(frozen=True, slots=True)
class TurnReport:
    """What the caller experienced in one turn (times in milliseconds)."""

    turn: int
    source: str
    caller_seconds: float
    bot_messages: int
    bot_audio_bytes: int
    bot_audio_seconds: float
    voice_to_voice_ms: float | None
    interrupts: int

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__}


def save_call(
    directory: Path,
    call: CallerSide,
    turns: list[tuple[str, np.ndarray]],
    reports: list[TurnReport],
) -> list[Path]:
    """Write what a call sounded like: ``caller.wav``, ``bot.wav`` (every bot message in
    order), each message exactly as received, and ``report.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [save_wav(directory / "caller.wav", np.concatenate([s for _, s in turns]))]
    for index, audio in enumerate(call.received, start=1):
        path = directory / f"bot-{index:02d}-{audio.kind}.wav"
        path.write_bytes(audio.wav)
        written.append(path)
    if call.received:
        bot = np.concatenate([mulaw.decode(audio.mulaw) for audio in call.received])
        written.append(save_wav(directory / "bot.wav", bot))
    report = {"callId": call.call_id, "turns": [r.as_dict() for r in reports]}
    (directory / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    written.append(directory / "report.json")
    return written


async def converse(
    call: CallerSide,
    turns: list[tuple[str, np.ndarray]],
    *,
    pause: float = 1.0,
    reply_timeout: float = 10.0,
) -> list[TurnReport]:
    """Speak each turn, wait for the bot's answer and its playout, then pause; report."""
    reports = []
    for index, (source, samples) in enumerate(turns, start=1):
        spoken = await call.speak(samples)
        first = None
        with trio.move_on_after(reply_timeout):
            first = await call.wait_for_bot_audio(spoken.speech_end_at)
        if first is not None:
            await call.listen_until_quiet(pause)
        else:
            await trio.sleep(pause)
        now = trio.current_time()
        replies = [
            audio
            for audio in call.received
            if audio.kind == "media" and spoken.speech_end_at <= audio.received_at <= now
        ]
        interrupts = [t for t in call.interrupts if spoken.started_at <= t <= now]
        reports.append(
            TurnReport(
                turn=index,
                source=source,
                caller_seconds=round(spoken.duration, 3),
                bot_messages=len(replies),
                bot_audio_bytes=sum(len(audio.mulaw) for audio in replies),
                bot_audio_seconds=round(sum(audio.duration for audio in replies), 3),
                voice_to_voice_ms=(
                    round((first.received_at - spoken.speech_end_at) * 1000, 1) if first else None
                ),
                interrupts=len(interrupts),
            )
        )
    return reports
