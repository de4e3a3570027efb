"""The directory's publish follows what changed (server/listing.py), and the listing's
promises still hold.

A real Valkey, login service and one room server. A room made idle the way real rooms
become idle (a player joins, plays one input, disconnects: its seat waits out a long
grace period, the room pauses) is not published again while nothing changes: its
entry's ``updated_at`` (the last full publish) stays put, while its expiry keeps being
extended, so it stays listed far past the entry's 5 s TTL. A second player joining is
in the directory within about a second (docs/api.md: ``players`` at most a second old).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from bench.idle_rooms import join_and_play
from infra import directory
from tests.cluster import LocalCluster, start_cluster
from tests.support import Processes

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def one_server(processes: Processes, tmp_path: Path) -> Iterator[LocalCluster]:
    local = start_cluster(processes, tmp_path, servers=1, extra=("--grace-s", "600"))
    try:
        yield local
    finally:
        processes.stop_all()
        local.redis.stop()


@pytest.fixture
async def redis_client(one_server: LocalCluster) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(one_server.redis_url, socket_timeout=2)
    try:
        yield client
    finally:
        await client.aclose()


async def guest(cluster: LocalCluster) -> str:
    async with httpx.AsyncClient(base_url=cluster.auth_url, timeout=10) as http:
        token: str = (await http.post("/v1/guest", json={})).json()["access_token"]
        return token


async def entry_of(redis: aioredis.Redis, room: str) -> directory.Entry:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        entry = await directory.lookup(redis, "arena", room)
        if entry is not None:
            return entry
        await asyncio.sleep(0.1)
    raise AssertionError(f"{room} never published")


async def test_an_idle_room_is_kept_listed_without_being_republished(
    one_server: LocalCluster, redis_client: aioredis.Redis
) -> None:
    (server,) = one_server.servers.values()
    await join_and_play(server.ws_url, await guest(one_server), "idle-listed", leave=False)
    await asyncio.sleep(2.5)  # paused (1 s unwatched) and published once since
    first = await entry_of(redis_client, "idle-listed")
    assert first.players == 1
    await asyncio.sleep(directory.ENTRY_TTL_MS / 1000 + 1)  # past the entry's own TTL
    later = await entry_of(redis_client, "idle-listed")
    assert later.updated_at == first.updated_at  # no full publish: nothing changed
    assert later.expires_at > first.expires_at  # but its expiry was extended
    listed = [e.room for e in await directory.list_public(redis_client, "arena")]
    assert listed == ["idle-listed"]

    # A change is published within the listing's promise (about a second).
    joined_at = time.monotonic()
    await join_and_play(server.ws_url, await guest(one_server), "idle-listed", leave=False)
    while (await entry_of(redis_client, "idle-listed")).players != 2:
        assert time.monotonic() - joined_at < directory.REFRESH_EVERY_S + 1.0
        await asyncio.sleep(0.05)
