"""Rooms outlive a whole host: three hosts of room servers in network namespaces.

Topology (``tests/netns.py``): hosts h1, h2, h3 with two room servers each, a fourth
host with Valkey and the login service, all on one bridge; the test and its SDK players
run in the root namespace, on the bridge too. The cluster's lease is 1.5 s (the test
cluster's ``FAST_SERVER_FLAGS``).

- A host dies: every process of the host that owns the most rooms is SIGKILLed at once.
  Its rooms run again on the other hosts, measured from the kill (Redis ``TIME``) to each
  room's first tick under its new owner (the room's takeover record, same clock).
- A host is cut off: its bridge-side veth goes down, so its packets are dropped and no
  socket sees an error. Its servers, which can no longer renew their leases, stop
  publishing (self-fencing); the leases expire and peers claim the rooms; the players,
  whose connections went silent, reconnect to another host. Healed, the old servers'
  delayed writes are refused (fencing epochs), they take no room back, and they rejoin:
  a new room is placed on them and plays.
- Rooms back after a host dies, as a figure: more rooms of one player each, the
  distribution of the recovery over rooms, survivors and time, and where the time went.

Every player checks exactly-once (``inputs == ack``), no ack going back, no state going
back; a journal recorder per room checks one entry per tick and epochs only growing, and
every state a player saw was journaled under the epoch of the server that sent it.

Skipped (with the reason) where namespaces are unavailable; failed instead on CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from client.sdk import AuthClient
from infra.cluster_view import Takeover, parse_takeover, redis_now_ms
from infra.room_keys import LOAD_KEY, room_keys
from server.store import Lease, RoomStore
from tests import netns
from tests.integration.faults import JournalRecorder, Player, RecordingClient, status, wait_for
from tests.netns import Host, HostCluster, host_cluster, require_netns
from tests.support import Processes, http_ok, wait_until

# A test takes 10-20 s plus the start of 8 processes (5-10 s; more on a loaded machine).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

LEASE_MS = 1500  # FAST_SERVER_FLAGS
ROOMS = 12  # rooms of two players, two rooms per room server
PLAYERS_PER_ROOM = 2
FENCED_LINE = re.compile(r"^(\S+ \S+) WARNING stateroom\.room room=(\S+) fenced at tick")


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[HostCluster]:
    require_netns()
    # Checkpoints every 2 s (not 0.5 s): a checkpoint trims the journal up to the one
    # before, so a journal recorder whose loop is starved on a busy machine for less
    # than 2 s still sees every entry.
    extra = ("--checkpoint-every-s", "2")
    with host_cluster(tmp_path, hosts=3, servers_per_host=2, extra=extra) as cluster:
        yield cluster


@pytest.fixture
async def store(hosts: HostCluster) -> AsyncIterator[RoomStore]:
    client = aioredis.Redis.from_url(hosts.redis_url, socket_timeout=2)
    try:
        yield RoomStore(client)
    finally:
        await client.aclose()


# -- players and where their rooms live ----------------------------------------------------


async def join(hosts: HostCluster, room: str, name: str, auth: AuthClient | None = None) -> Player:
    """A guest player in ``room``, connected (through any server of the cluster)."""
    own = auth is None
    auth = auth or AuthClient(hosts.auth_url)
    try:
        tokens = await auth.guest(name)
    finally:
        if own:
            await auth.aclose()
    client = RecordingClient(hosts.info.ws_urls, room, tokens.access_token)
    await client.connect()
    return Player(client)


async def join_all(hosts: HostCluster, rooms: list[str], per_room: int) -> list[Player]:
    # One login client for all: an httpx client per player costs ~50 ms of CPU each.
    auth = AuthClient(hosts.auth_url)
    try:
        return list(
            await asyncio.gather(
                *(join(hosts, r, f"{r}-p{j}", auth) for r in rooms for j in range(per_room))
            )
        )
    finally:
        await auth.aclose()


@dataclass(frozen=True)
class Placed:
    lease: Lease
    server: str  # cluster name: h1s1, ...
    host: Host


async def placement(hosts: HostCluster, store: RoomStore, rooms: list[str]) -> dict[str, Placed]:
    leases, _now = await store.leases_and_time(rooms)
    names = {sid: str(info["name"]) for sid, info in (await store.servers()).items()}
    placed = {}
    for room, lease in zip(rooms, leases, strict=True):
        assert lease is not None, f"room {room} has no owner"
        name = names[lease.server_id]
        placed[room] = Placed(lease, name, hosts.host_of(name))
    return placed


def busiest_host(hosts: HostCluster, placed: dict[str, Placed]) -> Host:
    per_host = Counter(p.host.name for p in placed.values())
    # Every host runs rooms: the placement spreads new rooms over all live servers.
    assert set(per_host) == {h.name for h in hosts.room_hosts}, per_host
    return hosts.network.hosts[per_host.most_common(1)[0][0]]


async def all_playing(players: list[Player], states: int = 20, timeout: float = 20) -> None:
    try:
        await wait_for(
            lambda: _true(all(p.states >= states for p in players)), timeout, "every player"
        )
    except TimeoutError:
        behind = [
            (p.client.room, p.states, p.client.connection_state.name, p.client.closes[-3:])
            for p in players
            if p.states < states
        ]
        raise TimeoutError(f"players not playing after {timeout} s: {behind}") from None


async def _true(value: bool) -> bool:
    return value


# -- recovery, from the rooms' takeover records (one clock: Redis TIME) ---------------------


async def takeovers(store: RoomStore, rooms: list[str]) -> dict[str, Takeover | None]:
    async with store.redis.pipeline(transaction=False) as pipe:
        for room in rooms:
            pipe.hgetall(room_keys(room)["takeover"])
        raw = await pipe.execute()
    return {room: parse_takeover(record) for room, record in zip(rooms, raw, strict=True)}


async def recovered(
    store: RoomStore, before: dict[str, Placed], timeout: float, players: bool = True
) -> dict[str, Takeover]:
    """Wait until every room of ``before`` ticks under a new owner (its takeover record is
    of a later epoch and has its first tick) and, with ``players``, every player the new
    owner expected is back; the records. A room that moved twice (on a machine so busy
    that Redis did not answer within the lease) counts with its last recovery."""
    done: dict[str, Takeover] = {}

    async def check() -> bool:
        pending = [room for room in before if room not in done]
        for room, record in (await takeovers(store, pending)).items():
            epoch = before[room].lease.epoch
            if record is None or record.old_epoch is None or record.old_epoch < epoch:
                continue
            if record.first_tick_ms is None:
                continue
            if players and len(record.players_back) < (record.players_expected or 0):
                continue
            done[room] = record
        return len(done) == len(before)

    await wait_for(check, timeout, f"rooms {sorted(before)} to run again", every=0.05)
    return done


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank: the smallest value with at least ``fraction`` of the values at or below."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def spread(values: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 0.5),
        "p90": percentile(values, 0.9),
        "p99": percentile(values, 0.99),
        "max": max(values),
    }


def figures(records: dict[str, Takeover], names: dict[str, str], since_ms: int) -> dict[str, Any]:
    """Recovery figures, ms since ``since_ms``: rooms back (first tick), players back, the
    steps (detected, claimed, restored, first tick), the new owners and a timeline."""

    def since(values: list[int | None]) -> list[float]:
        return [float(v - since_ms) for v in values if v is not None]

    first = since([r.first_tick_ms for r in records.values()])
    back = since([at for r in records.values() for at in r.players_back.values()])
    steps = {
        step: spread(since([getattr(r, f"{step}_ms") for r in records.values()]) or [0.0])
        for step in ("detected", "claimed", "restored", "first_tick")
    }
    buckets = Counter(int(ms // 100) * 100 for ms in first)
    return {
        "rooms": len(records),
        "rooms_back_ms": spread(first),
        "players_back_ms": spread(back) if back else None,
        "steps_ms": steps,
        "new_owners": dict(Counter(names.get(r.server, r.server) for r in records.values())),
        "rooms_back_per_100ms": {f"{k}-{k + 100}": v for k, v in sorted(buckets.items())},
    }


def report(test: str, body: dict[str, Any]) -> None:
    print(f"\nmultihost {test}: {json.dumps(body, sort_keys=True)}")


# -- checks ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def journals(redis_url: str, rooms: list[str]) -> AsyncIterator[dict[str, JournalRecorder]]:
    """A recorder per room, whose reads get 5 s (not 1 s) before they count as failed: on a
    busy machine a timed-out last read would leave the last ticks unrecorded. (The test's
    event loop must never block: a recorder that misses a checkpoint interval (0.5 s)
    misses the entries the checkpoint trims.)"""
    async with contextlib.AsyncExitStack() as stack:
        recorders = {}
        for room in rooms:
            recorder = JournalRecorder(redis_url, room, every=0.05)
            await recorder.redis.aclose()
            recorder.redis = aioredis.Redis.from_url(
                redis_url, socket_timeout=5, socket_connect_timeout=5
            )
            recorders[room] = await stack.enter_async_context(recorder)
        yield recorders


async def finish(players: list[Player], stop: asyncio.Event) -> None:
    stop.set()
    await asyncio.gather(*(p.finish(within=15) for p in players))


def check_players(players: list[Player], recorders: dict[str, JournalRecorder]) -> None:
    for player in players:
        recorder = recorders[player.client.room]
        try:
            player.check(recorder)
        except AssertionError as exc:
            seen = [(s.tick, s.server[-20:], s.epoch) for s in player.client.seen]
            raise AssertionError(
                f"{exc}\nroom {player.client.room}, player {player.client.player_id}"
                f"\nseen {seen}\njournal {recorder.entries}\ncloses {player.client.closes}"
            ) from None


def check_alone(player: Player) -> None:
    """What a player checks without its room's journal: exactly once, never back in time."""
    stats = player.client.stats
    assert stats.rollbacks == stats.ack_regressions == player.excess == 0, (stats, player.excess)
    assert player.last["ack"] == player.client._seq == player.last["inputs"], player.last
    ticks = [s.tick for s in player.client.seen]
    assert ticks == sorted(set(ticks)), "a state was received twice or out of order"


