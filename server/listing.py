"""This server's side of the room directory (``infra/directory.py``): what it runs, where
the stateless matchmaking API of the login service can find it.

Every second, one batched publish of every running room whose entry changed since it
was last published (players, seats, options, the game's metadata and whether it takes
newcomers, the seated players so their quick-join reservations settle), fenced by the
room's epoch so a replaced owner cannot overwrite its successor; the unchanged ones
only have their expiry extended, every ``TTL_REFRESH_EVERY_S`` (2 s), in one script
call per game. So 1,000 idle rooms cost 500 cheap expiry extensions a second, not
1,000 publishes. A paused room (nobody connected) that has not ticked since its last
publish is not even rebuilt into an entry. A closed room is removed at once. A room
that dies with its server leaves the listing when its entry expires (5 s), or sooner
when the new owner publishes it again. The registry entry lists the games this server
runs, which is how the API knows which games exist.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass(slots=True)
class _Published:
    """What this server last published for one room, and when."""

    entry: directory.Entry
    tick: int  # the room's tick then
    at: float  # monotonic: last publish or expiry extension


class RoomListing:
    """Publishes this server's rooms to the directory; removes them when they close."""

    def __init__(self, server: RoomServer) -> None:
        self.server = server
        self._published: dict[str, _Published] = {}
        self.published = 0  # full publishes sent (tests and the bench look at them)
        self.refreshed = 0  # expiry extensions sent

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
        """Publish the rooms whose entry changed; extend the expiry of the others once
        ``TTL_REFRESH_EVERY_S`` old (a private room with a code: a full publish, which
        renews its code too)."""
        server = self.server
        now = time.monotonic()
        changed: list[tuple[directory.Entry, int]] = []
        due: list[directory.Entry] = []
        running: set[str] = set()
        for room in server.rooms.values():
            if room.state is not RoomState.RUNNING:
                continue
            running.add(room.name)
            last = self._published.get(room.name)
            tick = room.engine.tick
            if (
                last is not None
                and room.paused
                and last.tick == tick
                and last.entry.epoch == room.lease.epoch
                and last.entry.players == len(room.engine.seats)
            ):
                entry = last.entry  # nothing ran since: the same entry
            else:
                entry = entry_for(room, server.server_id)
            if last is None or (entry is not last.entry and entry != last.entry):
                changed.append((entry, tick))
            elif now - last.at >= directory.TTL_REFRESH_EVERY_S:
                due.append(entry)
                last.tick = tick
        for name in [name for name in self._published if name not in running]:
            del self._published[name]

        def room_tick(entry: directory.Entry) -> int:
            last = self._published.get(entry.room)
            return last.tick if last is not None else -1

        refresh = [e for e in due if not (e.private and e.join_code)]
        changed.extend((e, room_tick(e)) for e in due if e.private and e.join_code)
        if refresh:
            missed = await directory.refresh_many(
                server.redis, [(e.room, e.game, e.epoch) for e in refresh]
            )
            self.refreshed += len(refresh) - len(missed)
            for entry in refresh:
                if entry.room in missed:  # expired or taken meanwhile: publish it in full
                    changed.append((entry, room_tick(entry)))
                elif (last := self._published.get(entry.room)) is not None:
                    last.at = now
        if changed:
            await directory.publish_many(server.redis, [entry for entry, _ in changed])
            self.published += len(changed)
            for entry, tick in changed:
                now_room = server.rooms.get(entry.room)
                if now_room is not None and now_room.state is RoomState.RUNNING:  # still open
                    self._published[entry.room] = _Published(entry, tick, now)

    def closed(self, room: Room) -> None:
        """A room closed for good: out of the listing now (its code too)."""
        self._published.pop(room.name, None)
        self.server.background(
            directory.remove(
                self.server.redis, room.name, room.game_class.name, epoch=room.lease.epoch
            )
        )
