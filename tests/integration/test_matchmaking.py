"""Listing, quick-join and private rooms end to end: the login service's stateless API
over the directory that real room servers publish."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgpack
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from client.sdk import AuthClient
from tests.cluster import LocalCluster, cluster_for
from tests.integration.test_room_server import open_ws, recv

V2 = [Subprotocol("stateroom.v2.msgpack")]


@pytest.fixture(scope="module")
def mm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with cluster_for(
        tmp_path_factory.mktemp("matchmaking"), extra=("--games", "tests.games:Cards")
    ) as local:
        yield local


async def guest(cluster: LocalCluster, name: str) -> str:
    auth = AuthClient(cluster.auth_url)
    try:
        return (await auth.guest(name)).access_token
    finally:
        await auth.aclose()


async def api(
    cluster: LocalCluster, token: str, method: str, path: str, **kwargs: Any
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=cluster.auth_url, timeout=5) as http:
        return await http.request(
            method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs
        )


async def join(
    cluster: LocalCluster, token: str, room: str, **fields: Any
) -> tuple[ClientConnection, dict[str, Any]]:
    """Join (following one redirect), protocol v2."""
    url = cluster.info.ws_urls[0]
    for _ in range(2):
        ws = await open_ws(url, token, subprotocols=V2)
        await ws.send(msgpack.packb({"t": "join", "v": 2, "room": room, **fields}))
        reply = await recv(ws)
        if reply["t"] != "redirect":
            return ws, reply
        await ws.close()
        url = reply["url"]
    raise AssertionError("redirected twice")


async def wait_listing(
    cluster: LocalCluster, token: str, game: str, check: Any, within: float = 5
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + within
    while True:
        response = await api(cluster, token, "GET", "/v1/rooms", params={"game": game})
        assert response.status_code == 200, response.text
        rooms: list[dict[str, Any]] = response.json()["rooms"]
        if check(rooms):
            return rooms
        assert time.monotonic() < deadline, rooms
        await asyncio.sleep(0.1)


async def test_quick_join_fills_a_room_and_the_listing_follows(mm: LocalCluster) -> None:
    tokens = [await guest(mm, f"q{i}") for i in range(5)]
    sockets = []
    rooms = set()
    for token in tokens[:4]:
        response = await api(
            mm, token, "POST", "/v1/rooms/quick-join", json={"game": "cards", "options": {}}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        rooms.add(body["room"])
        ws, welcome = await join(
            mm, token, body["room"], game="cards", options={**body["options"], "max_players": 4}
        )
        assert welcome["t"] == "welcome", welcome
        sockets.append(ws)
    assert len(rooms) == 1  # four players, one room
    (room,) = rooms
    listed = await wait_listing(
        mm, tokens[0], "cards", lambda rs: any(r["room"] == room and r["players"] == 4 for r in rs)
    )
    entry = next(r for r in listed if r["room"] == room)
    assert entry["max_players"] == 4 and entry["joinable"] is True
    fifth = await api(mm, tokens[4], "POST", "/v1/rooms/quick-join", json={"game": "cards"})
    assert fifth.json()["room"] != room  # the full room is not offered
    for ws in sockets:
        await ws.send(msgpack.packb({"t": "leave"}))
        await ws.close()
    closed_at = time.monotonic()
    await wait_listing(mm, tokens[0], "cards", lambda rs: all(r["room"] != room for r in rs))
    assert time.monotonic() - closed_at < 3  # gone about a second after it closed


async def test_a_private_room_is_joined_by_code_and_never_listed(mm: LocalCluster) -> None:
    host, friend = await guest(mm, "host"), await guest(mm, "friend")
    made = await api(mm, host, "POST", "/v1/rooms/private", json={"game": "cards", "options": {}})
    assert made.status_code == 201, made.text
    code, room = made.json()["code"], made.json()["room"]
    ws, welcome = await join(mm, host, room, game="cards", options={"private": False})
    assert welcome["t"] == "welcome"
    assert welcome["options"].get("private") is True  # the API's word, not the client's
    found = await api(mm, friend, "GET", f"/v1/rooms/private/{code}")
    assert found.status_code == 200 and found.json()["room"] == room
    other, welcome2 = await join(mm, friend, found.json()["room"])
    assert welcome2["t"] == "welcome"

    async def running() -> bool:
        response = await api(mm, friend, "GET", f"/v1/rooms/private/{code}")
        return bool(response.json().get("running"))

    deadline = time.monotonic() + 5
    while not await running():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    listed = await api(mm, friend, "GET", "/v1/rooms", params={"game": "cards"})
    assert all(r["room"] != room for r in listed.json()["rooms"])
    missing = await api(mm, friend, "GET", "/v1/rooms/private/ZZZZZZ")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_code"
    for sock in (ws, other):
        await sock.close()


async def test_the_api_knows_the_games_the_servers_run(mm: LocalCluster) -> None:
    token = await guest(mm, "games")
    unknown = await api(mm, token, "POST", "/v1/rooms/quick-join", json={"game": "chess"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_game"
    arena = await api(mm, token, "POST", "/v1/rooms/quick-join", json={"game": "arena"})
    assert arena.status_code == 200, arena.text
    bad = await api(
        mm, token, "POST", "/v1/rooms/quick-join", json={"game": "arena", "options": {"x": [1]}}
    )
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_options"
