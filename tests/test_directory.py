"""infra.directory against a real Valkey, populated with ``publish`` as a room server
would: listing, expiry, removal, quick-join (least-full, options, seat accounting, 100
concurrent joiners), private codes, the registry's game list, and the key layout."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis

from infra import directory as d
from infra.directory import Entry

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, max_connections=200)
    try:
        yield client
    finally:
        await client.aclose()


def room(name: str, players: int = 0, max_players: int = 4, **fields: object) -> Entry:
    base: dict[str, object] = {"owner": "s1", "epoch": 1}
    base.update(fields)
    return Entry(room=name, game="arena", players=players, max_players=max_players, **base)  # type: ignore[arg-type]


async def occupancy(r: aioredis.Redis, name: str, game: str = "arena") -> tuple[int, int, int]:
    """(players, reserved, max) as the directory counts them for ``name``."""
    entry = await d.lookup(r, game, name)
    assert entry is not None, name
    return entry.players, entry.reserved, entry.max_players


async def wait_until_gone(r: aioredis.Redis, name: str, deadline_s: float) -> float:
    """Poll the listing until ``name`` leaves it; the seconds that took."""
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        if name not in [e.room for e in await d.list_public(r, "arena")]:
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    raise AssertionError(f"{name} still listed after {deadline_s} s")


# ---------------------------------------------------------------- listing


async def test_listing_shows_public_rooms_with_their_fields(r: aioredis.Redis) -> None:
    await d.publish(
        r,
        room(
            "a",
            players=2,
            options={"mode": "ffa", "map": "dust"},
            metadata={"round": 3, "score": [1, 2]},
            seated=("p1", "p2"),
        ),
    )
    (entry,) = await d.list_public(r, "arena")
    assert (entry.room, entry.game, entry.players, entry.max_players) == ("a", "arena", 2, 4)
    assert entry.options == {"mode": "ffa", "map": "dust"}
    assert entry.metadata == {"round": 3, "score": [1, 2]}
    assert entry.joinable and not entry.private and not entry.pending
    assert entry.owner == "s1" and entry.epoch == 1
    now = time.time()
    assert now - 2 < entry.updated_at <= now + 1
    assert entry.expires_at == pytest.approx(entry.updated_at + d.ENTRY_TTL_MS / 1000, abs=0.01)
    assert await d.list_public(r, "other-game") == []


async def test_listing_filters_orders_and_limits(r: aioredis.Redis) -> None:
    await d.publish_many(
        r,
        [
            room("ffa1", 1, options={"mode": "ffa", "size": 4, "ranked": True}),
            room("ffa3", 3, options={"mode": "ffa", "size": 4, "ranked": False}),
            room("full", 4, options={"mode": "ffa"}),
            room("closed", 2, options={"mode": "ffa"}, joinable=False),
            room("ctf", 2, options={"mode": "ctf"}),
            room("secret", 1, options={"mode": "ffa"}, private=True, join_code="ABCDEF"),
        ],
    )
    names = [e.room for e in await d.list_public(r, "arena")]
    # joinable rooms with a seat first, busiest first; then full or closed ones
    assert names == ["ffa3", "ctf", "ffa1", "full", "closed"]
    assert "secret" not in names
    ffa = [e.room for e in await d.list_public(r, "arena", options_filter={"mode": "ffa"})]
    assert ffa == ["ffa3", "ffa1", "full", "closed"]
    # query-string values match typed options by their written form
    assert [e.room for e in await d.list_public(r, "arena", options_filter={"size": "4"})] == [
        "ffa3",
        "ffa1",
    ]
    assert [e.room for e in await d.list_public(r, "arena", options_filter={"ranked": "true"})] == [
        "ffa1"
    ]
    assert await d.list_public(r, "arena", options_filter={"mode": "nope"}) == []
    assert len(await d.list_public(r, "arena", limit=2)) == 2


async def test_listing_pages_through_many_rooms(r: aioredis.Redis) -> None:
    await d.publish_many(
        r,
        [room(f"r{i:03}", i % 4, options={"mode": "ctf" if i == 7 else "ffa"}) for i in range(450)],
    )
    assert len(await d.list_public(r, "arena", limit=100)) == 100
    assert [e.room for e in await d.list_public(r, "arena", options_filter={"mode": "ctf"})] == [
        "r007"
    ]


async def test_a_removed_room_leaves_the_listing_at_once(r: aioredis.Redis) -> None:
    await d.publish_many(r, [room("stays", 1), room("closes", 1)])
    assert await d.remove(r, "closes", "arena")
    assert [e.room for e in await d.list_public(r, "arena")] == ["stays"]
    assert await d.lookup(r, "arena", "closes") is None
    # and quick-join no longer sees it
    joined = await d.quick_join(r, "arena", {}, player="p", max_players_default=4)
    assert joined.room == "stays"


async def test_an_entry_nobody_refreshes_expires_within_its_ttl(r: aioredis.Redis) -> None:
    await d.publish(r, room("orphan", 1), ttl_ms=400)
    await d.publish(r, room("alive", 1), ttl_ms=60_000)
    assert {e.room for e in await d.list_public(r, "arena")} == {"orphan", "alive"}
    took = await wait_until_gone(r, "orphan", deadline_s=3)
    assert took <= 0.4 + 0.6  # the TTL, plus polling slack on a busy machine
    assert [e.room for e in await d.list_public(r, "arena")] == ["alive"]
    # a write prunes it from every structure, not just from what readers see
    await d.quick_join(r, "arena", {}, player="p", max_players_default=4)
    keys = d.game_keys("arena")
    assert await r.hget(keys[0], "orphan") is None
    assert await r.zscore(keys[3], "orphan") is None


async def test_refresh_extends_unchanged_entries_of_their_owner_only(r: aioredis.Redis) -> None:
    await d.publish(r, room("kept", 1, epoch=2), ttl_ms=400)
    await d.publish(r, room("moved", 1, epoch=5), ttl_ms=400)
    before = await d.lookup(r, "arena", "kept")
    assert before is not None
    missed = await d.refresh_many(
        r, [("kept", "arena", 2), ("moved", "arena", 4), ("never", "arena", 1)], ttl_ms=60_000
    )
    assert missed == {"moved", "never"}  # a newer owner's entry, and no entry at all
    after = await d.lookup(r, "arena", "kept")
    assert after is not None
    assert after.updated_at == before.updated_at  # the content was not rewritten
    assert after.expires_at >= before.expires_at + 59
    await wait_until_gone(r, "moved", deadline_s=3)  # its TTL was left alone
    assert [e.room for e in await d.list_public(r, "arena")] == ["kept"]
    # an expired entry is not brought back by a refresh: its owner publishes it in full
    assert await d.refresh_many(r, [("moved", "arena", 5)]) == {"moved"}


async def test_a_new_owner_republishes_and_a_stale_one_is_refused(r: aioredis.Redis) -> None:
    await d.publish(r, room("moved", 2, owner="s1", epoch=3))
    assert await d.publish(r, room("moved", 3, owner="s2", epoch=4))
    # the old owner, frozen and back, cannot overwrite or remove the new owner's entry
    assert not await d.publish(r, room("moved", 1, owner="s1", epoch=3))
    assert not await d.remove(r, "moved", "arena", epoch=3)
    (entry,) = await d.list_public(r, "arena")
    assert (entry.owner, entry.epoch, entry.players) == ("s2", 4, 3)
    assert await d.remove(r, "moved", "arena", epoch=4)


async def test_malformed_entries_are_refused_before_anything_is_sent(r: aioredis.Redis) -> None:
    bad = [
        room("bad name!"),
        room("ok", options={"nested": {"a": 1}}),
        room("ok", metadata={"blob": "x" * 5000}),
        room("ok", private=True),  # no join code
        room("ok", players=-1),
    ]
    for entry in bad:
        with pytest.raises(d.InvalidEntry):
            await d.publish_many(r, [room("fine", 1), entry])
    assert await d.list_public(r, "arena") == []


# ---------------------------------------------------------------- quick-join


async def test_quick_join_picks_the_least_full_matching_room(r: aioredis.Redis) -> None:
    await d.publish_many(
        r,
        [
            room("two", 2, options={"mode": "ffa", "map": "dust"}),
            room("one", 1, options={"mode": "ffa", "map": "mill"}),
            room("empty-ctf", 0, options={"mode": "ctf"}),
            room("closed", 0, options={"mode": "ffa"}, joinable=False),
            room("secret", 0, options={"mode": "ffa"}, private=True, join_code="ABCDEF"),
            room("full", 4, options={"mode": "ffa"}),
        ],
    )
    first = await d.quick_join(r, "arena", {"mode": "ffa"}, player="a", max_players_default=4)
    assert (first.room, first.created) == ("one", False)
    assert first.entry.options == {"mode": "ffa", "map": "mill"}
    assert first.reservation.player == "a"
    assert first.reservation.expires_at == pytest.approx(time.time() + 10, abs=2)
    # "one" now holds 1 + 1 reservation, as many as "two": ties go by name
    second = await d.quick_join(r, "arena", {"mode": "ffa"}, player="b", max_players_default=4)
    assert second.room == "one"
    third = await d.quick_join(r, "arena", {"mode": "ffa"}, player="c", max_players_default=4)
    assert third.room == "two"
    # every wanted option must match; a typed value must match its type
    dust = await d.quick_join(
        r, "arena", {"mode": "ffa", "map": "dust"}, player="d", max_players_default=4
    )
    assert dust.room == "two"
    ctf = await d.quick_join(r, "arena", {"mode": "ctf"}, player="e", max_players_default=4)
    assert ctf.room == "empty-ctf"
    none = await d.quick_join(r, "arena", {"mode": 1}, player="f", max_players_default=4)
    assert none.created and none.room.startswith("arena.")
    assert none.entry.options == {"mode": 1} and none.entry.pending
    assert none.entry.max_players == 4


async def test_new_rooms_fill_up_before_another_is_named(r: aioredis.Redis) -> None:
    joins = [
        await d.quick_join(r, "arena", {"mode": "ffa"}, player=f"p{i}", max_players_default=3)
        for i in range(7)
    ]
    rooms = [j.room for j in joins]
    assert [j.created for j in joins] == [True, False, False, True, False, False, True]
    assert rooms[0] == rooms[1] == rooms[2] != rooms[3] == rooms[4] == rooms[5] != rooms[6]
    # pending rooms are matched by quick-join but not listed (nobody runs them yet)
    assert await d.list_public(r, "arena") == []
    assert await occupancy(r, rooms[0]) == (0, 3, 3)


async def test_seat_accounting_follows_the_owners_count(r: aioredis.Redis) -> None:
    joins = [
        await d.quick_join(
            r, "arena", {}, player=f"p{i}", max_players_default=4, reservation_ms=600
        )
        for i in range(4)
    ]
    name = joins[0].room
    assert {j.room for j in joins} == {name}
    assert await occupancy(r, name) == (0, 4, 4)
    # the room is full: a fifth player gets a new room
    fifth = await d.quick_join(r, "arena", {}, player="p4", max_players_default=4)
    assert fifth.room != name and fifth.created
    # the owner ran the room: two players are seated. Their reservations are settled by
    # the count that includes them (never counted twice), the other two still hold seats
    await d.publish(r, room(name, 2, seated=("p0", "p1")))
    assert await occupancy(r, name) == (2, 2, 4)
    assert (await d.quick_join(r, "arena", {}, player="p5", max_players_default=4)).room != name
    # a third arrives; a publish that comes later still counts it once
    await d.publish(r, room(name, 3, seated=("p0", "p1", "p2")))
    assert await occupancy(r, name) == (3, 1, 4)
    # p3 never comes: its reservation expires and frees the seat
    deadline = time.monotonic() + 5
    while (await occupancy(r, name))[1] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        await d.publish(r, room(name, 3, seated=("p0", "p1", "p2")))
    assert await occupancy(r, name) == (3, 0, 4)
    late = await d.quick_join(r, "arena", {}, player="p6", max_players_default=4)
    assert late.room in (name, fifth.room)


async def test_one_player_holds_one_seat(r: aioredis.Redis) -> None:
    await d.publish_many(
        r, [room("ffa", 0, options={"mode": "ffa"}), room("ctf", 0, options={"mode": "ctf"})]
    )
    first = await d.quick_join(r, "arena", {"mode": "ffa"}, player="p", max_players_default=4)
    again = await d.quick_join(r, "arena", {"mode": "ffa"}, player="p", max_players_default=4)
    assert first.room == again.room == "ffa" and not again.created
    assert await occupancy(r, "ffa") == (0, 1, 4)  # a retried call reserves nothing more
    moved = await d.quick_join(r, "arena", {"mode": "ctf"}, player="p", max_players_default=4)
    assert moved.room == "ctf"
    assert await occupancy(r, "ffa") == (0, 0, 4)  # the old seat is given back
    assert await occupancy(r, "ctf") == (0, 1, 4)


async def test_100_concurrent_quick_joins_fill_rooms_to_the_limit_and_never_past(
    r: aioredis.Redis,
) -> None:
    joins = await asyncio.gather(
        *(
            d.quick_join(r, "arena", {"mode": "ffa"}, player=f"p{i}", max_players_default=4)
            for i in range(100)
        )
    )
    per_room = Counter(j.room for j in joins)
    assert len(per_room) == 25 and set(per_room.values()) == {4}, per_room
    assert sum(j.created for j in joins) == 25  # one named per room, as needed
    for name in per_room:
        assert await occupancy(r, name) == (0, 4, 4)
    assert await r.zcard(d.game_keys("arena")[5]) == 0  # nothing left open
    # the owners run the rooms and publish the real counts: still exactly 4 each
    seated: dict[str, list[str]] = {}
    for j in joins:
        seated.setdefault(j.room, []).append(j.reservation.player)
    await d.publish_many(r, [room(n, 4, seated=tuple(p)) for n, p in seated.items()])
    for name in per_room:
        assert await occupancy(r, name) == (4, 0, 4)
    extra = await d.quick_join(r, "arena", {"mode": "ffa"}, player="late", max_players_default=4)
    assert extra.created and extra.room not in per_room


async def test_concurrent_quick_joins_top_up_existing_rooms_first(r: aioredis.Redis) -> None:
    await d.publish_many(r, [room("one", 1), room("two", 2), room("three", 3)])
    joins = await asyncio.gather(
        *(d.quick_join(r, "arena", {}, player=f"p{i}", max_players_default=4) for i in range(100))
    )
    per_room = Counter(j.room for j in joins)
    assert (per_room["one"], per_room["two"], per_room["three"]) == (3, 2, 1)
    new = sorted(v for k, v in per_room.items() if k not in ("one", "two", "three"))
    assert new == [2] + [4] * 23  # 94 = 23 x 4 + 2
    for name in per_room:
        players, reserved, top = await occupancy(r, name)
        assert players + reserved <= top


# ---------------------------------------------------------------- private rooms


async def test_private_rooms_by_code(r: aioredis.Redis) -> None:
    made = await d.create_private(r, "arena", {"map": "dust"}, max_players=6)
    assert d.CODE_PATTERN.fullmatch(made.code)
    assert d.ROOM_NAME.fullmatch(made.room) and len(made.room) >= 22
    assert 590 <= await r.ttl(d.code_key(made.code)) <= 600
    found = await d.private_room(r, made.code)
    assert found is not None and found.room == made.room and found.pending
    assert (found.private, found.options, found.max_players) == (True, {"map": "dust"}, 6)
    assert await d.private_room(r, made.code.lower()) == found  # typed in lower case
    # the room server creates it: what it needs is in lookup()
    pending = await d.lookup(r, "arena", made.room)
    assert pending is not None and pending.private and pending.join_code == made.code
    await d.publish(
        r, room(made.room, 1, max_players=6, private=True, join_code=made.code, seated=("c",))
    )
    running = await d.private_room(r, made.code)
    assert running is not None and running.players == 1 and not running.pending
    # once it runs, its code lives as long as the entry (refreshed by every publish)
    assert await r.pttl(d.code_key(made.code)) <= d.ENTRY_TTL_MS
    # never listed, never picked by quick-join
    assert await d.list_public(r, "arena") == []
    qj = await d.quick_join(r, "arena", {"map": "dust"}, player="x", max_players_default=6)
    assert qj.room != made.room
    # closing it frees the code
    assert await d.remove(r, made.room, "arena")
    assert await d.private_room(r, made.code) is None
    assert await r.exists(d.code_key(made.code)) == 0


async def test_unknown_and_malformed_codes_resolve_to_nothing(r: aioredis.Redis) -> None:
    for code in ("ABCDEF", "", "abc", "ABCDE0", "ABCDEFG", "ABC DE", "../x"):
        assert await d.private_room(r, code) is None


async def test_a_code_is_never_reused_while_it_names_a_room(r: aioredis.Redis) -> None:
    codes = {d.new_private_code() for _ in range(2000)}
    assert len(codes) > 1990  # random, 30 bits
    assert all(d.CODE_PATTERN.fullmatch(c) for c in codes)
    assert not set("".join(codes)) & set("01OI")
    made = await d.create_private(r, "arena", {}, max_players=4)
    # a publish of another room that (wrongly) claims the code does not take it over
    await d.publish(r, room("other", 1, private=True, join_code=made.code))
    found = await d.private_room(r, made.code)
    assert found is not None and found.room == made.room


# ---------------------------------------------------------------- validation, registry, keys


@pytest.mark.parametrize(
    "options",
    [
        [],
        "mode=ffa",
        {f"k{i}": 1 for i in range(9)},
        {"": 1},
        {"x" * 33: 1},
        {"bad key": 1},
        {"f": 1.5},
        {"n": None},
        {"l": [1]},
        {"o": {"a": 1}},
        {"s": "x" * 65},
        {"s": "a\nb"},
        {"i": 2**60},
    ],
)
def test_ill_typed_options_are_refused(options: object) -> None:
    with pytest.raises(d.InvalidOptions):
        d.check_options(options)


def test_well_typed_options() -> None:
    options = {"mode": "ffa", "max_players": 8, "ranked": True, "map.v2": ""}
    assert d.check_options(options) == options
    assert d.check_options(None) == {}
    assert d.canonical_options({"b": True, "a": 1}) == '\n["a",1]\n["b",true]\n'


def test_room_names_are_valid_join_names() -> None:
    for private in (False, True):
        name = d.new_room_name("a" * 32, private=private)
        assert d.ROOM_NAME.fullmatch(name), name


async def test_games_from_the_registry_tolerate_old_and_odd_entries(r: aioredis.Redis) -> None:
    await r.hset(
        d.SERVERS_KEY,
        mapping={
            "old": orjson.dumps({"ws_url": "ws://old"}),  # no games field yet
            "s1": orjson.dumps(
                {
                    "ws_url": "ws://s1",
                    "games": [
                        {"name": "arena", "max_players": 64, "options": ["mode", "map"]},
                        "cards",
                        {"name": "BAD NAME"},
                        7,
                    ],
                }
            ),
            "s2": orjson.dumps(
                {"games": [{"name": "arena", "max_players": 16, "options": ["ranked"]}]}
            ),
            "junk": b"{not json",
        },
    )
    known = await d.games(r)
    assert set(known) == {"arena", "cards"}
    assert known["arena"] == d.GameInfo("arena", 16, frozenset({"mode", "map", "ranked"}))
    assert known["cards"] == d.GameInfo("cards", None, None)
    assert await d.server_ws_url(r, "s1") == "ws://s1"
    assert await d.server_ws_url(r, "s2") is None
    assert await d.server_ws_url(r, "nobody") is None
    await r.delete(d.SERVERS_KEY)
    assert await d.games(r) == {}


async def test_every_key_is_in_its_games_slot_and_expires(r: aioredis.Redis) -> None:
    await d.publish_many(r, [room("a", 1), room("b", 2, private=True, join_code="ABCDEF")])
    await d.quick_join(r, "arena", {}, player="p", max_players_default=4)
    await d.create_private(r, "arena", {}, max_players=4)
    await d.publish(r, Entry(room="c", game="cards", players=1, max_players=2))
    keys = [k.decode() if isinstance(k, bytes) else k for k in await r.keys("*")]
    for key in keys:
        assert key.startswith(("sr:dir:{game:arena}:", "sr:dir:{game:cards}:", d.CODE_PREFIX))
        assert await r.pttl(key) > 0, key  # nothing is immortal
    slots = {key: key[key.index("{") + 1 : key.index("}")] for key in keys if "{" in key}
    assert set(slots.values()) == {"game:arena", "game:cards"}
