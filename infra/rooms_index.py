"""The rooms index: every room that exists, its owner, epoch and game, for the watchers.

    ROOM -> JSON {"owner", "epoch", "game"}

Advisory (the lease is the truth): written by the server that claims a room, removed
when it is deleted; every room server's failover watcher reads all of it every
``lease_ms / 4`` and when a peer dies (server/watched_rooms.py), to find rooms whose
owner is gone. On one Redis it is the hash ``sr:rooms``. On a Redis Cluster the index is
split into ``ROOMS_SHARDS`` hashes (``sr:rooms:{rooms:00}`` …), one slot each, so that
no slot is the hot spot of those reads, a room in the bucket of the CRC-32 of its name;
a read is one pipeline (one round trip per node). docs/operations.md ("Redis Cluster")
has the numbers.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import redis.asyncio as aioredis

from infra.cluster_pipeline import per_node
from infra.redis_url import is_cluster
from infra.room_keys import ROOMS_SHARDS, rooms_index_key, rooms_index_keys

__all__ = ["bucket_of", "entry", "forget", "read", "read_buckets", "record"]


def entry(owner: str, epoch: int, game: str) -> str:
    """A room's value in the index (for callers that batch the HSET themselves)."""
    return json.dumps({"owner": owner, "epoch": epoch, "game": game})


async def record(redis: aioredis.Redis, room: str, owner: str, epoch: int, game: str) -> None:
    """List ``room`` as owned by ``owner`` at ``epoch``."""
    await redis.hset(rooms_index_key(room, is_cluster(redis)), room, entry(owner, epoch, game))


async def forget(redis: aioredis.Redis, room: str) -> None:
    await redis.hdel(rooms_index_key(room, is_cluster(redis)), room)


def bucket_of(room: str, sharded: bool) -> int:
    """The position of ``room``'s bucket in ``read_buckets``' answer."""
    if not sharded:
        return 0
    return zlib.crc32(room.encode()) % ROOMS_SHARDS


async def read_buckets(
    redis: aioredis.Redis, parsed: dict[bytes, dict[str, Any]] | None = None
) -> list[dict[str, dict[str, Any]] | None]:
    """Every bucket of the index (one on one Redis); None for a bucket whose shard
    cannot answer right now (all failing: raised). Entries that are not JSON objects are
    skipped. ``parsed`` (raw value -> entry), kept by the caller across reads, saves
    decoding the values that did not change since the last read (most of them)."""
    keys = rooms_index_keys(is_cluster(redis))
    parts: list[Any]
    if len(keys) == 1:
        parts = [await redis.hgetall(keys[0])]
    else:
        parts = await per_node(redis, [(key, ("HGETALL", key)) for key in keys])  # type: ignore[arg-type]
        if all(isinstance(part, Exception) for part in parts):
            raise parts[0]
    cache = parsed if parsed is not None else {}
    fresh: dict[bytes, dict[str, Any]] = {}
    out: list[dict[str, dict[str, Any]] | None] = []
    for raw in parts:
        if isinstance(raw, Exception):
            out.append(None)  # a bucket whose shard cannot answer now (a failover)
            continue
        bucket: dict[str, dict[str, Any]] = {}
        for name, value in raw.items():
            key = value if isinstance(value, bytes) else str(value).encode()
            decoded = cache.get(key)
            if decoded is None:
                try:
                    decoded = json.loads(value)
                except ValueError:
                    continue
                if not isinstance(decoded, dict):
                    continue
            fresh[key] = decoded
            bucket[name.decode() if isinstance(name, bytes) else str(name)] = decoded
        out.append(bucket)
    if parsed is not None:  # keep only what this read saw: the cache never outgrows it
        parsed.clear()
        parsed.update(fresh)
    return out


async def read(redis: aioredis.Redis) -> dict[str, dict[str, Any]]:
    """The whole index (entries that are not JSON objects are skipped). On a cluster, the
    buckets of a shard that cannot answer right now are left out (all failing: raised)."""
    out: dict[str, dict[str, Any]] = {}
    for bucket in await read_buckets(redis):
        if bucket is not None:
            out.update(bucket)
    return out
