"""A room outlives its process: kills, repeated kills, a Redis restart, a rolling restart.

Real processes and a real Valkey (the ``cluster`` fixture: two room servers
with a 1.5 s lease). Bots play through each fault; their summary is the
verdict on the guarantees (no acked input lost or applied twice, no client
seeing time go backwards). A ``JournalRecorder`` keeps the room's whole
journal and ``Player``s record every state, so the tests also check that
each tick was journaled once, epochs only grow, and every state a client saw
was durable under the epoch of the server that sent it.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
from typing import Any

import pytest
import redis.asyncio as aioredis

from client.bots import run_bots
from server.killroom import kill_room
from server.store import RoomStore
from tests.cluster import LocalCluster
from tests.integration.faults import JournalRecorder, owner, server_name, wait_for

pytestmark = pytest.mark.slow


def assert_clean(summary: dict[str, Any], count: int) -> None:
    assert summary["failed_players"] == 0, summary["failures"]
    assert summary["lost_acked_inputs"] == 0, summary
    assert summary["duplicate_inputs"] == 0, summary
    assert summary["rollbacks"] == 0, summary
    assert summary["inputs_acked"] == summary["inputs_sent"], summary
    assert summary["players"] == count


async def room_running(store: RoomStore, room: str, min_tick: int = 20) -> None:
    """Wait until the room has an owner and has journaled ``min_tick`` ticks."""

    async def ticking() -> bool:
        last = await store.last_journaled(room)
        return last is not None and last[0] >= min_tick and await owner(store, room) is not None

    await wait_for(ticking, 20, f"room {room} to run")


@pytest.fixture
async def store(cluster: LocalCluster) -> Any:
    client = aioredis.Redis.from_url(cluster.redis_url, socket_timeout=2)
    try:
        yield RoomStore(client)
    finally:
        await client.aclose()


async def test_sigkill_of_the_owner_while_bots_play(
    cluster: LocalCluster, store: RoomStore
) -> None:
    room, count = "kill-once", 8
    async with asyncio.timeout(40), JournalRecorder(cluster.redis_url, room) as journal:
        bots = asyncio.create_task(run_bots(cluster.info, room, count, seconds=6.0))
        await room_running(store, room)
        await asyncio.sleep(1.0)  # let the bots play for a while
        before = await store.owner(room)
        assert before is not None
        old_name = await server_name(store, before.server_id)
        report = await kill_room(cluster.redis_url, room, timeout=15)
        summary = await bots
        after = await store.owner(room)

    assert report["old_server"] == before.server_id
    assert report["new_server"] != before.server_id
    assert report["new_epoch"] > report["old_epoch"] == before.epoch
    # Found dead through its closed connection, not by waiting out the 1.5 s lease.
    assert report["unavailable_ms"] < 1000, report
    assert after is not None and after.server_id == report["new_server"]
    assert after.epoch == report["new_epoch"]
    other = next(name for name in cluster.servers if name != old_name)
    assert await server_name(store, after.server_id) == other
    assert_clean(summary, count)
    assert summary["reconnects"] >= count, summary  # every bot was on the killed owner
    # Every bot's welcome named the other server as the room's fallback, and each went
    # there first after the kill.
    assert summary["fallbacks"] >= count, summary
    journal.check()
    assert journal.epochs() == [report["old_epoch"], report["new_epoch"]]


async def test_redis_restart_with_append_only_persistence(
    cluster: LocalCluster, store: RoomStore
) -> None:
    room, count = "redis-restart", 6
    async with asyncio.timeout(45), JournalRecorder(cluster.redis_url, room) as journal:
        bots = asyncio.create_task(run_bots(cluster.info, room, count, seconds=7.0))
        await room_running(store, room)
        await asyncio.sleep(1.0)  # let the bots play for a while
        last = await store.last_journaled(room)
        assert last is not None
        await asyncio.to_thread(cluster.redis.stop)  # graceful: the AOF is flushed
        await asyncio.to_thread(cluster.redis.start)  # same port, same data dir

        async def ticking_again() -> bool:
            newest = await store.last_journaled(room)
            return newest is not None and newest[0] > last[0] + 10

        await wait_for(ticking_again, 15, "the room to tick again after the restart")
        assert not bots.done(), "the restart was meant to happen while the bots play"
        summary = await bots

    assert_clean(summary, count)
    journal.check()
    for name in ("s1", "s2", "auth"):  # an outage is logged once, never as a leak
        log = cluster.log(name)
        assert "Unclosed" not in log and "Traceback" not in log, log[-3000:]


async def test_a_redis_outage_under_many_rooms_is_logged_once_without_leaks(
    cluster: LocalCluster, store: RoomStore
) -> None:
    """Several rooms per server: their journal appends leave in one pipeline, which a
    Redis outage fails; the pipeline must be closed (no "Unclosed Pipeline" error) and
    the outage logged once, not once per retry."""
    count = 12  # rooms of 2: six rooms over two servers
    async with asyncio.timeout(45):
        bots = asyncio.create_task(run_bots(cluster.info, "outage", count, seconds=6.0, rooms_of=2))
        await room_running(store, "outage-0")
        await asyncio.sleep(1.0)
        await asyncio.to_thread(cluster.redis.stop)
        await asyncio.sleep(1.0)  # an outage shorter than the lease: rooms keep going
        await asyncio.to_thread(cluster.redis.start)
        summary = await bots
    assert_clean(summary, count)
    for name in ("s1", "s2", "auth"):
        log = cluster.log(name)
        assert "Unclosed" not in log and "Traceback" not in log, log[-3000:]


async def test_five_kills_in_a_row(cluster: LocalCluster, store: RoomStore) -> None:
    room, count = "kill-five", 6
    reports: list[dict[str, Any]] = []
    async with asyncio.timeout(90), JournalRecorder(cluster.redis_url, room) as journal:
        bots = asyncio.create_task(run_bots(cluster.info, room, count, seconds=20.0))
        await room_running(store, room)
        for _ in range(5):
            await asyncio.sleep(0.5)  # let the bots play between kills
            lease = await store.owner(room)
            assert lease is not None
            name = await server_name(store, lease.server_id)
            reports.append(await kill_room(cluster.redis_url, room, timeout=15))
            await asyncio.to_thread(cluster.start_server, name)  # as stateroom up would
        assert not bots.done(), f"the kills outlasted the bots: {reports}"
        summary = await bots

    assert_clean(summary, count)
    epochs = [reports[0]["old_epoch"]] + [r["new_epoch"] for r in reports]
    assert epochs == sorted(set(epochs)), reports  # strictly increasing
    for before, after in itertools.pairwise(reports):
        assert after["old_epoch"] == before["new_epoch"]
        assert after["old_server"] == before["new_server"]
    journal.check()
    assert journal.epochs() == epochs


async def test_rolling_restart_of_both_servers(cluster: LocalCluster, store: RoomStore) -> None:
    room, count = "rolling", 6
    async with asyncio.timeout(60), JournalRecorder(cluster.redis_url, room) as journal:
        bots = asyncio.create_task(run_bots(cluster.info, room, count, seconds=10.0))
        await room_running(store, room)
        for name in ("s1", "s2"):
            await asyncio.sleep(1.0)  # let the bots play
            proc = cluster.servers[name].proc
            assert proc is not None
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 15) == 0, cluster.log(name)
            await asyncio.to_thread(cluster.start_server, name)
        assert not bots.done(), "the restarts were meant to happen while the bots play"
        summary = await bots
        final = await store.owner(room)

    assert_clean(summary, count)
    assert summary["reconnects"] >= count, summary  # everyone was moved at least once
    # A handover's checkpoint may cover a tick whose journal append was cut short.
    journal.check(contiguous=False)
    assert final is not None and len(journal.epochs()) >= 2
