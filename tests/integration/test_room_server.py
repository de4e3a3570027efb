"""The room server against real clients: auth, placement, redirects, hardening, resume.

One cluster (Valkey + auth + two room servers) serves the whole module; each
test uses its own room names, so tests stay independent.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pytest
import pytest_asyncio
import redis.asyncio as redis_async
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from auth.keys import Keyring
from auth.tokens import TokenIssuer
from client.bots import run_bots
from client.sdk import AuthClient, RoomClient
from server.app import ROOM_STATS_CAP, capped_room_stats
from server.protocol import CloseCode
from tests.cluster import LocalCluster, cluster_for, start_cluster
from tests.support import Processes

MSGPACK = [Subprotocol("stateroom.v1.msgpack")]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    tmp = tmp_path_factory.mktemp("room-server")
    with cluster_for(tmp, extra=("--input-rate", "40", "--input-burst", "40")) as local:
        yield local


@pytest_asyncio.fixture
async def token(shared: LocalCluster) -> AsyncIterator[str]:
    auth = AuthClient(shared.auth_url)
    try:
        yield (await auth.guest("tester")).access_token
    finally:
        await auth.aclose()


async def guest_token(cluster: LocalCluster, name: str = "p") -> str:
    auth = AuthClient(cluster.auth_url)
    try:
        return (await auth.guest(name)).access_token
    finally:
        await auth.aclose()


async def open_ws(url: str, token: str | None = None, **kwargs: Any) -> ClientConnection:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await connect(
        url,
        subprotocols=kwargs.pop("subprotocols", MSGPACK),
        additional_headers=headers,
        open_timeout=5,
        compression=None,
        max_size=None,
        **kwargs,
    )


async def recv(ws: ClientConnection, within: float = 5) -> dict[str, Any]:
    async with asyncio.timeout(within):
        frame = await ws.recv()
    message = orjson.loads(frame) if isinstance(frame, str) else msgpack.unpackb(frame)
    assert isinstance(message, dict)
    return message


async def recv_until(ws: ClientConnection, kind: str, within: float = 5) -> dict[str, Any]:
    async with asyncio.timeout(within):
        while True:
            message = await recv(ws, within)
            if message["t"] == kind:
                return message


async def close_code(ws: ClientConnection, within: float = 8) -> int:
    """Read until the server closes; return its close code."""
    try:
        async with asyncio.timeout(within):
            async for _ in ws:
                pass
    except ConnectionClosed:
        pass
    assert ws.close_code is not None
    return ws.close_code


async def join_owner(
    cluster: LocalCluster, room: str, token: str, **kwargs: Any
) -> tuple[ClientConnection, dict[str, Any]]:
    """Join a room on whichever server owns it, following one redirect."""
    url = cluster.info.ws_urls[0]
    for _ in range(3):
        ws = await open_ws(url, token, **kwargs)
        await ws.send(msgpack.packb({"t": "join", "v": 1, "room": room}))
        message = await recv(ws)
        if message["t"] == "welcome":
            return ws, message
        assert message["t"] == "redirect", message
        assert await close_code(ws) == CloseCode.REDIRECT
        url = message["url"]
    raise AssertionError("no welcome after redirects")


# -- authentication ---------------------------------------------------------------------


async def test_missing_token_is_refused(shared: LocalCluster) -> None:
    ws = await open_ws(shared.info.ws_urls[0])
    await ws.send(msgpack.packb({"t": "join", "room": "r-auth"}))
    error = await recv(ws)
    assert error == {"t": "error", "code": "unauthorized", "message": "an access token is required"}
    assert await close_code(ws) == CloseCode.UNAUTHORIZED


@pytest.mark.parametrize("bad", ["garbage", "a.b.c", "x" * 4100])
async def test_wrong_token_is_refused(shared: LocalCluster, bad: str) -> None:
    ws = await open_ws(shared.info.ws_urls[0])
    await ws.send(msgpack.packb({"t": "join", "room": "r-auth", "token": bad}))
    assert (await recv(ws))["code"] == "unauthorized"
    assert await close_code(ws) == CloseCode.UNAUTHORIZED


async def test_expired_token_is_refused_with_token_expired(shared: LocalCluster) -> None:
    issuer = TokenIssuer(Keyring(shared.key_file), issuer="stateroom", audience="stateroom", ttl=60)
    expired = issuer.issue("g_old", "old", now=time.time() - 3600)
    ws = await open_ws(shared.info.ws_urls[0], expired)
    await ws.send(msgpack.packb({"t": "join", "room": "r-auth"}))
    assert (await recv(ws))["code"] == "token_expired"
    assert await close_code(ws) == CloseCode.UNAUTHORIZED


async def test_token_in_first_message_for_browsers(shared: LocalCluster, token: str) -> None:
    url = shared.info.ws_urls[0]
    for _ in range(2):
        ws = await open_ws(url, subprotocols=[Subprotocol("stateroom.v1.json")])
        await ws.send(orjson.dumps({"t": "join", "room": "r-browser", "token": token}).decode())
        message = await recv(ws)
        if message["t"] == "redirect":
            url = message["url"]
            continue
        assert message["t"] == "welcome"
        state = await recv_until(ws, "state")
        assert isinstance(await ws.recv(), str)  # JSON rides in text frames
        assert state["ack"] == 0
        await ws.close()
        return
    raise AssertionError("not welcomed")


async def test_join_timeout_closes_4002(shared: LocalCluster) -> None:
    server = next(iter(shared.servers.values()))
    ws = await open_ws(server.ws_url)
    started = time.monotonic()
    # The cluster's join timeout is the default 5 s.
    assert await close_code(ws, within=10) == CloseCode.AUTH_TIMEOUT
    assert time.monotonic() - started >= 4


# -- protocol misuse ------------------------------------------------------------------------


async def test_first_message_must_be_join(shared: LocalCluster, token: str) -> None:
    ws = await open_ws(shared.info.ws_urls[0], token)
    await ws.send(msgpack.packb({"t": "input", "seq": 1, "data": {}}))
    assert (await recv(ws))["code"] == "not_joined"
    assert await close_code(ws) == CloseCode.PROTOCOL_ERROR


@pytest.mark.parametrize(
    ("join", "code", "close"),
    [
        ({"t": "join", "room": "bad room!"}, "invalid_room", CloseCode.INVALID_ROOM),
        ({"t": "join", "room": "ok", "game": "nope"}, "unknown_game", CloseCode.INVALID_ROOM),
        ({"t": "join", "room": "ok", "v": 2}, "unsupported_version", CloseCode.UNSUPPORTED_VERSION),
    ],
)
async def test_bad_join_is_refused(
    shared: LocalCluster, token: str, join: dict[str, Any], code: str, close: int
) -> None:
    ws = await open_ws(shared.info.ws_urls[0], token)
    await ws.send(msgpack.packb(join))
    assert (await recv(ws))["code"] == code
    assert await close_code(ws) == close


async def test_malformed_frames_after_join_get_errors_and_room_goes_on(
    shared: LocalCluster, token: str
) -> None:
    ws, _ = await join_owner(shared, "r-malformed", token)
    bad_frames: list[bytes | str] = [
        b"\xdd\xff\xff\xff\xff",  # array32 declaring 4 billion items
        msgpack.packb({"t": "input"}) + b"trailing",
        b"\x91" * 3000,  # deep nesting
        msgpack.packb({"t": "input", "seq": 1, "data": float("nan")}),
        msgpack.packb({"t": "input", "seq": "one", "data": {}}),
        msgpack.packb({"t": "warp"}),
        msgpack.packb([1, 2, 3]),
        "text frame for msgpack",
        msgpack.packb({"t": "input", "seq": 1, "data": {"dx": "fast", "dy": 0}}),
    ]
    for frame in bad_frames:
        await ws.send(frame)
    codes = []
    async with asyncio.timeout(5):
        while len(codes) < len(bad_frames):
            message = await recv(ws)
            if message["t"] == "error":
                codes.append(message["code"])
    assert set(codes) <= {"invalid_message", "unknown_type", "illegal_input"}
    assert codes[-1] == "illegal_input"
    # Still in the room, still playing.
    await ws.send(msgpack.packb({"t": "input", "seq": 1, "data": {"dx": 1, "dy": 0}}))
    async with asyncio.timeout(5):
        while (await recv_until(ws, "state"))["ack"] != 1:
            pass
    await ws.close()


async def test_oversized_frame_closes_1009(shared: LocalCluster, token: str) -> None:
    ws, _ = await join_owner(shared, "r-big", token)
    await ws.send(b"\x00" * (64 * 1024))
    assert await close_code(ws) == 1009


async def test_unknown_subprotocol_is_refused_at_handshake(shared: LocalCluster) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await open_ws(shared.info.ws_urls[0], subprotocols=[Subprotocol("chat")])
    assert refused.value.response.status_code == 400


async def test_sequence_rules(shared: LocalCluster, token: str) -> None:
    ws, _ = await join_owner(shared, "r-seq", token)
    for seq in (1, 2, 2, 1, 3):  # duplicates are dropped silently
        await ws.send(msgpack.packb({"t": "input", "seq": seq, "data": {"dx": 1, "dy": 0}}))
    for seq in (5, 6):  # 4 is missing: refused, one error for the burst
        await ws.send(msgpack.packb({"t": "input", "seq": seq, "data": {"dx": 1, "dy": 0}}))
    error = await recv_until(ws, "error")
    assert (error["code"], error["seq"], error["expected"]) == ("sequence_gap", 5, 4)
    async with asyncio.timeout(5):
        while True:
            state = await recv_until(ws, "state")
            if state["ack"] == 3:
                break
    mine = [p for p in state["state"]["players"].values() if p["name"] == "tester"]
    assert [p["inputs"] for p in mine] == [3]
    await ws.send(msgpack.packb({"t": "ping", "id": 7}))
    pong = await recv_until(ws, "pong")
    assert pong["id"] == 7 and pong["tick"] >= state["tick"]
    await ws.close()


# -- placement ----------------------------------------------------------------------------------


async def test_non_owner_redirects_to_owner(shared: LocalCluster, token: str) -> None:
    ws, welcome = await join_owner(shared, "r-redirect", token)
    owner_id = welcome["server"]
    other = next(s for s in shared.servers.values() if not owner_id.startswith(s.name + "-"))
    second = await open_ws(other.ws_url, await guest_token(shared))
    await second.send(msgpack.packb({"t": "join", "room": "r-redirect"}))
    redirect = await recv(second)
    assert redirect["t"] == "redirect" and redirect["server"] == owner_id
    owner = next(s for s in shared.servers.values() if owner_id.startswith(s.name + "-"))
    assert redirect["url"].startswith(owner.ws_url)
    assert await close_code(second) == CloseCode.REDIRECT
    await ws.close()


async def test_many_rooms_spread_over_both_servers(shared: LocalCluster) -> None:
    summary = await run_bots(shared.info, "spread", count=24, seconds=2, rate=10, rooms_of=2)
    assert summary["failed_players"] == 0, summary
    assert summary["lost_acked_inputs"] == summary["duplicate_inputs"] == summary["rollbacks"] == 0
    assert summary["inputs_acked"] == summary["inputs_sent"] > 0
    spread: dict[str, int] = {}
    total: dict[str, int] = {}
    for server in shared.servers.values():
        with urllib.request.urlopen(f"{server.admin_url}/status", timeout=5) as response:
            status = orjson.loads(response.read())
        spread[server.name] = sum(1 for r in status["room_list"] if r["room"].startswith("spread-"))
        total[server.name] = len(status["room_list"])
    assert sum(spread.values()) == 12
    # Least-loaded placement: new rooms evened out the load left by earlier tests. The
    # loads are counted in Redis, but each server resets its own to what it runs at every
    # heartbeat, which forgets placements whose client is still on its way: on a machine
    # whose cores are busy the rooms end up within 4 of each other, not exactly even.
    assert min(spread.values()) >= 3, (spread, total)
    assert max(total.values()) - min(total.values()) <= 4, (
        spread,
        total,
    )


# -- per-room stats in the registry ---------------------------------------------------------


async def test_room_stats_in_the_registry_entry(shared: LocalCluster) -> None:
    """The owner's sr:servers entry carries the room's tick, players, mean tick time,
    state size (the last checkpoint) and inputs per second, sampled at each heartbeat."""
    auth = AuthClient(shared.auth_url)
    token = (await auth.guest("stats")).access_token
    await auth.aclose()
    rdb = redis_async.Redis.from_url(shared.redis_url, socket_timeout=2)
    stats: dict[str, Any] = {}
    try:
        async with RoomClient(shared.info.ws_urls, "stats-room", token) as client:

            async def sampled() -> bool:
                nonlocal stats
                client.send_input({"dx": 1, "dy": 0})
                entries = await rdb.hgetall("sr:servers")
                for raw in entries.values():
                    entry = orjson.loads(raw)
                    if "stats-room" in entry.get("room_stats", {}):
                        stats = entry["room_stats"]["stats-room"]
                        return bool(stats["inputs_per_s"] > 0 and stats["state_bytes"] > 0)
                return False

            async with asyncio.timeout(15):
                while not await sampled():
                    await asyncio.sleep(0.05)
            tick = client.stats.last_tick
    finally:
        await rdb.aclose()
    assert set(stats) == {"tick", "players", "tick_ms", "state_bytes", "inputs_per_s"}
    assert stats["players"] == 1
    assert 0 < stats["tick"] <= tick + 20  # sampled a heartbeat (0.25 s) ago at most
    assert 0 < stats["tick_ms"] < 50  # the tick's own time, well under its 50 ms period
    assert 0 < stats["inputs_per_s"] <= 40  # this client sends one per 50 ms at most
    assert 100 < stats["state_bytes"] < 10_000  # one arena player, packed


def test_room_stats_stay_small_with_1000_rooms() -> None:
    """Every peer's watcher reads the whole registry each poll: at 1000 rooms the entry
    lists the ROOM_STATS_CAP busiest rooms only, about 20 KB."""
    stats = {
        f"room-{i:04d}": {
            "tick": 1_000_000 + i,
            "players": i % 17,
            "tick_ms": 0.123,
            "state_bytes": 12_345,
            "inputs_per_s": 321.5,
        }
        for i in range(1000)
    }
    capped = capped_room_stats(stats)
    assert len(capped) == ROOM_STATS_CAP
    dropped = [s["players"] for name, s in stats.items() if name not in capped]
    assert min(s["players"] for s in capped.values()) >= max(dropped)  # the busiest are kept
    assert len(orjson.dumps(capped)) < 25_000
    small = dict(list(stats.items())[:10])
    assert capped_room_stats(small) == small


# -- sessions -----------------------------------------------------------------------------------


async def test_second_connection_replaces_first_and_resumes_seat(
    shared: LocalCluster, token: str
) -> None:
    first, welcome = await join_owner(shared, "r-replace", token)
    assert welcome["resumed"] is False
    await first.send(msgpack.packb({"t": "input", "seq": 1, "data": {"dx": 0, "dy": 1}}))
    while (await recv_until(first, "state"))["ack"] != 1:
        pass
    second, again = await join_owner(shared, "r-replace", token)
    assert again["resumed"] is True and again["ack"] == 1
    assert again["player_id"] == welcome["player_id"]
    assert await close_code(first) == CloseCode.REPLACED
    await second.close()


async def test_leave_frees_the_seat_at_once(shared: LocalCluster, token: str) -> None:
    watcher_token = await guest_token(shared, "watcher")
    watcher, _ = await join_owner(shared, "r-leave", watcher_token)
    leaver, welcome = await join_owner(shared, "r-leave", token)
    await leaver.send(msgpack.packb({"t": "leave"}))
    assert await close_code(leaver) == 1000
    async with asyncio.timeout(5):
        while welcome["player_id"] in (await recv_until(watcher, "state"))["state"]["players"]:
            pass
    await watcher.close()


# -- hardening ----------------------------------------------------------------------------------


async def test_input_flood_is_limited_then_closed(shared: LocalCluster, token: str) -> None:
    ws, _ = await join_owner(shared, "r-flood", token)
    frames = [
        msgpack.packb({"t": "input", "seq": seq, "data": {"dx": 1, "dy": 0}})
        for seq in range(1, 3001)
    ]
    with contextlib.suppress(ConnectionClosed):
        for frame in frames:
            await ws.send(frame)
    assert await close_code(ws) == CloseCode.RATE_LIMITED


async def test_moderate_excess_is_dropped_with_an_error(shared: LocalCluster, token: str) -> None:
    ws, _ = await join_owner(shared, "r-excess", token)
    for seq in range(1, 121):  # three times the burst of 40, at once
        await ws.send(msgpack.packb({"t": "input", "seq": seq, "data": {"dx": 1, "dy": 0}}))
    errors: set[str] = set()
    acks: list[int] = []
    async with asyncio.timeout(5):
        while len(acks) < 10 or "rate_limited" not in errors:
            message = await recv(ws)
            if message["t"] == "error":
                errors.add(message["code"])
            elif message["t"] == "state":
                acks.append(message["ack"])
    # Over the burst: rate_limited (dropped before decoding); over 32 pending in one tick:
    # queue_full; what follows a dropped input: sequence_gap.
    assert "rate_limited" in errors
    assert errors <= {"rate_limited", "queue_full", "sequence_gap"}
    applied = acks[-1]
    assert 32 <= applied < 120 and acks == sorted(acks)
    assert ws.close_code is None  # still connected, still playing
    # Later seqs stay refused until the first dropped one is resent, then it is applied.
    # (Resent each tick, as a client does: the bucket may still be empty from the burst.)
    async with asyncio.timeout(8):
        while True:
            await ws.send(msgpack.packb({"t": "input", "seq": 121, "data": {"dx": 1, "dy": 0}}))
            await ws.send(
                msgpack.packb({"t": "input", "seq": applied + 1, "data": {"dx": 1, "dy": 0}})
            )
            state = await recv_until(ws, "state")
            assert state["ack"] in (applied, applied + 1)
            if state["ack"] == applied + 1:
                break
    await ws.close()


async def open_unread_socket(url: str, token: str) -> ClientConnection:
    """A WebSocket on a socket with a tiny receive buffer, for a client that won't read."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    return await connect(
        url,
        sock=sock,
        subprotocols=MSGPACK,
        additional_headers={"Authorization": f"Bearer {token}"},
        max_size=None,
        max_queue=1,
        ping_interval=None,
    )


