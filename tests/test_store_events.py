"""Game events are stored with their tick's journal entry, in one fenced script, kept for
a window of ticks and deleted with the room (a real Valkey)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from server.errors import OwnershipLost
from server.store import RoomStore, room_keys


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RoomStore]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield RoomStore(client, lease_ms=3000)
    finally:
        await client.aclose()


async def test_events_are_stored_with_their_tick_and_trimmed(store: RoomStore) -> None:
    claim = await store.claim("ev", "s1", "ws://s1", "arena")
    assert claim.won
    for tick in range(1, 31):
        emitted = [[{"tick": tick}, None], ["private", ["p1"]]] if tick % 3 == 0 else None
        await store.append(claim.lease, tick, [], emitted, keep_ticks=12)
    stored = await store.recent_events("ev")
    assert [tick for tick, _ in stored] == [18, 21, 24, 27, 30]
    assert stored[-1][1] == [[{"tick": 30}, None], ["private", ["p1"]]]
    assert await store.redis.xlen(room_keys("ev")["journal"]) == 30


async def test_a_fenced_owner_stores_no_events(store: RoomStore) -> None:
    old = await store.claim("ev2", "s1", "ws://s1", "arena")
    await store.redis.delete(room_keys("ev2")["lease"])
    new = await store.claim("ev2", "s2", "ws://s2", "arena")
    assert new.won and new.lease.epoch > old.lease.epoch
    with pytest.raises(OwnershipLost):
        await store.append(old.lease, 1, [], [["late", None]], keep_ticks=10)
    assert await store.recent_events("ev2") == []


async def test_a_tick_written_by_two_epochs_counts_once(store: RoomStore) -> None:
    first = await store.claim("ev3", "s1", "ws://s1", "arena")
    await store.append(first.lease, 5, [], [["from-1", None]], keep_ticks=10)
    await store.redis.delete(room_keys("ev3")["lease"])
    second = await store.claim("ev3", "s2", "ws://s2", "arena")
    await store.append(second.lease, 5, [], [["from-2", None]], keep_ticks=10)
    assert await store.recent_events("ev3") == [(5, [["from-2", None]])]


async def test_deleting_a_room_deletes_its_events(store: RoomStore) -> None:
    claim = await store.claim("ev4", "s1", "ws://s1", "arena")
    await store.append(claim.lease, 1, [], [["x", None]], keep_ticks=10)
    assert await store.delete_room(claim.lease)
    assert not await store.redis.exists(room_keys("ev4")["events"])
