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
node. On a cluster a batch is one pipeline per node, so a shard failing over delays only
the checks of the sessions whose records it holds (``infra.cluster_pipeline``).
"""

from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from infra.cluster_pipeline import per_node
from infra.redis_url import is_cluster
from infra.resp_pipeline import RespPipeline

PREFIX = "sr:revoked:"

__all__ = ["PREFIX", "revocation_key", "revoke", "revoked"]


def revocation_key(sid: str) -> str:
    """The Redis key of the revocation record of session ``sid``."""
    return PREFIX + sid


async def revoke(redis: aioredis.Redis, sid: str, ttl_s: int) -> None:
    """Record that session ``sid`` is over, for ``ttl_s`` seconds (at least 1)."""
    await redis.set(revocation_key(sid), b"1", ex=max(1, int(ttl_s)))


async def revoked(
    redis: aioredis.Redis, sids: Iterable[str], lean: RespPipeline | None = None
) -> set[str]:
    """The subset of ``sids`` that are revoked, in one round trip (none for no ids).

    ``lean``: a room server's lean RESP path to the same Redis. Its periodic check of
    every open session (800 at 200 rooms of 4) took ~14 ms of redis-py Python in one
    turn, which every room's tick and every player's input waited for; packed and
    parsed in C it is ~1 ms (bench/chores.py)."""
    wanted = list(dict.fromkeys(sids))
    if not wanted:
        return set()
    if lean is not None:
        replies = await lean.execute([("EXISTS", revocation_key(sid)) for sid in wanted])
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return {sid for sid, found in zip(wanted, replies, strict=True) if int(found)}
    if is_cluster(redis) and len(wanted) > 1:
        return await _revoked_per_node(redis, wanted)  # type: ignore[arg-type]
    async with redis.pipeline(transaction=False) as pipe:
        for sid in wanted:
            pipe.exists(revocation_key(sid))
        results = await pipe.execute()
    return {sid for sid, found in zip(wanted, results, strict=True) if int(found)}


async def _revoked_per_node(cluster: RedisCluster, wanted: list[str]) -> set[str]:
    """On a cluster, one pipeline per node: while one shard fails over, the sessions
    whose records live on the others are still checked (the rest next time); raises only
    when no node answers."""
    keys = [revocation_key(sid) for sid in wanted]
    results = await per_node(cluster, [(key, ("EXISTS", key)) for key in keys])
    errors = [r for r in results if isinstance(r, Exception)]
    if errors and len(errors) == len(results):
        raise errors[0]
    return {
        sid
        for sid, found in zip(wanted, results, strict=True)
        if not isinstance(found, Exception) and int(found)
    }
