"""Conversation events: every call is a channel, every utterance a message.

The chat seed's model, applied to calls: the channel id is the ``callId``; each caller
utterance and each bot reply becomes a :class:`ChatMessage` published as a
``message.new`` event (a bot reply's ``parentId`` is the caller utterance it answers),
and call state changes (``connecting``, ``connected``, ``disconnected``, ``error``)
are events too. A dashboard, a supervisor or a test follows calls with
:meth:`ConversationBus.subscribe`, and an operator makes the bot say something with
:meth:`ConversationBus.send_message`, whose result has the seed's
``status.error`` / ``status.errorData`` / ``response.message`` shape.

Publishing never waits: each subscriber has a bounded buffer, and a subscriber that
falls behind loses events (counted in its ``dropped``), never slows a call. That is
the inbound-edge rule of DESIGN.md §4 applied to observers.

A re-dial (the platform connecting again with a live ``callId``) replaces the call,
and its channel with it: opening a channel whose id is live publishes ``disconnected``
("replaced by a new connection") for the old one at once, the operator's messages go
to the new one from then on, and the old channel's later state changes are not
published (its ``disconnected`` would read as the end of the new call). A dashboard
following a ``callId`` thus always ends on the state of the connection that has it.

Past one process, a :class:`FleetLink` (``serve --bus``: :class:`~pipeline.bot.redis_bus.
RedisBus`) joins the buses of every worker and host: it mirrors this bus's events to the
others and hands theirs to :meth:`ConversationBus.deliver_remote` (local subscribers see
every call of the fleet, each event once), keeps the call directory as channels open and
close, and carries an operator's message to the worker that holds the call.
"""

from __future__ import annotations

import enum
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import trio

from pipeline.runtime.errors import CallError

if TYPE_CHECKING:
    from pipeline.bot.conversation import TurnRecord

__all__ = [
    "MAX_CONTENT_CHARS",
    "CallChannel",
    "CallState",
    "CallStateChange",
    "ChatMessage",
    "ConversationBus",
    "ConversationEnded",
    "ConversationEvent",
    "ErrorData",
    "FleetLink",
    "MessageNew",
    "SendResult",
    "Speaker",
    "Subscription",
]

MAX_CONTENT_CHARS = 2000
"""Longest text an operator may have the bot say in one message (about two minutes)."""

DEFAULT_SUBSCRIBER_CAPACITY = 256
REPLACED_MESSAGE = "replaced by a new connection"
FINISHED_CHANNELS_KEPT = 10_000


