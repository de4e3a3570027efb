"""Every Lua script touches keys of ONE Redis Cluster slot (and every MULTI too).

Each script call the code makes is recorded with the keys it really passes: every
operation of the room store, quotas, directory, refresh families and login limiter runs
against a real Valkey with ``AsyncScript.__call__`` wrapped, and every script any of
them registered must have been called. The slot of each key is CRC16 as a Redis Cluster
computes it (redis-py's ``key_slot``, hash tags included). A new script module, or a
script no operation here reaches, fails the test until it is listed. The same operations
then run on a real Valkey cluster, which refuses any cross-slot call (CROSSSLOT).

The exceptions, checked on their own: the watcher's read-only batch read of leases on
one cluster node (``server.store._LEASES_ON_NODE``: ``no-writes``, keys in ARGV, all
served by the node it is sent to), and the paused rooms' batch renewal
(``server.store._RENEW_MANY``), which is never registered on a cluster (there each lease
has its own ``_RENEW`` call).
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.crc import key_slot

from auth.ratelimit import RateLimiter
from auth.refresh import RefreshStore
from infra import directory, redis_scripts
from infra.redis_url import connect
from infra.room_keys import rooms_index_key, rooms_index_keys, server_key
from server import durability
from server import store as store_module
from server.quotas import QuotaLimits, Quotas
from server.store import Lease, RoomStore, placed_key

ROOT = Path(__file__).resolve().parent.parent
# Modules that register Lua scripts; a new one must be exercised below.
SCRIPT_MODULES = {
    "auth/ratelimit.py",
    "auth/refresh.py",
    "infra/directory.py",
    "server/quotas.py",
    "server/store.py",
}
# Names tried for rooms, players, games, families: hash-tag edge cases included (a brace
# in a player id cannot split a key's tag from its siblings').
NAMES = ["r", "arena.x1", "{x}", "a}b{c", "éé", "p" * 64, "07", "rooms:01"]


def slots(keys: list[Any]) -> set[int]:
    return {key_slot(k if isinstance(k, bytes) else str(k).encode()) for k in keys}


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[Any], set[str]]]:
    """(calls as (sha, keys), shas of every script registered) while the test runs."""
    calls: list[Any] = []
    registered: set[str] = set()
    original_init = AsyncScript.__init__
    original_call = AsyncScript.__call__

    def init(self: AsyncScript, client: Any, script: Any) -> None:
        original_init(self, client, script)
        registered.add(self.sha)

    async def call(
        self: AsyncScript, keys: Any = None, args: Any = None, client: Any = None
    ) -> Any:
        calls.append((self.sha, list(keys or [])))
        return await original_call(self, keys=keys, args=args, client=client)

    original_pipelined = redis_scripts.run_pipelined

    async def pipelined(redis: Any, batch: Any, *fast: Any) -> list[Any]:
        # Batched calls go out as raw EVALSHA, not through AsyncScript.__call__.
        calls.extend((script.sha, list(keys)) for script, keys, _ in batch)
        return await original_pipelined(redis, batch, *fast)

    monkeypatch.setattr(AsyncScript, "__init__", init)
    monkeypatch.setattr(AsyncScript, "__call__", call)
    for module in (redis_scripts, directory, durability):
        monkeypatch.setattr(module, "run_pipelined", pipelined)
    yield calls, registered


def test_the_list_of_script_modules_is_complete() -> None:
    found = set()
    for package in ("auth", "server", "infra", "client"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and node.attr == "register_script":
                    found.add(str(path.relative_to(ROOT)))
    assert found == SCRIPT_MODULES


async def _exercise(redis: aioredis.Redis, name: str) -> None:
    """Every operation that runs a script, with ``name`` as room, player, game, family."""
    store = RoomStore(redis, lease_ms=5000)
    room = f"room-{name}"
    claim = await store.claim(room, "s1", "ws://x", "arena", creator=name)
    assert claim.won
    lease = claim.lease
    await store.owner_and_ttl(room)
    await store.renew(lease)
    assert await store.renew_many([lease]) == [None]
    await store.append(lease, 1, [], [["e", None]], keep_ticks=5)
    await store.checkpoint(lease, 1, b"\x80")
    await store.record_kill(lease, 1)
    # A takeover (the room exists) writes and stamps the takeover record.
    await store.release(lease)
    again = await store.claim(room, "s2", "ws://y", "arena", must_exist=True)
    assert again.won and again.takeover
    await store.stamp_takeover(again.lease, {"restored_ms": ""})
    await store.place(room, ["s1", "s2"], 10)
    leases, now_ms = await store.readable_leases([room, f"absent-{name}"])
    assert leases == {room: again.lease, f"absent-{name}": None} and now_ms > 0
    assert await store.delete_room(again.lease)
    assert not await store.delete_room(Lease(room, 99, "s9"))

    quotas = Quotas(redis, QuotaLimits())
    await quotas.reserve_room(name, f"addr-{name}", room)
    await quotas.take_session(name, room)
    await quotas.refresh([(name, room)], [(name, room)])  # ZADD XX + PEXPIRE per key

    game = "g" + str(abs(hash(name)) % 1000)
    entry = directory.Entry(room="r1", game=game, players=1, max_players=4, owner="s1", epoch=1)
    await directory.publish(redis, entry)
    await directory.refresh_many(redis, [("r1", game, 1)])
    await directory.quick_join(redis, game, {}, player=f"p-{name}", max_players_default=4)
    private = await directory.create_private(redis, game, {}, max_players=2)
    await directory.publish(
        redis,
        directory.Entry(
            room=private.room,
            game=game,
            max_players=2,
            private=True,
            join_code=private.code,
            owner="s1",
            epoch=1,
        ),
    )
    await directory.remove(redis, private.room, game, epoch=1)

    refresh = RefreshStore(redis)
    token = await refresh.create(f"u_{name}", name)
    rotated = await refresh.rotate(token)
    assert rotated.status == "ok" and rotated.refresh_token
    await refresh.rotate(token)  # reuse: revokes the family
    await refresh.revoke(rotated.refresh_token)

    limiter = RateLimiter(redis)
    await limiter.reserve_login(name)
    await limiter.release_login(name)


async def test_every_script_call_touches_one_slot(
    redis_url: str, recorded: tuple[list[Any], set[str]]
) -> None:
    calls, registered = recorded
    redis = aioredis.Redis.from_url(redis_url)
    try:
        for name in NAMES:
            await _exercise(redis, name)
    finally:
        await redis.aclose()
    assert calls
    spanning = [(sha[:8], keys) for sha, keys in calls if len(slots(keys)) > 1]
    assert not spanning, f"scripts touching several slots: {spanning}"
    called = {sha for sha, _ in calls}
    assert registered - called == set(), "a registered script was never exercised here"


def test_a_refresh_family_login_is_one_slot() -> None:
    """RefreshStore.create writes its two keys in one MULTI: one slot too."""
    store = RefreshStore.__new__(RefreshStore)
    store.prefix = "auth:"
    for family in NAMES:
        token = f"{family}.secret"
        assert len(slots([store._fam_key(family), store._tok_key(family, token)])) == 1


def test_server_wide_keys_spread_over_slots() -> None:
    """The rooms index buckets are 16 distinct slots; a room's bucket is stable; placement's
    hold key shares sr:load's slot; servers' own keys follow their ids."""
    buckets = rooms_index_keys(True)
    assert len(buckets) == 16 and len(slots(buckets)) == 16
    assert rooms_index_keys(False) == ["sr:rooms"]
    assert rooms_index_key("any", False) == "sr:rooms"
    chosen = [rooms_index_key(f"room-{i}", True) for i in range(1600)]
    counts = {b: chosen.count(b) for b in buckets}
    assert min(counts.values()) > 60 and max(counts.values()) < 140, counts
    assert slots(["sr:load", placed_key("r1"), placed_key("{x}")]) == slots(["sr:load"])
    assert len(slots([server_key(f"s{i}-abcdef") for i in range(20)])) == 20


async def test_every_script_runs_on_a_real_cluster(cluster_url: str) -> None:
    """A cluster refuses a script whose keys span slots: every operation above passes."""
    redis = connect(cluster_url)
    try:
        for name in NAMES:
            await _exercise(redis, name)
    finally:
        await redis.aclose()


async def test_the_batch_lease_read_covers_every_node(cluster_url: str) -> None:
    """Rooms on every primary: one call per node, every lease read back, absent ones None."""
    redis = connect(cluster_url)
    try:
        store = RoomStore(redis)
        rooms = [f"spread-{i}" for i in range(60)]
        claimed = {}
        for room in rooms[:40]:
            claimed[room] = (await store.claim(room, "s1", "ws://x", "arena")).lease
        nodes = {redis.get_node_from_key(room_keys_lease(r)).name for r in rooms}
        assert len(nodes) == 3
        leases, now_ms = await store.readable_leases(rooms)
        assert leases == {r: claimed.get(r) for r in rooms}
        assert abs(now_ms - (await store.owner_and_ttl(rooms[0]))[2]) < 5_000
    finally:
        await redis.aclose()


def room_keys_lease(room: str) -> str:
    return store_module.room_keys(room)["lease"]


async def test_the_batch_renewal_is_one_call_per_lease_on_a_cluster(
    cluster_url: str, recorded: tuple[list[Any], set[str]]
) -> None:
    """``renew_many`` on a cluster: ``_RENEW_MANY`` (keys of many slots) is not even
    registered; every lease is renewed by its own one-slot call, a taken one fenced."""
    calls, _ = recorded
    redis = connect(cluster_url)
    try:
        store = RoomStore(redis)
        assert store._renew_many is None
        leases = [
            (await store.claim(f"renew-{i}", "s1", "ws://x", "arena")).lease for i in range(30)
        ]
        gone = Lease(leases[0].room, leases[0].epoch + 7, "s9")
        results = await store.renew_many([*leases, gone])
        assert results[:-1] == [None] * len(leases)
        assert type(results[-1]).__name__ == "OwnershipLost"
        assert calls and all(len(slots(keys)) == 1 for _, keys in calls)
        many = hashlib.sha1(store_module._RENEW_MANY.encode()).hexdigest()
        assert many not in {sha for sha, _ in calls}
    finally:
        await redis.aclose()


def test_the_one_cross_slot_script_only_reads() -> None:
    """Only _LEASES_ON_NODE may span slots: flagged no-writes, keys only in ARGV, GET and
    TIME only."""
    flagged = []
    for package in ("auth", "server", "infra"):
        for path in (ROOT / package).rglob("*.py"):
            if "allow-cross-slot-keys" in path.read_text():
                flagged.append(str(path.relative_to(ROOT)))
    assert flagged == ["server/store.py"]
    body = store_module._LEASES_ON_NODE
    assert body.startswith("#!lua flags=no-writes,allow-cross-slot-keys\n")
    assert "KEYS" not in body
    calls = set(re.findall(r"redis\.call\('([A-Z]+)'", body))
    assert calls == {"GET", "TIME"}
