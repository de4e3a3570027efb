"""Rooms on the common clock (server/ticker.py) and idle rooms that pause, against a
real Valkey and the real RoomStore: a room nobody is connected to stops ticking after
PAUSE_AFTER_S, keeps its lease, still ends grace periods on time, and resumes the
moment a player connects; a game with ``ticks_unwatched`` never pauses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar, cast

import pytest
import redis.asyncio as aioredis

from server.engine import RoomEngine
from server.games.arena import Arena
from server.metrics import ServerMetrics
from server.protocol import MSGPACK
from server.room import PAUSE_AFTER_S, Room, RoomState
from server.session import Session, SessionState
from server.settings import ServerSettings
from server.store import RoomStore
from server.ticker import ticker_for
from tests.support import settle_tasks

pytestmark = pytest.mark.timeout(30)


class Watched(Arena):
    """The arena rules in a world that moves on unwatched."""

    ticks_unwatched: ClassVar[bool] = True


class Seated:
    """What Room.attach and the publish path use of a Session."""

    def __init__(self, player_id: str) -> None:
        self.player_id = player_id
        self.name = player_id
        self.codec = MSGPACK
        self.since = 0
        self.welcome_tick = -1
        self.needs_keyframe = True
        self.resumed = False
        self.private_stream = None
        self.token_exp = 2**31
        self.state = SessionState.AUTHENTICATING
        self.frames: list[bytes] = []

    def transition(self, new: SessionState) -> None:
        self.state = new

    def send_frame(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True

    def send_in_place(self, buffer: bytearray, offset: int) -> bool:
        return self.send_frame(bytes(buffer[offset:]))

    def send(self, message: dict[str, Any]) -> bool:
        return self.send_frame(MSGPACK.encode(message))

    def close(self, code: int, reason: str) -> None:
        self.state = SessionState.CLOSING


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RoomStore]:
    client = aioredis.Redis.from_url(redis_url)
    store = RoomStore(client, lease_ms=1500)
    try:
        yield store
    finally:
        await settle_tasks()  # the fenced rooms' last writes, before their client closes
        await store.aclose()
        await client.aclose()


async def room_with_seat(
    store: RoomStore, name: str, game: type[Arena] = Arena, **settings: Any
) -> Room:
    """A room whose one seat's player is away (as after a takeover), started."""
    claim = await store.claim(name, "s1", "ws://127.0.0.1:1/v1/ws", game.name, None)
    assert claim.won
    engine = RoomEngine(game.create(7))
    engine.offer_join("p1", "p1")
    engine.step()
    config = ServerSettings(lease_ms=1500, lease_margin_ms=500, **settings)
    room = Room(name, game, engine, claim.lease, store, config, ServerMetrics(), "s1", _closed)
    room.start()
    return room


def _closed(room: Room) -> None:
    return None


async def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_an_unwatched_room_pauses_keeps_its_lease_and_resumes(store: RoomStore) -> None:
    room = await room_with_seat(store, "idle-a", grace_s=60, unplayed_grace_s=60)
    try:
        await wait(lambda: room.paused, PAUSE_AFTER_S + 1.0, "the pause")
        assert room.engine.tick >= 10  # it ticked while it waited out PAUSE_AFTER_S
        paused_at = room.engine.tick
        ticker = ticker_for(Arena.tick_rate)
        assert room not in ticker
        # Three lease lengths later: no tick, and the lease was renewed all along.
        await asyncio.sleep(3 * 1.5)
        assert room.engine.tick == paused_at
        lease, ttl, _ = await store.owner_and_ttl("idle-a")
        assert lease == room.lease and ttl > 0 and room.state is RoomState.RUNNING
        assert room.status()["paused"] is True
        # A player connects: ticking again from the next slot, and states flow.
        session = Seated("p1")
        room.attach(cast(Session, session))
        assert not room.paused
        await wait(lambda: room.engine.tick >= paused_at + 3, 2.0, "ticks after the resume")
        assert session.frames  # welcome and states
    finally:
        room.fence("test over")


