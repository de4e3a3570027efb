"""Edges the chaos run and the outside client found: what a room server says before it
has the login service's keys, how fast a fresh server takes a dead owner's rooms, and
what the docs promise about joins (game names, the first state after welcome, Origin).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import redis.asyncio as aioredis
import websockets

from auth.keys import Keyring, ensure_key_file
from auth.tokens import TokenIssuer
from client.sdk import AuthClient, RoomClient
from infra.embedded_redis import EmbeddedRedis
from infra.ports import free_port
from server.protocol import CloseCode
from server.store import RoomStore
from tests.cluster import FAST_SERVER_FLAGS, LocalCluster, start_cluster
from tests.integration.faults import owner, wait_for
from tests.integration.test_room_server import close_code, open_ws, recv
from tests.support import Processes

pytestmark = pytest.mark.slow


async def test_a_server_without_keys_says_retry_then_serves(
    processes: Processes, tmp_path: Path
) -> None:
    """Before the login service answers, a valid token gets unavailable + 4020 (retry),
    never 4001; once it answers, the same token is accepted."""
    valkey = EmbeddedRedis(tmp_path / "redis").start()
    try:
        key = tmp_path / "auth-key.pem"
        ensure_key_file(key)
        token = TokenIssuer(Keyring(key), issuer="stateroom", audience="stateroom", ttl=600).issue(
            "p1", "early"
        )
        auth_port, port = free_port(), free_port()
        auth_url = f"http://127.0.0.1:{auth_port}"
        processes.start_stateroom(
            [
                *("server", "--port", str(port), "--auth-url", auth_url),
                *("--redis-url", valkey.url, *FAST_SERVER_FLAGS),
            ],
            "s1",
            ready_url=f"http://127.0.0.1:{port}/readyz",
        )
        url = f"ws://127.0.0.1:{port}/v1/ws"
        ws = await open_ws(url, token)
        await ws.send(msgpack.packb({"t": "join", "room": "early"}))
        error = await recv(ws)
        assert error["code"] == "unavailable", error
        assert await close_code(ws) == CloseCode.RECONNECT
        processes.start_stateroom(
            ["auth", "--port", str(auth_port), "--redis", valkey.url, "--key", str(key)],
            "auth",
            ready_url=f"{auth_url}/healthz",
        )
        deadline = time.monotonic() + 5  # the server keeps fetching: within about 1 s
        while True:
            ws = await open_ws(url, token)
            await ws.send(msgpack.packb({"t": "join", "room": "early"}))
            reply = await recv(ws)
            if reply["t"] == "welcome":
                await ws.close()
                break
            assert reply["code"] == "unavailable", reply
            await ws.close()
            assert time.monotonic() < deadline, "the server never fetched the keys"
            await asyncio.sleep(0.1)
    finally:
        processes.stop_all()
        valkey.stop()


async def test_a_fresh_server_takes_a_dead_owners_room_without_waiting(
    processes: Processes, tmp_path: Path
) -> None:
    """Redis has been up for a while: a server started after the owner died judges it
    dead at once, not after the 1.5 s liveness grace."""
    local = start_cluster(processes, tmp_path, servers=1, extra=("--liveness-grace-ms", "1500"))
    redis = aioredis.Redis.from_url(local.redis_url)
    store = RoomStore(redis)
    try:
        auth = AuthClient(local.auth_url)
        token = (await auth.guest("orphan")).access_token
        await auth.aclose()
        async with RoomClient(local.info.ws_urls, "orphaned", token) as room:
            room.send_input({"dx": 1, "dy": 0})
            while room.unacked:
                await room.next_state(timeout=5)
        await asyncio.sleep(1.6)  # Redis has now been up longer than the grace
        before = await owner(store, "orphaned")
        assert before is not None
        local.kill("s1")
        started = time.monotonic()
        local.add_server("s2", ("--liveness-grace-ms", "1500"))
        ready = time.monotonic()

        async def taken() -> bool:
            lease = await owner(store, "orphaned")
            return lease is not None and lease.epoch > before.epoch

        await wait_for(taken, 10, "the fresh server to take the room")
        claimed = time.monotonic()
        print(f"fresh server ready after {ready - started:.2f} s, claimed {claimed - ready:.2f} s")
        assert claimed - ready < 1.0, claimed - ready
    finally:
        await redis.aclose()
        processes.stop_all()
        local.redis.stop()


@pytest.fixture
def two_games(processes: Processes, tmp_path: Path) -> Iterator[LocalCluster]:
    local = start_cluster(processes, tmp_path, servers=1, extra=("--games", "tests.games:Counter"))
    try:
        yield local
    finally:
        processes.stop_all()
        local.redis.stop()


async def test_join_game_must_match_an_existing_rooms_game(two_games: LocalCluster) -> None:
    auth = AuthClient(two_games.auth_url)
    try:
        creator = (await auth.guest("maker")).access_token
        joiner = (await auth.guest("other")).access_token
    finally:
        await auth.aclose()
    url = two_games.info.ws_urls[0]
    maker = await open_ws(url, creator)
    await maker.send(msgpack.packb({"t": "join", "room": "counting", "game": "counter"}))
    assert (await recv(maker))["game"] == "counter"
    wrong = await open_ws(url, joiner)
    await wrong.send(msgpack.packb({"t": "join", "room": "counting", "game": "arena"}))
    error = await recv(wrong)
    assert error["code"] == "unknown_game" and "counter" in error["message"]
    assert await close_code(wrong) == CloseCode.INVALID_ROOM
    fine = await open_ws(url, joiner)  # without a game: whatever the room runs
    await fine.send(msgpack.packb({"t": "join", "room": "counting"}))
    assert (await recv(fine))["game"] == "counter"
    for ws in (maker, fine):
        await ws.close()


async def test_the_first_state_after_welcome_is_later_and_includes_you(
    two_games: LocalCluster,
) -> None:
    auth = AuthClient(two_games.auth_url)
    try:
        tokens = [(await auth.guest(f"p{i}")).access_token for i in range(8)]
    finally:
        await auth.aclose()
    url = two_games.info.ws_urls[0]
    for index, token in enumerate(tokens):  # joins land at every point of the tick
        ws = await open_ws(url, token)
        await ws.send(msgpack.packb({"t": "join", "room": "first-state", "game": "counter"}))
        welcome = await recv(ws)
        assert welcome["t"] == "welcome", welcome
        state = await recv(ws)
        while state["t"] != "state":
            state = await recv(ws)
        assert state["tick"] > welcome["tick"], (welcome, state)
        assert welcome["player_id"] in state["state"]["counts"], (index, welcome, state)
        await ws.close()
        await asyncio.sleep(0.013 * index)


async def test_with_an_origin_list_clients_without_origin_are_accepted(
    processes: Processes, tmp_path: Path
) -> None:
    local = start_cluster(
        processes, tmp_path, servers=1, extra=("--origins", "https://game.example")
    )
    try:
        auth = AuthClient(local.auth_url)
        try:
            token = (await auth.guest("native")).access_token
        finally:
            await auth.aclose()
        native = await websockets.connect(
            local.info.ws_urls[0], additional_headers={"Authorization": f"Bearer {token}"}
        )
        await native.send(msgpack.packb({"t": "join", "room": "no-origin"}))
        assert (await recv(native))["t"] == "welcome"
        await native.close()
    finally:
        processes.stop_all()
        local.redis.stop()
