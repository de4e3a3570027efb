"""Refresh-token families in Redis: rotation, reuse detection, revocation.

A refresh token is ``<family>.<secret>``: opaque to clients, random, and stored
only as the SHA-256 of the whole string. Carrying the family id in the token
lets every key of a family share one Redis Cluster hash slot (``{family}``), so
rotation is one atomic Lua script even on a cluster.

Keys (prefix ``auth:`` by default):

- ``auth:fam:{F}`` — string ``<player id>``; present while the family is live.
  Deleting it revokes every token of the family.
- ``auth:rt:{F}:<sha256>`` — hash ``state`` (live|spent), ``sub``, ``name``,
  ``exp``; kept until its own expiry even once spent, to recognise reuse.

Refresh: a live token becomes spent and a new live token is added, atomically;
presenting a spent token revokes the family (a stolen token was used twice, so
neither the thief nor the player can go on). Of two concurrent refreshes of one
token exactly one succeeds — the other sees ``spent`` and, by the same rule,
revokes the family. Access tokens are stateless and simply expire.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

_REFRESH_LUA = """
-- KEYS[1] family, KEYS[2] presented token, KEYS[3] new token
-- ARGV[1] now, ARGV[2] ttl seconds, ARGV[3] new expiry (unix seconds)
local tok = redis.call('HMGET', KEYS[2], 'state', 'exp', 'sub', 'name')
if not tok[1] then return {'unknown'} end
if redis.call('EXISTS', KEYS[1]) == 0 then return {'revoked'} end
if tok[1] ~= 'live' then
  redis.call('DEL', KEYS[1])
  return {'reuse'}
end
if tonumber(tok[2]) <= tonumber(ARGV[1]) then return {'expired'} end
redis.call('HSET', KEYS[2], 'state', 'spent')
redis.call('HSET', KEYS[3], 'state', 'live', 'exp', ARGV[3], 'sub', tok[3], 'name', tok[4])
redis.call('EXPIRE', KEYS[3], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return {'ok', tok[3], tok[4]}
"""

_LOGOUT_LUA = """
-- KEYS[1] family, KEYS[2] presented token: revoke only if the token is one of ours
if redis.call('EXISTS', KEYS[2]) == 1 then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class RefreshOutcome:
    """Result of a refresh attempt: ``status`` is ok|unknown|revoked|reuse|expired."""

    status: str
    refresh_token: str | None = None
    player_id: str | None = None
    name: str | None = None


def _split(token: Any) -> tuple[str, str] | None:
    if not isinstance(token, str) or len(token) > 256:
        return None
    parts = token.split(".")
    if len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class RefreshStore:
    """Stateless store of refresh families; everything lives in Redis."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str = "auth:", ttl: int = 2_592_000):
        self.redis = redis
        self.prefix = prefix
        self.ttl = ttl
        self._refresh = redis.register_script(_REFRESH_LUA)
        self._logout = redis.register_script(_LOGOUT_LUA)

    def _fam_key(self, family: str) -> str:
        return f"{self.prefix}fam:{{{family}}}"

    def _tok_key(self, family: str, token: str) -> str:
        return f"{self.prefix}rt:{{{family}}}:{_digest(token)}"

    async def create(self, player_id: str, name: str) -> str:
        """Start a new family for a fresh login; return its first refresh token."""
        family = secrets.token_urlsafe(12)
        token = f"{family}.{secrets.token_urlsafe(32)}"
        exp = int(time.time()) + self.ttl
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._fam_key(family), player_id, ex=self.ttl)
            pipe.hset(
                self._tok_key(family, token),
                mapping={"state": "live", "exp": exp, "sub": player_id, "name": name},
            )
            pipe.expire(self._tok_key(family, token), self.ttl)
            await pipe.execute()
        return token

    async def rotate(self, token: Any) -> RefreshOutcome:
        """Spend ``token`` and return a new one of the same family, atomically."""
        parts = _split(token)
        if parts is None:
            return RefreshOutcome("unknown")
        family = parts[0]
        new = f"{family}.{secrets.token_urlsafe(32)}"
        now = int(time.time())
        result = await self._refresh(
            keys=[self._fam_key(family), self._tok_key(family, token), self._tok_key(family, new)],
            args=[now, self.ttl, now + self.ttl],
        )
        status = _text(result[0])
        if status != "ok":
            return RefreshOutcome(status)
        return RefreshOutcome("ok", new, _text(result[1]), _text(result[2]))

    async def revoke(self, token: Any) -> bool:
        """Revoke the family of ``token``; False when the token is not ours."""
        parts = _split(token)
        if parts is None:
            return False
        family = parts[0]
        deleted = await self._logout(
            keys=[self._fam_key(family), self._tok_key(family, token)], args=[]
        )
        return bool(deleted)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
