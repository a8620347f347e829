"""Failed logins counted in Redis, so the limit holds for the whole cluster (a guesser
cannot spread attempts over the daemons): a sorted set of failure times per key."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from .keys import PREFIX


class RedisLoginLimiter:
    """At most ``attempts`` failed logins per ``window`` seconds, per user name and per
    client address, across every daemon of the cluster (sessions.LoginLimits)."""

    def __init__(self, redis: Redis, attempts: int = 5, window: float = 60.0) -> None:
        self.redis = redis
        self.attempts = attempts
        self.window = window

    @staticmethod
    def _key(key: str) -> str:
        return f"{PREFIX}:login:{key}"

    async def blocked(self, *keys: str) -> float:
        now = time.time()
        wait = 0.0
        for key in keys:
            name = self._key(key)
            await self.redis.zremrangebyscore(name, "-inf", now - self.window)
            failures = await self.redis.zrange(name, 0, -1, withscores=True)
            if len(failures) >= self.attempts:
                wait = max(wait, float(failures[0][1]) + self.window - now)
        return wait

    async def failed(self, *keys: str) -> None:
        now = time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in keys:
                name = self._key(key)
                pipe.zadd(name, {f"{now}:{id(pipe)}": now})
                pipe.expire(name, int(self.window) + 1)
            await pipe.execute()

    async def succeeded(self, *keys: str) -> None:
        await self.redis.delete(*(self._key(key) for key in keys))
