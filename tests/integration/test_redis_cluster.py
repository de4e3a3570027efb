"""Everything on a real Valkey cluster (3 primaries + 3 replicas, ``redis+cluster://``).

The session's cluster (``valkey_cluster``) serves one login service and two room
servers (module scope: started once). Tests cover the URL form, the cluster itself, the
essentials of the failover tests (an owner SIGKILLed under SDK play: nothing acked lost
or applied twice, no tick back; a frozen owner replaced and fenced), auth (guest,
accounts, refresh, logout, matchmaking), ``status`` and ``kill-room``, liveness spread
over the primaries, and a primary of the room's shard killed during play (its replica
takes over; what ``local`` durability loses is measured and printed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis.crc import key_slot

from client.bots import run_bots
from client.sdk import AuthClient
from infra.embedded_cluster import SLOTS, EmbeddedCluster
from infra.errors import EmbeddedRedisError, RedisUrlError
from infra.redis_url import ClusterTarget, connect, parse_cluster_url, redact, validate
from infra.room_keys import rooms_index_keys, server_key
from server.killroom import kill_room
from server.store import RoomStore, room_keys
from tests.cluster import LocalCluster, start_cluster
from tests.integration.faults import JournalRecorder, Player, rooms_on, server_name, wait_for
from tests.integration.test_failover import assert_clean, room_running
from tests.support import Processes

pytestmark = pytest.mark.slow

PATIENT = {"stall_timeout": 30.0}
FIGURES: dict[str, Any] = {}  # printed at the end of the module (pytest -s shows them)


# ---------------------------------------------------------------- the URL form


def test_cluster_url_parsing() -> None:
    assert parse_cluster_url("redis+cluster://:p%40ss@a:7000,b:7001") == ClusterTarget(
        (("a", 7000), ("b", 7001)), None, "p@ss"
    )
    target = parse_cluster_url("redis+cluster://user:pw@[::1]:7000/?ssl=true&ssl_cert_reqs=none")
    assert target.seeds == (("::1", 7000),) and target.username == "user"
    assert target.connection_options() == {"ssl": True, "ssl_cert_reqs": "none"}
    assert parse_cluster_url("redis+cluster://h:1").password is None
    validate("redis+cluster://h:1,h:2")
    for bad, says in [
        ("redis+cluster://", "no seed"),
        ("redis+cluster://h", "bad address"),
        ("redis+cluster://h:0", "bad address"),
        ("redis+cluster://h:1/0", "no databases"),
        ("redis+cluster://h:1/?db=1", "unknown option"),
        ("redis+cluster://h:1/?ssl=yes", "ssl=true"),
        ("redis+cluster://h:1/?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
    ]:
        with pytest.raises(RedisUrlError, match=says):
            parse_cluster_url(bad)
    with pytest.raises(RedisUrlError, match="redis\\+cluster://"):
        validate("cluster://h:1")
    assert redact("redis+cluster://:secret@a:1,b:2") == "redis+cluster://:***@a:1,b:2"


def test_the_cli_refuses_a_malformed_cluster_url(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "server", "--redis-url", "redis+cluster://h:1/3"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "no databases" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------- the cluster itself


def test_the_embedded_cluster(valkey_cluster: EmbeddedCluster) -> None:
    assert valkey_cluster.started_in_s < 5.0, valkey_cluster.started_in_s
    FIGURES["cluster_start_s"] = round(valkey_cluster.started_in_s, 2)
    roles = [valkey_cluster.role(node) for node in valkey_cluster.nodes]
    assert sorted(roles) == ["master"] * 3 + ["slave"] * 3
    primaries = [n for n in valkey_cluster.nodes if valkey_cluster.role(n) == "master"]
    # Each primary has one replica, and the slots are all served.
    assert sorted(len(valkey_cluster.replicas_of(p)) for p in primaries) == [1, 1, 1]
    assert {valkey_cluster.primary_of_slot(s).port for s in (0, SLOTS // 2, SLOTS - 1)} == {
        p.port for p in primaries
    }
    node = primaries[0]
    with (
        redis.Redis(host=node.server.host, port=node.port, socket_timeout=1) as anonymous,
        pytest.raises(redis.AuthenticationError),
    ):
        anonymous.ping()
    assert "@" in valkey_cluster.url and valkey_cluster.password not in (
        valkey_cluster.url_without_password
    )


# ---------------------------------------------------------------- one deployment on it


class _External:
    """What LocalCluster stops at the end: nothing (the cluster is the session's)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def stop(self) -> None:
        pass


@pytest.fixture(scope="module")
def deployment(
    valkey_cluster: EmbeddedCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    """Login service + 2 room servers on the cluster, for every test of this module."""
    valkey_cluster.wait_ok()
    valkey_cluster.flush()
    tmp = tmp_path_factory.mktemp("on-cluster")
    processes = Processes(tmp)
    url = valkey_cluster.url
    try:
        yield start_cluster(processes, tmp, servers=2, redis=_External(url), redis_url=url)
    finally:
        processes.stop_all()
        for name, value in FIGURES.items():
            print(f"redis cluster figure: {name} = {value}")


@pytest.fixture
async def store(deployment: LocalCluster) -> AsyncIterator[RoomStore]:
    client = connect(deployment.redis_url, socket_timeout=2)
    try:
        yield RoomStore(client)
    finally:
        await client.aclose()


class ClusterJournal(JournalRecorder):
    """JournalRecorder reading through a cluster client."""

    def __init__(self, redis_url: str, room: str, every: float = 0.02) -> None:
        client = connect(redis_url, socket_timeout=1, socket_connect_timeout=1)
        super().__init__(redis_url, room, every, client=client)


def ensure_running(deployment: LocalCluster) -> None:
    """Start any killed room server again (as stateroom up would). From this thread: a
    child started from a worker thread would get its PDEATHSIG when that thread ends."""
    for name, server in deployment.servers.items():
        if server.proc is None or server.proc.poll() is not None:
            deployment.start_server(name)


async def test_servers_spread_their_liveness_over_the_primaries(
    deployment: LocalCluster, store: RoomStore, valkey_cluster: EmbeddedCluster
) -> None:
    async def registered() -> bool:
        servers = await store.servers()
        return len(servers) == 2 and all(s.get("liveness_node") for s in servers.values())

    await wait_for(registered, 15, "both servers registered with their liveness node")
    servers = await store.servers()
    for sid, info in servers.items():
        # Each server's liveness connection is on the primary serving its own key.
        assert info["liveness_node"] == valkey_cluster.primary_of(server_key(sid)).address
    assert await store.live_server_ids(servers) == set(servers)
    # The registry's compact records and the full entries agree on what they share.
    full = {sid: json.loads(v) for sid, v in (await store.redis.hgetall("sr:servers")).items()}
    assert {k.decode(): v["liveness_id"] for k, v in full.items()} == {
        sid: info["liveness_id"] for sid, info in servers.items()
    }


async def test_bots_play_and_the_owner_is_killed(
    deployment: LocalCluster, store: RoomStore
) -> None:
    """kill-room under SDK bots: nothing acked lost or applied twice, no tick back, and
    the room is back in well under a second (its owner's liveness connection closed)."""
    ensure_running(deployment)
    room, count = "cluster-kill", 6
    async with asyncio.timeout(60), ClusterJournal(deployment.redis_url, room) as journal:
        bots = asyncio.create_task(run_bots(deployment.info, room, count, seconds=6.0))
        await room_running(store, room)
        await asyncio.sleep(1.0)
        before = await store.owner(room)
        assert before is not None
        name = await server_name(store, before.server_id)
        report = await kill_room(deployment.redis_url, room, timeout=15)
        summary = await bots
    ensure_running(deployment)
    assert await server_name(store, report["new_server"]) != name
    assert report["new_server"] != before.server_id
    assert report["new_epoch"] > report["old_epoch"] == before.epoch
    assert report["unavailable_ms"] < 1000, report
    FIGURES["kill_room_unavailable_ms"] = report["unavailable_ms"]
    FIGURES["kill_room_timeline"] = {
        k: report["timeline"].get(k) for k in ("detected_ms", "claimed_ms", "first_tick_ms")
    }
    assert_clean(summary, count)
    assert summary["reconnects"] >= count, summary
    journal.check()
    assert journal.epochs() == [report["old_epoch"], report["new_epoch"]]
    # The room is in its bucket of the index, not in the single-Redis hash.
    index = await store.rooms_index()
    assert index[room]["owner"] == report["new_server"]
    assert await store.redis.exists("sr:rooms") == 0
    assert any([await store.redis.hexists(key, room) for key in rooms_index_keys(True)])


async def test_a_frozen_owner_is_replaced_and_fenced(
    deployment: LocalCluster, store: RoomStore
) -> None:
    ensure_running(deployment)
    room = "cluster-frozen"
    stop = asyncio.Event()
    async with asyncio.timeout(60), ClusterJournal(deployment.redis_url, room) as journal:
        players = [await Player.join(deployment, room, f"f{i}", **PATIENT) for i in range(3)]
        for player in players:
            player.play(stop)
        await room_running(store, room)
        await asyncio.sleep(1.0)
        old = await store.owner(room)
        assert old is not None
        old_name = await server_name(store, old.server_id)
        proc = deployment.servers[old_name].proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGSTOP)
        try:

            async def moved() -> bool:
                lease = await store.owner(room)
                return lease is not None and lease.server_id != old.server_id

            await wait_for(moved, 15, "the room to leave the frozen owner")
            new = await store.owner(room)
            assert new is not None and new.epoch > old.epoch
        finally:
            os.kill(proc.pid, signal.SIGCONT)

        async def dropped() -> bool:
            return room not in await rooms_on(deployment.servers[old_name].admin_url)

        await wait_for(dropped, 10, f"{old_name} to drop the room")
        for player in players:
            await wait_for(lambda p=player: _true(p.client.server == new.server_id), 15, "resumed")
        await asyncio.sleep(1.0)
        stop.set()
        for player in players:
            await player.finish()
    assert "fenced" in deployment.log(old_name)
    journal.check()
    assert journal.epochs() == [old.epoch, new.epoch]
    for player in players:
        player.check(journal)


async def _true(value: bool) -> bool:
    return value


async def test_auth_and_matchmaking(deployment: LocalCluster) -> None:
    auth = AuthClient(deployment.auth_url)
    try:
        guest = await auth.guest("visitor")
        await auth.register("cluster-alice", "correct horse battery")
        tokens = await auth.login("cluster-alice", "correct horse battery")
        fresh = await auth.refresh(tokens)
        assert fresh.refresh_token != tokens.refresh_token
        async with httpx.AsyncClient(base_url=deployment.auth_url, timeout=5) as http:
            reused = await http.post("/v1/refresh", json={"refresh_token": tokens.refresh_token})
            assert reused.status_code == 401  # reuse revokes the family
            again = await http.post("/v1/refresh", json={"refresh_token": fresh.refresh_token})
            assert again.status_code == 401
            wrong = [
                await http.post(
                    "/v1/login", json={"username": "cluster-alice", "password": f"wrong guess {i}"}
                )
                for i in range(7)
            ]
            assert [r.status_code for r in wrong][-1] == 429  # the per-account lockout
            headers = {"Authorization": f"Bearer {guest.access_token}"}
            # Quick-join: 8 players, rooms of 4 -> exactly two rooms, then a listing.
            rooms = []
            for i in range(8):
                player = await auth.guest(f"q{i}")
                reply = await http.post(
                    "/v1/rooms/quick-join",
                    json={"game": "arena", "options": {"max_players": 4}},
                    headers={"Authorization": f"Bearer {player.access_token}"},
                )
                assert reply.status_code == 200, reply.text
                rooms.append(reply.json()["room"])
            assert sorted(rooms.count(r) for r in set(rooms)) == [4, 4]
            private = await http.post(
                "/v1/rooms/private", json={"game": "arena", "options": {}}, headers=headers
            )
            assert private.status_code == 201, private.text
            code = private.json()["code"]
            found = await http.get(f"/v1/rooms/private/{code}", headers=headers)
            assert found.status_code == 200 and found.json()["room"] == private.json()["room"]
            listing = await http.get("/v1/rooms", params={"game": "arena"}, headers=headers)
            assert listing.status_code == 200
        await auth.logout(fresh)
    finally:
        await auth.aclose()
    # A room created by play shows up in the listing within a publish or two.
    summary = await run_bots(deployment.info, "cluster-listed", 2, seconds=2.0)
    assert summary["failed_players"] == 0, summary


async def test_kill_room_command(deployment: LocalCluster, tmp_path: Path) -> None:
    ensure_running(deployment)
    cluster_file = deployment.write_cluster_file(tmp_path / "cluster.json")
    bots = asyncio.create_task(run_bots(deployment.info, "cluster-kr", 2, seconds=6.0))
    try:
        client = connect(deployment.redis_url, socket_timeout=2)
        try:
            await room_running(RoomStore(client), "cluster-kr", min_tick=10)
        finally:
            await client.aclose()
        report = await _cli("kill-room", "cluster-kr", "--cluster", str(cluster_file), "--json")
        assert report["new_server"] != report["old_server"]
        assert report["unavailable_ms"] < 1000, report
        FIGURES["cli_kill_room_unavailable_ms"] = report["unavailable_ms"]
        summary = await bots
        assert_clean(summary, 2)
    finally:
        bots.cancel()
        with contextlib.suppress(BaseException):
            await bots
        ensure_running(deployment)


async def test_status_and_live_servers(deployment: LocalCluster, tmp_path: Path) -> None:
    ensure_running(deployment)
    cluster_file = deployment.write_cluster_file(tmp_path / "cluster.json")
    bots = asyncio.create_task(run_bots(deployment.info, "cluster-cli", 2, seconds=6.0))
    try:
        client = connect(deployment.redis_url, socket_timeout=2)
        try:
            await room_running(RoomStore(client), "cluster-cli", min_tick=10)
        finally:
            await client.aclose()
        status = await _cli("status", "--cluster", str(cluster_file), "--json")
        rows = {r["room"]: r for r in status["rooms"]}
        assert rows["cluster-cli"]["owner_live"] is True, status
        assert all(s.get("live") for s in status["servers"]), status["servers"]
        auth = AuthClient(deployment.auth_url)
        try:
            token = (await auth.guest("lister")).access_token
        finally:
            await auth.aclose()
        async with httpx.AsyncClient(base_url=deployment.auth_url, timeout=5) as http:
            servers = await http.get("/v1/servers", headers={"Authorization": f"Bearer {token}"})
        assert servers.status_code == 200
        assert len(servers.json()["servers"]) == 2, servers.json()
        summary = await bots
        assert_clean(summary, 2)
    finally:
        bots.cancel()
        with contextlib.suppress(BaseException):
            await bots
        ensure_running(deployment)


async def _cli(*args: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


async def test_the_rooms_shard_primary_fails_over_during_play(
    deployment: LocalCluster, store: RoomStore, valkey_cluster: EmbeddedCluster
) -> None:
    """SIGKILL the primary serving the room's slot while bots play: its replica is
    promoted (cluster-node-timeout 1 s) and the room runs again. Under ``local``
    durability the ticks the dead primary acknowledged but had not yet replicated are
    lost: the figures say how many, and how long the room stalled."""
    ensure_running(deployment)
    room, count = "cluster-shard-failover", 6
    lease_key = room_keys(room)["lease"]
    primary = valkey_cluster.primary_of(lease_key)
    (replica,) = valkey_cluster.replicas_of(primary)
    try:
        async with asyncio.timeout(90), ClusterJournal(deployment.redis_url, room) as journal:
            bots = asyncio.create_task(run_bots(deployment.info, room, count, seconds=12.0))
            await room_running(store, room)
            await asyncio.sleep(1.0)
            before = await store.last_journaled(room)
            assert before is not None
            killed_at = time.monotonic()
            valkey_cluster.kill(primary)

            async def promoted() -> bool:
                return await asyncio.to_thread(valkey_cluster.role, replica) == "master"

            await wait_for(promoted, 20, "the replica to take over", every=0.05)
            promoted_s = time.monotonic() - killed_at

            async def ticking_again() -> bool:
                newest = await store.last_journaled(room)
                return newest is not None and newest[0] > before[0] + 5

            await wait_for(ticking_again, 20, "the room to tick again", every=0.02)
            back_s = time.monotonic() - killed_at
            summary = await bots
    finally:
        # The old primary comes back as a replica of the promoted one.
        valkey_cluster.restart(primary)  # from this thread: see EmbeddedRedis.spawn
        await asyncio.to_thread(valkey_cluster.wait_ok, 30)
    FIGURES["shard_failover"] = {
        "replica_promoted_s": round(promoted_s, 2),
        "room_ticking_again_s": round(back_s, 2),
        "lost_acked_inputs": summary["lost_acked_inputs"],
        "rollbacks": summary["rollbacks"],
        "duplicate_inputs": summary["duplicate_inputs"],
        "reconnects": summary["reconnects"],
        "failed_players": summary["failed_players"],
    }
    assert summary["failed_players"] == 0, summary["failures"]
    assert summary["duplicate_inputs"] == 0, summary
    assert summary["inputs_sent"] > 0
    assert key_slot(lease_key.encode()) == key_slot(room_keys(room)["journal"].encode())
    # Ticks only go forward in the journal the room kept (lost ones are rewritten once).
    assert journal.entries
    await servers_live_on_primaries(store, valkey_cluster)


async def servers_live_on_primaries(store: RoomStore, nodes: EmbeddedCluster) -> None:
    """Both servers are live again, each liveness connection on its slot's primary now."""

    async def settled() -> bool:
        servers = await store.servers()
        if len(servers) != 2 or await store.live_server_ids(servers) != set(servers):
            return False
        try:
            return all(
                info.get("liveness_node") == nodes.primary_of(server_key(sid)).address
                for sid, info in servers.items()
            )
        except EmbeddedRedisError:  # a slot has no primary yet
            return False

    await wait_for(settled, 20, "both servers live on the current primaries", every=0.1)


@pytest.mark.parametrize(
    "how",
    [
        "sigkill",
        "cluster-failover",
        "restart-in-place",
    ],
)
async def test_a_failover_of_a_servers_liveness_node_moves_none_of_its_rooms(
    deployment: LocalCluster, store: RoomStore, valkey_cluster: EmbeddedCluster, how: str
) -> None:
    """The primary holding a server's liveness connection dies (SIGKILL: peers cannot see
    that server for the ~3 s until its replica is promoted and the server reconnects
    there), hands over to its replica (``CLUSTER FAILOVER``: the connection stays open
    on a node that is a replica now, and the server must notice by itself), or is
    SIGKILLed and restarted at once, before its replica takes over (every connection to
    it dropped; it answers again before the server reconnects). Each time the server is
    *unsure*, not dead, so none of its rooms on the other shards moves."""
    ensure_running(deployment)
    prefix = f"cluster-live-{how}"
    rooms = [f"{prefix}-{i}" for i in range(8)]
    bots = asyncio.create_task(run_bots(deployment.info, prefix, 16, 12.0, rooms_of=2))
    victim = None
    try:
        async with asyncio.timeout(90):
            for room in rooms:
                await room_running(store, room, min_tick=10)
            servers = await store.servers()
            leases = {room: await store.owner(room) for room in rooms}
            # A server with a room on a shard other than its liveness node's.
            for sid, info in sorted(servers.items()):
                node = info["liveness_node"]
                elsewhere = [
                    r
                    for r, lease in leases.items()
                    if lease is not None
                    and lease.server_id == sid
                    and valkey_cluster.primary_of(room_keys(r)["lease"]).address != node
                ]
                if elsewhere:
                    break
            assert elsewhere, f"no room off its owner's liveness node: {leases}"
            victim = next(n for n in valkey_cluster.nodes if n.address == node)
            watched = {
                r: lease
                for r, lease in leases.items()
                if valkey_cluster.primary_of(room_keys(r)["lease"]).address != node
            }
            began = time.monotonic()
            if how == "sigkill":
                valkey_cluster.kill(victim)
            elif how == "restart-in-place":
                valkey_cluster.kill(victim)
                valkey_cluster.restart(victim)
                victim = None
            else:
                (replica,) = valkey_cluster.replicas_of(victim)
                with replica.client() as client:
                    client.execute_command("CLUSTER", "FAILOVER")
                victim = None  # nothing to restart: it is its replica's replica now
            await servers_live_on_primaries(store, valkey_cluster)
            FIGURES[f"liveness_back_after_{how}_s"] = round(time.monotonic() - began, 2)
            await asyncio.sleep(1.0)  # time for a wrong takeover to show
            after = {room: await store.owner(room) for room in watched}
            summary = await bots
    finally:
        if victim is not None:
            valkey_cluster.restart(victim)  # from this thread: see EmbeddedRedis.spawn
        await asyncio.to_thread(valkey_cluster.wait_ok, 30)
        bots.cancel()
        with contextlib.suppress(BaseException):
            await bots
    assert after == watched, f"rooms moved: before {watched}, after {after}"
    assert summary["failed_players"] == 0, summary["failures"]
    assert summary["duplicate_inputs"] == 0, summary
