"""The recovery timeline recorded by the cluster: the kill record and the takeover record.

Against real processes (Valkey, the login service, two room servers): SDK clients
play, ``kill_room`` SIGKILLs the owner, and the new owner's ``sr:{R}:takeover`` must
hold every field, in the order of the events (kill <= detected <= claimed <= restored
<= first tick, each player back after the claim), with one player per restored seat.
The store-level tests drive the claim script directly on a real Valkey: a fresh room
writes no record, a takeover after a dead owner or a release names the previous owner
and epoch, a stamp of an old epoch never overwrites a newer record.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from client.sdk import AuthClient, RoomClient
from infra.room_keys import room_keys
from server.killroom import kill_room
from server.store import RECORD_TTL_MS, Lease, RoomStore
from server.takeover import TakeoverTimeline
from tests.cluster import LocalCluster
from tests.integration.faults import wait_for

TAKEOVER_FIELDS = {
    "epoch",
    "server",
    "old_server",
    "old_epoch",
    "detected_ms",
    "claimed_ms",
    "restored_ms",
    "first_tick_ms",
    "first_tick",
    "players_expected",
    "expected_players",
}


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RoomStore]:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        yield RoomStore(client, lease_ms=1500)
    finally:
        await client.aclose()


async def play(client: RoomClient, stop: asyncio.Event) -> None:
    while not stop.is_set():
        client.send_input({"dx": 1, "dy": 0})
        await asyncio.sleep(0.05)


async def read(client: RoomClient) -> None:
    """Take every state, as a game would (until cancelled)."""
    async for _ in client.states():
        pass


@pytest.mark.slow
async def test_sigkill_records_the_whole_timeline(cluster: LocalCluster) -> None:
    room, names = "timeline", ("ann", "bob", "cy")
    auth = AuthClient(cluster.auth_url)
    tokens = [(await auth.guest(name)).access_token for name in names]
    await auth.aclose()
    redis = aioredis.Redis.from_url(cluster.redis_url, socket_timeout=2)
    store = RoomStore(redis)
    clients = [RoomClient(cluster.info.ws_urls, room, token) for token in tokens]
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        async with asyncio.timeout(60):
            for client in clients:
                await client.connect()
            tasks = [asyncio.create_task(play(c, stop)) for c in clients]
            tasks += [asyncio.create_task(read(c)) for c in clients]

            async def all_acked() -> bool:
                return all(c.stats.max_ack >= 5 for c in clients)

            await wait_for(all_acked, 15, "every player to have inputs acked")
            # A room created by a join is no takeover: no record.
            assert await store.takeover_record(room) == {}
            report = await kill_room(cluster.redis_url, room, timeout=15, players_wait=10)
            record = await store.takeover_record(room)
            killed = await store.kill_record(room)
            ttl = await redis.pttl(room_keys(room)["takeover"])

            acked = [c.stats.max_ack for c in clients]

            async def moved_on() -> bool:
                return all(c.stats.max_ack > a + 5 for c, a in zip(clients, acked, strict=True))

            await wait_for(moved_on, 10, "the players to keep playing on the new owner")
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in clients:
            await client.close()
        await redis.aclose()

    ids = sorted(c.player_id for c in clients)
    # The kill record: written by kill_room just before the SIGKILL.
    assert killed == {
        "killed_ms": str(report["killed_ms"]),
        "pid": str(report["killed_pid"]),
        "server": report["old_server"],
        "epoch": str(report["old_epoch"]),
    }
    # The takeover record: every field, of the new owner and epoch, naming the old ones.
    assert record.keys() >= TAKEOVER_FIELDS, record
    assert {f"player:{p}" for p in ids} <= record.keys(), record
    assert int(record["epoch"]) == report["new_epoch"] > report["old_epoch"]
    assert record["server"] == report["new_server"] != report["old_server"]
    assert record["old_server"] == report["old_server"]
    assert int(record["old_epoch"]) == report["old_epoch"]
    assert int(record["players_expected"]) == len(ids)
    assert json.loads(record["expected_players"]) == ids
    assert int(record["first_tick"]) == report["recovered_tick"] + 1
    assert 0 < ttl <= RECORD_TTL_MS
    # One clock (Redis TIME), so the order of the events shows in the stamps.
    at = {name: int(value) for name, value in record.items() if name.endswith("_ms")}
    steps = [report["killed_ms"], at["detected_ms"], at["claimed_ms"], at["restored_ms"]]
    assert steps == sorted(steps), record
    assert at["restored_ms"] <= at["first_tick_ms"], record
    for player in ids:
        assert int(record[f"player:{player}"]) >= at["claimed_ms"], record
    # Found dead through its closed connection: well within the 1.5 s lease.
    assert at["claimed_ms"] - report["killed_ms"] < 1000, record

    # The report's timeline is the record as ms since the kill, with nobody missing.
    timeline = report["timeline"]
    assert timeline["players_missing"] == []
    assert sorted(timeline["players_ms"]) == ids
    assert timeline["players_expected"] == len(ids)
    assert timeline["claimed_ms"] == at["claimed_ms"] - report["killed_ms"]
    assert timeline["first_tick_ms"] == at["first_tick_ms"] - report["killed_ms"]
    assert timeline["first_tick"] == int(record["first_tick"])
    for player, ms in timeline["players_ms"].items():
        assert ms == int(record[f"player:{player}"]) - report["killed_ms"]
    for client in clients:
        assert client.stats.reconnects >= 1
        assert client.stats.rollbacks == 0 and client.stats.ack_regressions == 0


# -- the claim script and the stamps on a real Valkey -------------------------------------


async def claim(store: RoomStore, server: str, replacing: Lease | None = None, **kw: Any) -> Any:
    return await store.claim("r", server, f"ws://{server}", "arena", replacing, **kw)


async def test_a_fresh_room_writes_no_takeover_record(store: RoomStore) -> None:
    first = await claim(store, "a")
    assert first.won and not first.takeover
    assert await store.takeover_record("r") == {}


async def test_a_takeover_from_a_dead_owner_names_it(store: RoomStore) -> None:
    first = await claim(store, "a")
    now_ms = (await store.owner_and_ttl("r"))[2]
    second = await claim(store, "b", first.lease, detected_ms=now_ms, must_exist=True)
    assert second.won and second.takeover and second.lease.epoch == first.lease.epoch + 1
    record = await store.takeover_record("r")
    assert record["epoch"] == str(second.lease.epoch)
    assert (record["server"], record["old_server"]) == ("b", "a")
    assert record["old_epoch"] == str(first.lease.epoch)
    assert int(record["detected_ms"]) == now_ms <= int(record["claimed_ms"])


async def test_a_takeover_after_a_release_names_the_last_owner(store: RoomStore) -> None:
    first = await claim(store, "a")
    assert await store.release(first.lease)
    second = await claim(store, "b")  # lease gone, room kept: a handover
    assert second.takeover
    record = await store.takeover_record("r")
    assert (record["old_server"], record["old_epoch"]) == ("a", str(first.lease.epoch))
    assert record["detected_ms"] == record["claimed_ms"]  # no detection time given


async def test_a_stamp_of_an_old_epoch_is_refused(store: RoomStore) -> None:
    first = await claim(store, "a")
    second = await claim(store, "b", first.lease)
    third = await claim(store, "c", second.lease)
    assert await store.stamp_takeover(second.lease, {"restored_ms": "", "first_tick": "9"}) == 0
    record = await store.takeover_record("r")
    assert record["epoch"] == str(third.lease.epoch) and "restored_ms" not in record
    now = await store.stamp_takeover(third.lease, {"restored_ms": "", "players_expected": "2"})
    record = await store.takeover_record("r")
    assert int(record["restored_ms"]) == now >= int(record["claimed_ms"])
    assert record["players_expected"] == "2"
    # The next takeover replaces the record whole.
    await claim(store, "d", third.lease)
    record = await store.takeover_record("r")
    assert record["server"] == "d" and "restored_ms" not in record


async def test_a_stamp_says_when_its_event_happened_not_when_it_was_written(
    store: RoomStore,
) -> None:
    """A stamp written late (a survivor's loop busy with a mass takeover) carries its
    event's age, which Redis takes off its clock; never before the claim or the previous
    stamp, so the events keep their order."""
    first = await claim(store, "a")
    second = await claim(store, "b", first.lease)
    claimed = int((await store.takeover_record("r"))["claimed_ms"])
    restored = await store.stamp_takeover(second.lease, {"restored_ms": ""}, age_ms=60_000)
    assert restored == claimed  # an age reaching before the claim stops at the claim
    await asyncio.sleep(0.3)  # Redis's clock must move on
    first_tick = await store.stamp_takeover(second.lease, {"first_tick_ms": ""}, age_ms=200)
    seconds, micros = await store.redis.time()
    now_ms = seconds * 1000 + micros // 1000
    assert restored + 50 <= first_tick <= now_ms - 200
    back = await store.stamp_takeover(second.lease, {"player:ann": ""}, age_ms=60_000)
    assert back == first_tick  # not before the previous stamp
    record = await store.takeover_record("r")
    assert int(record["restored_ms"]) == restored and int(record["first_tick_ms"]) == first_tick
    assert int(record["player:ann"]) == back == int(record["stamped_ms"])


async def test_a_seat_whose_grace_ran_out_is_stamped_gone(store: RoomStore) -> None:
    """A restored seat whose player never comes back (its page was closed before the
    kill) is stamped ``gone:ID`` when its grace period ends, so the recovery it was
    holding open is over; a player already back, or a second stamp, writes nothing more."""
    first = await claim(store, "a")
    second = await claim(store, "b", first.lease)
    line = TakeoverTimeline(store, second.lease, ["ann", "bob"])
    line.restored()
    line.first_tick(7)
    line.player_back("ann")
    assert not line.done
    line.player_gone("bob")
    line.player_gone("ann")  # back already: not gone
    line.player_gone("bob")  # once
    assert line.done

    async def stamped() -> bool:
        return "gone:bob" in await store.takeover_record("r")

    await wait_for(stamped, 5, "the gone stamp")
    record = await store.takeover_record("r")
    assert "player:ann" in record and "gone:ann" not in record and "player:bob" not in record
    assert int(record["gone:bob"]) >= int(record["player:ann"])


async def test_kill_record_and_delete_room(store: RoomStore) -> None:
    first = await claim(store, "a")
    second = await claim(store, "b", first.lease)
    killed_ms = await store.record_kill(second.lease, 4242)
    assert await store.kill_record("r") == {
        "killed_ms": str(killed_ms),
        "pid": "4242",
        "server": "b",
        "epoch": str(second.lease.epoch),
    }
    assert 0 < await store.redis.pttl(room_keys("r")["killed"]) <= RECORD_TTL_MS
    # A room that closes for good takes its records along; a new room of that name is fresh.
    assert await store.delete_room(second.lease)
    assert await store.takeover_record("r") == {} and await store.kill_record("r") == {}
    again = await claim(store, "c")
    assert again.won and not again.takeover and again.lease.epoch > second.lease.epoch


def test_kill_room_reads_the_cluster_file_of_stateroom_up_by_default(tmp_path: Path) -> None:
    """No --cluster: .stateroom/cluster.json of the current folder; missing, a clear error."""
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "kill-room", "lobby"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "stateroom kill-room: no cluster file at .stateroom/cluster.json: "
        "start one with `stateroom up` or pass --cluster"
    )