def check_journals(
    recorders: dict[str, JournalRecorder],
    before: dict[str, Placed],
    records: dict[str, Takeover],
) -> int:
    """Whole journals sound (one entry per tick, epochs never back); a moved room went on
    under its new owner's epoch. Returns the moves nobody caused: on a busy machine a room
    may move when Redis does not answer within the lease (safe, fenced, but counted)."""
    extra = 0
    for room, recorder in recorders.items():
        recorder.check()
        epochs = recorder.epochs()
        epoch = before[room].lease.epoch
        assert epoch in epochs, (room, epoch, epochs)
        after = epochs[epochs.index(epoch) + 1 :]
        if room in records:
            assert records[room].epoch in after, f"{room}: epochs {epochs}, {records[room]}"
            extra += len(after) - 1
        else:
            extra += len(after)
    return extra


def fenced_rooms(hosts: HostCluster, server: str, since: float) -> dict[str, float]:
    """Rooms that ``server`` logged as fenced at or after ``since``, and when (time.time())."""
    text = (hosts.processes.log_dir / f"{server}.log").read_text(errors="replace")
    fenced: dict[str, float] = {}
    for line in text.splitlines():
        match = FENCED_LINE.match(line)
        if match is None:
            continue
        at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if at >= since:
            fenced.setdefault(match.group(2), at)
    return fenced


