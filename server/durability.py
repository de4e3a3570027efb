"""How far a tick must reach before it is published: the primary (``local``) or a replica.

    local    the primary's reply: the tick is in its memory and, per ``appendfsync``, in
             its AOF within a second. A primary that dies before its replica has the tick
             takes it along at a failover (replication is asynchronous).
    replica  the journal appends of a tick leave in one pipeline followed by
             ``WAIT 1 <replica_wait_ms>`` on the same connection (on a Redis Cluster: one
             such pipeline per node that got appends). ``WAIT`` counts the replicas that
             have every write this connection made, so a tick is published only once a
             replica holds it, and a failover that promotes that replica loses nothing
             anyone saw. Still one round trip per tick. Given the batcher's
             ``RespPipeline`` (plain Redis and Sentinel), the pipeline and its WAIT go
             out on that one connection (infra/resp_pipeline.py).

Why ``WAIT`` and not ``WAITAOF 0 1``: ``WAITAOF`` also waits for the replica's fsync,
which a failover does not need (the promoted replica serves from memory), and it costs a
20 Hz room its tick: on Valkey 8.1 a replica reports its fsynced offset only in its
once-a-second ``REPLCONF ACK``, so ``WAITAOF 0 1`` took 956 ms at p50 against 0.5 ms for
``WAIT 1`` (appendfsync everysec or always, same host; docs/operations.md "Durability").

A write the replicas did not confirm in time is on the primary but unpublished: the
caller gets ``ReplicaTimeout`` (a Redis ``TimeoutError``, so it is retried like any
transient Redis error). Retrying an append whose entry is already there is confirmed with
``confirm`` (a fenced lease renewal, itself a replicated write, plus ``WAIT``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from infra.redis_scripts import ScriptCall, evalsha, run_pipelined
from infra.redis_url import is_cluster
from infra.resp_pipeline import RespPipeline

LOCAL = "local"
REPLICA = "replica"
LEVELS = (LOCAL, REPLICA)
# Replicas that must hold a tick under ``replica``.
REPLICAS = 1

# A node's reply that means the slot map is stale (a failover moved the slot, or the node
# is gone): the call is retried after the map is refreshed. Any other error is the call's
# own (FENCED, ...).
_STALE_MAP = (
    MovedError,
    AskError,
    TryAgainError,
    ClusterDownError,
    SlotNotCoveredError,
    RedisConnectionError,
    RedisTimeoutError,  # a node that does not answer (and ReplicaTimeout: cheap to check)
    OSError,
)

__all__ = ["LEVELS", "LOCAL", "REPLICA", "Durability", "ReplicaTimeout"]


class ReplicaTimeout(RedisTimeoutError):
    """No replica confirmed a write within ``replica_wait_ms``: it is on the primary only
    and must not be published yet (retry; a room that cannot confirm stops serving when
    its lease margin runs out, as when Redis is unreachable)."""


class Durability:
    """Runs batches of script calls as durably as the deployment's setting says."""

    def __init__(self, level: str = LOCAL, wait_ms: int = 500) -> None:
        if level not in LEVELS:
            raise ValueError(f"durability must be one of {', '.join(LEVELS)}, not {level!r}")
        self.level = level
        self.wait_ms = wait_ms

    @property
    def replicated(self) -> bool:
        return self.level == REPLICA

    async def run(
        self, redis: aioredis.Redis, calls: Sequence[ScriptCall], fast: RespPipeline | None = None
    ) -> list[Any]:
        """Each call's result, or the exception it ended with, in order. Under ``replica``
        a call that succeeded on a node whose ``WAIT`` fell short ends with
        ``ReplicaTimeout``. Errors of the whole batch (Redis unreachable) are raised.
        ``fast``: the lean path to ``redis`` (plain Redis and Sentinel; see the module
        docstring)."""
        if not self.replicated:
            return await run_pipelined(redis, calls, fast)
        if not calls:
            return []
        if not is_cluster(redis):
            return await self._run_on(redis, None, calls, fast)
        return await self._run_per_node(redis, calls)  # type: ignore[arg-type]

    async def _run_per_node(self, cluster: RedisCluster, calls: Sequence[ScriptCall]) -> list[Any]:
        """One pipeline (appends + WAIT) per node, on one connection of that node; the
        nodes in parallel."""
        if not cluster.nodes_manager.slots_cache:
            await cluster.initialize()  # a client's first command: no slot map yet
        groups: dict[str, tuple[ClusterNode, list[int]]] = {}
        results: list[Any] = [None] * len(calls)
        stale: list[Any] = []  # a key of each group whose node's slot map looked stale
        for index, (_, keys, _) in enumerate(calls):
            try:
                node = cluster.get_node_from_key(keys[0])
            except SlotNotCoveredError:  # the slot map is being refreshed (a failover)
                results[index] = RedisConnectionError(
                    "no node serves this room's slot right now (a failover?); retry"
                )
                stale.append(keys[0])
                continue
            assert node is not None  # a primary (replica=False) is always there
            groups.setdefault(node.name, (node, []))[1].append(index)

        async def one(node: ClusterNode, indexes: list[int]) -> None:
            try:
                done = await self._run_on(None, node, [calls[i] for i in indexes])
            except (RedisError, OSError) as exc:
                done = [exc for _ in indexes]
            for index, result in zip(indexes, done, strict=True):
                results[index] = result
            if any(isinstance(r, _STALE_MAP) for r in done):
                stale.append(calls[indexes[0]][1][0])

        await asyncio.gather(*(one(node, indexes) for node, indexes in groups.values()))
        for key in stale[:1]:
            await _refresh_slots(cluster, key)
        return results

    async def _run_on(
        self,
        redis: aioredis.Redis | None,
        node: ClusterNode | None,
        calls: Sequence[ScriptCall],
        fast: RespPipeline | None = None,
    ) -> list[Any]:
        """``calls`` then WAIT, on one connection of ``redis`` (plain; ``fast``'s, if
        given) or ``node``; a script the server lacks is loaded and the whole group sent
        again (the WAIT must follow every write it vouches for)."""
        for _attempt in range(2):
            replies = await self._send(redis, node, calls, fast)
            results, acked = replies[:-1], replies[-1]
            missing = {calls[i][0] for i, r in enumerate(results) if isinstance(r, NoScriptError)}
            if not missing:
                return _vouch(results, acked, self.wait_ms)
            for script in missing:
                await _load(redis, node, script, fast)
        return _vouch(results, acked, self.wait_ms)

    async def _send(
        self,
        redis: aioredis.Redis | None,
        node: ClusterNode | None,
        calls: Sequence[ScriptCall],
        fast: RespPipeline | None = None,
    ) -> list[Any]:
        commands = [evalsha(call) for call in calls]
        commands.append(("WAIT", REPLICAS, self.wait_ms))
        if fast is not None and node is None:
            # The WAIT may take its whole timeout before it answers.
            return await fast.execute(commands, grace=self.wait_ms / 1000)
        if node is not None:
            stack = [PipelineCommand(i, *command) for i, command in enumerate(commands)]
            await node.execute_pipeline(stack)
            return [command.result for command in stack]
        assert redis is not None
        async with redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    async def confirm(
        self, redis: aioredis.Redis, renew: ScriptCall, fast: RespPipeline | None = None
    ) -> None:
        """Confirm that a replica holds everything written so far for a room: ``renew``
        (the room's fenced lease renewal: a write on the room's node) and WAIT. No-op
        under ``local``. Raises the renewal's own error (FENCED) or ReplicaTimeout.
        ``fast``: the connection the room's appends went out on (WAIT counts that
        connection's writes; the renewal is one of them either way)."""
        if not self.replicated:
            return
        (result,) = await self.run(redis, [renew], fast)
        if isinstance(result, BaseException):
            raise result