async def test_slow_reader_is_evicted_and_others_keep_the_tick_rate(
    processes: Processes, tmp_path: Path
) -> None:
    local = start_cluster(
        processes, tmp_path, servers=1, extra=("--outbox-bytes", "16384", "--socket-sndbuf", "8192")
    )
    room = "r-slow"
    try:
        fast = RoomClient(local.info.ws_urls, room, await guest_token(local, "fast"))
        await fast.connect()
        slow = await open_unread_socket(local.info.ws_urls[0], await guest_token(local, "slow"))
        await slow.send(msgpack.packb({"t": "join", "room": room}))
        assert (await recv(slow))["t"] == "welcome"
        slow.transport.pause_reading()  # never read again: the buffers fill up
        server = next(iter(local.servers.values()))
        evicted_line = 'stateroom_evicted_clients_total{reason="slow_consumer"} 1.0'

        def evicted() -> bool:
            with urllib.request.urlopen(f"{server.admin_url}/metrics", timeout=5) as response:
                return evicted_line in response.read().decode()

        started = time.monotonic()
        ticks: list[int] = []
        async with asyncio.timeout(40):
            while not ticks or ticks[-1] % 20 or not await asyncio.to_thread(evicted):
                ticks.append((await fast.next_state()).tick)
        elapsed = time.monotonic() - started
        assert len(ticks) / elapsed > 15, (len(ticks), elapsed)  # the others kept the tick rate
        assert ticks == sorted(set(ticks))
        slow.transport.resume_reading()
        assert await close_code(slow, within=10) == CloseCode.SLOW_CONSUMER
        await fast.close()
    finally:
        processes.stop_all()
        local.redis.stop()


