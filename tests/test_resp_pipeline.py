"""The lean RESP path of the script batches (infra/resp_pipeline.py) on a real Valkey:
replies and error replies as redis-py gives them, batches in flight answered in order,
NOSCRIPT after ``SCRIPT FLUSH``, FENCED, and a batch that always ends: Redis paused (the
socket timeout), killed mid-batch, restarted; AUTH (password, ACL user) and SELECT.
Sentinel failover: tests/integration/test_resp_pipeline_sentinel.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from infra.embedded_redis import EmbeddedRedis
from infra.redis_url import connect
from infra.resp_pipeline import RespPipeline
from server.durability import Durability, ReplicaTimeout
from server.errors import OwnershipLost
from server.store import RoomStore, ScriptBatcher, fenced_error, room_keys

FENCE = "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('FENCED ' .. ARGV[1]) end return redis.call('INCR', KEYS[2])"  # noqa: E501


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    plain = connect(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        yield plain
    finally:
        await plain.aclose()


def shape(value: Any) -> Any:
    """A reply as comparable data: an error as (class, text)."""
    if isinstance(value, BaseException):
        return (type(value), str(value))
    if isinstance(value, list):
        return [shape(v) for v in value]
    return value


COMMANDS: list[tuple[Any, ...]] = [
    ("SET", "k", "v"),
    ("GET", "k"),
    ("ECHO", b"\x00\xc3\xa9bin"),
    ("INCR", "k"),  # ERR value is not an integer
    ("LPUSH", "k", "x"),  # WRONGTYPE
    ("EVALSHA", "0" * 40, 0),  # NOSCRIPT
    ("EVAL", "return {1, 'two', {3, redis.status_reply('OK')}, false}", 0),
    ("EVAL", "return redis.error_reply('FENCED 7|s1')", 0),
    ("EVAL", "return redis.call('INCR', KEYS[1])", 1, "n"),
    ("NOSUCHCOMMAND", 1),
    ("HSET", "h", "f", "v"),
    ("HGETALL", "h"),  # a map in RESP3
    ("WAIT", 0, 0),
]


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("decode", [False, True])
async def test_replies_and_errors_are_redis_pys(
    redis_url: str, decode: bool, protocol: int
) -> None:
    client = connect(redis_url, socket_timeout=1.0, decode_responses=decode, protocol=protocol)
    try:
        pipe = RespPipeline(client)
        ours = await pipe.execute(COMMANDS)
        await client.delete("k", "n", "h")
        async with client.pipeline(transaction=False) as theirs:
            for command in COMMANDS:
                theirs.execute_command(*command)
            expected = await theirs.execute(raise_on_error=False)
        # redis-py's SET reply callback turns OK into True; the rest have none.
        expected[0] = "OK" if decode else b"OK"
        # HGETALL's reply callback makes a dict of RESP2's flat list; RESP3 sends a map.
        f, v = ("f", "v") if decode else (b"f", b"v")
        expected[11] = [f, v] if protocol == 2 else {f: v}
        assert shape(ours) == shape(expected)
        assert isinstance(ours[5], NoScriptError)
        assert type(ours[7]) is ResponseError and str(ours[7]) == "FENCED 7|s1"
        await pipe.aclose()
    finally:
        await client.aclose()


async def test_batches_in_flight_are_answered_in_order(client: aioredis.Redis) -> None:
    pipe = RespPipeline(client)
    batches = [[("INCR", "c"), ("ECHO", str(i))] for i in range(200)]
    replies = await asyncio.gather(*(pipe.execute(b) for b in batches))
    counts = [r[0] for r in replies]
    assert sorted(counts) == list(range(1, 201))
    assert [r[1] for r in replies] == [str(i).encode() for i in range(200)]
    # A big reply split over many reads.
    blob = b"x" * 300_000
    assert await pipe.execute([("ECHO", blob), ("PING",)]) == [blob, b"PONG"]
    # A caller that gives up does not shift anyone's replies.
    waiting = asyncio.ensure_future(pipe.execute([("ECHO", "gone")]))
    await asyncio.sleep(0)
    waiting.cancel()
    assert await pipe.execute([("ECHO", "mine")]) == [b"mine"]
    assert await pipe.execute([]) == []
    await pipe.aclose()


@pytest.mark.parametrize("blocking", [False, True])
async def test_the_connection_is_one_of_the_pools_and_closes_with_it(
    redis_url: str, blocking: bool
) -> None:
    """Plain pool (the journal client) and blocking pool (the room server's main one)."""
    waits = {"wait_for_connection": 1.0} if blocking else {}
    client = connect(redis_url, socket_timeout=1.0, max_connections=4, **waits)
    pipe = RespPipeline(client)
    (ours,) = await pipe.execute([("CLIENT", "ID")])
    watcher = redis.Redis.from_url(redis_url)
    try:
        ids = {int(c["id"]) for c in watcher.client_list()}
        assert ours in ids
        assert len(client.connection_pool._in_use_connections) == 1  # type: ignore[attr-defined]
        await client.aclose()  # closes the held connection too
        deadline = time.monotonic() + 5
        while ours in {int(c["id"]) for c in watcher.client_list()}:
            assert time.monotonic() < deadline, "the held connection outlived its client"
            await asyncio.sleep(0.02)
    finally:
        watcher.close()
    await pipe.aclose()  # given back to the pool; nothing left in use
    assert not client.connection_pool._in_use_connections  # type: ignore[attr-defined]


async def test_noscript_after_script_flush_and_fenced(client: aioredis.Redis) -> None:
    """The store's batches on the fast path: a flushed script is loaded and its calls sent
    again; a FENCED reply is that call's own error (OwnershipLost via fenced_error)."""
    store = RoomStore(client, lease_ms=60_000)
    assert store._batcher.pipe is not None
    leases = [(await store.claim(f"nf{i}", "s1", "ws://s1", "arena")).lease for i in range(5)]
    for tick in (1, 2):
        await asyncio.gather(*(store.append(lease, tick, [tick]) for lease in leases))
    await client.script_flush()
    futures = [store.append_soon(lease, 3, [3]) for lease in leases]
    await asyncio.gather(*futures)
    for lease in leases:
        assert await client.xlen(room_keys(lease.room)["journal"]) == 3
    # A new owner fences the old one: its append fails alone, the others' go through.
    await client.delete(room_keys("nf0")["lease"])
    assert (await store.claim("nf0", "s2", "ws://s2", "arena")).won
    futures = [store.append_soon(lease, 4, [4]) for lease in leases]
    done = await asyncio.gather(*futures, return_exceptions=True)
    assert isinstance(done[0], ResponseError) and str(done[0]).startswith("FENCED")
    assert isinstance(fenced_error(leases[0], done[0]), OwnershipLost)
    assert not any(isinstance(d, BaseException) for d in done[1:])
    with pytest.raises(OwnershipLost):
        await store.append(leases[0], 5, [5])
    await store.aclose()


async def test_fast_and_redis_py_batches_agree(client: aioredis.Redis) -> None:
    """The same calls through ScriptBatcher with and without the fast path: same replies."""
    script = client.register_script(FENCE)
    await client.set("lease", "me")
    outcomes = []
    for fast in (True, False):
        batcher = ScriptBatcher(client, fast=fast)
        assert (batcher.pipe is not None) is fast
        futures = [
            batcher.submit(script, ["lease", f"n{fast}"], ["me" if i % 3 else "other"])
            for i in range(9)
        ]
        outcomes.append(shape(await asyncio.gather(*futures, return_exceptions=True)))
        await batcher.aclose()
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == (ResponseError, "FENCED other")


async def test_replica_durability_waits_on_the_same_connection(redis_url: str) -> None:
    """``replica`` with no replica: WAIT answers 0 after ``wait_ms`` (longer than the
    socket timeout: the batch's grace; Valkey ends it up to 1/hz = 100 ms late), every
    call ends ReplicaTimeout, none hangs."""
    client = connect(redis_url, socket_timeout=0.25)
    try:
        store = RoomStore(client, lease_ms=60_000, durability=Durability("replica", 300))
        lease = (await store.claim("rw", "s1", "ws://s1", "arena")).lease
        started = time.monotonic()
        results = await asyncio.gather(
            store.append_soon(lease, 1, [1]), store.append_soon(lease, 2, [2]),
            return_exceptions=True,
        )  # fmt: skip
        took = time.monotonic() - started
        assert all(isinstance(r, ReplicaTimeout) for r in results), results
        assert 0.25 < took < 1.5, took
        assert await client.xlen(room_keys("rw")["journal"]) == 2  # on the primary
        with pytest.raises(ReplicaTimeout):
            await store.confirm_durable(lease)
        await store.aclose()
    finally:
        await client.aclose()


async def test_a_paused_redis_times_out_every_batch_then_reconnects(
    own_redis: EmbeddedRedis,
) -> None:
    client = connect(own_redis.url, socket_timeout=0.3)
    admin = redis.Redis.from_url(own_redis.url)
    try:
        pipe = RespPipeline(client)
        (first,) = await pipe.execute([("CLIENT", "ID")])
        admin.execute_command("CLIENT", "PAUSE", 1500, "ALL")
        started = time.monotonic()
        batches = [pipe.execute([("PING",), ("ECHO", str(i))]) for i in range(20)]
        results = await asyncio.gather(*batches, return_exceptions=True)
        took = time.monotonic() - started
        assert all(isinstance(r, RedisTimeoutError) for r in results), results
        assert took < 1.0, took
        admin.execute_command("CLIENT", "UNPAUSE")
        (second,) = await pipe.execute([("CLIENT", "ID")])
        assert second != first  # a new connection: the old one's replies are unmatchable
        await pipe.aclose()
    finally:
        admin.close()
        await client.aclose()


async def test_redis_killed_mid_batch_fails_every_batch_and_restart_reconnects(
    own_redis: EmbeddedRedis,
) -> None:
    client = connect(own_redis.url, socket_timeout=5.0, socket_connect_timeout=0.5)
    admin = redis.Redis.from_url(own_redis.url)
    try:
        pipe = RespPipeline(client)
        assert await pipe.execute([("SET", "before", 1)]) == [b"OK"]
        # Paused, so the batches are in flight (sent, unanswered) when Redis dies.
        admin.execute_command("CLIENT", "PAUSE", 10_000, "ALL")
        admin.close()
        batches = [asyncio.ensure_future(pipe.execute([("INCR", "x")])) for _ in range(10)]
        await asyncio.sleep(0.1)
        assert not any(b.done() for b in batches)
        started = time.monotonic()
        own_redis.kill()
        results = await asyncio.gather(*batches, return_exceptions=True)
        assert time.monotonic() - started < 1.0  # not the 5 s socket timeout
        assert all(isinstance(r, RedisConnectionError) for r in results), results
        # Down: the next batch fails at once (connect refused), no hang.
        with pytest.raises(RedisConnectionError):
            await pipe.execute([("PING",)])
        own_redis.start()  # the same port, data from the AOF
        assert await pipe.execute([("PING",), ("GET", "before")]) == [b"PONG", b"1"]
        # Restarted while idle: once the loop has seen the socket close, the first
        # batch after it goes through (a fresh socket).
        own_redis.stop()
        own_redis.start()
        link = pipe._link
        deadline = time.monotonic() + 5
        while link is not None and not link.closed:
            assert time.monotonic() < deadline, "the closed socket went unnoticed"
            await asyncio.sleep(0.01)
        assert await pipe.execute([("GET", "before")]) == [b"1"]
        await pipe.aclose()
    finally:
        await client.aclose()


async def test_auth_acl_user_and_db(own_redis: EmbeddedRedis) -> None:
    admin = redis.Redis.from_url(own_redis.url)
    try:
        admin.execute_command("ACL", "SETUSER", "ticker", "on", ">tick-pw", "~*", "+@all")
        host = f"{own_redis.host}:{own_redis.port}"
        good = connect(f"redis://ticker:tick-pw@{host}/3", socket_timeout=1.0)
        pipe = RespPipeline(good)
        assert await pipe.execute([("SET", "where", "db3"), ("ACL", "WHOAMI")]) == [
            b"OK",
            b"ticker",
        ]
        assert redis.Redis.from_url(own_redis.url.replace("/0", "/3")).get("where") == b"db3"
        assert admin.get("where") is None  # not db 0
        await pipe.aclose()
        await good.aclose()
        wrong = quote("not-the-password", safe="")
        bad = connect(f"redis://:{wrong}@{host}/0", socket_timeout=1.0)
        with pytest.raises(AuthenticationError):
            await RespPipeline(bad).execute([("PING",)])
        await bad.aclose()
    finally:
        admin.close()


def test_not_for_a_cluster() -> None:
    assert RespPipeline.supports(aioredis.Redis(port=1))
    cluster = connect("redis+cluster://127.0.0.1:1")
    assert not RespPipeline.supports(cluster)
    assert ScriptBatcher(cluster).pipe is None  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="plain or Sentinel"):
        RespPipeline(cluster)  # type: ignore[arg-type]
