"""Refresh-token families in Redis: rotation, reuse detection, revocation.

A refresh token is ``<family>.<secret>``: opaque to clients, random, and stored
only as the SHA-256 of the whole string. Carrying the family id in the token
lets every key of a family share one Redis Cluster hash slot (``{family}``), so
rotation is one atomic Lua script even on a cluster.

Keys (prefix ``auth:`` by default):

- ``auth:fam:{F}`` — string ``<player id>``; present while the family is live.
  Deleting it revokes every token of the family.
- ``auth:rt:{F}:<sha256>`` — hash ``state`` (live|spent), ``sub``, ``name``,
  ``exp``, ``ttl`` (the family's lifetime), and once spent ``next`` (the key of the
  token that replaced it); kept until its own expiry even once spent, to recognise
  reuse.

Lifetime is per family, a sliding window: ``ttl`` seconds from the last login or
refresh. Account families get ``refresh_ttl`` (30 days), guest families
``guest_refresh_ttl`` (24 h), so a flood of guest logins cannot hold memory for a month.
Both keys a login writes get that TTL, and each refresh renews the family key and gives
the new token the same TTL (the spent token keeps its older, shorter one).

Refresh: a live token becomes spent and a new live token is added, atomically;
presenting a spent token revokes the family (a stolen token was used twice, so
neither the thief nor the player can go on). Of two concurrent refreshes of one
token exactly one succeeds — the other sees ``spent`` and, by the same rule,
revokes the family. The one exception is the same call run twice (the Redis client
retries a command after a timeout, when the first run may have happened): it names the
same new token, which only the service knows, and so gets the same answer instead of
revoking the family. Access tokens are stateless; their ``sid`` claim is the family id,
so revocation records (``infra.revocation``) can end the sessions they opened.
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
-- ARGV[1] now, ARGV[2] default ttl (s), ARGV[3] guest ttl (s), ARGV[4] guest id prefix
local tok = redis.call('HMGET', KEYS[2], 'state', 'exp', 'sub', 'name', 'ttl', 'next')
if not tok[1] then return {'unknown'} end
if redis.call('EXISTS', KEYS[1]) == 0 then return {'revoked'} end
if tok[1] == 'spent' and tok[6] == KEYS[3] then
  return {'ok', tok[3], tok[4]}  -- this very call, run again by a client retry
end
if tok[1] ~= 'live' then
  redis.call('DEL', KEYS[1])
  return {'reuse'}
end
if tonumber(tok[2]) <= tonumber(ARGV[1]) then return {'expired'} end
local ttl = tonumber(tok[5])
if not ttl then  -- a token from before per-family lifetimes
  if string.sub(tok[3], 1, string.len(ARGV[4])) == ARGV[4] then ttl = tonumber(ARGV[3])
  else ttl = tonumber(ARGV[2]) end
end
local exp = tonumber(ARGV[1]) + ttl
redis.call('HSET', KEYS[2], 'state', 'spent', 'next', KEYS[3])
redis.call('HSET', KEYS[3], 'state', 'live', 'exp', exp, 'sub', tok[3], 'name', tok[4],
           'ttl', ttl)
redis.call('EXPIRE', KEYS[3], ttl)
redis.call('EXPIRE', KEYS[1], ttl)
return {'ok', tok[3], tok[4]}
"""

_LOGOUT_LUA = """
-- KEYS[1] family, KEYS[2] presented token: revoke only if the token is one of ours
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class RefreshOutcome:
    """Result of a refresh attempt: ``status`` is ok|unknown|revoked|reuse|expired.

    ``family`` is the family id (the session id) whenever the token was one of ours.
    """

    status: str
    refresh_token: str | None = None
    player_id: str | None = None
    name: str | None = None
    family: str | None = None


def _split(token: Any) -> tuple[str, str] | None:
    if not isinstance(token, str) or len(token) > 256:
        return None
    parts = token.split(".")
    if len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1]


def family_of(token: str) -> str:
    """The family id (session id) of a refresh token this store issued."""
    return token.split(".", 1)[0]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class RefreshStore:
    """Stateless store of refresh families; everything lives in Redis."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str = "auth:",
        ttl: int = 2_592_000,
        guest_ttl: int = 86_400,
        guest_prefix: str = "g_",
    ):
        self.redis = redis
        self.prefix = prefix
        self.ttl = ttl
        self.guest_ttl = guest_ttl
        self.guest_prefix = guest_prefix
        self._refresh = redis.register_script(_REFRESH_LUA)
        self._logout = redis.register_script(_LOGOUT_LUA)

    def _fam_key(self, family: str) -> str:
        return f"{self.prefix}fam:{{{family}}}"

    def _tok_key(self, family: str, token: str) -> str:
        return f"{self.prefix}rt:{{{family}}}:{_digest(token)}"

    def ttl_for(self, player_id: str) -> int:
        """A new family's lifetime: guests get ``guest_ttl``, accounts ``ttl``."""
        return self.guest_ttl if player_id.startswith(self.guest_prefix) else self.ttl

    async def create(self, player_id: str, name: str, ttl: int | None = None) -> str:
        """Start a new family for a fresh login; return its first refresh token.

        Its id (``family_of(token)``) is the session id of the access tokens it yields.
        """
        ttl = self.ttl_for(player_id) if ttl is None else ttl
        family = secrets.token_urlsafe(12)
        token = f"{family}.{secrets.token_urlsafe(32)}"
        exp = int(time.time()) + ttl
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._fam_key(family), player_id, ex=ttl)
            pipe.hset(
                self._tok_key(family, token),
                mapping={"state": "live", "exp": exp, "sub": player_id, "name": name, "ttl": ttl},
            )
            pipe.expire(self._tok_key(family, token), ttl)
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
            args=[now, self.ttl, self.guest_ttl, self.guest_prefix],
        )
        status = _text(result[0])
        if status == "unknown":
            return RefreshOutcome(status)
        if status != "ok":
            return RefreshOutcome(status, family=family)
        return RefreshOutcome("ok", new, _text(result[1]), _text(result[2]), family)

    async def revoke(self, token: Any) -> str | None:
        """Revoke the family of ``token``; its id, or None when the token is not ours."""
        parts = _split(token)
        if parts is None:
            return None
        family = parts[0]
        known = await self._logout(
            keys=[self._fam_key(family), self._tok_key(family, token)], args=[]
        )
        return family if known else None


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
