"""Placement: where a join is served and where a new room goes.

A join is served here if this process owns the room; redirected (message + close
4021) if a live peer owns it; claimed here if nobody does or its owner is dead,
rebuilding the room from its checkpoint and journal. A brand-new room goes to the
least-loaded live server. Kept apart from the endpoint, which only carries out the
answer, so the rules of where rooms live can be read in one place.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from infra import directory
from server.options import room_options
from server.overload import LoadGauge, load_gauge
from server.protocol import ErrorCode
from server.quotas import QuotaExceeded
from server.room import Room, RoomState

if TYPE_CHECKING:
    from server.app import RoomServer

log = logging.getLogger("stateroom.server")

# Longest a join waits for a stalled owner's lease to run out before it is told to retry.
# A stalled owner is one whose lease has less than half its time left, so with the default
# 3 s lease the wait always ends at the expiry; below the SDK's 2 s wait for a welcome.
STALE_OWNER_HOLD_MS = 1500

# A join is redirected only to an owner seen live this recently. When a server is killed,
# its players are back at the survivors within ~50 ms, before a watcher poll has seen it
# die; with the watcher's view (up to two polls old) they were sent to the dead server,
# failed to connect, and came back again. A fresh read (one for all the joins of that
# moment) claims the room for them at once instead.
REDIRECT_LIVENESS_AGE_S = 0.02


@dataclass(frozen=True)
class Redirect:
    url: str
    server: str


@dataclass(frozen=True)
class Unavailable:
    reason: str


class Placement:
    """Decides, for the server it belongs to, where rooms are served and created."""

    def __init__(self, server: RoomServer) -> None:
        self.server = server
        self._load: LoadGauge | None = None

    def load(self) -> LoadGauge:
        """The event loop's load gauge, with this server's threshold (made on first use)."""
        if self._load is None:
            self._load = load_gauge(self.server.settings.overload_lag_ms / 1000)
            load = self._load
            metrics = self.server.metrics
            metrics.overloaded.set_function(lambda: float(load.overloaded))
            metrics.overload_episodes.set_function(lambda: float(load.episodes))
        return self._load

    def shedding(self) -> bool:
        """Whether this server refuses new claims right now (its event loop is overloaded)."""
        return self.load().overloaded

    def _shed_join(self) -> Unavailable | None:
        """The answer to a join that would claim or create a room here while overloaded:
        'unavailable' (the client retries with backoff, on any server), so the rooms
        this server already runs keep their ticks, and their leases, on time."""
        if not self.shedding():
            return None
        self.server.metrics.shed.labels("join").inc()
        return Unavailable("this server is overloaded")

    async def successors(self) -> list[tuple[str, str]]:
        """Live peers, least loaded first, to hand rooms to when this server stops."""
        server = self.server
        servers = await server.refresh_live()
        peers = [
            (info.get("rooms", 0), sid, info["ws_url"])
            for sid, info in servers.items()
            if sid in server.live and sid != server.server_id and info.get("ws_url")
        ]
        return [(sid, url) for _, sid, url in sorted(peers)]

    async def _place_new_room(self, name: str) -> tuple[str, str] | None:
        """(server id, ws url) of the live server that should create room ``name``;
        None when it is this one."""
        server = self.server
        servers = await server.refresh_live()
        peers = sorted(sid for sid in servers if sid in server.live and sid != server.server_id)
        chosen = await server.store.place(
            name, [server.server_id, *peers], server.settings.max_rooms
        )
        if not chosen:
            raise QuotaExceeded(
                ErrorCode.SERVER_FULL, "every room server runs as many rooms as it may; retry"
            )
        if chosen == server.server_id or chosen not in servers:
            return None
        return chosen, servers[chosen]["ws_url"]

    async def locate(
        self,
        name: str,
        game: str,
        placed_hint: bool,
        player_id: str = "",
        address: str = "",
        options: Any = None,
    ) -> Room | Redirect | Unavailable:
        """Where a join for room ``name`` is served: here (claimed or rebuilt if needed),
        at a live peer (a redirect to its registered URL), or nowhere right now.

        ``placed_hint`` (``?placed=1`` on the URL) is only a hint: it is honoured when
        placement in Redis really chose this server, so a client cannot pick its server.
        A peer whose lease is not being renewed (a frozen or cut-off owner still
        connected to Redis) gets no more redirects: clients are told to retry until its
        lease expires and the room moves. Creating a room is charged to ``player_id`` and
        ``address`` (QuotaExceeded when their quota is used up).
        """
        server = self.server
        room = server.rooms.get(name)
        if room is not None and room.state is RoomState.RUNNING:
            return room
        for _attempt in range(3):
            # now_ms: Redis's clock of this read, when a takeover decided on it was detected.
            lease, ttl_ms, now_ms = await server.store.owner_and_ttl(name)
            if lease is not None and lease.server_id != server.server_id:
                if await server.is_live(lease.server_id, REDIRECT_LIVENESS_AGE_S):
                    if 0 <= ttl_ms < server.settings.lease_ms // 2:
                        # Hold the join until the lease runs out (within what a client
                        # waits for its first frame), then claim: the client is served
                        # at the moment the room can move, not a retry backoff later.
                        hold_ms = min(ttl_ms + 10, STALE_OWNER_HOLD_MS)
                        await asyncio.sleep(hold_ms / 1000)
                        if hold_ms < ttl_ms + 10:
                            return Unavailable("the room's owner is not renewing its lease")
                        continue
                    url = server.registry.get(lease.server_id, {}).get("ws_url", "")
                    return Redirect(url, lease.server_id) if url else Unavailable("owner unknown")
                if not server.settled():
                    return Unavailable("this server just reconnected to Redis")
                shed = None if name in server.claiming else self._shed_join()
                if shed is not None:
                    return shed
                log.info("room=%s owner %s is gone: claiming for a client", name, lease.server_id)
                taken = await server.take_room(name, game, lease, detected_ms=now_ms)
            else:
                if lease is None and not await server.store.meta(name):
                    placed = placed_hint and await server.store.placed_on(name) == server.server_id
                    if not placed:
                        target = await self._place_new_room(name)
                        if target is not None:
                            return Redirect(target[1] + "?placed=1", target[0])
                    shed = self._shed_join()
                    if shed is not None:
                        return shed
                    taken = await self._create_room(name, game, player_id, address, options)
                else:
                    shed = None if name in server.claiming else self._shed_join()
                    if shed is not None:
                        return shed
                    taken = await server.take_room(name, game, lease, detected_ms=now_ms)
            if taken is not None:
                return taken
        return Unavailable("room ownership is changing")

    async def _create_room(
        self, name: str, game: str, creator: str, address: str, options: Any
    ) -> Room | None:
        """Create a new room here with the creator's options (validated first: a refused
        option costs no quota), charged to its creator; None if another server won."""
        server = self.server
        join_code = ""
        handed_out = await directory.lookup(server.redis, game, name)
        if handed_out is not None and handed_out.pending and handed_out.private:
            # A name the matchmaking API reserved for a private room: its options and
            # code are the API's, whatever the joining client sends.
            options = {**handed_out.options, "private": True}
            join_code = handed_out.join_code or ""
        validated = room_options(server.games[game], options)
        if len(server.rooms) + len(server.claiming) >= server.settings.max_rooms:
            raise QuotaExceeded(
                ErrorCode.SERVER_FULL, "this server runs as many rooms as it may; retry"
            )
        if creator:
            await server.quotas.reserve_room(creator, address, name)
        room = await server.take_room(
            name, game, None, creator=creator, options=validated, join_code=join_code
        )
        if creator and (room is None or room.creator != creator):
            await server.quotas.release_room(creator, name)  # someone else created it
        return room
