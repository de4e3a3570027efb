"""Keep guest logins from filling Redis: a memory watermark, read at most every few seconds.

Every guest login writes a refresh family (two keys), and anyone can ask for one. With
``maxmemory`` set and ``noeviction`` (the only safe policy, see
``infra.redis_health``), a full Redis refuses *every* write — room leases and
journals too, which fences every room. So the login service stops creating new state
a margin before that: when ``used_memory`` is above ``memory_watermark`` (0.8) of
``maxmemory``, ``POST /v1/guest`` and ``POST /v1/accounts`` answer
``503 unavailable`` with ``Retry-After``, and write nothing. Logins to existing
accounts, refreshes and logouts still work (they are bounded by the accounts that
exist), and the margin is left to the room servers.

``INFO memory`` is read at most once per ``memory_check_interval`` (2 s) per process,
by one request while the others use the cached answer. Without a limit
(``maxmemory 0``) there is nothing to compare with and nothing is refused; the start-up
check warns about that instead. If the read fails, the guard lets the request through:
the write itself will then fail (503) or succeed on its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from auth.errors import Unavailable
from infra.redis_health import MemoryUsage, memory_usage

RETRY_AFTER_S = 30


class MemoryGuard:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        watermark: float = 0.8,
        interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.watermark = watermark
        self.interval = interval
        self._clock = clock
        self._usage: MemoryUsage | None = None
        self._read_at: float | None = None
        self._lock = asyncio.Lock()
        self.reads = 0  # INFO memory round trips, for tests

    async def usage(self) -> MemoryUsage | None:
        """The cached ``INFO memory`` answer, re-read when older than ``interval``."""
        if self._fresh():
            return self._usage
        async with self._lock:
            if self._fresh():  # another request read it while we waited
                return self._usage
            self._read_at = self._clock()
            self.reads += 1
            try:
                self._usage = await memory_usage(self.redis)
            except RedisError:
                self._usage = None
            return self._usage

    def _fresh(self) -> bool:
        return self._read_at is not None and self._clock() - self._read_at < self.interval

    async def check(self) -> None:
        """Raise ``Unavailable`` (503, Retry-After) when Redis is above the watermark."""
        usage = await self.usage()
        fraction = usage.fraction if usage is not None else None
        if fraction is not None and fraction > self.watermark:
            raise Unavailable(
                f"the login store is nearly full ({fraction:.0%} of its memory); new guests "
                f"and accounts are paused, retry in {RETRY_AFTER_S} s",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
