"""server.endpoint.RevocationChecks against a real Valkey: the joins of one event-loop
turn share one round trip, each gets its own answer, and an error reaches every one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError

from infra.ports import free_port
from infra.resp_pipeline import RespPipeline
from infra.revocation import revoke, revoked
from server.endpoint import RevocationChecks


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(redis_url)
    try:
        yield redis
    finally:
        await redis.aclose()


async def test_checks_of_one_turn_share_one_round_trip(
    client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    await revoke(client, "gone-1", 60)
    await revoke(client, "gone-2", 60)
    await client.ping()  # the pool's connection exists before counting
    sends = 0
    original = Connection.send_packed_command

    async def counted(self: Connection, command: Any, check_health: bool = True) -> None:
        nonlocal sends
        sends += 1
        await original(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counted)
    checks = RevocationChecks(client)
    sids = [f"live-{i}" for i in range(50)] + ["gone-1", "gone-2", "gone-1"]
    answers = await asyncio.gather(*(checks.check(sid) for sid in sids))
    assert sends == 1
    assert dict(zip(sids, answers, strict=True)) == {
        **{f"live-{i}": False for i in range(50)},
        "gone-1": True,
        "gone-2": True,
    }
    # The next turn's check is a batch of its own.
    assert await checks.check("gone-2") is True
    assert sends == 2


async def test_a_redis_error_reaches_every_check_of_the_batch() -> None:
    dead = aioredis.Redis(port=free_port(), socket_connect_timeout=0.5)
    try:
        checks = RevocationChecks(dead)
        results = await asyncio.gather(
            *(checks.check(f"s{i}") for i in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, RedisConnectionError) for r in results), results
    finally:
        await dead.aclose()


async def test_a_check_given_up_does_not_break_the_others(client: aioredis.Redis) -> None:
    await revoke(client, "gone", 60)
    checks = RevocationChecks(client)
    abandoned = checks.check("live")
    kept = checks.check("gone")
    abandoned.cancel()  # its join timed out or its connection closed
    assert await kept is True


async def test_the_periodic_check_on_the_lean_path_answers_as_redis_py(
    client: aioredis.Redis,
) -> None:
    """The room server's check of all its open sessions goes on its lean RESP path:
    the same answer as redis-py's pipeline, for 800 sessions at once."""
    await revoke(client, "gone-1", 60)
    await revoke(client, "gone-2", 60)
    sids = [f"live-{i}" for i in range(800)] + ["gone-1", "gone-2", "gone-1"]
    lean = RespPipeline(client)
    try:
        assert await revoked(client, sids, lean) == {"gone-1", "gone-2"}
        assert await revoked(client, sids) == {"gone-1", "gone-2"}
        assert await revoked(client, [], lean) == set()
    finally:
        await lean.aclose()
