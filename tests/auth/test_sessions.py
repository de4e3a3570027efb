"""Session lifetimes in the real Redis: guest families live 24 h (sliding), accounts 30
days; logout and refresh-token reuse write a revocation record for the session id."""

from __future__ import annotations

import time

import httpx
import jwt
import redis.asyncio as aioredis

from auth.refresh import RefreshStore
from infra.revocation import revocation_key, revoked
from tests.auth.conftest import AuthUnderTest, MakeAuth
from tests.auth.test_api import assert_error

DAY = 86_400
MONTH = 2_592_000


async def family_ttls(redis: aioredis.Redis, family: str) -> dict[str, int]:
    """TTL of every key of one refresh family, by key."""
    keys = [k.decode() async for k in redis.scan_iter(f"auth:*{{{family}}}*")]
    return {k: await redis.ttl(k) for k in keys}


def sid_of(access_token: str) -> str:
    sid: str = jwt.decode(access_token, options={"verify_signature": False})["sid"]
    return sid


async def test_guest_family_keys_expire_at_the_guest_ttl(make_auth: MakeAuth) -> None:
    auth: AuthUnderTest = await make_auth()
    redis = auth.services.redis
    pair = (await auth.client.post("/v1/guest")).json()
    family = pair["refresh_token"].split(".")[0]
    assert sid_of(pair["access_token"]) == family
    ttls = await family_ttls(redis, family)
    assert len(ttls) == 2  # the family and its first token: both at 24 h
    assert all(DAY - 5 < ttl <= DAY for ttl in ttls.values()), ttls
    assert all(k.startswith("auth:") for k in ttls)
    # nothing else a guest login writes outlives the day (rate counters are per minute)
    for key in [k.decode() async for k in redis.scan_iter("*")]:
        assert (await redis.ttl(key)) <= DAY, key

    # sliding: a refresh renews the family and gives the new token a full day again
    for key in ttls:
        await redis.expire(key, 100)
    rotated = await auth.client.post("/v1/refresh", json={"refresh_token": pair["refresh_token"]})
    assert rotated.status_code == 200
    assert sid_of(rotated.json()["access_token"]) == family  # same session
    after = await family_ttls(redis, family)
    assert len(after) == 3  # + the new live token; the spent one keeps its short TTL
    fam_key = next(k for k in after if ":fam:" in k)
    assert DAY - 5 < after[fam_key] <= DAY
    fresh = [k for k in after if k not in ttls]
    assert len(fresh) == 1 and DAY - 5 < after[fresh[0]] <= DAY
    spent = [k for k in after if k in ttls and k != fam_key]
    assert len(spent) == 1 and after[spent[0]] <= 100
    assert int(await redis.hget(fresh[0], "exp") or 0) > 0


async def test_account_family_keeps_thirty_days(make_auth: MakeAuth) -> None:
    auth: AuthUnderTest = await make_auth()
    body = {"username": "frank", "password": "hunter22"}
    assert (await auth.client.post("/v1/accounts", json=body)).status_code == 201
    pair = (await auth.client.post("/v1/login", json=body)).json()
    ttls = await family_ttls(auth.services.redis, pair["refresh_token"].split(".")[0])
    assert len(ttls) == 2 and all(MONTH - 5 < t <= MONTH for t in ttls.values()), ttls


async def test_guest_ttl_is_a_setting(make_auth: MakeAuth) -> None:
    auth: AuthUnderTest = await make_auth(guest_refresh_ttl=3600)
    pair = (await auth.client.post("/v1/guest")).json()
    ttls = await family_ttls(auth.services.redis, pair["refresh_token"].split(".")[0])
    assert all(3595 < t <= 3600 for t in ttls.values()), ttls


async def test_legacy_guest_token_gets_the_guest_ttl_on_refresh(redis_url: str) -> None:
    """A guest token stored before per-family lifetimes (no ``ttl`` field) is bounded at
    its next refresh."""
    redis = aioredis.Redis.from_url(redis_url)
    try:
        store = RefreshStore(redis, ttl=MONTH, guest_ttl=DAY)
        token = await store.create("g_old", "guest-1", ttl=MONTH)
        (key,) = [k async for k in redis.scan_iter("auth:rt:*")]
        await redis.hdel(key, "ttl")
        outcome = await store.rotate(token)
        assert outcome.status == "ok" and outcome.refresh_token is not None
        ttls = await family_ttls(redis, token.split(".")[0])
        fam = next(k for k in ttls if ":fam:" in k)
        assert DAY - 5 < ttls[fam] <= DAY
    finally:
        await redis.aclose()


