"""Rate limits kept in Redis, so every replica shares them.

Two fixed-window counters (one INCR + EXPIRE round trip each):

- per client address: ``rate_limit_per_minute`` requests per 60 s window;
- per account: ``login_failures`` failed logins per ``login_failure_window``
  (15 min), counted on failure and cleared on success; once reached, logins are
  refused with 429 before any password hashing, so a guessing attack costs no CPU.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from auth.errors import RateLimited


class RateLimiter:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str = "auth:",
        per_minute: int = 600,
        login_failures: int = 5,
        login_window: int = 900,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.per_minute = per_minute
        self.login_failures = login_failures
        self.login_window = login_window

    async def hit_address(self, address: str) -> None:
        """Count one request from ``address``; raise RateLimited over the limit."""
        now = time.time()
        window = int(now // 60)
        key = f"{self.prefix}rl:ip:{address}:{window}"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, 61, nx=True)
            count, _ = await pipe.execute()
        if int(count) > self.per_minute:
            retry = int((window + 1) * 60 - now) + 1
            raise RateLimited(
                f"more than {self.per_minute} requests a minute from this address; "
                f"retry in {retry} s",
                retry_after=retry,
            )

    def _login_key(self, username: str) -> str:
        return f"{self.prefix}rl:login:{username.lower()}"

    async def check_login(self, username: str) -> None:
        """Raise RateLimited when the account has too many recent failures."""
        key = self._login_key(username)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.ttl(key)
            count, ttl = await pipe.execute()
        if count is not None and int(count) >= self.login_failures:
            retry = int(ttl) if ttl and int(ttl) > 0 else self.login_window
            raise RateLimited(
                f"too many failed logins for this account; retry in {retry} s",
                retry_after=retry,
                limit="login",
            )

    async def login_failed(self, username: str) -> None:
        key = self._login_key(username)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, self.login_window, nx=True)
            await pipe.execute()

    async def login_succeeded(self, username: str) -> None:
        await self.redis.delete(self._login_key(username))