def _now() -> datetime:
    """Now, to the millisecond: what the wire form carries, so that an event read back
    from another worker is equal to the one published."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One utterance on a call, as the chat seed's message.

    ``metadata`` always has ``role`` (``caller`` or ``bot``) and ``turn``; see
    :meth:`CallChannel.turn_finished` for the rest.
    """

    id: str
    channel_id: str
    content: str
    metadata: Mapping[str, Any]
    parent_id: str | None = None
    created_at: datetime = field(default_factory=_now)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "channelId": self.channel_id,
            "content": self.content,
            "metadata": dict(self.metadata),
            "parentId": self.parent_id,
            "createdAt": _iso(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class MessageNew:
    """``message.new``: a caller utterance or a bot reply was completed."""

    message: ChatMessage
    type = "message.new"

    @property
    def channel_id(self) -> str:
        return self.message.channel_id

    def as_json(self) -> dict[str, Any]:
        return {"type": self.type, "data": {"message": self.message.as_json()}}


class CallState(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class CallStateChange:
    """``call.state``: the call is being set up, is live, has ended, or has failed."""

    channel_id: str
    state: CallState
    message: str | None = None
    created_at: datetime = field(default_factory=_now)
    type = "call.state"

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "channelId": self.channel_id,
            "state": self.state.value,
            "createdAt": _iso(self.created_at),
        }
        if self.message is not None:
            data["message"] = self.message
        return {"type": self.type, "data": data}


ConversationEvent = MessageNew | CallStateChange


@dataclass(frozen=True, slots=True)
class ErrorData:
    message: str
    status_code: int


@dataclass(frozen=True, slots=True)
class SendStatus:
    error: bool
    error_data: ErrorData | None = None


@dataclass(frozen=True, slots=True)
class SendResponse:
    message: ChatMessage | None = None


@dataclass(frozen=True, slots=True)
class SendResult:
    """What :meth:`ConversationBus.send_message` returns: ``result.status.error``,
    ``result.status.error_data.message`` / ``.status_code``, ``result.response.message``."""

    status: SendStatus
    response: SendResponse

    @classmethod
    def ok(cls, message: ChatMessage) -> SendResult:
        return cls(SendStatus(False), SendResponse(message))

    @classmethod
    def failed(cls, status_code: int, message: str) -> SendResult:
        return cls(SendStatus(True, ErrorData(message, status_code)), SendResponse())

    def as_json(self) -> dict[str, Any]:
        error = self.status.error_data
        message = self.response.message
        return {
            "status": {
                "error": self.status.error,
                "errorData": (
                    {"message": error.message, "statusCode": error.status_code} if error else None
                ),
            },
            "response": {"message": message.as_json() if message else None},
        }


class ConversationEnded(CallError, RuntimeError):
    """The call behind a channel has ended: nothing more can be said into it."""


class Speaker(Protocol):
    """What can speak into a call: :class:`~pipeline.bot.conversation.Conversation`."""

    async def say(self, text: str, metadata: Mapping[str, Any] | None = None) -> TurnRecord: ...


class FleetLink(Protocol):
    """What joins this bus to the other workers' (see :mod:`pipeline.bot.redis_bus`).

    The synchronous hooks must not wait: they run on a call's path.
    """

    def mirror(self, event: ConversationEvent) -> None:
        """Share a local call's event with the fleet."""

    def channel_opened(self, channel_id: str) -> None:
        """A call is live here now: list it in the directory."""

    def channel_closed(self, channel_id: str) -> None:
        """A call that was live here has ended: take it out of the directory."""

    async def send_remote(
        self,
        channel_id: str,
        content: str,
        metadata: dict[str, Any],
        parent_id: str | None,
    ) -> SendResult:
        """Have whichever worker holds ``channel_id`` say ``content``; its result (404 when
        no worker holds it)."""
        ...


class Subscription:
    """Events of chosen channels, as an async iterator with a bounded buffer.

    Use it as a context manager (or call :meth:`close`) so the bus forgets it; after
    closing, iteration yields what is still buffered and then stops.
    """

    def __init__(
        self, bus: ConversationBus, channel_ids: Iterable[str] | None, capacity: int
    ) -> None:
        self._bus = bus
        self.channel_ids: frozenset[str] | None = None
        self.update(channel_ids)
        self._send, self._receive = trio.open_memory_channel[ConversationEvent](capacity)
        self.delivered = 0
        self.dropped = 0

    def update(self, channel_ids: Iterable[str] | None) -> None:
        """Follow these channels from now on (None: every channel)."""
        self.channel_ids = None if channel_ids is None else frozenset(channel_ids)

    def wants(self, channel_id: str) -> bool:
        return self.channel_ids is None or channel_id in self.channel_ids

    def _deliver(self, event: ConversationEvent) -> None:
        try:
            self._send.send_nowait(event)
            self.delivered += 1
        except trio.WouldBlock:
            self.dropped += 1
            self._bus.dropped += 1
        except trio.ClosedResourceError:
            pass

    def close(self) -> None:
        self._bus._subscribers.discard(self)
        self._send.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> ConversationEvent:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def receive_nowait(self) -> ConversationEvent:
        """The next buffered event, or :class:`trio.WouldBlock`."""
        return self._receive.receive_nowait()


class CallChannel:
    """One call's channel: turns its finished turns into messages and speaks for operators."""

    def __init__(
        self, bus: ConversationBus, channel_id: str, speaker: Speaker, origin: float
    ) -> None:
        self.bus = bus
        self.channel_id = channel_id
        self.speaker = speaker
        self.origin = origin  # Trio time the call started: 0 s on the message timeline
        self.closed = False
        self.replaced = False  # a newer connection with the same callId has the channel id

    def state(self, state: CallState, message: str | None = None) -> None:
        """Publish a state change, unless a re-dial has taken this channel's id."""
        if not self.replaced:
            self.bus.publish(CallStateChange(self.channel_id, state, message))

    def _seconds(self, at: float | None) -> float | None:
        return None if at is None else round(at - self.origin, 3)

    def _message(
        self, content: str, metadata: dict[str, Any], parent_id: str | None
    ) -> ChatMessage:
        return ChatMessage(str(uuid.uuid4()), self.channel_id, content, metadata, parent_id)

    def turn_finished(self, record: TurnRecord) -> None:
        """Observer of :class:`~pipeline.bot.conversation.Conversation`: publish a turn.

        Caller message metadata: ``role``, ``turn``, ``start``/``end`` (seconds since the
        call started), ``sttConfidence``, ``latencyMs`` (endpointing, STT). Bot message:
        ``role``, ``turn``, ``source`` (reply, greeting, operator), ``start``/``end`` of
        its estimated playout, ``interrupted``, ``llmFailed``, ``replyText`` (what it
        meant to say; ``content`` is what the caller heard), ``latencyMs`` (every stage,
        from the end of the caller's speech). Operator lines are published by :meth:`say`.
        """
        if record.source == "operator":
            return
        parent_id = None
        if record.caller_text:
            caller = self._message(
                record.caller_text,
                {
                    "role": "caller",
                    "turn": record.index,
                    "start": self._seconds(record.caller_started_at),
                    "end": self._seconds(record.caller_ended_at),
                    "sttConfidence": record.stt_confidence,
                    "latencyMs": {
                        name: value
                        for name, value in record.timings_ms.items()
                        if name in ("endpointing", "stt", "stt_compute")
                    },
                },
                None,
            )
            parent_id = caller.id
            self.bus.publish(MessageNew(caller))
        if record.reply_text or record.heard_text:
            self.bus.publish(MessageNew(self._bot_message(record, parent_id)))

    def _bot_message(self, record: TurnRecord, parent_id: str | None) -> ChatMessage:
        ours = {
            "role": "bot",
            "turn": record.index,
            "source": "reply" if record.source == "caller" else record.source,
            "start": self._seconds(record.bot_started_at),
            "end": self._seconds(record.bot_ended_at),
            "interrupted": record.interrupted,
            "llmFailed": record.llm_failed,
            "replyText": record.reply_text,
            "latencyMs": dict(record.timings_ms),
        }
        return self._message(record.heard_text, {**record.metadata, **ours}, parent_id)

    async def say(
        self, content: str, metadata: Mapping[str, Any], parent_id: str | None = None
    ) -> SendResult:
        """Have the bot speak ``content``; the message is published once it has been sent."""
        record = await self.speaker.say(content, metadata)
        if record.bot_started_at is None and not record.interrupted:
            return SendResult.failed(422, "content has nothing the bot can speak")
        message = self._bot_message(record, parent_id)
        self.bus.publish(MessageNew(message))
        return SendResult.ok(message)


class ConversationBus:
    """Publish/subscribe for conversation events, and the operator's way into calls."""

    def __init__(self, *, subscriber_capacity: int = DEFAULT_SUBSCRIBER_CAPACITY) -> None:
        self.subscriber_capacity = subscriber_capacity
        self._subscribers: set[Subscription] = set()
        self._channels: dict[str, CallChannel] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self.link: FleetLink | None = None
        self.published = 0
        self.received = 0  # events of other workers' calls (through the link)
        self.dropped = 0  # events lost by subscribers that fell behind, all time

    def attach(self, link: FleetLink | None) -> None:
        """Join the fleet through ``link`` (None: leave it); channels live now are listed."""
        self.link = link
        if link is not None:
            for channel_id in self._channels:
                link.channel_opened(channel_id)

    # --- channels -------------------------------------------------------------------

    @contextmanager
    def open_channel(
        self, channel_id: str, speaker: Speaker, origin: float
    ) -> Iterator[CallChannel]:
        """Make a live call reachable as ``channel_id`` for as long as the block runs.

        A live channel with the same id (a re-dial) is replaced: it is published as
        ``disconnected`` now, and nothing it does later unregisters this one.
        """
        previous = self._channels.get(channel_id)
        if previous is not None:
            previous.state(CallState.DISCONNECTED, REPLACED_MESSAGE)
            previous.replaced = previous.closed = True
        channel = CallChannel(self, channel_id, speaker, origin)
        self._channels[channel_id] = channel
        self._finished.pop(channel_id, None)
        if self.link is not None:
            self.link.channel_opened(channel_id)
        try:
            yield channel
        finally:
            channel.closed = True
            if self._channels.get(channel_id) is channel:
                del self._channels[channel_id]
                self._finished[channel_id] = None
                while len(self._finished) > FINISHED_CHANNELS_KEPT:
                    self._finished.popitem(last=False)
                if self.link is not None:
                    self.link.channel_closed(channel_id)

    def channel_taken(self, channel_id: str) -> bool:
        """Another worker now holds ``channel_id`` (the platform re-dialled there): the
        channel here is replaced, silently (the new holder publishes the call's states
        from now on), and forgotten. False if there was no such channel."""
        channel = self._channels.pop(channel_id, None)
        if channel is None:
            return False
        channel.replaced = channel.closed = True
        return True

    def live_channels(self) -> list[str]:
        return list(self._channels)

    # --- events ---------------------------------------------------------------------

    def publish(self, event: ConversationEvent) -> None:
        """Hand a local call's ``event`` to every interested subscriber, and to the fleet,
        without waiting."""
        self.published += 1
        self._deliver(event)
        if self.link is not None:
            self.link.mirror(event)

    def deliver_remote(self, event: ConversationEvent) -> None:
        """Hand another worker's ``event`` to the subscribers here (not back to the fleet)."""
        self.received += 1
        self._deliver(event)

    @property
    def has_subscribers(self) -> bool:
        return bool(self._subscribers)

    def _deliver(self, event: ConversationEvent) -> None:
        for subscription in list(self._subscribers):
            if subscription.wants(event.channel_id):
                subscription._deliver(event)

    def subscribe(
        self, channel_ids: Iterable[str] | None = None, *, capacity: int | None = None
    ) -> Subscription:
        """Events of ``channel_ids`` (None: all channels) from now on::

        with bus.subscribe([call_id]) as events:
            async for event in events: ...
        """
        subscription = Subscription(self, channel_ids, capacity or self.subscriber_capacity)
        self._subscribers.add(subscription)
        return subscription

    # --- the operator ---------------------------------------------------------------

    async def send_message(
        self,
        channel_id: str,
        content: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        parent_id: str | None = None,
        local_only: bool = False,
    ) -> SendResult:
        """Have the bot say ``content`` in call ``channel_id``; return once it was sent.

        A call that is not here goes to the worker that holds it, through the link
        (unless ``local_only``: how a worker answers such a request).

        Errors (never raised, returned): 400 bad channel id, content or metadata, 413
        content over :data:`MAX_CONTENT_CHARS`, 404 no such call, 410 the call has ended,
        422 nothing speakable in the content; through a link also 503 (the bus or the
        holder cannot be reached) and 504 (the holder did not answer in time).
        """
        if not isinstance(channel_id, str) or not channel_id:
            return SendResult.failed(400, "channelId must be a non-empty string")
        if not isinstance(content, str) or not content.strip():
            return SendResult.failed(400, "content must be a non-empty string")
        if len(content) > MAX_CONTENT_CHARS:
            return SendResult.failed(413, f"content is longer than {MAX_CONTENT_CHARS} characters")
        if metadata is not None and not isinstance(metadata, Mapping):
            return SendResult.failed(400, "metadata must be an object")
        if parent_id is not None and not isinstance(parent_id, str):
            return SendResult.failed(400, "parentId must be a string")
        channel = self._channels.get(channel_id)
        if channel is None:
            ended = SendResult.failed(410, f"call {channel_id!r} has ended")
            if self.link is not None and not local_only:  # maybe re-dialled elsewhere
                result = await self.link.send_remote(
                    channel_id, content.strip(), dict(metadata or {}), parent_id
                )
                lost = result.status.error_data and result.status.error_data.status_code == 404
                return ended if lost and channel_id in self._finished else result
            if channel_id in self._finished:
                return ended
            return SendResult.failed(404, f"no call with channelId {channel_id!r}")
        try:
            return await channel.say(content.strip(), dict(metadata or {}), parent_id)
        except ConversationEnded:
            return SendResult.failed(410, f"call {channel_id!r} has ended")

    def statistics(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "received": self.received,
            "subscribers": len(self._subscribers),
            "dropped": self.dropped,
            "live_channels": len(self._channels),
        }