async def registry_names(store: RoomStore) -> dict[str, str]:
    return {sid: str(info["name"]) for sid, info in (await store.servers()).items()}


# -- the tests ------------------------------------------------------------------------------


async def test_a_host_dies_with_every_process(hosts: HostCluster, store: RoomStore) -> None:
    started = time.monotonic()
    rooms = [f"mh-kill-{i}" for i in range(ROOMS)]
    async with asyncio.timeout(45), journals(hosts.redis_url, rooms) as recorders:
        players = await join_all(hosts, rooms, PLAYERS_PER_ROOM)
        stop = asyncio.Event()
        for player in players:
            player.play(stop)
        await all_playing(players)
        placed = await placement(hosts, store, rooms)
        victim = busiest_host(hosts, placed)
        moved = {room: p for room, p in placed.items() if p.host is victim}
        names = await registry_names(store)

        kill_ms = await redis_now_ms(store.redis)
        pids = hosts.kill_host(victim)
        records = await recovered(store, moved, timeout=15)
        await asyncio.sleep(1.0)  # play on the new owners for a while
        await finish(players, stop)

    result = figures(records, names, kill_ms)
    result.update(
        host=victim.name, pids_killed=len(pids), test_s=round(time.monotonic() - started, 1)
    )
    report("host kill", result)
    assert len(pids) == 2
    for room, record in records.items():
        assert hosts.host_of(names[record.server]) is not victim, (room, record)
    assert not any(s.alive for s in hosts.on(victim))
    check_players(players, recorders)
    extra_moves = check_journals(recorders, placed, records)
    print(f"multihost host kill: moves nobody caused: {extra_moves}")
    # Found dead through its closed connections (the kernel closes a killed process's
    # sockets), not by waiting out the lease.
    assert result["rooms_back_ms"]["p99"] <= 1000, result


