"""infra.cluster_view: the recovery records parsed, the timeline derived from them (pure),
and the whole view read from a real Valkey holding records written by hand."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from infra import cluster_view
from infra.cluster_view import Kill, Takeover, parse_kill, parse_takeover, timeline
from infra.redis_url import connect
from infra.room_keys import LOAD_KEY, ROOMS_KEY, SERVERS_KEY, liveness_name, room_keys

KILL = {b"killed_ms": b"1000", b"pid": b"4242", b"server": b"s1", b"epoch": b"3"}
TAKEOVER = {
    b"epoch": b"4",
    b"server": b"s2",
    b"old_server": b"s1",
    b"old_epoch": b"3",
    b"detected_ms": b"1180",
    b"claimed_ms": b"1200",
    b"restored_ms": b"1230",
    b"first_tick_ms": b"1260",
    b"first_tick": b"501",
    b"players_expected": b"2",
    b"player:bob": b"1400",
    b"player:alice": b"1350",
}


def test_records_parse_to_ints() -> None:
    assert parse_kill(KILL) == Kill(killed_ms=1000, pid=4242, server="s1", epoch=3)
    takeover = parse_takeover(TAKEOVER)
    assert takeover is not None
    assert (takeover.epoch, takeover.server, takeover.old_server, takeover.old_epoch) == (
        4,
        "s2",
        "s1",
        3,
    )
    assert (takeover.claimed_ms, takeover.first_tick_ms, takeover.first_tick) == (1200, 1260, 501)
    assert takeover.players_back == {"alice": 1350, "bob": 1400}
    assert takeover.to_json()["players_back"] == {"alice": 1350, "bob": 1400}
    # str keys (a client that decodes) read the same
    assert parse_kill({k.decode(): v.decode() for k, v in KILL.items()}) == parse_kill(KILL)


def test_missing_or_broken_records_are_none_or_partial() -> None:
    assert parse_kill({}) is None and parse_takeover({}) is None
    assert parse_kill({b"pid": b"1"}) is None  # no killed_ms: not a kill record
    assert parse_kill({b"killed_ms": b"x"}) is None
    partial = parse_takeover({b"epoch": b"7", b"server": b"s2", b"claimed_ms": b"junk"})
    assert partial is not None and partial.claimed_ms is None and partial.old_epoch is None
    assert parse_takeover({b"epoch": b"7", b"player:": b"5", b"player:x": b"y"}) == Takeover(
        epoch=7, server="", old_server="", old_epoch=None
    )


def test_timeline_of_a_kill_and_its_takeover() -> None:
    line = timeline(parse_kill(KILL), parse_takeover(TAKEOVER))
    assert [(s["step"], s["at_ms"], s["since_kill_ms"]) for s in line.steps] == [
        ("kill", 1000, 0),
        ("claim", 1200, 200),
        ("first_tick", 1260, 260),
        ("player_back", 1350, 350),
        ("player_back", 1400, 400),
    ]
    assert [s.get("player") for s in line.steps[3:]] == ["alice", "bob"]
    assert line.steps[1]["server"] == "s2" and line.steps[1]["epoch"] == 4
    assert line.steps[2]["tick"] == 501
    assert line.of_kill and line.complete
    assert line.summary() == {
        "steps": 5,
        "of_kill": True,
        "complete": True,
        "players_expected": 2,
        "players_back": 2,
        "unavailable_ms": 260,
    }


def test_timeline_steps_are_in_time_order() -> None:
    # alice's session resumed before the new owner's first tick was journaled
    early = {**TAKEOVER, b"player:alice": b"1250", b"player:bob": b"1260"}
    line = timeline(parse_kill(KILL), parse_takeover(early))
    assert [(s["step"], s["since_kill_ms"]) for s in line.steps] == [
        ("kill", 0),
        ("claim", 200),
        ("player_back", 250),
        ("first_tick", 260),  # a tie at one ms: the first tick first
        ("player_back", 260),
    ]


def test_timeline_is_incomplete_until_every_expected_player_is_back() -> None:
    waiting = {k: v for k, v in TAKEOVER.items() if k != b"player:bob"}
    line = timeline(parse_kill(KILL), parse_takeover(waiting))
    assert line.of_kill and not line.complete and line.players_back == 1
    no_tick = {k: v for k, v in TAKEOVER.items() if k != b"first_tick_ms"}
    line = timeline(parse_kill(KILL), parse_takeover(no_tick))
    assert not line.complete and "first_tick" not in [s["step"] for s in line.steps]
    assert line.summary()["unavailable_ms"] is None
    nobody = {k: v for k, v in TAKEOVER.items() if not k.startswith(b"player:")}
    nobody[b"players_expected"] = b"0"
    assert timeline(parse_kill(KILL), parse_takeover(nobody)).complete


def test_a_player_whose_grace_ran_out_no_longer_holds_the_timeline_open() -> None:
    # bob's page was closed before the kill: his seat waited out its grace period
    gone = {k: v for k, v in TAKEOVER.items() if k != b"player:bob"}
    assert not timeline(parse_kill(KILL), parse_takeover(gone)).complete
    gone[b"gone:bob"] = b"1500"
    line = timeline(parse_kill(KILL), parse_takeover(gone))
    assert line.complete and line.players_back == 1
    assert [(s["step"], s.get("player"), s["since_kill_ms"]) for s in line.steps[-2:]] == [
        ("player_back", "alice", 350),
        ("player_gone", "bob", 500),
    ]
    assert parse_takeover(gone).to_json()["players_gone"] == {"bob": 1500}  # type: ignore[union-attr]


def test_a_fresh_kill_hides_the_previous_recovery() -> None:
    # The owner of epoch 4 was just killed; the takeover on record is the previous one.
    kill = Kill(killed_ms=5000, pid=1, server="s2", epoch=4)
    line = timeline(kill, parse_takeover(TAKEOVER))
    assert [s["step"] for s in line.steps] == ["kill"]
    assert not line.complete and not line.of_kill
    assert line.steps[0]["since_kill_ms"] is None  # no recovery of it yet
    assert timeline(kill, None).steps == line.steps


def test_a_takeover_without_a_kill_has_no_since_kill() -> None:
    # The takeover of a crash (no kill record at all), or newer than the last kill.
    for kill in (None, Kill(killed_ms=10, pid=1, server="s0", epoch=1)):
        line = timeline(kill, parse_takeover(TAKEOVER))
        assert [s["step"] for s in line.steps] == [
            "claim",
            "first_tick",
            "player_back",
            "player_back",
        ]
        assert all(s["since_kill_ms"] is None for s in line.steps)
        assert line.complete and not line.of_kill
    assert timeline(None, None).steps == []


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = connect(redis_url)
    yield client
    await client.aclose()


async def test_collect_and_room_detail_read_the_cluster(
    redis: aioredis.Redis, redis_url: str
) -> None:
    # s1 is live (a connection named as its liveness connection is open), s2 is not.
    named = connect(redis_url, single_connection_client=True)
    await named.client_setname(liveness_name("s1"))
    try:
        now_s = (await redis.time())[0]
        stats = {
            "tick": 40,
            "players": 2,
            "tick_ms": 0.42,
            "state_bytes": 900,
            "inputs_per_s": 38.5,
        }
        s1 = {
            "ws_url": "ws://127.0.0.1:9001/v1/ws",
            "pid": 11,
            "rooms": 1,
            "players": 2,
            "heartbeat_at": now_s - 1,
            "room_players": {"r1": 2},
            "room_stats": {"r1": stats},
        }
        s2 = {"ws_url": "ws://127.0.0.1:9002/v1/ws", "pid": 12, "rooms": 0, "players": 0}
        await redis.hset(SERVERS_KEY, mapping={"s1": json.dumps(s1), "s2": json.dumps(s2)})
        await redis.hset(SERVERS_KEY, "broken", "not json")
        await redis.zadd(LOAD_KEY, {"s1": 1, "s2": 0})
        await redis.hset(
            ROOMS_KEY,
            mapping={
                "r1": json.dumps({"game": "arena", "epoch": 4}),
                "r2": json.dumps({"game": "duel", "epoch": 1}),
            },
        )
        keys = room_keys("r1")
        await redis.set(keys["lease"], "4|s1", px=5000)
        await redis.xadd(keys["journal"], {"e": b""}, id="44-4")
        await redis.hset(keys["ckpt"], mapping={"tick": 40, "at": (now_s - 2) * 1000})
        await redis.hset(keys["killed"], mapping={**KILL, b"epoch": b"3"})
        await redis.hset(keys["takeover"], mapping=TAKEOVER)
        await redis.hset(keys["meta"], mapping={"game": "arena", "options": '{"size": 4}'})

        view = await cluster_view.collect(redis)
        assert view["rooms_total"] == 2 and abs(view["now_ms"] - now_s * 1000) < 5000
        servers = {s["id"]: s for s in view["servers"]}
        assert set(servers) == {"s1", "s2"}  # the broken entry is skipped
        assert servers["s1"]["live"] and not servers["s2"]["live"]
        assert servers["s1"]["load"] == 1 and servers["s1"]["pid"] == 11
        assert 0 <= servers["s1"]["heartbeat_age_s"] < 5
        assert servers["s2"]["heartbeat_age_s"] is None
        r1, r2 = view["rooms"]
        assert (r1["room"], r1["owner"], r1["owner_live"], r1["epoch"]) == ("r1", "s1", True, 4)
        assert (r1["tick"], r1["players"], r1["checkpoint_tick"]) == (44, 2, 40)
        assert 1 <= r1["checkpoint_age_s"] < 10
        assert (r1["tick_ms"], r1["state_bytes"], r1["inputs_per_s"]) == (0.42, 900, 38.5)
        assert r1["kill"]["pid"] == 4242 and r1["takeover"]["first_tick"] == 501
        assert [s["since_kill_ms"] for s in r1["timeline"]] == [0, 200, 260, 350, 400]
        assert r1["recovery"]["complete"] and r1["recovery"]["unavailable_ms"] == 260
        # r2: in the index only; no owner, no journal
        assert (r2["owner"], r2["epoch"], r2["tick"], r2["players"]) == (None, 1, 0, None)
        assert r2["kill"] is None and r2["timeline"] == []

        (first,) = (await cluster_view.collect(redis, max_rooms=1))["rooms"]
        assert {**first, "checkpoint_age_s": 0} == {**r1, "checkpoint_age_s": 0}  # time goes on
        slim = (await cluster_view.collect(redis, records=False))["rooms"][0]
        assert "timeline" not in slim and "kill" not in slim and "takeover" not in slim
        assert slim["recovery"] == r1["recovery"] and slim["recovery"]["steps"] == 5
        assert await cluster_view.live_servers(redis) == [
            {"id": "s1", "ws_url": "ws://127.0.0.1:9001/v1/ws"}
        ]

        detail = await cluster_view.room_detail(redis, "r1")
        assert detail is not None
        assert detail["owner_ws_url"] == "ws://127.0.0.1:9001/v1/ws"
        assert 0 < detail["lease_ttl_ms"] <= 5000
        assert detail["options"] == {"size": 4} and detail["journal_length"] == 1
        assert detail["timeline"] == r1["timeline"]
        assert await cluster_view.room_detail(redis, "nowhere") is None
        # A room known only by its records (a kill of a room that then closed) is shown.
        await redis.hset(room_keys("gone")["killed"], mapping=KILL)
        gone = await cluster_view.room_detail(redis, "gone")
        assert gone is not None and gone["kill"]["killed_ms"] == 1000 and gone["owner"] is None
    finally:
        await named.aclose()


async def test_an_empty_cluster(redis: aioredis.Redis) -> None:
    view = await cluster_view.collect(redis)
    assert (view["servers"], view["rooms"], view["rooms_total"]) == ([], [], 0)
    assert await cluster_view.live_servers(redis) == []
