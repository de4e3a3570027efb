"""Quota slots against a real Valkey: a refresh extends the slots this server holds, one
ZADD and one PEXPIRE per key, and never brings back a slot given back meanwhile; the
same through redis-py's pipeline and through the room server's lean RESP path."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from infra.resp_pipeline import RespPipeline
from server.quotas import SLOT_TTL_MS, QuotaLimits, Quotas, rooms_key, sessions_key

pytestmark = pytest.mark.timeout(30)

LIMITS = QuotaLimits(
    rooms_per_player=5, rooms_per_minute=50, rooms_per_address_per_minute=50, sessions_per_player=5
)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def command_calls(redis: aioredis.Redis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {c: int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("zadd", "pexpire")}


@pytest.mark.parametrize("path", ["redis-py", "lean"])
async def test_a_refresh_extends_held_slots_and_revives_none(
    redis: aioredis.Redis, path: str
) -> None:
    lean = RespPipeline(redis) if path == "lean" else None
    try:
        await check_refresh(redis, Quotas(redis, LIMITS, pipe=lean))
    finally:
        if lean is not None:
            await lean.aclose()


async def check_refresh(redis: aioredis.Redis, quotas: Quotas) -> None:
    for room in ("a1", "a2", "a3"):
        await quotas.reserve_room("ann", "127.0.0.1", room)
    await quotas.reserve_room("bob", "127.0.0.1", "b1")
    await quotas.take_session("ann", "a1")
    await quotas.release_room("ann", "a3")  # given back before the refresh
    soon = int(time.time() * 1000) + 1000
    for key, member in [
        (rooms_key("ann"), "a1"),
        (rooms_key("ann"), "a2"),
        (rooms_key("bob"), "b1"),
    ]:
        await redis.zadd(key, {member: soon})  # about to expire
    await redis.pexpire(rooms_key("ann"), 2000)

    calls_before = await command_calls(redis)
    before = int(time.time() * 1000)
    await quotas.refresh(
        [("ann", "a1"), ("ann", "a2"), ("ann", "a3"), ("bob", "b1")], [("ann", "a1")]
    )
    calls = await command_calls(redis)
    # One ZADD and one PEXPIRE for each of three keys (ann's rooms, bob's, ann's sessions).
    assert {c: calls[c] - calls_before.get(c, 0) for c in calls} == {"zadd": 3, "pexpire": 3}
    for key, member in [
        (rooms_key("ann"), "a1"),
        (rooms_key("ann"), "a2"),
        (rooms_key("bob"), "b1"),
    ]:
        score = await redis.zscore(key, member)
        assert score is not None and score >= before + SLOT_TTL_MS - 1000
    assert await redis.zscore(rooms_key("ann"), "a3") is None  # released: not re-created
    assert await redis.pttl(rooms_key("ann")) > SLOT_TTL_MS
    assert await redis.zscore(sessions_key("ann"), "a1") is not None


@pytest.mark.parametrize("path", ["redis-py", "lean"])
async def test_sessions_ending_together_give_their_slots_back_in_one_round_trip(
    redis: aioredis.Redis, path: str
) -> None:
    """A room's players leaving at once (a match's end, a network blip) must not open a
    Redis connection each on the server's loop; a slot on a broken key fails alone."""
    lean = RespPipeline(redis) if path == "lean" else None
    try:
        quotas = Quotas(redis, LIMITS, pipe=lean)
        players = [f"p{i}" for i in range(200)]
        for player in players:
            await quotas.take_session(player, "r1")
        await redis.set(sessions_key("broken"), "not a sorted set")
        if lean is not None:
            await lean.execute([("PING",)])  # its own connection, opened before counting
        opened = (await redis.info("stats"))["total_connections_received"]
        results = await asyncio.gather(
            *(quotas.release_session(player, "r1") for player in players),
            quotas.release_session("broken", "r1"),
            return_exceptions=True,
        )
        opened = (await redis.info("stats"))["total_connections_received"] - opened
        assert results[:-1] == [None] * len(players)
        assert isinstance(results[-1], ResponseError)
        assert opened <= 1, f"{opened} connections opened for one turn's releases"
        for player in players:
            assert await redis.zcard(sessions_key(player)) == 0
    finally:
        if lean is not None:
            await lean.aclose()
