"""The failover watcher reads only what can have changed (server/watched_rooms.py).

A real Valkey and a real ``RoomServer`` object (not started: no listener, no loops),
whose watcher is stepped one poll at a time. Its peer is a real named liveness
connection registered as a server would register it; the peer's rooms are real claims
(lease, epoch, meta and rooms-index entry written by ``RoomStore.claim``). Claims the
watcher decides on are recorded instead of run, so the test sees exactly which rooms a
poll found orphaned.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis

from infra import rooms_index
from infra.liveness import QUIET_IDLE_S
from infra.room_keys import liveness_name, room_keys
from server.app import RoomServer
from server.settings import ServerSettings
from server.store import Lease, RoomStore
from server.succession import FALLBACK_POLLS

PEER = "peer-1"


@dataclass
class Watched:
    server: RoomServer
    peer: aioredis.Redis  # the peer's liveness connection
    peer_store: RoomStore
    asked: list[int] = field(default_factory=list)  # lease reads per poll (room count)
    claimed: list[str] = field(default_factory=list)
    _reads: list[int] = field(default_factory=list)

    async def poll(self) -> None:
        """One watcher pass; ``asked`` gets the leases it read (0: it read none)."""
        before = len(self._reads)
        await self.server.watcher._watch_once()
        self.asked.append(sum(self._reads[before:]))

    async def create(self, names: list[str], owner: str = PEER) -> None:
        for name in names:
            claim = await self.peer_store.claim(name, owner, "ws://peer", "arena")
            assert claim.won
        await asyncio.sleep(0.05)  # the index entries go out through the command batcher


@pytest.fixture
async def watched(redis_url: str) -> AsyncIterator[Watched]:
    settings = ServerSettings(
        redis_url=redis_url, lease_ms=3000, failover_poll_ms=50, liveness_grace_ms=0
    )
    server = RoomServer(settings)
    peer = aioredis.Redis.from_url(
        redis_url, single_connection_client=True, client_name=liveness_name(PEER)
    )
    peer_redis = aioredis.Redis.from_url(redis_url)
    peer_store = RoomStore(peer_redis, lease_ms=settings.lease_ms)
    try:
        await server._heartbeat_once()  # our own liveness connection and registry entry
        peer_id = int(await peer.client_id())
        await peer_store.register_server(
            PEER, {"id": PEER, "ws_url": "ws://peer", "liveness_id": peer_id}
        )
        state = Watched(server, peer, peer_store)
        reads = server.store.readable_leases

        async def counted(rooms: list[str]) -> tuple[dict[str, Lease | None], int]:
            state._reads.append(len(rooms))
            return await reads(rooms)

        server.store.readable_leases = counted  # type: ignore[method-assign]

        def record(name: str, game: str, replacing: Lease | None, detected_ms: int) -> None:
            state.claimed.append(name)

        server.watcher._spawn_claim = record  # type: ignore[method-assign]
        yield state
    finally:
        for client in (peer, peer_redis, server.liveness, server.redis, server.journal_redis):
            await client.aclose()


async def test_a_quiet_steady_state_reads_no_lease_and_no_index(watched: Watched) -> None:
    await watched.create([f"r{i}" for i in range(200)])
    watched.server.watcher.watched.scan_s = 0.4
    # The peer's heartbeat speaks on its liveness connection (a real server's does 4
    # times a second): silent for QUIET_IDLE_S, as on a slow CI run, it would count as
    # quiet and have its leases read every poll, which is another test's case.
    await watched.peer.ping()
    await watched.poll()  # the first poll is a full scan
    assert watched.asked == [200]
    watcher = watched.server.watcher.watched
    scans, index_reads = watcher.full_scans, watcher.index_reads
    started = time.monotonic()
    while time.monotonic() - started < 1.0:
        await watched.peer.ping()
        await watched.poll()
        await asyncio.sleep(0.05)
    polls = len(watched.asked) - 1
    full = watcher.full_scans - scans
    # Every full scan reads all 200 leases and the index; the polls between read nothing.
    assert 2 <= full <= 3, (full, watched.asked)
    assert sorted(watched.asked[1:]) == [0] * (polls - full) + [200] * full
    assert watcher.index_reads - index_reads == full
    assert watched.claimed == []


async def test_a_peer_killed_right_after_creating_rooms_loses_them_in_the_next_poll(
    watched: Watched,
) -> None:
    await watched.create([f"old{i}" for i in range(50)])
    watched.server.watcher.watched.scan_s = 3600  # no full scan after the first
    await watched.poll()
    await watched.create([f"new{i}" for i in range(50)])  # unknown to the watcher yet
    await watched.poll()
    assert watched.asked == [50, 0]
    await watched.peer.aclose()  # the peer's process is gone: Redis drops the connection
    await asyncio.sleep(0.05)
    reads = 0
    refresh_live = watched.server.refresh_live

    async def counted() -> Any:
        nonlocal reads
        reads += 1
        return await refresh_live()

    watched.server.refresh_live = counted  # type: ignore[method-assign]
    # Sees it gone: re-reads the index, reads its 100 rooms' leases, reads liveness once
    # more to confirm (not a poll later), and claims them all.
    await watched.poll()
    assert watched.asked[-1] == 100
    assert reads == 2
    assert sorted(watched.claimed) == sorted(
        [f"old{i}" for i in range(50)] + [f"new{i}" for i in range(50)]
    )


async def test_a_released_lease_of_a_live_peer_is_found_by_the_next_full_scan(
    watched: Watched,
) -> None:
    await watched.create(["kept", "released"])
    watcher = watched.server.watcher.watched
    watcher.scan_s = 0.3
    await watched.poll()
    await watched.server.redis.delete(room_keys("released")["lease"])
    started = time.monotonic()
    while not watched.claimed and time.monotonic() - started < 2:
        await watched.poll()
        await asyncio.sleep(0.05)
    assert watched.claimed == ["released"]
    # found by the first full scan after the release, claimed then or FALLBACK_POLLS later
    assert time.monotonic() - started <= watcher.scan_s + (FALLBACK_POLLS + 2) * 0.06


@pytest.mark.timeout(15)
async def test_a_quiet_peer_has_its_leases_read_every_poll(watched: Watched) -> None:
    """A frozen peer's connection stays open but goes silent: from QUIET_IDLE_S on, its
    rooms are read every poll, so an expired lease is claimed at once, not at the next
    full scan."""
    await watched.create(["frozen-a", "frozen-b"])
    watched.server.watcher.watched.scan_s = 3600
    await watched.poll()
    await asyncio.sleep(QUIET_IDLE_S + 0.3)  # the peer's connection says nothing
    await watched.poll()
    assert PEER in watched.server.store.liveness.quiet
    assert watched.asked[-1] == 2
    await watched.server.redis.delete(room_keys("frozen-a")["lease"])  # it expired
    for _ in range(FALLBACK_POLLS + 1):  # at once if we are its successor, else after these
        await watched.poll()
    assert watched.claimed[:1] == ["frozen-a"]
    assert set(watched.claimed) == {"frozen-a"}
    await watched.peer.client_id()  # thawed: it speaks again
    await watched.poll()
    assert PEER not in watched.server.store.liveness.quiet
    await watched.poll()
    assert watched.asked[-1] == 1  # only the orphan, still unclaimed (claims are recorded)


async def test_the_index_cache_sees_rooms_created_and_deleted_by_a_peer(
    watched: Watched,
) -> None:
    await watched.create(["first"])
    watcher = watched.server.watcher.watched
    watcher.scan_s = 0.2
    await watched.poll()
    assert set(watcher.rooms) == {"first"}
    await watched.create(["second"])
    await rooms_index.forget(watched.server.redis, "first")
    started = time.monotonic()
    while set(watcher.rooms) != {"second"} and time.monotonic() - started < 2:
        await watched.poll()
        await asyncio.sleep(0.05)
    assert set(watcher.rooms) == {"second"}
    assert time.monotonic() - started <= watcher.scan_s + 0.15
    assert watcher.rooms["second"].owner == PEER


async def test_a_newer_owner_seen_in_a_lease_wins_over_an_older_index_entry(
    watched: Watched,
) -> None:
    await watched.create(["moved"])
    watcher = watched.server.watcher.watched
    await watched.poll()
    epoch = watcher.rooms["moved"].epoch
    watcher.learn(["moved"], {"moved": Lease("moved", epoch + 1, "peer-2")})
    await watcher.read_index(watched.server.redis)  # still says PEER at the old epoch
    known: Any = watcher.rooms["moved"]
    assert (known.owner, known.epoch) == ("peer-2", epoch + 1)


async def test_a_failed_full_scan_is_retried_at_the_next_poll(watched: Watched) -> None:
    await watched.create(["a", "b"])
    watcher = watched.server.watcher
    watcher.watched.scan_s = 3600
    reads = watched.server.store.readable_leases

    async def failing(rooms: list[str]) -> tuple[dict[str, Lease | None], int]:
        raise ConnectionError("Redis went away")

    watched.server.store.readable_leases = failing  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await watched.poll()
    watched.server.store.readable_leases = reads  # type: ignore[method-assign]
    await watched.poll()
    assert watched.asked[-1] == 2  # scanned again, not an hour later
    await watched.poll()
    assert watched.asked[-1] == 0


async def test_a_peer_that_reconnected_its_liveness_connection_stays_live(
    watched: Watched, redis_url: str
) -> None:
    """The poll's CLIENT LIST goes out with the registry read, for the ids of the previous
    read: a peer registered with a new id since is asked about again at once, never
    judged dead on its old id's absence."""
    await watched.create(["kept"])
    await watched.poll()
    await watched.poll()
    assert PEER in watched.server.live
    again = aioredis.Redis.from_url(
        redis_url, single_connection_client=True, client_name=liveness_name(PEER)
    )
    try:
        new_id = int(await again.client_id())
        await watched.peer_store.register_server(
            PEER, {"id": PEER, "ws_url": "ws://peer", "liveness_id": new_id}
        )
        await watched.peer.aclose()  # the old connection is gone
        for _ in range(FALLBACK_POLLS + 2):
            await watched.poll()
            assert PEER in watched.server.live
        assert watched.claimed == []
    finally:
        await again.aclose()


async def test_a_draining_peer_keeps_a_poll_to_release_its_rooms(watched: Watched) -> None:
    """A peer that left the registry (a graceful drain, its liveness connection still
    open) releases its rooms itself: its held leases are not claimed in the poll that
    first sees it gone, only one poll later; a lease it released is claimed at once."""
    await watched.create(["held", "released"])
    watched.server.watcher.watched.scan_s = 3600  # no full scan after the first
    await watched.peer.ping()
    await watched.poll()
    await watched.peer_store.unregister_server(PEER)  # draining: out of the registry first
    watched.server.store._registry_at = 0.0  # the next poll reads the whole registry
    lease = await watched.peer_store.owner("released")
    assert lease is not None and await watched.peer_store.release(lease)
    await watched.poll()
    assert watched.claimed == ["released"]  # released: at once; "held" waits a poll
    await watched.poll()  # (claims are only recorded here: "released" is asked again)
    assert sorted(watched.claimed[1:]) == ["held", "released"]