async def test_a_host_cut_off_fences_itself_its_rooms_move_and_it_rejoins(
    hosts: HostCluster, store: RoomStore
) -> None:
    started = time.monotonic()
    rooms = [f"mh-cut-{i}" for i in range(ROOMS)]
    async with asyncio.timeout(50), journals(hosts.redis_url, rooms) as recorders:
        players = await join_all(hosts, rooms, PLAYERS_PER_ROOM)
        stop = asyncio.Event()
        for player in players:
            player.play(stop)
        await all_playing(players)
        placed = await placement(hosts, store, rooms)
        victim = busiest_host(hosts, placed)
        moved = {room: p for room, p in placed.items() if p.host is victim}
        cut_servers = hosts.on(victim)
        names = await registry_names(store)
        cut_players = [p for p in players if p.client.room in moved]

        cut_ms = await redis_now_ms(store.redis)
        cut_at = time.time()
        victim.cut()
        try:
            records = await recovered(store, moved, timeout=15)
            assert all(s.alive for s in cut_servers), "a cut-off server died"
        finally:
            victim.heal()
        healed_at = time.time()
        result = figures(records, names, cut_ms)

        # Rejoin: reachable again, a fresh registry entry with no room and no load, seen
        # live by Redis.
        async def rejoined() -> bool:
            for server in cut_servers:  # in a thread: never block the loop (see journals)
                if not await asyncio.to_thread(http_ok, f"{server.http_url}/readyz"):
                    return False
            servers = await store.servers()
            live = await store.live_server_ids(servers)
            mine = {
                sid: info
                for sid, info in servers.items()
                if info["name"] in {s.name for s in cut_servers}
            }
            for sid, info in mine.items():
                load = await store.redis.zscore(LOAD_KEY, sid)
                if sid not in live or info["heartbeat_at"] <= healed_at or info["rooms"] or load:
                    return False
            return len(mine) == len(cut_servers)

        await wait_for(rejoined, 20, "the healed servers to rejoin", every=0.1)
        rejoin_s = time.time() - healed_at
        await asyncio.sleep(1.0)  # room for any write the old owners still had in flight
        for room, record in records.items():
            lease = await store.owner(room)
            assert lease is not None and lease.epoch == record.epoch, (room, lease, record)
        for server in cut_servers:
            running = {r["room"] for r in (await status(server.admin_url))["room_list"]}
            assert not running & set(moved), (server.name, running)

        # New rooms go to the least-loaded servers, one after the other: once every
        # server with no room got one, both healed servers run a new room, and it plays.
        newcomers = [
            await join(hosts, f"mh-cut-new-{i}", f"new-{i}") for i in range(len(hosts.servers))
        ]
        for player in newcomers:
            player.play(stop)
        await all_playing(newcomers)
        fresh = await placement(hosts, store, [p.client.room for p in newcomers])
        await finish([*players, *newcomers], stop)

    fenced = {s.name: fenced_rooms(hosts, s.name, cut_at) for s in cut_servers}
    new_on = Counter(p.server for p in fresh.values())
    result.update(
        host=victim.name,
        lease_ms=LEASE_MS,
        rejoin_s=round(rejoin_s, 2),
        self_fenced_after_cut_ms={
            room: round((at - cut_at) * 1000)
            for rooms in fenced.values()
            for room, at in rooms.items()
        },
        new_rooms_on=dict(new_on),
        test_s=round(time.monotonic() - started, 1),
    )
    report("host cut", result)
    for room, record in records.items():
        # Self-fenced: the old owner stopped the room itself, before the new owner's claim.
        at = fenced[moved[room].server].get(room)
        assert at is not None, f"{moved[room].server} did not fence {room}: {fenced}"
        assert record.claimed_ms is not None and at * 1000 < record.claimed_ms, (room, at, record)
    assert all(new_on[s.name] >= 1 for s in cut_servers), new_on
    for server in hosts.servers.values():  # a partition is handled, never a crash
        log = (hosts.processes.log_dir / f"{server.name}.log").read_text(errors="replace")
        assert "Traceback" not in log and "Unclosed" not in log, (server.name, log[-3000:])
    for room, record in records.items():
        assert hosts.host_of(names[record.server]) is not victim, (room, record)
    for player in cut_players:  # they reconnected, and ended on another host
        assert player.client.stats.reconnects >= 1, player.client.closes
        assert hosts.host_of(names[player.client.seen[-1].server]) is not victim
    check_players(players, recorders)
    for player in newcomers:
        check_alone(player)
    extra_moves = check_journals(recorders, placed, records)
    print(f"multihost host cut: moves nobody caused: {extra_moves}")
    # Claimed once the lease ran out: within the lease plus a poll and the first tick.
    assert result["rooms_back_ms"]["max"] <= LEASE_MS + 500, result


