"""The failover watcher: rooms whose owner is gone are claimed without waiting for a client.

Every ``failover_poll_ms`` it reads which servers are alive and claims the rooms of
dead peers (liveness connection gone from two reads in a row: the poll's, and
one more made at once) and of expired leases
(frozen or partitioned peers, or a draining owner that released them). Registry
entries of servers gone for three polls are removed. Orphaned rooms are spread over the
live servers (server/succession.py): each claims at once the ones it is the successor of,
and the others only if they are still orphaned a few polls later.

What a poll reads is chosen by ``server.watched_rooms``: only the leases of rooms whose
owner is not live, has no lease or is quiet, plus the whole index and every lease every
``lease_ms / 4`` and the index again when a peer stops being live. So a poll with
nothing to do costs the same with 10 rooms or 10,000 (the registry and one
``CLIENT LIST``). Bounds, with the defaults (poll 50 ms, lease 3 s): a killed owner's
rooms are claimed at the first poll after its liveness connection drops, once a second
read right away confirms it (~5-60 ms); a frozen
or cut-off owner's, at most ``lease_ms + lease_ms / 4 + 2 polls`` after its last
renewal, and ``lease_ms + 2 polls`` when it turned quiet (infra/liveness.py: 1-2 s
after it froze) before its leases ran out (a ticking room, with a 3 s lease: its lease
was renewed at the freeze); a lease released by a draining owner, two polls
after the owner leaves the registry (which it does before releasing); non-successors
``FALLBACK_POLLS`` polls later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from server.errors import OwnershipLost
from server.redis_errors import REDIS_DOWN
from server.store import Lease
from server.succession import FALLBACK_POLLS, successor
from server.watched_rooms import WatchedRooms

if TYPE_CHECKING:
    from server.app import RoomServer

log = logging.getLogger("stateroom.server")

BROKEN_ROOM_RETRY_S = 10.0  # the watcher's pause before retrying a room it could not rebuild


class FailoverWatcher:
    """Claims the rooms of dead or frozen peers for the server it belongs to."""

    def __init__(self, server: RoomServer) -> None:
        self.server = server
        self._missing: dict[str, int] = {}
        self._gone_polls: dict[str, int] = {}
        self._broken_until: dict[str, float] = {}
        self._orphaned: dict[str, int] = {}  # room -> polls seen orphaned in a row
        self.watched = WatchedRooms(scan_s=server.settings.lease_ms / 4000)
        self._was_live: set[str] = set()  # the live servers of the last settled poll

    async def run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.server.settings.failover_poll_ms / 1000)
            try:
                await self._watch_once()
                failing = False
            except (*REDIS_DOWN, RedisError) as exc:
                if not failing:  # once per outage, not every poll
                    log.warning("watcher: redis unavailable: %s", exc)
                failing = True
            except Exception:
                log.exception("watcher failed")

    async def _watch_once(self) -> None:
        server = self.server
        servers = await server.refresh_live()
        live = server.live
        if not server.settled():
            return
        await self._forget_dead_servers(servers, live)
        me = server.server_id
        watched = self.watched
        full = watched.scan_due()
        stopped = self._was_live - live  # died, or left the registry (a drain)
        self._was_live = set(live)
        if full or stopped:
            # Rooms a peer created since the last read are in the same poll's suspects.
            await watched.read_index(server.redis)
        quiet = server.store.liveness.quiet & live
        names = [
            name
            for name in watched.to_read(live, quiet, me, full)
            if name not in server.rooms and name not in server.claiming
        ]
        # Redis's clock of this read: when a claim decided on it was detected. On a Redis
        # Cluster a shard that cannot answer now leaves its rooms out of this poll only.
        try:
            leases, now_ms = await server.store.readable_leases(names) if names else ({}, 0)
        except BaseException:
            if full:
                watched.scan_failed()
            raise
        watched.learn(names, leases)
        missing_now: set[str] = set()
        unowned = 0  # no lease, or its owner not live: stateroom_rooms_unowned
        orphans: list[tuple[str, Lease | None]] = []
        held: list[tuple[str, Lease]] = []  # leases whose holder is not live
        for name, lease in leases.items():
            if lease is None:
                unowned += 1
                # Released by a draining owner, or expired (frozen/partitioned owner).
                orphans.append((name, None))
                continue
            if lease.server_id == me or lease.server_id in live:
                continue
            unowned += 1
            missing_now.add(lease.server_id)
            held.append((name, lease))
        # Absent from two liveness reads in a row: its process is gone. A holder missing
        # for the first time is looked at again at once (one round trip), not a poll
        # later: its players are back within ~50 ms of its death, and its rooms should
        # be claimed (spread over the survivors) before their joins pile up. One that
        # left the registry is draining (it releases its rooms itself): it keeps the
        # poll it had, as before.
        gone = {sid for sid in missing_now if self._missing.get(sid, 0) >= 1}
        fresh = missing_now - gone
        if fresh:
            await server.refresh_live()
            live = server.live
            gone |= {sid for sid in fresh - live if sid in server.registry}
        orphans += [(name, lease) for name, lease in held if lease.server_id in gone]
        self._missing = {sid: self._missing.get(sid, 0) + 1 for sid in missing_now}
        self._claim_share(orphans, live, now_ms)
        server.metrics.rooms_unowned.set(unowned)
        await server.metrics.sample_redis_memory(server.redis)  # every 5 s at most

    def _claim_share(
        self,
        orphans: list[tuple[str, Lease | None]],
        live: set[str],
        now_ms: int,
    ) -> None:
        """Claim the orphans this server is the successor of, and those still orphaned
        after FALLBACK_POLLS polls (server/succession.py)."""
        me = self.server.server_id
        candidates = live | {me}
        seen = {name: self._orphaned.get(name, 0) + 1 for name, _ in orphans}
        self._orphaned = seen
        claimed: dict[str, int] = {}
        for name, lease in orphans:
            if successor(name, candidates) != me and seen[name] <= FALLBACK_POLLS:
                continue
            self._spawn_claim(name, self.watched.game_of(name), lease, now_ms)
            owner = lease.server_id if lease is not None else "(no lease)"
            claimed[owner] = claimed.get(owner, 0) + 1
        for owner, count in claimed.items():
            log.info(
                "%d rooms of %s are orphaned (owner gone or lease expired): claiming them"
                " (%d orphans in all)",
                count,
                owner,
                len(orphans),
            )

    async def _forget_dead_servers(
        self, registered: dict[str, dict[str, Any]], live: set[str]
    ) -> None:
        """Drop registry entries of servers whose liveness connection stayed gone."""
        gone = {sid for sid in registered if sid not in live and sid != self.server.server_id}
        for server_id in gone:
            self._gone_polls[server_id] = self._gone_polls.get(server_id, 0) + 1
            if self._gone_polls[server_id] >= 3:
                await self.server.store.unregister_server(server_id)
                log.info("server %s is gone: removed from the registry", server_id)
        self._gone_polls = {sid: n for sid, n in self._gone_polls.items() if sid in gone and n < 3}

    def _spawn_claim(self, name: str, game: str, replacing: Lease | None, detected_ms: int) -> None:
        if time.monotonic() < self._broken_until.get(name, 0.0):
            return  # could not be rebuilt a moment ago: don't retry every poll

        async def claim() -> None:
            try:
                await self.server.take_room(
                    name, game, replacing, for_client=False, detected_ms=detected_ms
                )
            except (*REDIS_DOWN, RedisError, OwnershipLost):
                pass
            except Exception:  # logged by RoomServer._claim_and_restore; retried later
                self._broken_until[name] = time.monotonic() + BROKEN_ROOM_RETRY_S

        self.server.spawn(claim())
