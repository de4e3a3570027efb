"""The rooms index: every room that exists, its owner, epoch and game, for the watchers.

    ROOM -> JSON {"owner", "epoch", "game"}

Advisory (the lease is the truth): written by the server that claims a room, removed
when it is deleted; every room server reads all of it on every failover poll, to find
rooms whose owner is gone. On one Redis it is the hash ``sr:rooms``. On a Redis Cluster
that read, from every server 20 times a second, would make one slot the hot spot, so the
index is split into ``ROOMS_SHARDS`` hashes (``sr:rooms:{rooms:00}`` …), one slot each,
a room in the bucket of the CRC-32 of its name; a read is one pipeline (one round trip
per node). docs/operations.md ("Redis Cluster") has the numbers.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from infra.cluster_pipeline import per_node
from infra.redis_url import is_cluster
from infra.room_keys import rooms_index_key, rooms_index_keys

__all__ = ["entry", "forget", "read", "record"]


def entry(owner: str, epoch: int, game: str) -> str:
    """A room's value in the index (for callers that batch the HSET themselves)."""
    return json.dumps({"owner": owner, "epoch": epoch, "game": game})


async def record(redis: aioredis.Redis, room: str, owner: str, epoch: int, game: str) -> None:
    """List ``room`` as owned by ``owner`` at ``epoch``."""
    await redis.hset(rooms_index_key(room, is_cluster(redis)), room, entry(owner, epoch, game))


async def forget(redis: aioredis.Redis, room: str) -> None:
    await redis.hdel(rooms_index_key(room, is_cluster(redis)), room)


async def read(redis: aioredis.Redis) -> dict[str, dict[str, Any]]:
    """The whole index (entries that are not JSON objects are skipped). On a cluster, the
    buckets of a shard that cannot answer right now are left out (all failing: raised)."""
    keys = rooms_index_keys(is_cluster(redis))
    parts: list[Any]
    if len(keys) == 1:
        parts = [await redis.hgetall(keys[0])]
    else:
        parts = await per_node(redis, [(key, ("HGETALL", key)) for key in keys])  # type: ignore[arg-type]
        if all(isinstance(part, Exception) for part in parts):
            raise parts[0]
    out: dict[str, dict[str, Any]] = {}
    for raw in parts:
        if isinstance(raw, Exception):
            continue  # a bucket whose shard cannot answer now (a failover): next poll
        for name, value in raw.items():
            try:
                entry = json.loads(value)
            except ValueError:
                continue
            if isinstance(entry, dict):
                out[name.decode() if isinstance(name, bytes) else str(name)] = entry
    return out
