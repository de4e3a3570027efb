"""Implied ticks: a quiet room journals few of its ticks, and its owner's death loses,
repeats or rolls back nothing (docs/operations.md, "Implied ticks").

Real processes and a real Valkey (the ``cluster`` fixture, default ``--implied-ticks``).
Players send 2 inputs a second, so most of the 20 ticks a second have no event.
"""

from __future__ import annotations

import asyncio

import pytest

from server.settings import ServerSettings
from server.store import RoomStore
from tests.cluster import LocalCluster
from tests.integration.faults import JournalRecorder, Player, server_name, wait_for
from tests.integration.test_failover import room_running, store  # noqa: F401 (a fixture)
from tests.integration.test_fencing import moved_away

pytestmark = pytest.mark.slow

ALLOWANCE = ServerSettings().implied_ticks


async def test_a_quiet_rooms_owner_dies_and_its_implied_ticks_stay_true(
    cluster: LocalCluster,
    store: RoomStore,  # noqa: F811 (the imported fixture)
) -> None:
    room = "implied"
    stop = asyncio.Event()
    async with asyncio.timeout(45), JournalRecorder(cluster.redis_url, room) as journal:
        players = [await Player.join(cluster, room, f"quiet{i}") for i in range(2)]
        for player in players:
            player.rate = 2.0
            player.play(stop)
        await room_running(store, room)
        await asyncio.sleep(1.5)  # quiet play: mostly implied ticks
        old = await store.owner(room)
        assert old is not None
        cluster.kill(await server_name(store, old.server_id))
        new = await moved_away(store, room, old)
        for player in players:

            async def resumed(p: Player = player) -> bool:
                return p.client.server == new.server_id

            await wait_for(resumed, 15, "the player to resume on the new owner")
        await asyncio.sleep(1.5)  # quiet play on the new owner
        stop.set()
        for player in players:
            await player.finish()

    journal.check()  # every gap within the allowance of the entry before it
    assert journal.epochs() == [old.epoch, new.epoch]
    old_ticks = [tick for tick, epoch in journal.entries if epoch == old.epoch]
    assert all(journal.implied[tick] == ALLOWANCE for tick in old_ticks)
    # A quiet room: most ticks have no entry of their own.
    assert len(old_ticks) < (old_ticks[-1] - old_ticks[0] + 1) / 2, old_ticks
    # The new owner ran the whole allowance before its first tick, which its claim
    # journaled (the claim tick): it published it with no round trip of its own.
    first_new = min(tick for tick, epoch in journal.entries if epoch == new.epoch)
    assert first_new == old_ticks[-1] + ALLOWANCE + 1
    assert journal.claimed == {first_new} and journal.implied[first_new] == ALLOWANCE
    journaled = journal.epoch_of()
    for player in players:
        # Durable under the sender's epoch, journaled or implied; never back, never twice.
        player.check(journal)
        implied = [s.tick for s in player.client.seen if s.tick not in journaled]
        assert implied, "the players saw no implied tick"
        assert all(s.tick >= first_new for s in player.client.seen if s.epoch == new.epoch)