async def test_a_retried_refresh_is_not_reuse(redis_url: str) -> None:
    """The same rotation run twice (a client retry after a timeout) gets the same answer
    instead of revoking the family; a real second use still does."""
    redis = aioredis.Redis.from_url(redis_url)
    try:
        store = RefreshStore(redis)
        token = await store.create("u_p", "alice")
        family = token.split(".")[0]
        new = f"{family}.replayed-secret"
        keys = [store._fam_key(family), store._tok_key(family, token), store._tok_key(family, new)]
        args = [int(time.time()), store.ttl, store.guest_ttl, store.guest_prefix]
        first = await store._refresh(keys=keys, args=args)
        again = await store._refresh(keys=keys, args=args)
        assert first[0] == again[0] == b"ok"
        assert (await store.rotate(new)).status == "ok"  # the family is alive
        assert (await store.rotate(token)).status == "reuse"  # a different new token
    finally:
        await redis.aclose()


async def test_logout_writes_a_revocation_record(make_auth: MakeAuth) -> None:
    auth: AuthUnderTest = await make_auth(access_ttl=300)
    redis = auth.services.redis
    pair = (await auth.client.post("/v1/guest")).json()
    sid = sid_of(pair["access_token"])
    assert await revoked(redis, [sid]) == set()
    response = await auth.client.post("/v1/logout", json={"refresh_token": pair["refresh_token"]})
    assert response.status_code == 204
    assert await revoked(redis, [sid]) == {sid}
    ttl = await redis.ttl(revocation_key(sid))
    assert 300 + 60 - 5 < ttl <= 300 + 60  # access_ttl + 60 s: past any accepted token
    # an unknown or forged token writes nothing (no one can revoke another's session)
    other = (await auth.client.post("/v1/guest")).json()
    other_sid = sid_of(other["access_token"])
    forged = f"{other_sid}.not-the-secret"
    assert (await auth.client.post("/v1/logout", json={"refresh_token": forged})).status_code == 204
    assert await revoked(redis, [other_sid]) == set()


async def test_refresh_reuse_writes_a_revocation_record(make_auth: MakeAuth) -> None:
    auth: AuthUnderTest = await make_auth()
    redis = auth.services.redis
    pair = (await auth.client.post("/v1/guest")).json()
    sid = sid_of(pair["access_token"])
    rotated = await auth.client.post("/v1/refresh", json={"refresh_token": pair["refresh_token"]})
    assert rotated.status_code == 200
    assert await revoked(redis, [sid]) == set()  # a normal refresh revokes nothing
    reuse = await auth.client.post("/v1/refresh", json={"refresh_token": pair["refresh_token"]})
    assert_error(reuse, 401, "invalid_grant")
    assert await revoked(redis, [sid]) == {sid}
    assert 600 + 60 - 5 < await redis.ttl(revocation_key(sid)) <= 600 + 60


async def test_verified_token_exposes_the_session_id(make_auth: MakeAuth) -> None:
    from auth.verify import TokenVerifier

    auth: AuthUnderTest = await make_auth()
    client: httpx.AsyncClient = auth.client
    verifier = TokenVerifier.from_jwks((await client.get("/.well-known/jwks.json")).json())
    pair = (await client.post("/v1/guest")).json()
    verified = await verifier.verify(pair["access_token"])
    assert verified.session_id == pair["refresh_token"].split(".")[0]
    # a token without sid (issued by an older service) has no session id
    old = auth.services.issuer.issue("g_x", "guest-1")
    assert (await verifier.verify(old)).session_id is None


async def test_a_retried_account_creation_is_not_username_taken(redis_url: str) -> None:
    """A SET NX run twice by a client retry: the second run finds our own record."""
    from auth.accounts import AccountStore

    redis = aioredis.Redis.from_url(redis_url)
    try:
        store = AccountStore(redis)
        calls = 0
        original = redis.set

        async def set_twice(*args: object, **kwargs: object) -> object:
            nonlocal calls
            calls += 1
            await original(*args, **kwargs)  # type: ignore[arg-type]
            return await original(*args, **kwargs)  # type: ignore[arg-type]  # the replay

        redis.set = set_twice  # type: ignore[method-assign]
        account = await store.create("jill", "hash")
        assert account is not None and calls == 1
        redis.set = original  # type: ignore[method-assign]
        assert await store.create("JILL", "other") is None  # really taken by another call
    finally:
        await redis.aclose()