def _vouch(results: list[Any], acked: Any, wait_ms: int) -> list[Any]:
    """Calls that succeeded stand only if WAIT counted a replica."""
    if isinstance(acked, int) and acked >= REPLICAS:
        return results
    reason = acked if isinstance(acked, BaseException) else f"{acked} replicas"
    timeout = ReplicaTimeout(f"no replica confirmed the write within {wait_ms} ms ({reason})")
    return [r if isinstance(r, BaseException) else timeout for r in results]


async def _refresh_slots(cluster: RedisCluster, key: Any) -> None:
    """Let redis-py's own command path follow the redirect or mark its slot map stale (a
    keyed read it routes itself), so the retry goes to the slot's current primary."""
    with contextlib.suppress(RedisError, OSError):
        await cluster.exists(key)


async def _load(
    redis: aioredis.Redis | None,
    node: ClusterNode | None,
    script: AsyncScript,
    fast: RespPipeline | None = None,
) -> None:
    if fast is not None and node is None:
        (reply,) = await fast.execute([("SCRIPT", "LOAD", script.script)])
        if isinstance(reply, Exception):
            raise reply
        return
    if node is not None:
        await node.execute_command("SCRIPT", "LOAD", script.script)
    else:
        assert redis is not None
        await redis.script_load(script.script)
