"""Lua script calls sent as one non-transactional pipeline, on plain Redis and on a cluster.

Why not redis-py's own: on a cluster its pipeline refuses ``EVALSHA`` (it cannot load a
script a node lacks, and a node lacks every script after a failover or a restart). Here
each call goes out as ``EVALSHA``; a call a node answers with ``NOSCRIPT`` (nothing ran)
is run again alone through its ``AsyncScript``, which loads the script there first. On
plain Redis the pipeline loads missing scripts itself before sending.

A cluster pipeline splits by node: one round trip per node, each call still atomic on
its own slot (every script here touches keys of one slot; tests/test_script_slots.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from infra.redis_url import is_cluster

ScriptCall = tuple[AsyncScript, Sequence[Any], Sequence[Any]]  # script, keys, args

__all__ = ["ScriptCall", "run_pipelined"]


async def run_pipelined(redis: aioredis.Redis, calls: Sequence[ScriptCall]) -> list[Any]:
    """Each call's result, or the exception it ended with, in order (one call's error
    never hides another's result). Errors of the pipeline as a whole (Redis unreachable)
    are raised."""
    if not calls:
        return []
    cluster = is_cluster(redis)
    async with redis.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            if cluster:
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            else:
                await script(keys=keys, args=args, client=pipe)
        results: list[Any] = await pipe.execute(raise_on_error=False)
    for index, result in enumerate(results):
        if isinstance(result, NoScriptError):
            script, keys, args = calls[index]
            try:
                results[index] = await script(keys=keys, args=args)
            except Exception as exc:  # that call's own error, as above
                results[index] = exc
    return results
