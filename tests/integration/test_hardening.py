"""Issue 7's attacks and bad inputs against real processes: each gets its documented
answer, and nothing else is disturbed.

One cluster serves the module, with the production defaults of every budget (the
general test cluster lifts the per-address ones), short access tokens and a short
leeway so that expiry can be watched within seconds.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import pytest_asyncio
import redis
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from client.sdk import AuthClient, RoomClient, Tokens
from infra.embedded_redis import EmbeddedRedis
from infra.ports import free_port
from server.protocol import CloseCode
from server.store import ROOMS_KEY, RoomStore
from tests.cluster import LocalCluster, cluster_for
from tests.integration.test_room_server import close_code, open_ws, recv, recv_until
from tests.support import STATEROOM

JSON = [Subprotocol("stateroom.v1.json")]
LEEWAY_S = 1.0
ACCESS_TTL_S = 3
DEFAULT_BUDGETS = (
    "--rooms-per-address-per-minute", "60",
    "--connections-per-address", "256",
    "--pending-per-address", "16",
)  # fmt: skip


@pytest.fixture(scope="module")
def hard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with cluster_for(
        tmp_path_factory.mktemp("hardening"),
        extra=(
            *DEFAULT_BUDGETS,
            *("--token-leeway-s", str(LEEWAY_S), "--revocation-check-s", "0.5"),
        ),
        auth_extra=("--access-ttl", str(ACCESS_TTL_S)),
    ) as local:
        yield local


@pytest_asyncio.fixture
async def auth(hard: LocalCluster) -> AsyncIterator[AuthClient]:
    client = AuthClient(hard.auth_url)
    try:
        yield client
    finally:
        await client.aclose()


async def join(url: str, token: str, room: str, **kwargs: Any) -> ClientConnection:
    ws = await open_ws(url, token, **kwargs)
    await ws.send(msgpack.packb({"t": "join", "room": room}))
    return ws


async def live_rooms(local: LocalCluster) -> set[str]:
    redis = aioredis.Redis.from_url(local.redis_url)
    try:
        return {k.decode() for k in await redis.hkeys(ROOMS_KEY)}
    finally:
        await redis.aclose()


# -- room creation is a budget --------------------------------------------------------------


async def test_one_guest_flooding_room_creation_keeps_at_most_its_quota(
    hard: LocalCluster, auth: AuthClient
) -> None:
    token = (await auth.guest("flood")).access_token
    urls = hard.info.ws_urls
    outcomes: dict[str, int] = {}

    async def create_and_leave(index: int) -> None:
        ws = await join(urls[index % 2], token, f"flood-{index}")
        try:
            first = await recv(ws)
            if first["t"] == "redirect":  # placement chose the other server
                await ws.close()
                ws = await join(first["url"], token, f"flood-{index}")
                first = await recv(ws)
            kind = first["t"] if first["t"] != "error" else first["code"]
            outcomes[kind] = outcomes.get(kind, 0) + 1
            if first["t"] == "welcome":
                await ws.send(msgpack.packb({"t": "leave"}))
        finally:
            await ws.close()

    for batch in range(10):  # 100 attempts, 10 at a time
        await asyncio.gather(*(create_and_leave(batch * 10 + i) for i in range(10)))
    assert outcomes.get("room_quota", 0) >= 90, outcomes
    assert outcomes.get("welcome", 0) <= 10, outcomes  # 3 live at a time, 10 a minute
    flood_rooms = {r for r in await live_rooms(hard) if r.startswith("flood-")}
    await asyncio.sleep(3)
    left = {r for r in await live_rooms(hard) if r.startswith("flood-")}
    assert len(left) <= 3, (flood_rooms, left)

    # The cluster stays healthy: another player plays at the full tick rate.
    other = (await auth.guest("bystander")).access_token
    async with RoomClient(urls, "after-flood", other) as room:
        room.send_input({"dx": 1, "dy": 0})
        started = time.monotonic()
        ticks = [(await room.next_state(timeout=5)).tick for _ in range(20)]
        assert ticks == sorted(set(ticks))
        assert time.monotonic() - started < 2.0


async def test_a_quota_refusal_is_4011_with_its_code(hard: LocalCluster, auth: AuthClient) -> None:
    token = (await auth.guest("greedy")).access_token
    sockets = []
    try:
        for index in range(3):  # three live rooms: the quota
            ws = await join(hard.info.ws_urls[0], token, f"greedy-{index}-x")
            message = await recv(ws)
            if message["t"] == "redirect":
                ws = await join(message["url"], token, f"greedy-{index}-x")
                message = await recv(ws)
            assert message["t"] == "welcome", message
            sockets.append(ws)
        refused = await join(hard.info.ws_urls[1], token, "greedy-4-x")
        error = await recv(refused)
        if error["t"] == "redirect":
            refused = await join(error["url"], token, "greedy-4-x")
            error = await recv(refused)
        assert error["code"] == "room_quota", error
        assert await close_code(refused) == CloseCode.QUOTA_EXCEEDED
    finally:
        for ws in sockets:
            await ws.close()


async def test_a_closed_room_is_never_claimed_again(hard: LocalCluster, auth: AuthClient) -> None:
    token = (await auth.guest("closer")).access_token
    async with RoomClient(hard.info.ws_urls, "closes-fast", token) as room:
        await room.next_state(timeout=5)
        await room.leave()
    store = RoomStore(aioredis.Redis.from_url(hard.redis_url))
    try:
        deadline = time.monotonic() + 3
        while "closes-fast" in await live_rooms(hard):
            assert time.monotonic() < deadline, "an unplayed room outlived 3 s"
            await asyncio.sleep(0.05)
        for _ in range(20):  # a second of watcher polls on both servers
            assert await store.owner("closes-fast") is None
            assert not await store.meta("closes-fast")
            await asyncio.sleep(0.05)
    finally:
        await store.redis.aclose()


async def test_the_placed_hint_is_checked_against_placement(
    hard: LocalCluster, auth: AuthClient
) -> None:
    token = (await auth.guest("placer")).access_token
    store = RoomStore(aioredis.Redis.from_url(hard.redis_url))
    try:
        servers = await store.servers()
        by_name = {info["name"]: sid for sid, info in servers.items()}
        await store.place("hinted", [by_name["s2"]], max_rooms=1000)  # placement chose s2
        ws = await join(hard.servers["s1"].ws_url + "?placed=1", token, "hinted")
        message = await recv(ws)
        assert message["t"] == "redirect", message  # s1 does not take the client's word
        assert message["server"] == by_name["s2"]
        assert message["url"] == servers[by_name["s2"]]["ws_url"] + "?placed=1"
        await ws.close()
    finally:
        await store.redis.aclose()


# -- budgets across connections -------------------------------------------------------------


async def test_connections_that_never_join_are_capped_per_address(hard: LocalCluster) -> None:
    url = hard.info.ws_urls[0]
    opened: list[ClientConnection] = []
    refused = 0
    try:
        for _ in range(40):
            try:
                opened.append(await open_ws(url))
            except InvalidStatus as exc:
                assert exc.response.status_code == 429
                assert b"connection_quota" in exc.response.body
                refused += 1
        assert len(opened) == 16 and refused == 24
    finally:
        for ws in opened:
            await ws.close()
    await asyncio.sleep(0.2)
    ws = await open_ws(url)  # the budget is given back when they close
    await ws.close()


async def test_sessions_per_player_are_capped(hard: LocalCluster, auth: AuthClient) -> None:
    tokens = [(await auth.guest(f"maker{i}")).access_token for i in range(5)]
    rooms = [f"multi-{i}" for i in range(5)]
    player = (await auth.guest("everywhere")).access_token
    makers = [RoomClient(hard.info.ws_urls, r, t) for r, t in zip(rooms, tokens, strict=True)]
    joined: list[RoomClient] = []
    try:
        for maker in makers:
            await maker.connect()
        for room in rooms[:4]:
            client = RoomClient(hard.info.ws_urls, room, player)
            await client.connect()
            joined.append(client)
        ws = await join(hard.info.ws_urls[0], player, rooms[4])
        message = await recv(ws)
        if message["t"] == "redirect":
            ws = await join(message["url"], player, rooms[4])
            message = await recv(ws)
        assert message.get("code") == "connection_quota", message
        assert await close_code(ws) == CloseCode.QUOTA_EXCEEDED
    finally:
        for client in [*joined, *makers]:
            await client.close()


async def test_after_join_a_frame_holds_an_input_not_more(
    hard: LocalCluster, auth: AuthClient
) -> None:
    token = (await auth.guest("big")).access_token
    ws = await join(hard.info.ws_urls[0], token, "frames")
    welcome = await recv(ws)
    if welcome["t"] == "redirect":
        ws = await join(welcome["url"], token, "frames")
        welcome = await recv(ws)
    assert welcome["t"] == "welcome"
    await ws.send(msgpack.packb({"t": "input", "seq": 1, "data": {"dx": 1, "pad": "x" * 300}}))
    error = await recv_until(ws, "error")
    assert error["code"] == "illegal_input" and error["seq"] == 1
    await ws.send(msgpack.packb({"t": "input", "seq": 1, "data": {"dx": 1, "dy": 0}}))
    state = await recv_until(ws, "state")
    while state["ack"] < 1:
        state = await recv_until(ws, "state")
    await ws.send(msgpack.packb({"t": "input", "seq": 2, "data": "x" * 6000}))
    assert await close_code(ws) == 1009


# -- a session follows its token --------------------------------------------------------


async def test_a_session_is_closed_when_its_token_expires(
    hard: LocalCluster, auth: AuthClient
) -> None:
    tokens = await auth.guest("expiring")
    ws = await join(hard.info.ws_urls[0], tokens.access_token, "expiry")
    welcome = await recv(ws)
    if welcome["t"] == "redirect":
        ws = await join(welcome["url"], tokens.access_token, "expiry")
        welcome = await recv(ws)
    assert welcome["t"] == "welcome"
    exp = welcome["token_exp"]
    error = await recv_until(ws, "error", within=ACCESS_TTL_S + LEEWAY_S + 5)
    assert error["code"] == "token_expired"
    assert await close_code(ws) == CloseCode.UNAUTHORIZED
    closed_at = time.time()
    assert exp + LEEWAY_S - 0.5 <= closed_at <= exp + LEEWAY_S + 2, (exp, closed_at)


async def test_a_fresh_token_keeps_the_session_going(hard: LocalCluster, auth: AuthClient) -> None:
    tokens = await auth.guest("renewing")
    ws = await join(hard.info.ws_urls[0], tokens.access_token, "renewal")
    welcome = await recv(ws)
    if welcome["t"] == "redirect":
        ws = await join(welcome["url"], tokens.access_token, "renewal")
        welcome = await recv(ws)
    deadline = welcome["token_exp"] + LEEWAY_S
    for _ in range(2):  # renew twice, each time before the deadline
        await asyncio.sleep(max(0.0, deadline - time.time() - 1.5))
        tokens = await auth.refresh(tokens)
        await ws.send(msgpack.packb({"t": "auth", "token": tokens.access_token}))
        authed = await recv_until(ws, "authed")
        assert authed["token_exp"] > deadline - LEEWAY_S
        deadline = authed["token_exp"] + LEEWAY_S
    state = await recv_until(ws, "state")  # still playing past the first token's end
    assert state["t"] == "state" and time.time() > welcome["token_exp"] + LEEWAY_S
    other = (await auth.guest("someone-else")).access_token
    await ws.send(msgpack.packb({"t": "auth", "token": other}))
    error = await recv_until(ws, "error")
    assert error["code"] == "unauthorized"
    assert await close_code(ws) == CloseCode.UNAUTHORIZED


async def test_the_sdk_renews_its_token_by_itself(hard: LocalCluster, auth: AuthClient) -> None:
    tokens = await auth.guest("sdk-renews")
    async with RoomClient(hard.info.ws_urls, "sdk-renewal", auth.token_source(tokens)) as room:
        # Past the first token's end (the SDK renews at most every 5 s, so one renewal
        # is what fits in a 3 s token's life).
        end = time.monotonic() + ACCESS_TTL_S + LEEWAY_S + 0.5
        seq = 0
        while time.monotonic() < end:
            seq = room.send_input({"dx": 1, "dy": 0})
            await room.next_state(timeout=3)
        while room.unacked:
            await room.next_state(timeout=3)
        assert room.stats.inputs_acked == seq
        assert room.stats.reconnects == 0  # never closed for an expired token


async def test_logout_ends_the_live_session(hard: LocalCluster, auth: AuthClient) -> None:
    tokens: Tokens = await auth.guest("leaver")
    ws = await join(hard.info.ws_urls[0], tokens.access_token, "logout")
    welcome = await recv(ws)
    if welcome["t"] == "redirect":
        url = welcome["url"]
        ws = await join(url, tokens.access_token, "logout")
        welcome = await recv(ws)
    else:
        url = hard.info.ws_urls[0]
    assert welcome["t"] == "welcome"
    await auth.logout(tokens)
    logged_out = time.monotonic()
    error = await recv_until(ws, "error", within=3)
    assert error["code"] == "session_revoked"
    assert await close_code(ws) == CloseCode.UNAUTHORIZED
    assert time.monotonic() - logged_out < 1.5  # the check runs every 0.5 s here
    again = await join(url, tokens.access_token, "logout")  # the token is still unexpired
    refused = await recv(again)
    assert refused["code"] == "session_revoked"
    assert await close_code(again) == CloseCode.UNAUTHORIZED


# -- protocol edges ---------------------------------------------------------------------------


async def test_invalid_utf8_after_join_closes_1007(hard: LocalCluster, auth: AuthClient) -> None:
    token = (await auth.guest("utf8")).access_token
    ws = await open_ws(hard.info.ws_urls[0], token, subprotocols=JSON)
    await ws.send('{"t":"join","room":"utf8"}')
    welcome = await recv(ws)
    if welcome["t"] == "redirect":
        ws = await open_ws(welcome["url"], token, subprotocols=JSON)
        await ws.send('{"t":"join","room":"utf8"}')
        welcome = await recv(ws)
    assert welcome["t"] == "welcome"
    await ws.send(b'{"t":"ping","id":1,"x":"\xff\xfe"}', text=True)
    assert await close_code(ws) == 1007
    for name in hard.servers:
        assert "Traceback" not in hard.log(name), hard.log(name)[-3000:]


async def test_errors_and_close_reasons_never_echo_client_text(hard: LocalCluster) -> None:
    ws = await open_ws(hard.info.ws_urls[0], subprotocols=JSON)
    await ws.send('{"t":"' + "é" * 3000 + '"}')
    error = await recv(ws)
    assert error["code"] == "unknown_type" and len(error["message"]) < 100
    assert await close_code(ws) == CloseCode.PROTOCOL_ERROR
    assert ws.close_reason is not None and "é" not in ws.close_reason


async def test_the_player_port_serves_no_status_or_metrics(hard: LocalCluster) -> None:
    server = hard.servers["s1"]
    async with httpx.AsyncClient(timeout=5) as http:
        for path in ("/status", "/metrics"):
            assert (await http.get(server.http_url + path)).status_code == 404
            assert (await http.get(server.admin_url + path)).status_code == 200


def test_a_room_server_refuses_a_redis_that_evicts(tmp_path: Path) -> None:
    """Evictions would drop leases and journals silently: refuse to start, clearly."""
    valkey = EmbeddedRedis(tmp_path / "evicting").start()
    try:
        admin = redis.Redis.from_url(valkey.url)
        admin.config_set("maxmemory-policy", "allkeys-lru")
        admin.close()
        result = subprocess.run(
            [
                *STATEROOM,
                *("server", "--port", str(free_port()), "--auth-url", "http://127.0.0.1:9"),
            ],
            env={**os.environ, "STATEROOM_REDIS_URL": valkey.url},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr[-2000:]
        assert "allkeys-lru" in result.stderr and "noeviction" in result.stderr
        assert "Traceback" not in result.stderr
        assert valkey.password not in result.stderr
    finally:
        valkey.stop()
