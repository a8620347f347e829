"""Room ownership in a cluster: a lease in Redis with a fencing token.

A daemon claims a room it has open when nobody holds it: ``SET owner "<node> <token>"``
with a time to live, the token being the next value of the room's epoch counter (it
only grows). It renews its leases every ``renew_every`` seconds. Everything only the
owner may write is checked against the lease inside Redis by a script comparing the
exact "<node> <token>" (store.py), so a daemon whose lease lapsed cannot write as the
owner even before it notices. It notices on its own clock too: it stops counting itself
the owner ``margin`` seconds before the lease can have expired in Redis (measured from
when the renewal was *sent*), and the daemon is told (``on_lost``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from .keys import EVENTS, RoomKeys

logger = logging.getLogger("crdtnb.cluster")

_CLAIM = """
local current = redis.call('GET', KEYS[1])
if current then
  local mine = ARGV[1] .. ' '
  if string.sub(current, 1, #mine) == mine then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(string.sub(current, #mine + 1))
  end
  return 0
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. token, 'PX', ARGV[2])
return token
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[2], 'released ' .. ARGV[3] .. ' ' .. ARGV[2])
  return 1
end
return 0
"""


@dataclass
class Lease:
    token: int
    valid_until: float  # on this daemon's monotonic clock

    def holder(self, node: str) -> str:
        return f"{node} {self.token}"


class Leases:
    """This daemon's leases (implements ownership.Ownership)."""

    def __init__(
        self,
        redis: Redis,
        node: str,
        ttl: float = 3.0,
        renew_every: float = 1.0,
        margin: float = 0.5,
    ) -> None:
        self.redis = redis
        self.node = node
        self.ttl = ttl
        self.renew_every = renew_every
        self.margin = margin
        self.held: dict[str, Lease] = {}
        self.on_gained: Callable[[str], Awaitable[None]] | None = None
        self.on_lost: Callable[[str, str], Awaitable[None]] | None = None
        self._claim = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    @property
    def ttl_ms(self) -> int:
        return int(self.ttl * 1000)

    def owns(self, room: str) -> bool:
        lease = self.held.get(room)
        return lease is not None and time.monotonic() < lease.valid_until

    def holder(self, room: str) -> str | None:
        """The exact value our lease has in Redis (what fenced scripts compare)."""
        lease = self.held.get(room)
        return lease.holder(self.node) if lease is not None and self.owns(room) else None

    async def claim(self, room: str) -> bool:
        keys = RoomKeys(room)
        sent = time.monotonic()
        token = int(await self._claim(keys=[keys.owner, keys.epoch], args=[self.node, self.ttl_ms]))
        if token == 0:
            return False
        self.held[room] = Lease(token, sent + self.ttl - self.margin)
        logger.info("%s: owns %s (token %d)", self.node, room, token)
        return True

    async def release(self, room: str) -> None:
        lease = self.held.pop(room, None)
        if lease is None:
            return
        keys = RoomKeys(room)
        try:
            await self._release(keys=[keys.owner, EVENTS], args=[lease.holder(self.node), room, self.node])
        except Exception as exc:  # unreachable: the lease lapses by itself
            logger.warning("%s: could not release %s (%s); it lapses in %.1f s", self.node, room, exc, self.ttl)

    async def renew_all(self) -> None:
        """Renew every lease; report those that lapsed or were lost."""
        if not self.held:
            return
        rooms = list(self.held)
        sent = time.monotonic()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for room in rooms:
                    keys = RoomKeys(room)
                    await self._renew(keys=[keys.owner], args=[self.held[room].holder(self.node), self.ttl_ms], client=pipe)
                results: list[Any] = await pipe.execute()
        except Exception as exc:
            logger.warning("%s: renewing leases failed (%s)", self.node, exc)
            results = [None] * len(rooms)
        for room, renewed in zip(rooms, results):
            lease = self.held.get(room)
            if lease is None:
                continue
            if renewed == 1:
                lease.valid_until = sent + self.ttl - self.margin
            elif renewed == 0:
                await self._lose(room, "another server holds its lease now")
            elif time.monotonic() >= lease.valid_until:
                await self._lose(room, "its lease lapsed: Redis cannot be reached")

    async def _lose(self, room: str, reason: str) -> None:
        self.held.pop(room, None)
        logger.warning("%s: lost %s: %s", self.node, room, reason)
        if self.on_lost is not None:
            await self.on_lost(room, reason)

    async def run(self) -> None:
        """Renew until cancelled."""
        while True:
            await asyncio.sleep(self.renew_every)
            await self.renew_all()