async def test_a_paused_room_still_ends_grace_periods_on_time(store: RoomStore) -> None:
    room = await room_with_seat(store, "idle-b", grace_s=60, unplayed_grace_s=2.5)
    started = time.monotonic()
    try:
        await wait(lambda: room.paused, PAUSE_AFTER_S + 1.0, "the pause")
        # The seat was never played: it goes after 2.5 s, and the room, empty and never
        # played in, closes at once (as it would have without the pause).
        await wait(lambda: room.state is RoomState.CLOSED, 4.0, "the room to close")
        assert 2.4 <= time.monotonic() - started <= 3.5
        assert "p1" not in room.engine.seats
        deadline = time.monotonic() + 2.0
        while (await store.owner_and_ttl("idle-b"))[0] is not None:  # deleted, not expired
            assert time.monotonic() < deadline, "the closed room's keys are still there"
            await asyncio.sleep(0.02)
    finally:
        room.fence("test over")


async def test_a_game_that_ticks_unwatched_never_pauses(store: RoomStore) -> None:
    room = await room_with_seat(store, "idle-c", Watched, grace_s=60, unplayed_grace_s=60)
    try:
        await asyncio.sleep(PAUSE_AFTER_S + 0.6)
        assert not room.paused and room.engine.tick >= 25
    finally:
        room.fence("test over")


async def test_rooms_share_one_clock_that_stops_when_they_are_gone(store: RoomStore) -> None:
    rooms = [
        await room_with_seat(store, f"clock-{i}", Watched, grace_s=60, unplayed_grace_s=60)
        for i in range(3)
    ]
    ticker = ticker_for(Arena.tick_rate)
    assert len(ticker) == 3
    await asyncio.sleep(0.3)
    ticks = {room.engine.tick for room in rooms}
    assert max(ticks) - min(ticks) <= 1  # one pass of the clock steps them all
    for room in rooms:
        room.fence("test over")
    assert len(ticker) == 0 and ticker._timer is None
    fired = ticker.fired
    await asyncio.sleep(0.2)
    assert ticker.fired == fired


async def test_a_new_room_is_not_closed_while_its_creators_join_is_on_its_way(
    store: RoomStore,
) -> None:
    """A room nobody played in closes once empty, but not while a join placed there is
    still taking its quota slot (the room ticks meanwhile: seen as 4030 under load)."""
    claim = await store.claim("new-r", "s1", "ws://127.0.0.1:1/v1/ws", Arena.name, None)
    assert claim.won
    config = ServerSettings(lease_ms=1500, lease_margin_ms=500)
    engine = RoomEngine(Arena.create(7))
    room = Room("new-r", Arena, engine, claim.lease, store, config, ServerMetrics(), "s1", _closed)
    room.joining += 1  # what the endpoint does before awaiting the slot
    room.start()
    try:
        await wait(lambda: room.engine.tick >= 5, 2.0, "ticks of the new room")
        assert room.state is RoomState.RUNNING
        room.joining -= 1  # the join was refused after all: nobody will come
        await wait(lambda: room.state is RoomState.CLOSED, 2.0, "the empty room to close")
    finally:
        room.fence("test over")


async def test_rooms_of_a_phased_server_tick_on_their_own_slots(store: RoomStore) -> None:
    """--tick-phases 4: the rooms go to the four phases of the period, on a clock of
    their own, and each still ticks at the tick rate (the slots' timing is
    tests/test_ticker.py's)."""
    rooms = [
        await room_with_seat(
            store, f"phase-{i}", Watched, grace_s=60, unplayed_grace_s=60, tick_phases=4
        )
        for i in range(4)
    ]
    ticker = ticker_for(Arena.tick_rate, 4)
    try:
        assert ticker.phase_sizes() == [1, 1, 1, 1]
        assert ticker_for(Arena.tick_rate) is not ticker  # the default server's clock
        start = [room.engine.tick for room in rooms]
        await asyncio.sleep(0.5)
        for room, before in zip(rooms, start, strict=True):
            assert 7 <= room.engine.tick - before <= 12  # 20 Hz for 0.5 s
    finally:
        for room in rooms:
            room.fence("test over")
    assert len(ticker) == 0 and ticker._timer is None
