"""Fencing: an owner that is frozen or cut off from Redis is replaced, and can never write
or publish again once it is.

Real processes and a real Valkey (the ``cluster`` fixture: 1.5 s lease, an
owner stops 0.5 s before its lease would run out). The ``Player``s here wait
30 s before they call a silent connection stalled, so they stay on the old
owner through the fault and see what it does when it comes back.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from client.bots import run_bots
from server.protocol import CloseCode
from server.store import Lease, RoomStore
from tests.cluster import LocalCluster
from tests.integration.faults import (
    JournalRecorder,
    Player,
    owner,
    rooms_on,
    server_name,
    wait_for,
)
from tests.integration.test_failover import assert_clean, room_running
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow

PATIENT = {"stall_timeout": 30.0}


@pytest.fixture
async def store(cluster: LocalCluster) -> AsyncIterator[RoomStore]:
    client = aioredis.Redis.from_url(cluster.redis_url, socket_timeout=2)
    try:
        yield RoomStore(client)
    finally:
        await client.aclose()


async def moved_away(store: RoomStore, room: str, old: Lease) -> Lease:
    """Wait until another server holds the room under a newer epoch."""

    async def moved() -> bool:
        lease = await owner(store, room)
        return lease is not None and lease.server_id != old.server_id

    await wait_for(moved, 15, f"room {room} to leave {old.server_id}")
    new = await store.owner(room)
    assert new is not None and new.epoch > old.epoch
    return new


def reconnect_closes(player: Player, server_id: str) -> list[tuple[str, int, str]]:
    return [c for c in player.client.closes if c[0] == server_id and c[1] == CloseCode.RECONNECT]


async def test_frozen_owner_is_replaced_and_fenced_when_it_wakes(
    cluster: LocalCluster, store: RoomStore
) -> None:
    room = "frozen"
    stop = asyncio.Event()
    async with asyncio.timeout(45), JournalRecorder(cluster.redis_url, room) as journal:
        players = [await Player.join(cluster, room, f"p{i}", **PATIENT) for i in range(3)]
        bots = asyncio.create_task(run_bots(cluster.info, room, 4, seconds=7.0))
        for player in players:
            player.play(stop)
        await room_running(store, room)
        await asyncio.sleep(1.0)  # play for a while
        old = await store.owner(room)
        assert old is not None
        old_name = await server_name(store, old.server_id)
        old_proc = cluster.servers[old_name].proc
        assert old_proc is not None
        assert {p.client.server for p in players} == {old.server_id}

        os.kill(old_proc.pid, signal.SIGSTOP)
        try:
            new = await moved_away(store, room, old)
            # The new owner runs the room before the old one wakes up.
            await wait_for(
                lambda: _journaled_under(store, room, new.epoch), 10, "the new owner's first tick"
            )
        finally:
            os.kill(old_proc.pid, signal.SIGCONT)

        # Woken up, it finds it can no longer renew: it drops the room and its clients.
        async def dropped() -> bool:
            return room not in await rooms_on(cluster.servers[old_name].admin_url)

        await wait_for(dropped, 10, f"{old_name} to drop the room")
        for player in players:
            await wait_for(
                lambda p=player: _true(reconnect_closes(p, old.server_id)),
                10,
                "a 4020 close from the old owner",
            )
            await wait_for(
                lambda p=player: _true(p.client.server == new.server_id),
                15,
                "the player to resume on the new owner",
            )
        await asyncio.sleep(1.0)  # play on the new owner
        stop.set()
        for player in players:
            await player.finish()
        summary = await bots
        assert await store.owner(room) == new

    assert "fenced" in cluster.log(old_name)
    journal.check()
    assert journal.epochs() == [old.epoch, new.epoch]
    for player in players:
        player.check(journal)
    assert_clean(summary, 4)


async def _journaled_under(store: RoomStore, room: str, epoch: int) -> bool:
    last = await store.last_journaled(room)
    return last is not None and last[1] == epoch


async def _true(value: Any) -> bool:
    return bool(value)


async def test_owner_cut_off_from_redis_fences_itself_and_the_room_moves(
    cluster: LocalCluster, store: RoomStore
) -> None:
    room = "cut-off"
    stop = asyncio.Event()
    with TcpProxy("127.0.0.1", cluster.redis.port, password=cluster.redis.password) as proxy:
        # s3 reaches Redis only through the proxy.
        s3 = await asyncio.to_thread(cluster.add_server, "s3", (), proxy.url)
        async with asyncio.timeout(45), JournalRecorder(cluster.redis_url, room) as journal:
            # A join marked as placed is served where it lands: s3 creates the room.
            creator = await Player.join(cluster, room, "creator", urls=[f"{s3.ws_url}?placed=1"])
            players = [await Player.join(cluster, room, f"p{i}", **PATIENT) for i in range(3)]
            await creator.client.leave()
            for player in players:
                player.play(stop)
            await room_running(store, room)
            old = await store.owner(room)
            assert old is not None and await server_name(store, old.server_id) == "s3"
            assert {p.client.server for p in players} == {old.server_id}
            await asyncio.sleep(1.0)  # play for a while

            proxy.blackhole()
            cut_at = time.monotonic()
            # It cannot renew: it stops and sends its clients away before its lease runs out.
            for player in players:
                await wait_for(
                    lambda p=player: _true(reconnect_closes(p, old.server_id)),
                    10,
                    "a 4020 close from the cut-off owner",
                )
            fenced_after = time.monotonic() - cut_at
            assert fenced_after < 1.5, f"fenced {fenced_after:.2f}s after the cut (lease 1.5 s)"
            new = await moved_away(store, room, old)
            assert await server_name(store, new.server_id) in {"s1", "s2"}
            for player in players:
                await wait_for(
                    lambda p=player: _true(p.client.server == new.server_id),
                    15,
                    "the player to resume on the new owner",
                )
            await asyncio.sleep(0.5)  # play on the new owner

            # Heal: the writes s3 sent during the partition now reach Redis, and must fail.
            proxy.heal()
            await wait_for(lambda: _http_ok(f"{s3.http_url}/readyz"), 15, "s3 to reach Redis again")
            assert room not in await rooms_on(s3.admin_url)
            await asyncio.sleep(0.5)  # play on after the heal
            stop.set()
            for player in players:
                await player.finish()
            assert await store.owner(room) == new

    assert "fenced" in cluster.log("s3")
    journal.check()
    assert journal.epochs() == [old.epoch, new.epoch]
    for player in players:
        player.check(journal)


async def _http_ok(url: str) -> bool:
    async with httpx.AsyncClient(timeout=1) as http:
        return (await http.get(url)).status_code == 200
