"""Refresh-token families straight against Redis: atomic rotation under concurrency."""

from __future__ import annotations

import asyncio

import httpx
import redis.asyncio as aioredis

from auth.refresh import RefreshStore


async def test_two_concurrent_refreshes_exactly_one_succeeds(client: httpx.AsyncClient) -> None:
    for _ in range(5):
        token = (await client.post("/v1/guest")).json()["refresh_token"]
        responses = await asyncio.gather(
            *(client.post("/v1/refresh", json={"refresh_token": token}) for _ in range(2))
        )
        assert sorted(r.status_code for r in responses) == [200, 401]


async def test_store_concurrent_rotation_on_separate_connections(redis_url: str) -> None:
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(8)]
    try:
        stores = [RefreshStore(c) for c in clients]
        token = await stores[0].create("g_p", "guest-1")
        outcomes = await asyncio.gather(*(s.rotate(token) for s in stores))
        assert [o.status for o in outcomes].count("ok") == 1
        assert {o.status for o in outcomes} == {"ok", "reuse", "revoked"} or {
            o.status for o in outcomes
        } <= {"ok", "reuse", "revoked"}
    finally:
        for c in clients:
            await c.aclose()


async def test_only_hashes_are_stored(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        store = RefreshStore(client, prefix="auth:")
        token = await store.create("u_p", "alice")  # an account: 30 days
        keys = [k.decode() async for k in client.scan_iter("*")]
        secret = token.split(".")[1]
        assert all(k.startswith("auth:") for k in keys)
        assert not any(secret in k for k in keys)
        for key in keys:
            value = await (client.hgetall(key) if "rt:" in key else client.get(key))
            assert secret.encode() not in repr(value).encode()
        ttl = await client.ttl(next(k for k in keys if "rt:" in k))
        assert 2_592_000 - 10 < ttl <= 2_592_000
    finally:
        await client.aclose()


async def test_expired_refresh_token(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        store = RefreshStore(client, ttl=60)
        token = await store.create("g_p", "guest-1")
        keys = [k async for k in client.scan_iter("auth:rt:*")]
        await client.hset(keys[0], "exp", 1)  # as if its 30 days were over
        assert (await store.rotate(token)).status == "expired"
    finally:
        await client.aclose()
