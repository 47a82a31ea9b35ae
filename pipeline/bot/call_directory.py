"""The call directory: which worker holds which call, and which workers are alive.

Kept in Redis/Valkey by every worker of a fleet (``serve --bus``), so that a worker can
route an operator's message to a call it does not hold, and any worker can answer for the
whole fleet (``GET /health/fleet``). Every entry expires unless its owner refreshes it:

``PREFIX:call:<callId>``
    the holder's id; set when the call opens, deleted when it ends (only by its holder),
    refreshed by the holder's heartbeat. A worker that is killed stops refreshing, and its
    calls leave the directory within ``ttl_s``.
``PREFIX:ended:<callId>``
    set for :data:`ENDED_KEPT_S` when a call ends, so a late message gets 410, not 404.
``PREFIX:holder:<holderId>``
    the worker's record (host, pid, worker index, calls, its bus counters), refreshed by
    the heartbeat with the same time to live; ``PREFIX:holders`` lists the ids ever seen
    and loses each once its record has expired.

A re-dial that lands on another worker moves the call: the new holder's claim overwrites
the entry and returns the old holder (told to let go), and an old holder's refresh never
takes an entry back (:data:`REFRESH`).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from glide import GlideClient

__all__ = ["ENDED_KEPT_S", "CallDirectory", "Holder"]

ENDED_KEPT_S = 600
"""How long an ended call is remembered as ended (410) rather than unknown (404)."""

REFRESH = """
local taken = {}
for _, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if (not holder) or holder == ARGV[1] then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
  else
    table.insert(taken, key)
  end
end
return taken
"""
"""Refresh the holder's entries (re-create those lost with a restarted Redis) unless
another worker has claimed them since; returns those keys."""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
  return 1
end
return 0
"""
"""Delete a call's entry and mark it ended, if it is still this holder's."""


@cache
def bus_errors() -> tuple[type[Exception], ...]:
    """What the Redis client raises when the server cannot be reached or refuses (loaded
    on first use: importing the client takes a while)."""
    from glide import GlideError

    return (GlideError,)


@cache
def _script(code: str) -> Any:
    from glide import Script

    return Script(code)


@dataclass(frozen=True, slots=True)
class Holder:
    """One worker of the fleet: a process, on a host, maybe worker ``worker`` of a
    ``serve --workers`` fleet there."""

    id: str
    host: str
    pid: int
    worker: int | None = None
    started_at: float = field(default_factory=time.time)

    @classmethod
    def this_process(cls, worker: int | None = None) -> Holder:
        """This process; its id is unique even when a pid is reused."""
        host, pid = socket.gethostname(), os.getpid()
        return cls(f"{host}/{pid}/{uuid.uuid4().hex[:6]}", host, pid, worker)


class CallDirectory:
    """The directory's keys for one worker (``holder``), over a connected client."""

    def __init__(self, client: GlideClient, holder: Holder, *, prefix: str, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, not {ttl_s}")
        self.client = client
        self.holder = holder
        self.prefix = prefix
        self.ttl_ms = max(1, round(ttl_s * 1000))

    def _call_key(self, call_id: str) -> str:
        return f"{self.prefix}:call:{call_id}"

    def _holder_key(self, holder_id: str) -> str:
        return f"{self.prefix}:holder:{holder_id}"

    @property
    def _holders_key(self) -> str:
        return f"{self.prefix}:holders"

    # --- this worker's calls ------------------------------------------------------------

    async def claim(self, call_id: str) -> str | None:
        """List ``call_id`` as this worker's; the other worker that held it, if any."""
        from glide import ExpirySet, ExpiryType

        previous = await self.client.set(
            self._call_key(call_id),
            self.holder.id,
            expiry=ExpirySet(ExpiryType.MILLSEC, self.ttl_ms),
            return_old_value=True,
        )
        if previous is None or previous.decode() == self.holder.id:
            return None
        return previous.decode()

    async def release(self, call_id: str) -> bool:
        """Take ``call_id`` out (it ended here); False if another worker holds it now."""
        keys = [self._call_key(call_id), f"{self.prefix}:ended:{call_id}"]
        released = await self.client.invoke_script(
            _script(RELEASE), keys=keys, args=[self.holder.id, str(ENDED_KEPT_S)]
        )
        return released == 1

    async def heartbeat(self, call_ids: list[str], record: dict[str, Any]) -> list[str]:
        """Say this worker is alive (``record``: what the fleet view shows of it) and keep
        its calls listed; the calls another worker has claimed since (let them go)."""
        from glide import ExpirySet, ExpiryType

        document = {**self.describe(), **record, "at": time.time()}
        await self.client.set(
            self._holder_key(self.holder.id),
            json.dumps(document),
            expiry=ExpirySet(ExpiryType.MILLSEC, self.ttl_ms),
        )
        await self.client.sadd(self._holders_key, [self.holder.id])
        if not call_ids:
            return []
        keys = [self._call_key(call_id) for call_id in call_ids]
        taken = await self.client.invoke_script(
            _script(REFRESH), keys=keys, args=[self.holder.id, str(self.ttl_ms)]
        )
        start = len(self._call_key(""))
        return [key.decode()[start:] for key in taken or []]

    async def leave(self, call_ids: list[str]) -> None:
        """This worker stops: its record and what is left of its calls go now, not at
        their expiry."""
        for call_id in call_ids:
            await self.release(call_id)
        await self.client.delete([self._holder_key(self.holder.id)])
        await self.client.srem(self._holders_key, [self.holder.id])

    def describe(self) -> dict[str, Any]:
        holder = self.holder
        return {
            "holder": holder.id,
            "host": holder.host,
            "pid": holder.pid,
            "worker": holder.worker,
            "started_at": holder.started_at,
        }

    # --- the fleet ----------------------------------------------------------------------

    async def holder_of(self, call_id: str) -> str | None:
        """The id of the worker that holds ``call_id`` (None: no live worker does)."""
        holder = await self.client.get(self._call_key(call_id))
        return None if holder is None else holder.decode()

    async def has_ended(self, call_id: str) -> bool:
        """Whether ``call_id`` ended in the last :data:`ENDED_KEPT_S` seconds."""
        return await self.client.exists([f"{self.prefix}:ended:{call_id}"]) == 1

    async def is_alive(self, holder_id: str) -> bool:
        return await self.client.exists([self._holder_key(holder_id)]) == 1

    async def holders(self) -> list[dict[str, Any]]:
        """The records of the live workers, by host and worker index; the ids of those
        whose record expired are forgotten on the way."""
        ids = sorted(member.decode() for member in await self.client.smembers(self._holders_key))
        if not ids:
            return []
        records = await self.client.mget([self._holder_key(holder_id) for holder_id in ids])
        alive, gone = [], []
        for holder_id, raw in zip(ids, records, strict=True):
            if raw is None:
                gone.append(holder_id)
                continue
            try:
                alive.append(json.loads(raw))
            except ValueError:
                gone.append(holder_id)
        if gone:
            await self.client.srem(self._holders_key, gone)
        alive.sort(key=lambda r: (str(r.get("host")), r.get("worker") or 0, str(r.get("holder"))))
        return alive

    async def fleet(self) -> dict[str, Any]:
        """Every live worker of the fleet, with its calls: what ``/health/fleet`` shows."""
        records = await self.holders()
        now = time.time()
        detail = [
            {**record, "alive": True, "age_s": round(now - float(record.get("at", now)), 3)}
            for record in records
        ]
        return {
            "status": "ok" if detail else "degraded",
            "workers": len(detail),
            "calls": sum(int(record.get("calls") or 0) for record in detail),
            "detail": detail,
        }
