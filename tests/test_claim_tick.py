"""The claim tick (server/store.py ``_CLAIM``, ``RoomEngine.catch_up``), against a real
Valkey: a takeover's claim journals, as the new epoch's, the tick right after the ticks
the old owner may have published, with the new owner's allowance of implied ticks; the
new owner publishes it with no write of its own. Where the old owner's last tick cannot
be told, nothing is written and the new owner journals its first tick as before."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgpack
import pytest
import redis.asyncio as aioredis

from server.engine import RoomEngine
from server.metrics import ServerMetrics
from server.room import Room
from server.settings import ServerSettings
from server.store import Lease, RoomStore, room_record
from tests.support import settle_tasks
from tests.test_engine import Beeper

pytestmark = pytest.mark.timeout(30)

ROOM = "claimed"


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RoomStore]:
    client = aioredis.Redis.from_url(redis_url)
    store = RoomStore(client)
    try:
        yield store
    finally:
        await store.aclose()
        await client.aclose()


async def take_over(store: RoomStore, server: str, implied: int = 4) -> tuple[Lease, list]:
    """The owner died (its lease expired): ``server`` claims the room as the watcher
    does; its lease and the journal entries the claim returned."""
    await store.redis.delete(f"sr:{{{ROOM}}}:lease")
    claim = await store.claim(
        ROOM, server, f"ws://{server}", "arena", must_exist=True, with_record=True,
        implied=implied,
    )  # fmt: skip
    assert claim.won and claim.takeover and claim.raw_record is not None
    return claim.lease, room_record(*claim.raw_record).entries


async def test_the_claim_journals_the_tick_after_the_old_owners_allowance(
    store: RoomStore,
) -> None:
    first = await store.claim(ROOM, "s1", "ws://s1", "arena")
    for tick in (1, 2, 5):  # ticks 3 and 4 implied (within 2's allowance of 3)
        await store.append(first.lease, tick, [["i", "p1", tick, {}]], implied=3)
    lease, entries = await take_over(store, "s2")
    assert [(e.tick, e.epoch, e.claimed) for e in entries] == [
        (1, 1, False), (2, 1, False), (5, 1, False), (9, 2, True)
    ]  # fmt: skip
    claim_entry = entries[-1]
    assert claim_entry.events == [] and claim_entry.implied == 4
    # Its game events go to the events stream only: the journal entry is the claim's.
    await store.append(lease, 9, [], [[{"beep": 9}, None]], 10, 4, claimed=True)
    assert await store.last_journaled(ROOM) == (9, 2)
    assert await store.recent_events(ROOM) == [(9, [[{"beep": 9}, None]])]
    # The next tick is journaled as usual.
    await store.append(lease, 10, [["i", "p1", 6, {}]], implied=4)
    assert await store.last_journaled(ROOM) == (10, 2)


async def test_a_takeover_of_a_claim_that_wrote_nothing_goes_past_its_allowance(
    store: RoomStore,
) -> None:
    """The second owner died before writing anything of its own: it may have published
    its claim tick and the 4 ticks after it, so the third claim tick comes after those."""
    first = await store.claim(ROOM, "s1", "ws://s1", "arena")
    await store.append(first.lease, 1, [["j", "p1", "p1"]], implied=4)
    await take_over(store, "s2")
    _, entries = await take_over(store, "s3", implied=2)
    assert [(e.tick, e.epoch, e.implied, e.claimed) for e in entries] == [
        (1, 1, 4, False), (6, 2, 4, True), (11, 3, 2, True)
    ]  # fmt: skip


async def test_a_checkpoint_newer_than_the_last_entry_gives_the_claim_tick(
    store: RoomStore,
) -> None:
    first = await store.claim(ROOM, "s1", "ws://s1", "arena")
    await store.append(first.lease, 1, [["j", "p1", "p1"]], implied=4)
    # A checkpoint at tick 3 with 2 implied ticks left (its owner's allowance ran to 5).
    await store.checkpoint(first.lease, 3, msgpack.packb({"tick": 3, "implied": 2}), 2)
    _, entries = await take_over(store, "s2")
    assert [(e.tick, e.claimed) for e in entries] == [(6, True)]  # (those after the checkpoint)


async def test_no_claim_tick_where_the_old_owners_last_tick_cannot_be_told(
    store: RoomStore,
) -> None:
    first = await store.claim(ROOM, "s1", "ws://s1", "arena")
    await store.append(first.lease, 1, [["j", "p1", "p1"]], implied=4)
    # A checkpoint of an older version (or written without its count): its allowance is
    # only inside the snapshot.
    await store.checkpoint(first.lease, 3, msgpack.packb({"tick": 3, "implied": 2}))
    assert await store.redis.hget(f"sr:{{{ROOM}}}:ckpt", "implied") is None
    _, entries = await take_over(store, "s2")
    assert entries == []  # (those after the checkpoint)
    # Implied ticks off (--implied-ticks 0, or replica durability): no claim tick either.
    second = await store.claim(f"{ROOM}-b", "s1", "ws://s1", "arena")
    await store.append(second.lease, 1, [["j", "p1", "p1"]], implied=4)
    await store.redis.delete(f"sr:{{{ROOM}-b}}:lease")
    claim = await store.claim(
        f"{ROOM}-b", "s2", "ws://s2", "arena", must_exist=True, with_record=True, implied=0
    )
    assert [e.tick for e in room_record(*claim.raw_record).entries] == [1]  # type: ignore[misc]


async def test_a_new_room_has_no_claim_tick(store: RoomStore) -> None:
    claim = await store.claim(ROOM, "s1", "ws://s1", "arena", with_record=True, implied=4)
    assert claim.won and not claim.takeover
    assert await store.redis.xlen(f"sr:{{{ROOM}}}:journal") == 0


async def test_a_claim_tick_that_emits_stores_the_events_nobody_saw_before_it_is_published(
    store: RoomStore,
) -> None:
    """A real Room on its claim tick: Beeper beeps every 3rd tick, inputs or not. Ticks 2-4
    were the old owner's allowance, 3 beeps (so it published at most 2): the new owner
    publishes the claim tick 5 with the beep of 3, stored in the events stream first
    under the claim's own journal entry, and journals 6 (it beeps) as any tick."""
    first = await store.claim(ROOM, "s1", "ws://s1", Beeper.name)
    await store.append(first.lease, 1, [["j", "p1", "p1"]], implied=3)
    lease, entries = await take_over(store, "s2")
    assert [(e.tick, e.claimed) for e in entries] == [(1, False), (5, True)]
    engine = RoomEngine(Beeper({}))
    caught_up = engine.catch_up(
        [(e.tick, e.events, e.implied) for e in entries], 0, claims={5}, own_claim=5
    )
    assert caught_up is not None and [e.data for e in caught_up.emitted] == [{"beep": 3}]
    settings = ServerSettings(lease_ms=3000, lease_margin_ms=1000, implied_ticks=4)
    room = Room(ROOM, Beeper, engine, lease, store, settings, ServerMetrics(), "s2", _closed)
    room.caught_up = caught_up
    room.claimed(5, 4)
    errors_before = await store.redis.info("errorstats")
    room.start()
    try:
        async with asyncio.timeout(5):
            while engine.tick < 8 or await store.last_journaled(ROOM) != (6, 2):
                await asyncio.sleep(0.02)
    finally:
        room.fence("test over")
        await settle_tasks()
    # No write was refused on the way (an append of tick 5's entry would have been, and
    # then taken for one that had landed).
    assert await store.redis.info("errorstats") == errors_before
    journal = await store.redis.xrange(f"sr:{{{ROOM}}}:journal")
    assert [entry_id.decode() for entry_id, _ in journal] == ["1-1", "5-2", "6-2"]
    events = dict(await store.recent_events(ROOM))
    assert [data for data, _ in events[5]] == [{"beep": 3}]
    assert [data for data, _ in events[6]] == [{"beep": 6}]
    assert room.event_log.for_player("p1", 4, 5) == [{"beep": 3}]  # sent with tick 5


def _closed(room: Room) -> None:
    return None


@pytest.mark.parametrize("field", ["tick", "implied"])
async def test_a_checkpoint_field_that_is_no_number_leaves_the_claim_tick_out(
    store: RoomStore, field: str
) -> None:
    """A corrupted checkpoint hash must not fail the claim (the room could then never be
    taken over): it gets no claim tick, and the rebuild reports the broken checkpoint."""
    first = await store.claim(ROOM, "s1", "ws://s1", "arena")
    await store.append(first.lease, 1, [["j", "p1", "p1"]], implied=4)
    await store.checkpoint(first.lease, 3, msgpack.packb({"tick": 3, "implied": 2}), 2)
    await store.redis.hset(f"sr:{{{ROOM}}}:ckpt", field, "not a number")
    await store.redis.delete(f"sr:{{{ROOM}}}:lease")
    claim = await store.claim(ROOM, "s2", "ws://s2", "arena", must_exist=True, implied=4)
    assert claim.won and claim.takeover
    journal = await store.redis.xrange(f"sr:{{{ROOM}}}:journal")
    assert [entry_id for entry_id, _ in journal] == [b"1-1"]