async def test_rooms_back_p99_after_a_host_dies(hosts: HostCluster, store: RoomStore) -> None:
    """The figure: 48 rooms of one player (5 inputs/s) over the 3 hosts; the host with the
    most rooms is SIGKILLed; its rooms back, over rooms, survivors and time."""
    started = time.monotonic()
    rooms = [f"mh-bench-{i}" for i in range(48)]
    phases: dict[str, float] = {}

    def mark(phase: str) -> None:
        phases[phase] = round(time.monotonic() - started, 2)

    try:
        async with asyncio.timeout(50):
            players = await join_all(hosts, rooms, 1)
            mark("joined")
            stop = asyncio.Event()
            for player in players:
                player.rate = 5.0
                player.play(stop)
            await all_playing(players)
            mark("playing")
            placed = await placement(hosts, store, rooms)
            victim = busiest_host(hosts, placed)
            moved = {room: p for room, p in placed.items() if p.host is victim}
            names = await registry_names(store)
            kill_ms = await redis_now_ms(store.redis)
            hosts.kill_host(victim)
            mark("killed")
            records = await recovered(store, moved, timeout=20)
            mark("recovered")
            await asyncio.sleep(0.5)
            await finish(players, stop)
            mark("finished")
    finally:
        print(f"\nmultihost phases (s since start): {phases}")

    result = figures(records, names, kill_ms)
    result.update(
        host=victim.name,
        rooms_total=len(rooms),
        survivors=sorted(s.name for s in hosts.servers.values() if s.alive),
        test_s=round(time.monotonic() - started, 1),
    )
    stats = [p.client.stats for p in players]
    result["lost_acked_inputs"] = sum(s.ack_regressions for s in stats)
    result["duplicate_inputs"] = sum(p.excess for p in players)
    result["rollbacks"] = sum(s.rollbacks for s in stats)
    report("rooms back after a host dies", result)
    for player in players:
        check_alone(player)
    assert result["rooms_back_ms"]["p99"] <= 1000, result


# -- the harness itself ----------------------------------------------------------------------


def test_without_namespaces_the_tests_skip_with_the_reason_and_fail_on_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(netns, "netns_problem", lambda: "no namespaces on this machine")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no namespaces on this machine"):
        require_netns()
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match=r"CI must run .*no namespaces"):
        require_netns()


