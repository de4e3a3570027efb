"""The per-account lockout is a reservation taken atomically before hashing.

Through the real ASGI app and a real Valkey: N concurrent guesses for one account cost
at most ``login_failures`` argon2 evaluations, on one replica or several; a success in
the burst does not reset the failures counted by the others.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
import redis.asyncio as aioredis

from auth.app import Services
from auth.ratelimit import RateLimiter
from tests.auth.conftest import AuthUnderTest, MakeAuth
from tests.auth.test_api import assert_error

WRONG = "wrong-pass"
RIGHT = "hunter22"


def count_evaluations(services: Services) -> list[int]:
    """Wrap the hasher's verify: the returned one-item list counts argon2 evaluations."""
    calls = [0]
    original = services.hasher.verify

    async def verify(stored_hash: str | None, password: str) -> bool:
        calls[0] += 1
        return await original(stored_hash, password)

    services.hasher.verify = verify  # type: ignore[method-assign]
    return calls


async def register(client: httpx.AsyncClient, username: str) -> None:
    created = await client.post("/v1/accounts", json={"username": username, "password": RIGHT})
    assert created.status_code == 201, created.text


def login(client: httpx.AsyncClient, username: str, password: str) -> Any:
    return client.post("/v1/login", json={"username": username, "password": password})


async def test_thirty_concurrent_wrong_guesses_cost_at_most_the_limit(
    make_auth: MakeAuth,
) -> None:
    auth: AuthUnderTest = await make_auth()  # login_failures = 5 (the default)
    await register(auth.client, "alice")
    evaluations = count_evaluations(auth.services)
    responses = await asyncio.wait_for(
        asyncio.gather(*(login(auth.client, "alice", WRONG) for _ in range(30))), 30
    )
    statuses = Counter(r.status_code for r in responses)
    assert evaluations[0] <= 5, evaluations
    assert statuses == {401: evaluations[0], 429: 30 - evaluations[0]}, statuses
    assert statuses[401] == 5  # every slot was used by a guess, none was lost
    for response in responses:
        if response.status_code == 429:
            assert_error(response, 429, "rate_limited")
            assert 0 < int(response.headers["Retry-After"]) <= 900
    metrics = (await auth.client.get("/metrics")).text
    assert 'stateroom_auth_rate_limited_total{limit="login"} 25.0' in metrics
    # refused attempts are not counted and cost nothing: the right password waits too
    assert_error(await login(auth.client, "alice", RIGHT), 429, "rate_limited")
    assert evaluations[0] == 5


async def test_two_replicas_share_the_reservation(make_auth: MakeAuth) -> None:
    first: AuthUnderTest = await make_auth()
    second: AuthUnderTest = await make_auth()  # its own Redis pool, as another process
    await register(first.client, "bob")
    a, b = count_evaluations(first.services), count_evaluations(second.services)
    responses = await asyncio.wait_for(
        asyncio.gather(
            *(login(c, "bob", WRONG) for _ in range(15) for c in (first.client, second.client))
        ),
        30,
    )
    assert a[0] + b[0] == 5, (a, b)
    assert Counter(r.status_code for r in responses) == {401: 5, 429: 25}


async def test_a_success_inside_the_burst_does_not_reset_the_failures(
    make_auth: MakeAuth,
) -> None:
    auth: AuthUnderTest = await make_auth()
    await register(auth.client, "carol")
    evaluations = count_evaluations(auth.services)
    passwords = [WRONG] * 10 + [RIGHT] + [WRONG] * 19
    responses = await asyncio.wait_for(
        asyncio.gather(*(login(auth.client, "carol", p) for p in passwords)), 30
    )
    statuses = Counter(r.status_code for r in responses)
    assert evaluations[0] <= 5, evaluations
    assert statuses[200] + statuses[401] == evaluations[0]
    assert statuses[200] <= 1 and statuses[429] == 30 - evaluations[0]
    key = auth.services.limiter.login_key("carol")
    # the counter holds exactly the failures: a success gave back its own slot, no more
    assert int(await auth.services.redis.get(key) or 0) == statuses[401]
    # the burst cannot go on after the success: at most 5 wrong guesses in all
    failures = statuses[401]
    for _ in range(10):
        response = await login(auth.client, "carol", WRONG)
        if response.status_code == 401:
            failures += 1
        else:
            assert_error(response, 429, "rate_limited")
    assert failures == 5
    assert_error(await login(auth.client, "carol", RIGHT), 429, "rate_limited")
    assert 0 < await auth.services.redis.ttl(key) <= 900


async def test_attempts_refused_for_capacity_give_their_slot_back(make_auth: MakeAuth) -> None:
    # one hashing thread, no queue, expensive hashes: most of a burst gets 503 overloaded
    auth: AuthUnderTest = await make_auth(hash_workers=1, hash_queue=0, argon2_memory_kib=32_768)
    await register(auth.client, "dave")
    responses = await asyncio.wait_for(
        asyncio.gather(*(login(auth.client, "dave", WRONG) for _ in range(4))), 30
    )
    statuses = Counter(r.status_code for r in responses)
    assert statuses[503] >= 1, statuses
    key = auth.services.limiter.login_key("dave")
    # only the evaluated guesses are counted: overload cannot lock the player out
    assert int(await auth.services.redis.get(key) or 0) == statuses[401]


async def test_release_never_leaves_a_counter_without_expiry(redis_url: str) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    try:
        limiter = RateLimiter(redis, login_failures=2, login_window=900)
        key = limiter.login_key("Erin")
        assert key == limiter.login_key("erin")  # case-insensitive, like usernames
        await limiter.release_login("erin")  # nothing reserved (window over): no key
        assert await redis.exists(key) == 0
        await limiter.reserve_login("erin")
        assert 895 <= await redis.ttl(key) <= 900
        await limiter.release_login("erin")
        assert await redis.exists(key) == 0  # back to zero: deleted
        await limiter.reserve_login("erin")
        await limiter.reserve_login("erin")
        from auth.errors import RateLimited

        try:
            await limiter.reserve_login("erin")
            raise AssertionError("the third attempt must be refused")
        except RateLimited as exc:
            assert exc.limit == "login" and 0 < exc.retry_after <= 900
        assert int(await redis.get(key) or 0) == 2  # the refused one was not counted
    finally:
        await redis.aclose()
