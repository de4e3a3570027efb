"""Lua script calls sent as one non-transactional pipeline, on plain Redis and on a cluster.

Why not redis-py's own: on a cluster its pipeline refuses ``EVALSHA`` (it cannot load a
script a node lacks, and a node lacks every script after a failover or a restart). Here
each call goes out as ``EVALSHA``; a call a node answers with ``NOSCRIPT`` (nothing ran)
is run again alone through its ``AsyncScript``, which loads the script there first. On
plain Redis too (redis-py's pipeline would check every script with a ``SCRIPT EXISTS``
round trip before each execute).

On plain Redis and Sentinel, given a ``RespPipeline`` (infra/resp_pipeline.py: the room
server's per-tick batches), the calls go out on it instead of redis-py's pipeline: the
same replies and errors at a fraction of the CPU; a ``NOSCRIPT`` there is answered by
loading each missing script and re-sending the calls it failed, in one more round trip.

On a cluster the calls go out as one pipeline per node, the nodes in parallel
(infra/cluster_pipeline.py): one round trip per node, each call still atomic on its own
slot (every script here touches keys of one slot; tests/test_script_slots.py), and a node
that cannot answer fails its own calls only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from infra.cluster_pipeline import per_node
from infra.redis_url import is_cluster
from infra.resp_pipeline import RespPipeline

ScriptCall = tuple[AsyncScript, Sequence[Any], Sequence[Any]]  # script, keys, args

__all__ = ["ScriptCall", "run_pipelined"]

_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


async def run_pipelined(
    redis: aioredis.Redis, calls: Sequence[ScriptCall], fast: RespPipeline | None = None
) -> list[Any]:
    """Each call's result, or the exception it ended with, in order (one call's error
    never hides another's result). Errors of the pipeline as a whole (Redis unreachable)
    are raised. ``fast``: the lean path to ``redis`` (ignored on a cluster)."""
    if not calls:
        return []
    if fast is not None and not is_cluster(redis):
        return await _on_pipe(fast, calls)
    if is_cluster(redis):
        results = await _per_node(redis, calls)  # type: ignore[arg-type]
    else:
        # EVALSHA as is, like the cluster path: redis-py's scripts in a pipeline send a
        # SCRIPT EXISTS round trip before every execute (a second round trip per tick
        # for the journal batch); a NOSCRIPT reply is run again alone below.
        async with redis.pipeline(transaction=False) as pipe:
            for script, keys, args in calls:
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            results = await pipe.execute(raise_on_error=False)
    for index, result in enumerate(results):
        if isinstance(result, NoScriptError):
            script, keys, args = calls[index]
            try:
                results[index] = await _alone(redis, script, keys, args)
            except Exception as exc:  # that call's own error, as above
                results[index] = exc
    return results


def evalsha(call: ScriptCall) -> tuple[Any, ...]:
    """The ``EVALSHA`` command of one call."""
    script, keys, args = call
    return ("EVALSHA", script.sha, len(keys), *keys, *args)


async def _on_pipe(pipe: RespPipeline, calls: Sequence[ScriptCall]) -> list[Any]:
    """``calls`` on ``pipe``; the calls answered NOSCRIPT (nothing ran) are sent again
    after their scripts are loaded, in one more batch."""
    results = await pipe.execute([evalsha(call) for call in calls])
    again = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
    if not again:
        return results
    scripts = {calls[i][0].sha: calls[i][0] for i in again}
    loads: list[tuple[Any, ...]] = [("SCRIPT", "LOAD", s.script) for s in scripts.values()]
    retried = await pipe.execute(loads + [evalsha(calls[i]) for i in again])
    for index, result in zip(again, retried[len(loads) :], strict=True):
        results[index] = result
    return results


async def _alone(
    redis: aioredis.Redis, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]
) -> Any:
    """Run one call whose node lacked the script: load it there and run it. On a cluster
    the script is loaded on that node only (redis-py's own load goes to every node, and
    fails while any one of them is down)."""
    if not is_cluster(redis):
        return await script(keys=keys, args=args)
    cluster: RedisCluster = redis  # type: ignore[assignment]
    node = cluster.get_node_from_key(keys[0])
    await cluster.execute_command("SCRIPT LOAD", script.script, target_nodes=node)
    return await cluster.evalsha(script.sha, len(keys), *keys, *args)


async def _per_node(cluster: RedisCluster, calls: Sequence[ScriptCall]) -> list[Any]:
    """One pipeline per node (infra/cluster_pipeline.py): a node that cannot answer (its
    primary failing over) fails its own calls only; none answering is raised."""
    results = await per_node(
        cluster,
        [
            (keys[0], ("EVALSHA", script.sha, len(keys), *keys, *args))
            for script, keys, args in calls
        ],
    )
    if all(isinstance(r, _UNREACHABLE) for r in results):
        raise results[0]  # no node answered: Redis unreachable, as on one Redis
    return results
