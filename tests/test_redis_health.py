"""infra.redis_health against a real Valkey: the eviction policy refuses, no limit warns,
CONFIG denied (managed Redis) falls back to INFO memory."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError

from infra.embedded_redis import EmbeddedRedis
from infra.redis_health import SIZING_DOC, check_redis_memory, memory_usage


@pytest.fixture
async def client(own_redis: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(own_redis.url)
    try:
        yield redis
    finally:
        await redis.aclose()


async def test_noeviction_with_a_limit_is_clean(client: aioredis.Redis) -> None:
    await client.config_set("maxmemory", "64mb")
    await client.config_set("maxmemory-policy", "noeviction")
    result = await check_redis_memory(client)
    assert result.ok and result.fatal is None and result.warnings == []
    assert (result.maxmemory, result.policy, result.source) == (
        64 * 1024 * 1024,
        "noeviction",
        "config",
    )
    assert result.used_memory is not None and result.used_memory > 0


async def test_no_limit_warns_and_points_at_the_sizing_doc(client: aioredis.Redis) -> None:
    await client.config_set("maxmemory", "0")
    result = await check_redis_memory(client)
    assert result.ok and result.maxmemory == 0
    (warning,) = result.warnings
    assert "maxmemory 0" in warning and "kills" in warning and SIZING_DOC in warning


@pytest.mark.parametrize(
    "policy",
    ["allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru", "volatile-lfu",
     "volatile-random", "volatile-ttl"],
)  # fmt: skip
async def test_every_evicting_policy_is_fatal(client: aioredis.Redis, policy: str) -> None:
    await client.config_set("maxmemory", "64mb")
    await client.config_set("maxmemory-policy", policy)
    result = await check_redis_memory(client)
    assert not result.ok and result.fatal is not None
    assert policy in result.fatal and "noeviction" in result.fatal
    assert "leases" in result.fatal and SIZING_DOC in result.fatal


async def test_nearly_full_warns(client: aioredis.Redis) -> None:
    used = (await memory_usage(client)).used_memory
    assert used is not None
    await client.config_set("maxmemory", str(int(used / 0.95)))
    await client.config_set("maxmemory-policy", "noeviction")
    result = await check_redis_memory(client)
    assert result.ok
    assert any("nearly full" in w for w in result.warnings), result.warnings


async def test_config_denied_falls_back_to_info(
    own_redis: EmbeddedRedis, client: aioredis.Redis
) -> None:
    """Managed Redis often disables CONFIG; an ACL user without it stands in for that."""
    await client.config_set("maxmemory", "32mb")
    await client.config_set("maxmemory-policy", "allkeys-lru")
    await client.execute_command(
        "ACL", "SETUSER", "limited", "on", ">limited-pass", "~*", "&*", "+@all", "-config"
    )
    limited = aioredis.Redis(host=own_redis.host, port=own_redis.port, username="limited",
                             password="limited-pass")  # fmt: skip
    try:
        with pytest.raises(NoPermissionError):
            await limited.config_get("maxmemory")
        result = await check_redis_memory(limited)
        assert result.source == "info"
        assert (result.maxmemory, result.policy) == (32 * 1024 * 1024, "allkeys-lru")
        assert result.fatal is not None and "allkeys-lru" in result.fatal
        await client.config_set("maxmemory-policy", "noeviction")
        assert (await check_redis_memory(limited)).ok
    finally:
        await limited.aclose()


async def test_unreachable_redis_raises_for_the_caller_to_decide() -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    from infra.ports import free_port

    dead = aioredis.Redis(port=free_port(), socket_connect_timeout=1)
    try:
        with pytest.raises(RedisConnectionError):
            await check_redis_memory(dead)
    finally:
        await dead.aclose()
