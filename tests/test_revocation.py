"""infra.revocation against a real Valkey: key name, TTL, one-round-trip batch check."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

from infra.revocation import revocation_key, revoke, revoked


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(redis_url)
    try:
        yield redis
    finally:
        await redis.aclose()


def test_key_name() -> None:
    assert revocation_key("AbC-12_x") == "sr:revoked:AbC-12_x"


async def test_revoke_sets_a_record_with_its_ttl(client: aioredis.Redis) -> None:
    await revoke(client, "s1", 660)
    assert await client.exists("sr:revoked:s1") == 1
    assert 655 <= await client.ttl("sr:revoked:s1") <= 660
    await revoke(client, "s1", 0)  # never a record without expiry
    assert await client.ttl("sr:revoked:s1") == 1


async def test_batch_check_is_one_round_trip(
    client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    await revoke(client, "a", 60)
    await revoke(client, "c", 60)
    sends = 0
    original = Connection.send_packed_command

    async def counted(self: Connection, command: Any, check_health: bool = True) -> None:
        nonlocal sends
        sends += 1
        await original(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counted)
    assert await revoked(client, ["a", "b", "c", "a", "d"]) == {"a", "c"}
    assert sends == 1  # one write of every EXISTS, one read of the replies
    assert await revoked(client, []) == set()
    assert sends == 1  # nothing to ask: no round trip
    assert await revoked(client, iter(["b"])) == set()