def test_each_missing_requirement_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(os, "geteuid", lambda: 1000)
        assert "need root" in (netns.netns_problem() or "")
    with monkeypatch.context() as patch:
        patch.setattr(os, "geteuid", lambda: 0)
        patch.setattr(shutil, "which", lambda name: None)
        assert "iproute2" in (netns.netns_problem() or "")

    def refuse(*args: str, check: bool = True) -> str:
        if args[:2] == ("netns", "add"):
            raise netns.NetnsError("ip netns add: Operation not permitted")
        return ""

    with monkeypatch.context() as patch:
        patch.setattr(os, "geteuid", lambda: 0)
        patch.setattr(shutil, "which", lambda name: "/usr/sbin/ip")
        patch.setattr(netns, "ip", refuse)
        assert "`ip netns add` failed" in (netns.netns_problem() or "")
        assert "Operation not permitted" in (netns.netns_problem() or "")


def _can_connect(address: str, port: int) -> str:
    """'open', 'refused' or 'timeout' (a partition drops packets: nothing refuses)."""
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "timeout"


def test_a_cut_host_is_silent_both_ways_and_healing_restores_it(tmp_path: Path) -> None:
    require_netns()
    processes = Processes(tmp_path)
    try:
        with netns.Network(["a", "b"]) as network:
            a, b = network.hosts["a"], network.hosts["b"]
            processes.start(
                a.command([sys.executable, "-m", "http.server", "-b", a.address, "8080"]), "web"
            )
            url = f"http://{a.address}:8080/"
            wait_until(lambda: http_ok(url), 20, url)
            probe = [
                sys.executable,
                "-c",
                f"import socket; socket.create_connection(('{a.address}', 8080), 0.5)",
            ]
            assert subprocess.run(b.command(probe), capture_output=True, timeout=10).returncode == 0
            assert _can_connect(a.address, 8081) == "refused"  # the host answers: a closed port

            a.cut()
            assert a.is_cut()
            assert _can_connect(a.address, 8080) == "timeout"
            assert _can_connect(a.address, 8081) == "timeout"  # no RST either: silence
            assert subprocess.run(b.command(probe), capture_output=True, timeout=10).returncode != 0

            a.heal()
            assert not a.is_cut()
            wait_until(lambda: http_ok(url), 10, "the healed host")
            assert subprocess.run(b.command(probe), capture_output=True, timeout=10).returncode == 0
    finally:
        processes.stop_all()


def test_teardown_removes_everything_even_when_the_test_fails(tmp_path: Path) -> None:
    require_netns()
    network = netns.Network(["a", "b"])
    inside: subprocess.Popen[bytes] | None = None
    with pytest.raises(RuntimeError, match="the test failed"), network:
        host = network.hosts["a"]
        names = [h.netns for h in network.hosts.values()]
        links = [h.veth for h in network.hosts.values()] + [network.bridge]
        inside = subprocess.Popen(host.command(["sleep", "60"]))
        wait_until(lambda: str(inside.pid) in netns.ip("netns", "pids", host.netns), 10, "sleep")
        raise RuntimeError("the test failed")
    assert inside is not None
    assert inside.wait(5) == -signal.SIGKILL  # killed by the teardown, not left running
    assert not set(names) & set(netns._netns_names())
    wait_until(lambda: not set(links) & set(netns._link_names()), 5, "the veths to go")


def test_stale_namespaces_of_dead_runs_are_removed_and_live_ones_kept() -> None:
    require_netns()
    done = subprocess.Popen(["true"])
    done.wait()
    dead, live = done.pid, os.getpid()
    stale_ns, stale_link = f"srn{dead}-0-h1", f"srn{dead}-0v1"
    kept_ns, other_ns = f"srn{live}-9-keep", "srnx-not-ours"
    try:
        for name in (stale_ns, kept_ns, other_ns):
            netns.ip("netns", "add", name)
        netns.ip("link", "add", stale_link, "type", "veth", "peer", "name", f"srn{dead}-0p1")
        removed = netns.cleanup_stale()
        assert stale_ns in removed and stale_link in removed
        left = netns._netns_names()
        assert stale_ns not in left and kept_ns in left and other_ns in left
        assert stale_link not in netns._link_names()
    finally:
        for name in (stale_ns, kept_ns, other_ns):
            netns.ip("netns", "del", name, check=False)
        netns.ip("link", "del", stale_link, check=False)
