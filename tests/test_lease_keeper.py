"""The lease keeper of paused rooms (server/lease_keeper.py): one timer and one renewal
call per grid slot for every paused room of a server, against fakes (each rule on its
own) and against a real Valkey with real rooms (the calls counted by Valkey itself)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from infra.room_keys import lease_key
from server.errors import OwnershipLost
from server.games.arena import Arena
from server.lease_keeper import LeaseKeeper, keeper_for
from server.room import PAUSE_AFTER_S, Room, RoomState
from server.store import Lease, RoomStore
from tests import test_room_idle
from tests.test_room_idle import room_with_seat, wait

pytestmark = pytest.mark.timeout(30)

GRID = 0.05


class FakeRoom:
    """A paused room as the keeper sees it: renewed every ``every`` s, stops at ``span``."""

    def __init__(self, name: str, every: float = 0.1, span: float = 0.4) -> None:
        self.lease = Lease(name, 1, "s1")
        self.renewed_at = time.monotonic()
        self.every, self.span = every, span
        self.answers: list[BaseException | None] = []
        self.lost: list[str] = []

    def renew_due_at(self) -> float:
        return self.renewed_at + self.every

    def renew_deadline(self) -> float:
        return self.renewed_at + self.span

    def lease_lost(self, reason: str) -> None:
        self.lost.append(reason)
        keeper.discard(self)  # what fence() does through Room._resume

    def lease_renewed(self, sent_at: float, error: BaseException | None) -> None:
        self.answers.append(error)
        if error is None:
            self.renewed_at = sent_at
        elif isinstance(error, OwnershipLost):
            self.lease_lost(str(error))


class FakeStore:
    """Answers ``renew_many`` as told: per lease, or the whole call raising."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.fail: BaseException | None = None
        self.fenced: set[str] = set()
        self.hold: asyncio.Event | None = None

    async def renew_many(self, leases: Sequence[Lease]) -> list[BaseException | None]:
        self.calls.append([lease.room for lease in leases])
        if self.hold is not None:
            await self.hold.wait()
        if self.fail is not None:
            raise self.fail
        fenced = self.fenced
        return [OwnershipLost(lease.room) if lease.room in fenced else None for lease in leases]


keeper: LeaseKeeper  # the keeper of the test running (FakeRoom.lease_lost discards)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[LeaseKeeper, FakeStore]]:
    global keeper
    store = FakeStore()
    keeper = LeaseKeeper(asyncio.get_running_loop(), store, grid_s=GRID)
    yield keeper, store
    for room in list(keeper._slot_of) + list(keeper._renewing):
        keeper.discard(room)


async def test_rooms_due_together_are_renewed_in_one_call(
    fake: tuple[LeaseKeeper, FakeStore],
) -> None:
    keeper, store = fake
    rooms = [FakeRoom(f"r{i}") for i in range(40)]
    for room in rooms:
        keeper.add(room)
    await wait(lambda: sum(len(c) for c in store.calls) >= 120, 3.0, "three rounds of renewals")
    # 40 rooms paused in one turn are due in the same slot: one call each round.
    assert all(len(call) == 40 for call in store.calls[:3]), [len(c) for c in store.calls]
    assert all(room.answers and all(a is None for a in room.answers) for room in rooms)
    assert not any(room.lost for room in rooms)


async def test_a_fenced_reply_stops_that_room_only(fake: tuple[LeaseKeeper, FakeStore]) -> None:
    keeper, store = fake
    taken, kept = FakeRoom("taken"), FakeRoom("kept")
    store.fenced.add("taken")
    keeper.add(taken)
    keeper.add(kept)
    await wait(lambda: taken.lost, 2.0, "the fenced room to stop")
    assert taken not in keeper and kept in keeper
    count = len(store.calls)
    await wait(lambda: len(store.calls) >= count + 2, 2.0, "more renewals")
    assert all("taken" not in call for call in store.calls[count:])
    assert not kept.lost


async def test_a_failing_redis_is_retried_each_slot_until_the_deadline(
    fake: tuple[LeaseKeeper, FakeStore], caplog: pytest.LogCaptureFixture
) -> None:
    keeper, store = fake
    store.fail = RedisConnectionError("down")
    room = FakeRoom("r", every=0.05, span=0.35)
    others = [FakeRoom(f"o{i}", every=0.05, span=0.35) for i in range(20)]
    started = room.renewed_at
    for kept in (room, *others):
        keeper.add(kept)
    await wait(lambda: room.lost, 2.0, "the room to stop")
    # One warning per failed call for all 21 rooms, not one per room.
    warnings = [r for r in caplog.records if "lease renewal of" in r.getMessage()]
    assert warnings and len(warnings) == len(store.calls)
    assert "21 paused rooms" in warnings[0].getMessage()
    stopped_after = time.monotonic() - started
    assert 0.35 <= stopped_after < 0.35 + 3 * GRID, stopped_after
    assert len(room.answers) >= 4  # retried at every slot meanwhile
    assert all(isinstance(a, RedisConnectionError) for a in room.answers)
    assert room not in keeper and keeper._timer is None


