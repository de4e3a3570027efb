"""Pipelines on a Redis Cluster that one dead node cannot fail as a whole.

redis-py's cluster pipeline sends each node its share, but once a node it routes to
refuses connections (a primary just died, its replica not promoted yet) the whole
``execute`` raises, also for the commands bound for healthy nodes, and keeps doing so
until the slot map no longer names that node (about a failover's length). For the
journal appends of all the rooms of a server, the watchers' reads and the revocation
checks that would mean one shard's failover stalls every shard.

``per_node`` sends one pipeline per node, the nodes in parallel: each command's result,
or the exception it (or its node) ended with, in order. A command whose slot has no
node right now goes alone through the client's ordinary path (which refreshes the map).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

__all__ = ["Command", "per_node"]

Command = tuple[Any, tuple[Any, ...]]  # (the key that routes it, the command's arguments)


async def per_node(cluster: RedisCluster, commands: Sequence[Command]) -> list[Any]:
    """Each command's reply or exception, in order (nothing raised)."""
    groups: dict[str, list[int]] = {}
    for index, (key, _) in enumerate(commands):
        try:
            node = cluster.get_node_from_key(key)
        except (RedisError, RedisClusterException):  # no node for the slot now (or no map yet)
            node = None
        groups.setdefault(node.name if node is not None else "", []).append(index)

    async def one(indexes: list[int]) -> list[Any]:
        try:
            async with cluster.pipeline(transaction=False) as pipe:
                for index in indexes:
                    pipe.execute_command(*commands[index][1])
                replies: list[Any] = await pipe.execute(raise_on_error=False)
                return replies
        except (RedisError, OSError) as exc:
            return [exc] * len(indexes)

    answers = await asyncio.gather(*(one(indexes) for indexes in groups.values()))
    results: list[Any] = [None] * len(commands)
    for indexes, replies in zip(groups.values(), answers, strict=True):
        for index, reply in zip(indexes, replies, strict=True):
            results[index] = reply
    return results
