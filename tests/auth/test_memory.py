"""Redis memory at start and under a guest flood, against real Valkeys of their own.

- An evicting policy makes the service refuse to start (and, found after start, refuse
  writes); no maxmemory is a warning that points at the sizing doc.
- Above the memory watermark, guest logins and sign-ups answer 503 with Retry-After and
  write nothing, long before a full ``noeviction`` Redis would refuse every write.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from auth.app import Services, create_app
from auth.errors import ConfigError
from auth.settings import AuthSettings
from infra.embedded_redis import EmbeddedRedis
from infra.ports import free_port
from infra.redis_health import memory_usage
from tests.auth.test_api import assert_error


@pytest.fixture
async def admin(own_redis: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(own_redis.url)
    try:
        yield client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def running(settings: AuthSettings) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    """The app with its lifespan run (start-up checks), and a client on it."""
    services = Services.create(settings)
    app = create_app(settings, services)
    try:
        async with app.router.lifespan_context(app):
            client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://auth.test"
            )
            async with client:
                yield client, services
    finally:
        await services.aclose()


# ---------------------------------------------------------------- start-up check


async def test_evicting_policy_refuses_to_start(
    own_redis: EmbeddedRedis, admin: aioredis.Redis, settings: AuthSettings
) -> None:
    await admin.config_set("maxmemory", "64mb")
    await admin.config_set("maxmemory-policy", "allkeys-lru")
    s = dataclasses.replace(settings, redis_url=own_redis.url)
    with pytest.raises(ConfigError) as info:
        async with running(s):
            raise AssertionError("the service must not start")
    message = str(info.value)
    assert message.startswith("refusing to start:")
    assert "allkeys-lru" in message and "noeviction" in message and "leases" in message


async def test_the_asgi_server_is_told_the_reason_not_a_traceback(
    own_redis: EmbeddedRedis, admin: aioredis.Redis, settings: AuthSettings
) -> None:
    """The lifespan protocol as uvicorn speaks it: startup.failed carries the reason."""
    await admin.config_set("maxmemory-policy", "volatile-ttl")
    s = dataclasses.replace(settings, redis_url=own_redis.url)
    services = Services.create(s)
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    app = create_app(s, services)
    try:
        with contextlib.suppress(ConfigError):
            await asyncio.wait_for(app({"type": "lifespan"}, receive, send), 10)  # type: ignore[arg-type]
    finally:
        await services.aclose()
    (failed,) = sent
    assert failed["type"] == "lifespan.startup.failed"
    text = str(failed["message"])
    assert text.startswith("refusing to start: Redis maxmemory-policy is volatile-ttl")
    assert "Traceback" not in text


async def test_no_maxmemory_warns_with_the_sizing_doc(
    own_redis: EmbeddedRedis,
    admin: aioredis.Redis,
    settings: AuthSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await admin.config_set("maxmemory", "0")
    await admin.config_set("maxmemory-policy", "noeviction")
    s = dataclasses.replace(settings, redis_url=own_redis.url)
    with caplog.at_level(logging.WARNING, "stateroom.auth"):
        async with running(s) as (client, _):
            assert (await client.post("/v1/guest")).status_code == 200  # only a warning
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("maxmemory 0" in w and "Sizing Redis" in w for w in warnings), warnings


async def test_noeviction_with_a_limit_starts_quietly(
    own_redis: EmbeddedRedis,
    admin: aioredis.Redis,
    settings: AuthSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await admin.config_set("maxmemory", "256mb")
    await admin.config_set("maxmemory-policy", "noeviction")
    s = dataclasses.replace(settings, redis_url=own_redis.url)
    with caplog.at_level(logging.WARNING, "stateroom.auth"):
        async with running(s) as (client, _):
            assert (await client.get("/healthz")).status_code == 200
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def forward(port: int, target_port: int) -> asyncio.Server:
    """A plain TCP forwarder on ``port`` to a local Redis: Redis 'appears' when it starts."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65_536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    return await asyncio.start_server(handle, "127.0.0.1", port)


