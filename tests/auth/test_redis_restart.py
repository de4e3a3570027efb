"""No 503 on the first login after a Redis restart: a dead pooled connection is retried.

A real Valkey with its own data dir is stopped and started again on the same port while
the app keeps its connection pool.
"""

from __future__ import annotations

import dataclasses

import httpx
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from auth.app import Services, create_app
from auth.settings import AuthSettings
from infra.embedded_redis import EmbeddedRedis
from infra.redis_url import connect


async def test_first_login_after_a_redis_restart_succeeds(
    own_redis: EmbeddedRedis, settings: AuthSettings
) -> None:
    s = dataclasses.replace(settings, redis_url=own_redis.url)
    services = Services.create(s)
    # the same pool without retries, to show the restart really leaves dead connections
    bare = connect(own_redis.url, max_connections=4, wait_for_connection=5)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(s, services)), base_url="http://auth.test"
    )
    try:
        before = await client.post("/v1/guest")
        assert before.status_code == 200
        await bare.ping()
        port = own_redis.port

        own_redis.stop()
        own_redis.start()  # same data dir, same port, same password
        assert own_redis.port == port

        with pytest.raises(RedisConnectionError):
            await bare.ping()  # its pooled connection died with the old process
        first = await client.post("/v1/guest")
        assert first.status_code == 200, first.text
        # the data survived (AOF), and the token from before the restart still rotates
        rotated = await client.post(
            "/v1/refresh", json={"refresh_token": before.json()["refresh_token"]}
        )
        assert rotated.status_code == 200, rotated.text
    finally:
        await client.aclose()
        await bare.aclose()
        await services.aclose()


async def test_redis_still_down_is_a_quick_503(settings: AuthSettings) -> None:
    """Retries are bounded: with nothing listening the answer is still 503, fast."""
    import time

    from infra.ports import free_port

    s = dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    services = Services.create(s)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(s, services)), base_url="http://auth.test"
    )
    try:
        started = time.monotonic()
        response = await client.post("/v1/guest")
        assert response.status_code == 503 and response.json()["error"]["code"] == "unavailable"
        assert response.headers["Retry-After"] == "1"
        assert time.monotonic() - started < 3
    finally:
        await client.aclose()
        await services.aclose()
