"""Rate limits kept in Redis, so every replica shares them.

Two fixed-window counters:

- **per client bucket** (``auth.clientaddr``: an IPv4 address, an IPv6 /64):
  ``rate_limit_per_minute`` requests per 60 s window (one INCR + EXPIRE round trip).

- **per account**: at most ``login_failures`` password evaluations that can fail per
  ``login_failure_window`` (15 min). The counter is a *reservation*, taken before any
  hashing by one atomic Lua script: it refuses when the count has reached the limit,
  else increments it (starting the window on the first attempt). So N concurrent
  guesses for one account are at most ``login_failures`` argon2 evaluations; the rest
  get 429 at once and cost no CPU. Refused attempts are not counted and do not extend
  the window.

  What each outcome does with its slot:

  - a **wrong password** (or unknown user) keeps it: it is a counted failure;
  - a **success** gives back its own slot only. It does **not** clear the failures of
    other attempts: clearing them would let a guessing burst in flight (or an attacker
    interleaving guesses with the real player's logins) start over after every
    success. The failures expire with their window;
  - an attempt that was **not evaluated** (hashing at capacity, Redis error after the
    reservation) gives its slot back too, since it revealed nothing.

  Returning a slot after its window has ended never creates a counter without expiry
  (the script only decrements an existing key). At a window boundary a success may
  return its slot to the next window: one more attempt, once.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from auth.errors import RateLimited

# KEYS[1] counter; ARGV[1] limit, ARGV[2] window (s). -> {1, count} taken | {0, ttl} refused
_RESERVE_LUA = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count >= tonumber(ARGV[1]) then
  local ttl = redis.call('TTL', KEYS[1])
  if ttl < 0 then
    redis.call('EXPIRE', KEYS[1], ARGV[2])
    ttl = tonumber(ARGV[2])
  end
  return {0, ttl}
end
count = redis.call('INCR', KEYS[1])
if count == 1 or redis.call('TTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return {1, count}
"""

# KEYS[1] counter: give one slot back, never creating a key (it would have no TTL).
_RELEASE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local count = redis.call('DECR', KEYS[1])
if count <= 0 then redis.call('DEL', KEYS[1]) end
return count
"""


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
        self._reserve = redis.register_script(_RESERVE_LUA)
        self._release = redis.register_script(_RELEASE_LUA)

    async def hit_address(self, bucket: str) -> None:
        """Count one request from ``bucket``; raise RateLimited over the limit."""
        now = time.time()
        window = int(now // 60)
        key = f"{self.prefix}rl:ip:{bucket}:{window}"
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

    def login_key(self, username: str) -> str:
        return f"{self.prefix}rl:login:{username.lower()}"

    async def reserve_login(self, username: str) -> None:
        """Take one login attempt slot for ``username`` before hashing; raise RateLimited
        (limit "login", Retry-After = the window's remaining seconds) when none is left."""
        taken, value = await self._reserve(
            keys=[self.login_key(username)], args=[self.login_failures, self.login_window]
        )
        if not int(taken):
            retry = int(value) if int(value) > 0 else self.login_window
            raise RateLimited(
                f"too many failed logins for this account; retry in {retry} s",
                retry_after=retry,
                limit="login",
            )

    async def release_login(self, username: str) -> None:
        """Give back a slot: the attempt succeeded, or was never evaluated."""
        await self._release(keys=[self.login_key(username)], args=[])