async def test_an_unanswered_renewal_stops_the_room_at_its_deadline(
    fake: tuple[LeaseKeeper, FakeStore],
) -> None:
    keeper, store = fake
    store.hold = asyncio.Event()  # Redis never answers
    room = FakeRoom("r", every=0.05, span=0.3)
    keeper.add(room)
    await wait(lambda: room.lost, 2.0, "the room to stop")
    assert time.monotonic() - room.renewed_at < 0.3 + 3 * GRID
    store.hold.set()
    await asyncio.sleep(2 * GRID)
    assert room.answers == [] and room not in keeper  # the late answer is ignored


async def test_a_room_resumed_during_its_renewal_is_not_kept(
    fake: tuple[LeaseKeeper, FakeStore],
) -> None:
    keeper, store = fake
    store.hold = asyncio.Event()
    room = FakeRoom("r", every=0.05)
    keeper.add(room)
    await wait(lambda: store.calls, 2.0, "the renewal")
    keeper.discard(room)  # a player connected: the room ticks (and renews) on its own
    store.hold.set()
    await asyncio.sleep(3 * GRID)
    assert room.answers == [] and room not in keeper
    assert len(store.calls) == 1 and keeper._timer is None


async def test_the_keeper_timer_stops_when_no_room_is_kept(
    fake: tuple[LeaseKeeper, FakeStore],
) -> None:
    keeper, store = fake
    room = FakeRoom("r", every=0.05)
    keeper.add(room)
    keeper.add(room)  # twice: kept once
    assert len(keeper) == 1
    await wait(lambda: len(store.calls) >= 2, 2.0, "renewals")
    keeper.discard(room)
    calls = len(store.calls)
    await asyncio.sleep(4 * GRID)
    assert len(store.calls) == calls and keeper._timer is None


# -- real rooms on a real Valkey --------------------------------------------------------


store = test_room_idle.store  # the fixture: a RoomStore (1.5 s leases) on the session's Valkey


async def paused_room(store: RoomStore, name: str) -> Room:
    """A started room whose one seat's player is away for a minute: it pauses."""
    return await room_with_seat(store, name, grace_s=60, unplayed_grace_s=60)


async def evalsha_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_paused_rooms_keep_their_leases_with_a_few_calls(
    store: RoomStore, redis_url: str
) -> None:
    """30 paused rooms over three renewal periods: every lease stays alive, and Valkey
    counts a handful of script calls a period, not one per room."""
    rooms = [await paused_room(store, f"kept-{i}") for i in range(30)]
    probe = aioredis.Redis.from_url(redis_url)
    try:
        await wait(lambda: all(r.paused for r in rooms), PAUSE_AFTER_S + 2.0, "the pauses")
        keeper = keeper_for(store)
        assert len(keeper) == 30
        renewals, calls = keeper.renewals, keeper.calls
        evals = await evalsha_calls(probe)
        await asyncio.sleep(1.6)  # lease_ms / 3 = 0.5 s: three renewals each
        assert all(r.state is RoomState.RUNNING and r.paused for r in rooms)
        assert keeper.renewals - renewals >= 60
        # One call a slot (the rooms paused in one or two slots), never one per room.
        assert keeper.calls - calls <= 12
        assert await evalsha_calls(probe) - evals <= 12
        for room in rooms:
            ttl = await probe.pttl(lease_key(room.name))
            assert 0 < ttl <= 1500
            assert await probe.get(lease_key(room.name)) == room.lease.token.encode()
        # A lease taken by another server: that room is fenced at its next renewal.
        await probe.set(lease_key(rooms[0].name), f"{rooms[0].lease.epoch + 1}|s2", px=5000)
        await wait(lambda: rooms[0].state is RoomState.CLOSED, 2.0, "the fence")
        assert rooms[0] not in keeper and all(r.state is RoomState.RUNNING for r in rooms[1:])
    finally:
        for room in rooms:
            room.fence("test over")
        await probe.aclose()
    assert len(keeper_for(store)) == 0


async def test_renew_many_on_one_redis(store: RoomStore) -> None:
    """Many leases in chunks of one script each; a lease that is not ours is fenced, the
    others renewed."""
    leases = []
    for i in range(450):  # three chunks
        claim = await store.claim(f"many-{i}", "s1", "ws://x", Arena.name, None)
        leases.append(claim.lease)
    stale = Lease("many-7", leases[7].epoch - 1, "s1")
    results = await store.renew_many([*leases, stale])
    assert results[:-1] == [None] * 450
    assert isinstance(results[-1], OwnershipLost)