# -- HTTP probes ----------------------------------------------------------------------------------


def test_http_probes(shared: LocalCluster) -> None:
    """The player port serves only WebSocket and the probes; /status and /metrics are on
    the admin listener."""
    server = next(iter(shared.servers.values()))
    for base, path, needle in (
        (server.http_url, "/healthz", b"ok"),
        (server.http_url, "/readyz", b"ready"),
        (server.admin_url, "/metrics", b"stateroom_rooms"),
        (server.admin_url, "/status", b"room_list"),
        (server.admin_url, "/readyz", b"ready"),
    ):
        with urllib.request.urlopen(base + path, timeout=5) as response:
            assert response.status == 200
            assert needle in response.read()
    for base, path in (
        (server.http_url, "/nope"),
        (server.http_url, "/metrics"),
        (server.http_url, "/status"),
        (server.admin_url, "/nope"),
    ):
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(base + path, timeout=5)
        assert missing.value.code == 404, (base, path)
        missing.value.close()


async def test_origin_allow_list(processes: Processes, tmp_path: Path) -> None:
    local = start_cluster(
        processes, tmp_path, servers=1, extra=("--origins", "https://game.example")
    )
    try:
        url = local.info.ws_urls[0]
        with pytest.raises(InvalidStatus) as refused:
            await open_ws(url, origin=websockets.Origin("https://evil.example"))
        assert refused.value.response.status_code == 403
        ws = await open_ws(url, origin=websockets.Origin("https://game.example"))
        await ws.close()
    finally:
        processes.stop_all()
        local.redis.stop()
