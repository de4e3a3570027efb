"""Session revocation records, shared by the login service (writer) and room servers (reader).

An access token carries ``sid``, the id of the refresh family it was issued from. When
that family is ended early — logout, or refresh-token reuse — the login service writes
``sr:revoked:<sid>`` with a TTL a little longer than an access token can still be
accepted (``access_ttl`` + 60 s; verifiers allow 30 s of leeway). Room servers check
the record at join, on re-auth and periodically, and end the session; once the record
expires every token of that session has expired too, so nothing is lost by forgetting.

Why one key per session and a pipeline of ``EXISTS`` to read them: the keys of many
sessions live in different Redis Cluster slots, so a multi-key ``EXISTS`` or ``MGET``
would be refused there; a non-transactional pipeline still costs one round trip per
node.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio as aioredis

PREFIX = "sr:revoked:"

__all__ = ["PREFIX", "revocation_key", "revoke", "revoked"]


def revocation_key(sid: str) -> str:
    """The Redis key of the revocation record of session ``sid``."""
    return PREFIX + sid


async def revoke(redis: aioredis.Redis, sid: str, ttl_s: int) -> None:
    """Record that session ``sid`` is over, for ``ttl_s`` seconds (at least 1)."""
    await redis.set(revocation_key(sid), b"1", ex=max(1, int(ttl_s)))


async def revoked(redis: aioredis.Redis, sids: Iterable[str]) -> set[str]:
    """The subset of ``sids`` that are revoked, in one round trip (none for no ids)."""
    wanted = list(dict.fromkeys(sids))
    if not wanted:
        return set()
    async with redis.pipeline(transaction=False) as pipe:
        for sid in wanted:
            pipe.exists(revocation_key(sid))
        results = await pipe.execute()
    return {sid for sid, found in zip(wanted, results, strict=True) if int(found)}
