"""This server's side of the room directory (``infra/directory.py``): what it runs, where
the stateless matchmaking API of the login service can find it.

Every second, one batched publish of every running room (players, seats, options,
the game's metadata and whether it takes newcomers, the seated players so their
quick-join reservations settle), fenced by the room's epoch so a replaced owner
cannot overwrite its successor; a closed room is removed at once. A room that dies
with its server leaves the listing when its entry expires (5 s), or sooner when the
new owner publishes it again. The registry entry lists the games this server runs,
which is how the API knows which games exist.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from infra import directory
from server.game import Game
from server.redis_errors import REDIS_DOWN
from server.room import Room, RoomState

if TYPE_CHECKING:
    from server.app import RoomServer

log = logging.getLogger("stateroom.listing")

# Options every game accepts (server/options.py); "private" is a flag, not a filter.
GENERIC_OPTIONS = ("max_players",)


def games_info(games: Mapping[str, type[Game]]) -> list[dict[str, Any]]:
    """The registry entry's ``games``: name, seat limit and option names of each game."""
    return [
        {
            "name": name,
            "max_players": game.max_players,
            "options": sorted({*game.option_names, *GENERIC_OPTIONS}),
        }
        for name, game in sorted(games.items())
    ]


def entry_for(room: Room, server_id: str) -> directory.Entry:
    """The directory entry of a running room, as its owner sees it now."""
    engine = room.engine
    options = {k: v for k, v in engine.options.items() if k != "private"}
    return directory.Entry(
        room=room.name,
        game=room.game_class.name,
        players=len(engine.seats),
        max_players=engine.max_players,
        options=options,
        private=bool(engine.options.get("private")),
        join_code=room.join_code or None,
        metadata=dict(engine.game.metadata()),
        joinable=engine.game.joinable(),
        owner=server_id,
        epoch=room.lease.epoch,
        seated=tuple(engine.seats),
    )


class RoomListing:
    """Publishes this server's rooms to the directory; removes them when they close."""

    def __init__(self, server: RoomServer) -> None:
        self.server = server

    async def run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(directory.REFRESH_EVERY_S)
            try:
                await self.publish_all()
                failing = False
            except (*REDIS_DOWN, RedisError) as exc:
                if not failing:  # once per outage
                    log.warning("directory publish failed: %s", exc)
                failing = True
            except Exception:
                log.exception("directory publish failed")

    async def publish_all(self) -> None:
        server = self.server
        entries = [
            entry_for(room, server.server_id)
            for room in server.rooms.values()
            if room.state is RoomState.RUNNING
        ]
        if entries:
            await directory.publish_many(server.redis, entries)

    def closed(self, room: Room) -> None:
        """A room closed for good: out of the listing now (its code too)."""
        self.server.background(
            directory.remove(
                self.server.redis, room.name, room.game_class.name, epoch=room.lease.epoch
            )
        )
