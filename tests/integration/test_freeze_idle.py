"""A frozen owner of idle rooms loses them to its peer's watcher within about one lease.

Nobody is connected to the rooms (they wait out a long grace period, paused), so no
client's reconnect helps: only the survivor's failover watcher can move them. Its polls
read no lease while everything is healthy (server/watched_rooms.py); once the frozen
owner's liveness connection goes quiet they read its rooms' leases every poll, so each
room is claimed about when its lease runs out, not at the next full scan. Production
timings (3 s lease, 50 ms polls); the owner is SIGSTOPped, then SIGCONTed after the test.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from bench.idle_rooms import join_and_play
from server.store import RoomStore
from tests.cluster import LocalCluster, start_cluster
from tests.integration.faults import owner, server_name, wait_for
from tests.support import Processes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

LEASE_MS = 3000
ROOMS = 12
EXTRA = (
    *("--lease-ms", str(LEASE_MS), "--lease-margin-ms", "1000", "--grace-s", "600"),
    *("--rooms-per-player", "100", "--rooms-per-minute", "100"),
)


@pytest.fixture
def frozen_pair(processes: Processes, tmp_path: Path) -> Iterator[LocalCluster]:
    local = start_cluster(processes, tmp_path, servers=1, extra=EXTRA)
    try:
        yield local
    finally:
        for server in local.servers.values():  # never leave a stopped process behind
            if server.proc is not None and server.proc.poll() is None:
                server.proc.send_signal(signal.SIGCONT)
        processes.stop_all()
        local.redis.stop()


async def test_a_frozen_owners_idle_rooms_move_within_about_a_lease(
    frozen_pair: LocalCluster,
) -> None:
    s1 = frozen_pair.servers["s1"]
    async with httpx.AsyncClient(base_url=frozen_pair.auth_url, timeout=10) as http:
        token = (await http.post("/v1/guest", json={})).json()["access_token"]
    rooms = [f"idle-frozen-{i}" for i in range(ROOMS)]
    for room in rooms:  # all on s1: it is the only server yet
        await join_and_play(s1.ws_url, token, room, leave=False)
    frozen_pair.add_server("s2", EXTRA)
    redis = aioredis.Redis.from_url(frozen_pair.redis_url, socket_timeout=2)
    store = RoomStore(redis)
    try:
        leases = [await owner(store, room) for room in rooms]
        assert all(lease is not None for lease in leases)
        old = {lease.server_id for lease in leases if lease is not None}
        assert len(old) == 1 and await server_name(store, old.pop()) == "s1"
        await asyncio.sleep(2.0)  # the rooms are paused; s2's watcher has scanned them
        assert s1.proc is not None
        frozen_at = time.monotonic()
        s1.proc.send_signal(signal.SIGSTOP)
        moved_at: dict[str, float] = {}

        async def all_moved() -> bool:
            for room in rooms:
                if room in moved_at:
                    continue
                lease = await owner(store, room)
                if lease is not None and await server_name(store, lease.server_id) == "s2":
                    moved_at[room] = time.monotonic() - frozen_at
            return len(moved_at) == len(rooms)

        await wait_for(all_moved, 15, "s2 to take every room over", every=0.05)
        s1.proc.send_signal(signal.SIGCONT)
    finally:
        await redis.aclose()
    slowest = max(moved_at.values())
    print(f"freeze -> claimed by the peer (lease {LEASE_MS} ms): slowest {slowest:.2f} s")
    # The leases ran out within LEASE_MS of the freeze; claimed within a few polls of
    # that (the next full scan alone would allow LEASE_MS * 1.25 + 2 polls = 3.85 s).
    assert slowest <= LEASE_MS / 1000 + 0.5, sorted(moved_at.values())
