"""The script batches' fast path (infra/resp_pipeline.py) under Sentinel: after a
failover every batch either fails as a whole with a ConnectionError/TimeoutError (never a
READONLY reply in a command's place) or runs on the new primary, which the reconnect
asked Sentinel for. Both ways a primary goes: demoted alive (``SENTINEL FAILOVER``: its
replies turn READONLY) and SIGKILLed (its socket dies)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from infra.redis_url import connect
from infra.resp_pipeline import RespPipeline
from tests.integration.test_durability_replica import SentinelGroup
from tests.support import Processes

pytestmark = pytest.mark.slow


@pytest.fixture
def group(tmp_path: Path, processes: Processes) -> Iterator[SentinelGroup]:
    nodes = SentinelGroup(tmp_path, processes)
    try:
        yield nodes
    finally:
        processes.stop_all()
        nodes.stop()


def failover_now(sentinel_port: int, timeout: float = 15) -> None:
    """``SENTINEL FAILOVER``, again while the sentinel finds no replica good enough yet
    (NOGOODSLAVE: it has not had the new replica's INFO long enough)."""
    deadline = time.monotonic() + timeout
    with redis.Redis(port=sentinel_port, socket_timeout=2) as sentinel:
        while True:
            try:
                sentinel.execute_command("SENTINEL", "FAILOVER", "main")
                return
            except redis.ResponseError as exc:
                if "NOGOODSLAVE" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.1)


def port_of(reply: Any) -> int:
    """CONFIG GET port's reply: a map in RESP3, a flat list in RESP2."""
    return int(reply[b"port"] if isinstance(reply, dict) else reply[1])


async def close_sentinels(client: aioredis.Redis) -> None:
    """The Sentinel clients ``connect`` made (the client's aclose leaves them open)."""
    for sentinel in client.connection_pool.sentinel_manager.sentinels:  # type: ignore[attr-defined]
        await sentinel.aclose()


@pytest.mark.parametrize("how", ["demoted", "killed"])
async def test_a_failover_moves_the_batches_to_the_new_primary(
    group: SentinelGroup, how: str
) -> None:
    group.add_replica("replica", group.primary)
    group.start_sentinel()
    old = group.primary_port()
    client = connect(group.url, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        pipe = RespPipeline(client)
        count, reply = await pipe.execute([("INCR", "n"), ("CONFIG", "GET", "port")])
        assert (count, port_of(reply)) == (1, old)
        if how == "demoted":
            failover_now(group.port)
        else:
            group.primary.kill()
        failures: list[BaseException] = []
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, f"no batch reached a new primary: {failures}"
            try:
                count, reply = await pipe.execute([("INCR", "n"), ("CONFIG", "GET", "port")])
            except (RedisConnectionError, RedisTimeoutError) as exc:
                failures.append(exc)
                continue
            assert isinstance(count, int), count  # never READONLY in a command's place
            if port_of(reply) != old:
                break
        assert port_of(reply) == group.primary_port()
        assert failures, "the failover went unseen"
        (role,) = await pipe.execute([("ROLE",)])
        assert role[0] == b"master"
        await pipe.aclose()
    finally:
        await client.aclose()
        await close_sentinels(client)


class PointedSentinel:
    """A sentinel manager that names the master it is told to (a stale view of a real
    sentinel, made to order)."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address

    async def discover_master(self, service: str) -> tuple[str, int]:
        return self.address


async def test_readonly_under_sentinel_fails_the_batch_and_asks_again(
    group: SentinelGroup,
) -> None:
    """A "master" that answers READONLY (demoted, its clients not killed) fails the whole
    batch with ConnectionError, as redis-py's SentinelManagedConnection does, and the next
    batch asks the sentinel for the master again; on a plain client READONLY stays the
    command's own error."""
    replica = group.add_replica("replica", group.primary)
    manager = PointedSentinel(("127.0.0.1", replica.port))
    pool = SentinelConnectionPool(  # type: ignore[no-untyped-call]
        "main", manager, password=group.primary.password, socket_timeout=1.0
    )
    client = aioredis.Redis(connection_pool=pool)
    plain = connect(replica.url, socket_timeout=1.0)
    try:
        pipe = RespPipeline(client)
        with pytest.raises(RedisConnectionError, match="previous master is now a slave"):
            await pipe.execute([("GET", "x"), ("SET", "x", 1)])
        manager.address = ("127.0.0.1", group.primary.port)
        count, reply = await pipe.execute([("INCR", "x"), ("CONFIG", "GET", "port")])
        assert (count, port_of(reply)) == (1, group.primary.port)
        await pipe.aclose()
        on_plain = RespPipeline(plain)
        (result,) = await on_plain.execute([("SET", "x", 1)])
        assert isinstance(result, ReadOnlyError)
        await on_plain.aclose()
    finally:
        await plain.aclose()
        await pool.disconnect()