async def test_evicting_policy_found_after_start_stops_writes(
    own_redis: EmbeddedRedis,
    admin: aioredis.Redis,
    settings: AuthSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis does not answer at start: the service starts, checks once Redis answers,
    and then refuses writes and fails /healthz instead of running on an evicting Redis."""
    await admin.config_set("maxmemory", "64mb")
    await admin.config_set("maxmemory-policy", "volatile-lru")
    port = free_port()
    url = own_redis.url.replace(f":{own_redis.port}/", f":{port}/")
    s = dataclasses.replace(settings, redis_url=url)
    with caplog.at_level(logging.WARNING, "stateroom.auth"):
        async with running(s) as (client, services):
            assert any("cannot check Redis memory" in r.message for r in caplog.records)
            assert_error(await client.post("/v1/guest"), 503, "unavailable")  # Redis down
            server = await forward(port, own_redis.port)
            try:
                async with asyncio.timeout(15):
                    while services.refusal is None:
                        await asyncio.sleep(0.05)
                guest = await client.post("/v1/guest")
                assert_error(guest, 503, "unavailable")
                assert "volatile-lru" in guest.json()["error"]["message"]
                health = await client.get("/healthz")
                assert_error(health, 503, "unavailable")
                assert "volatile-lru" in health.json()["error"]["message"]
                assert (await client.get("/.well-known/jwks.json")).status_code == 200
            finally:
                server.close()
                await server.wait_closed()
    assert any("refusing writes" in r.message for r in caplog.records)


# ---------------------------------------------------------------- watermark


async def test_guest_logins_stop_at_the_watermark(
    own_redis: EmbeddedRedis, admin: aioredis.Redis, settings: AuthSettings
) -> None:
    s = dataclasses.replace(
        settings,
        redis_url=own_redis.url,
        memory_watermark=0.8,
        memory_check_interval=0.02,
        rate_limit_per_minute=100_000,
    )
    async with running(s) as (client, services):
        body = {"username": "harry", "password": "hunter22"}
        assert (await client.post("/v1/accounts", json=body)).status_code == 201
        assert (await client.post("/v1/login", json=body)).status_code == 200  # warm pools
        # A small Redis (about 2 MiB, noeviction: the safe policy), filled with data to
        # 30 KB under its 80 % watermark, so guest logins are what crosses it.
        async with admin.pipeline(transaction=False) as pipe:
            for i in range(100):  # small values: no big query buffer skews used_memory
                pipe.set(f"filler:{i}", b"x" * 8_000)
            await pipe.execute()
        used = (await memory_usage(admin)).used_memory
        assert used is not None
        maxmemory = int((used + 30_000) / 0.8)
        await admin.config_set("maxmemory", str(maxmemory))
        await admin.config_set("maxmemory-policy", "noeviction")

        statuses: list[int] = []
        refused: httpx.Response | None = None
        for _ in range(3000):
            response = await client.post("/v1/guest")
            statuses.append(response.status_code)
            if response.status_code != 200:
                refused = response
                break
            await asyncio.sleep(0.001)
        assert refused is not None, "the watermark never stopped guest logins"
        assert len(statuses) > 3 and set(statuses[:-1]) == {200}, statuses
        assert_error(refused, 503, "unavailable")
        assert "nearly full" in refused.json()["error"]["message"]
        assert refused.headers["Retry-After"] == "30"
        # below maxmemory: Redis itself never had to refuse a write (rooms still work)
        usage = await memory_usage(admin)
        assert usage.used_memory is not None and usage.used_memory < maxmemory
        assert await admin.set("room-lease", b"still writable")
        # a refused login writes nothing, sign-ups pause too, logins go on
        keys_before = await admin.dbsize()
        assert_error(await client.post("/v1/guest"), 503, "unavailable")
        other = {"username": "ivy", "password": "hunter22"}
        assert_error(await client.post("/v1/accounts", json=other), 503, "unavailable")
        assert await admin.dbsize() <= keys_before + 1  # + the per-minute rate counter
        assert (await client.post("/v1/login", json=body)).status_code == 200
        # room to breathe again: guests are back once the next read sees it
        await admin.delete(*(f"filler:{i}" for i in range(100)))
        async with asyncio.timeout(10):
            while (await client.post("/v1/guest")).status_code != 200:
                await asyncio.sleep(0.02)
        assert services.memory.reads > 1


async def test_memory_is_read_at_most_once_per_interval(
    own_redis: EmbeddedRedis, admin: aioredis.Redis, settings: AuthSettings
) -> None:
    await admin.config_set("maxmemory", "256mb")
    s = dataclasses.replace(settings, redis_url=own_redis.url, memory_check_interval=3600)
    async with running(s) as (client, services):
        responses = await asyncio.gather(*(client.post("/v1/guest") for _ in range(40)))
        assert {r.status_code for r in responses} == {200}
        assert services.memory.reads == 1
