"""An operator's message to a call held by another worker: request there, result back.

``sendMessage`` on any worker's ``/events`` reaches the call wherever it runs: the asking
worker looks the call up in the :class:`~pipeline.bot.call_directory.CallDirectory`,
publishes the request on the holder's inbox channel, and waits for the result on its own.
The holder speaks the line as if it had been asked locally (the same checks, the same
:class:`~pipeline.bot.messages.SendResult`) and publishes the result back. What can go
wrong past one process becomes a failed result in the same shape, never an exception:

- 404 no worker holds the call (or the directory says this one does, and it does not);
  410 it ended recently;
- 503 the bus cannot be reached, or the holder is not listening (nobody received the
  request), or it stopped (its directory record expired) while the line was pending;
- 504 the holder received the request and did not answer within ``timeout_s``;
- 429 the holder already speaks :data:`MAX_ANSWERING` routed lines.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from pipeline.bot.call_directory import CallDirectory, bus_errors
from pipeline.bot.event_codec import result_from_json
from pipeline.bot.messages import ConversationBus, SendResult

if TYPE_CHECKING:
    from glide import GlideClient

__all__ = ["DEFAULT_SEND_TIMEOUT_S", "MAX_ANSWERING", "SendRouter"]

logger = logging.getLogger("voicegraph.bus")

DEFAULT_SEND_TIMEOUT_S = 30.0
"""How long a routed line may take to be said (a reply in flight plays first)."""

MAX_ANSWERING = 64
"""Routed lines one worker speaks at once; more are refused with 429."""

LIVENESS_EVERY_S = 1.0

REQUEST = "sendMessage"
RESULT = "sendMessage.result"


class _Pending:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: SendResult | None = None


class SendRouter:
    """Both ends of routed ``sendMessage``: :meth:`ask` on the operator's worker,
    :meth:`request_received` on the holder's, :meth:`result_received` back."""

    def __init__(
        self,
        client: GlideClient,
        directory: CallDirectory,
        bus: ConversationBus,
        *,
        inbox_of: Callable[[str], str],
        timeout_s: float = DEFAULT_SEND_TIMEOUT_S,
    ) -> None:
        self.client = client
        self.directory = directory
        self.bus = bus
        self.inbox_of = inbox_of
        self.timeout_s = timeout_s
        self.liveness_every_s = min(LIVENESS_EVERY_S, timeout_s / 4)
        self._pending: dict[str, _Pending] = {}
        self.answering = 0
        self.asked = 0
        self.answered = 0
        self.failed: dict[int, int] = {}  # routed lines that failed, by status code

    @property
    def holder_id(self) -> str:
        return self.directory.holder.id

    def _failed(self, status_code: int, message: str) -> SendResult:
        self.failed[status_code] = self.failed.get(status_code, 0) + 1
        return SendResult.failed(status_code, message)

    # --- the operator's side ------------------------------------------------------------

    async def ask(
        self, channel_id: str, content: str, metadata: dict[str, Any], parent_id: str | None
    ) -> SendResult:
        """Have the worker that holds ``channel_id`` say ``content``; its result."""
        self.asked += 1
        request_id = uuid.uuid4().hex
        try:
            holder = await self.directory.holder_of(channel_id)
            if holder is None or holder == self.holder_id:
                if await self.directory.has_ended(channel_id):
                    return self._failed(410, f"call {channel_id!r} has ended")
                return self._failed(404, f"no call with channelId {channel_id!r}")
            request = {
                "type": REQUEST,
                "requestId": request_id,
                "replyTo": self.holder_id,
                "channelId": channel_id,
                "content": content,
                "metadata": metadata,
                "parentId": parent_id,
            }
            pending = self._pending[request_id] = _Pending()
            receivers = await self.client.publish(json.dumps(request), self.inbox_of(holder))
            if receivers == 0:
                return self._failed(503, f"the worker holding call {channel_id!r} is not listening")
            return await self._await_result(pending, holder, channel_id)
        except bus_errors() as exc:
            return self._failed(503, f"the event bus cannot be reached: {exc}")
        finally:
            self._pending.pop(request_id, None)

    async def _await_result(self, pending: _Pending, holder: str, channel_id: str) -> SendResult:
        with trio.move_on_after(self.timeout_s):
            while True:
                with trio.move_on_after(self.liveness_every_s):
                    await pending.done.wait()
                if pending.result is not None:
                    return pending.result
                if not await self.directory.is_alive(holder):
                    return self._failed(
                        503, f"the worker holding call {channel_id!r} stopped before answering"
                    )
        return self._failed(
            504, f"the worker holding call {channel_id!r} did not answer in {self.timeout_s:g} s"
        )

    def result_received(self, document: dict[str, Any]) -> None:
        """A holder's answer; one nobody waits for any more (timed out) is dropped."""
        pending = self._pending.get(str(document.get("requestId")))
        if pending is None:
            return
        try:
            pending.result = result_from_json(document.get("result"))
        except ValueError as exc:
            pending.result = self._failed(502, f"the holder's answer is malformed: {exc}")
        pending.done.set()

    # --- the holder's side --------------------------------------------------------------

    def request_received(self, document: dict[str, Any], nursery: trio.Nursery) -> None:
        """Speak a routed line (in ``nursery``) and publish its result to the asker."""
        reply_to, request_id = document.get("replyTo"), document.get("requestId")
        if not isinstance(reply_to, str) or not isinstance(request_id, str):
            logger.warning("routed request without replyTo/requestId dropped")
            return
        if self.answering >= MAX_ANSWERING:
            refused = SendResult.failed(429, f"more than {MAX_ANSWERING} routed lines in flight")
            nursery.start_soon(self._reply, reply_to, request_id, refused)
            return
        self.answering += 1
        nursery.start_soon(self._answer, reply_to, request_id, document)

    async def _answer(self, reply_to: str, request_id: str, document: dict[str, Any]) -> None:
        try:
            result = await self.bus.send_message(
                document.get("channelId"),  # type: ignore[arg-type]  (checked there)
                document.get("content"),  # type: ignore[arg-type]
                document.get("metadata"),
                parent_id=document.get("parentId"),
                local_only=True,
            )
        finally:
            self.answering -= 1
        self.answered += 1
        await self._reply(reply_to, request_id, result)

    async def _reply(self, reply_to: str, request_id: str, result: SendResult) -> None:
        answer = {"type": RESULT, "requestId": request_id, "result": result.as_json()}
        try:
            await self.client.publish(json.dumps(answer), self.inbox_of(reply_to))
        except bus_errors() as exc:  # the asker times out and says so
            logger.warning("routed result not delivered", extra={"error": str(exc)})

    def statistics(self) -> dict[str, Any]:
        return {
            "asked": self.asked,
            "answered": self.answered,
            "answering": self.answering,
            "failed": {str(code): count for code, count in sorted(self.failed.items())},
        }
