"""A rebuild's reads (checkpoint, journal, meta, options, recent events) answer the same
on the lean RESP path (infra/resp_pipeline.py) as on redis-py's pipelines, in RESP2 and
RESP3, and the same again when the claim's own script returns them (``with_record``),
against a real Valkey."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis

from server.store import RoomStore, room_record

pytestmark = pytest.mark.timeout(30)


async def rebuild_reads(store: RoomStore, room: str) -> tuple[Any, ...]:
    (checkpoint, entries), meta, options, events = await asyncio.gather(
        store.load(room), store.meta(room), store.options(room), store.recent_events(room)
    )
    return checkpoint, entries, meta, options, events


@pytest.mark.parametrize("protocol", [2, 3])
async def test_the_lean_path_reads_what_redis_py_reads(redis_url: str, protocol: int) -> None:
    client = aioredis.Redis.from_url(redis_url, protocol=protocol)
    lean, plain = RoomStore(client), RoomStore(client, fast_scripts=False)
    assert lean.scripts.pipe is not None and plain.scripts.pipe is None
    try:
        room = f"reads-{protocol}"
        claim = await lean.claim(room, "s1", "ws://s1", "arena", options={"laps": 3})
        assert claim.won
        for tick in range(1, 8):
            emitted = [[{"tick": tick}, None]] if tick % 2 else None
            await lean.append(claim.lease, tick, [["i", "p1", tick, {"dx": 1}]], emitted, 10)
            if tick == 4:
                await lean.checkpoint(claim.lease, 4, msgpack.packb({"tick": 4}))
        got = await rebuild_reads(lean, room)
        assert got == await rebuild_reads(plain, room)
        checkpoint, entries, meta, options, events = got
        assert checkpoint is not None and checkpoint.tick == 4
        assert [e.tick for e in entries] == [5, 6, 7]
        assert options == {"laps": 3} and meta["game"] == "arena"
        assert [tick for tick, _ in events] == [1, 3, 5, 7]
        # A room that does not exist: empty answers on both paths.
        assert await rebuild_reads(lean, "nowhere") == await rebuild_reads(plain, "nowhere")
        await client.delete(f"sr:{{{room}}}:lease")  # the owner died, its lease expired
        for store in (plain, lean):
            taken = await store.claim(
                room, "s2", "ws://s2", "arena", must_exist=True, with_record=True
            )
            assert taken.won and taken.takeover and taken.raw_record is not None
            # The record a takeover's claim returns is what the separate reads give.
            record = room_record(*taken.raw_record)
            assert (record.checkpoint, record.entries, record.options, record.events) == (
                checkpoint,
                entries,
                options,
                events,
            )
            assert record.meta == {
                **meta,
                "owner": "s2",
                "last_owner": "s2",
                "url": "ws://s2",
                "epoch": str(taken.lease.epoch),
            }
            await client.delete(f"sr:{{{room}}}:lease")
        # A new room's claim returns its fresh record: no checkpoint, no journal.
        fresh = await lean.claim(f"{room}-new", "s1", "ws://s1", "arena", with_record=True)
        assert fresh.raw_record is not None and not fresh.takeover
        new_record = room_record(*fresh.raw_record)
        assert (new_record.checkpoint, new_record.entries) == (None, [])
        assert new_record.meta["game"] == "arena"
    finally:
        await lean.aclose()
        await client.aclose()


async def test_the_first_tick_an_epoch_journaled(redis_url: str) -> None:
    """What kill-room reports as the recovered tick + 1, however late its poll comes."""
    client = aioredis.Redis.from_url(redis_url)
    store = RoomStore(client)
    try:
        first = await store.claim("epochs", "s1", "ws://s1", "arena")
        for tick in range(1, 6):
            await store.append(first.lease, tick, [])
        await client.delete("sr:{epochs}:lease")
        second = await store.claim("epochs", "s2", "ws://s2", "arena", must_exist=True)
        for tick in range(6, 9):  # the new owner has journaled three ticks by the poll
            await store.append(second.lease, tick, [])
        assert await store.last_journaled("epochs") == (8, second.lease.epoch)
        assert await store.first_journaled_by("epochs", second.lease.epoch) == 6
        assert await store.first_journaled_by("epochs", first.lease.epoch) == 1
        assert await store.first_journaled_by("epochs", 99) is None
    finally:
        await store.aclose()
        await client.aclose()
