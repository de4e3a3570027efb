"""Start-up checks of the Redis that holds everything: memory limit and eviction policy.

Every key Stateroom writes matters until it expires: room leases and fencing epochs,
checkpoints and input journals, accounts and refresh-token families. A Redis that
*evicts* keys when full (``maxmemory-policy`` ``allkeys-*`` or ``volatile-*``) drops
them silently — a room loses its lease or journal, a player's session vanishes — so a
service refuses to start on one. A Redis with no limit (``maxmemory 0``) grows until the
kernel kills it or the host swaps, which stalls every room; that is a warning. The
right set-up is a ``maxmemory`` below the host's memory with ``noeviction``: a full
Redis then refuses writes with an error each service handles (see docs/operations.md,
"Sizing Redis").

    result = await check_redis_memory(redis)
    if result.fatal:             # refuse to start, show the message
        ...
    for warning in result.warnings:
        log.warning(warning)

``CONFIG GET`` is often disabled or renamed on managed Redis (or denied by ACL); then
``INFO memory``, which every provider serves, gives the same three numbers. Connection
errors are not handled here: a caller decides what an unreachable Redis means for it.

On a Redis Cluster each primary has its own memory and policy: every primary is checked
(a message names the node), and ``memory_usage`` reports the fullest primary, the one
that refuses writes first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisError, ResponseError

from infra.redis_url import is_cluster

SIZING_DOC = 'docs/operations.md ("Sizing Redis")'
EVICTING_PREFIXES = ("allkeys-", "volatile-")
SAFE_POLICY = "noeviction"
NEARLY_FULL = 0.9  # used / maxmemory above which the check warns

__all__ = [
    "SIZING_DOC",
    "MemoryCheck",
    "MemoryUsage",
    "check_redis_memory",
    "memory_usage",
]


@dataclass(frozen=True)
class MemoryUsage:
    """What ``INFO memory`` says: bytes used, the limit (0 = none) and the policy."""

    used_memory: int | None
    maxmemory: int | None
    policy: str | None

    @property
    def fraction(self) -> float | None:
        """used / maxmemory, or None when there is no limit or it is unknown."""
        if not self.maxmemory or self.used_memory is None:
            return None
        return self.used_memory / self.maxmemory


@dataclass(frozen=True)
class MemoryCheck:
    """The verdict: ``fatal`` is a message to refuse to start with, or None."""

    maxmemory: int | None  # bytes; 0 = no limit; None = could not be read
    policy: str | None
    used_memory: int | None
    source: str  # "config" (CONFIG GET) or "info" (INFO memory, CONFIG unavailable)
    fatal: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.fatal is None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _usage(info: dict[str, Any]) -> MemoryUsage:
    return MemoryUsage(
        used_memory=_int(info.get("used_memory")),
        maxmemory=_int(info.get("maxmemory")),
        policy=_text(info.get("maxmemory_policy")),
    )


def _primaries(redis: aioredis.Redis) -> list[ClusterNode]:
    cluster: RedisCluster = redis  # type: ignore[assignment]
    return sorted(cluster.get_primaries(), key=lambda node: node.name)


async def memory_usage(redis: aioredis.Redis) -> MemoryUsage:
    """``INFO memory`` in one round trip (works where CONFIG is disabled); on a cluster
    the fullest primary's (by used / maxmemory, or used bytes without limits), of the
    primaries that answer."""
    if not is_cluster(redis):
        return _usage(await redis.info("memory"))
    await redis.initialize()
    usages: list[MemoryUsage] = []
    failure: Exception | None = None
    for node in _primaries(redis):
        try:
            usages.append(_usage(await redis.info("memory", target_nodes=node)))
        except (RedisError, OSError) as exc:  # a primary failing over: the others count
            failure = exc
    if not usages:
        raise failure or RedisError("no primary to read INFO memory from")
    return max(usages, key=lambda u: (u.fraction or 0.0, u.used_memory or 0))


def _mib(n: int) -> str:
    return f"{n / 1_048_576:.1f} MiB"


async def check_redis_memory(redis: aioredis.Redis) -> MemoryCheck:
    """Read ``maxmemory`` and ``maxmemory-policy`` and judge them (see the module doc).

    Raises only what the client raises for an unreachable Redis (ConnectionError,
    TimeoutError); a refused or unknown CONFIG command falls back to INFO. On a cluster,
    every primary that answers is judged (one that does not is a warning): the first
    fatal verdict wins, warnings name their node.
    """
    if not is_cluster(redis):
        return await _check_node(redis, None)
    await redis.initialize()
    checks: list[MemoryCheck] = []
    unreachable: list[str] = []
    failure: Exception | None = None
    for node in _primaries(redis):
        try:
            checks.append(await _check_node(redis, node))
        except (RedisError, OSError) as exc:  # failing over: the other primaries are judged
            unreachable.append(node.name)
            failure = exc
    if not checks:
        raise failure or RedisError("no primary to check")
    if unreachable:
        checks[0].warnings.append(
            f"cluster node(s) {', '.join(unreachable)} did not answer; their memory limit "
            f"and policy were not checked; see {SIZING_DOC}"
        )
    fatal = next((c for c in checks if c.fatal), None)
    chosen = fatal or checks[0]
    return MemoryCheck(
        maxmemory=chosen.maxmemory,
        policy=chosen.policy,
        used_memory=chosen.used_memory,
        source=chosen.source,
        fatal=chosen.fatal,
        warnings=[w for c in checks for w in c.warnings],
    )


async def _check_node(redis: aioredis.Redis, node: ClusterNode | None) -> MemoryCheck:
    """The verdict for one server (``node`` None) or one primary of a cluster."""
    target: dict[str, Any] = {} if node is None else {"target_nodes": node}
    usage = _usage(await redis.info("memory", **target))
    maxmemory, policy, source = usage.maxmemory, usage.policy, "info"
    try:
        config: dict[Any, Any] = dict(await redis.config_get("maxmemory*", **target))
    except ResponseError:  # unknown/renamed command, or NOPERM under an ACL
        config = {}
    if "maxmemory" in config or "maxmemory-policy" in config:
        source = "config"
        maxmemory = _int(config.get("maxmemory", maxmemory))
        policy = _text(config.get("maxmemory-policy", policy))

    fatal: str | None = None
    warnings: list[str] = []
    if policy is None:
        warnings.append(
            "cannot read Redis maxmemory-policy (neither CONFIG GET nor INFO memory shows it); "
            f"make sure it is {SAFE_POLICY}: an evicting policy silently drops room leases, "
            f"input journals and refresh-token families; see {SIZING_DOC}"
        )
    elif policy.startswith(EVICTING_PREFIXES):
        fatal = (
            f"Redis maxmemory-policy is {policy}: when Redis is full it evicts keys, silently "
            "dropping room leases, input journals and refresh-token families. Set it to "
            f"{SAFE_POLICY} (CONFIG SET maxmemory-policy {SAFE_POLICY}, and in the server's "
            f"configuration so it survives a restart); see {SIZING_DOC}"
        )
    elif policy != SAFE_POLICY:
        warnings.append(
            f"unknown Redis maxmemory-policy {policy!r}; Stateroom expects {SAFE_POLICY}; "
            f"see {SIZING_DOC}"
        )
    if maxmemory == 0:
        warnings.append(
            "Redis has no memory limit (maxmemory 0): it grows until the kernel kills it or "
            "the host swaps, and then every room stalls. Set maxmemory below the host's "
            f"memory with maxmemory-policy {SAFE_POLICY}; see {SIZING_DOC}"
        )
    elif maxmemory is None:
        warnings.append(f"cannot read Redis maxmemory; see {SIZING_DOC}")
    elif usage.used_memory is not None and usage.used_memory >= NEARLY_FULL * maxmemory:
        warnings.append(
            f"Redis is nearly full: {_mib(usage.used_memory)} used of {_mib(maxmemory)} "
            f"(maxmemory); writes fail once it is full; see {SIZING_DOC}"
        )
    if node is not None:
        where = f"cluster node {node.name}: "
        fatal = where + fatal if fatal else None
        warnings = [where + w for w in warnings]
    return MemoryCheck(
        maxmemory=maxmemory,
        policy=policy,
        used_memory=usage.used_memory,
        source=source,
        fatal=fatal,
        warnings=warnings,
    )
