"""The rooms API (listing, quick-join, private codes) through the real ASGI app, against a
real Valkey populated with ``infra.directory.publish`` as room servers would."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import orjson
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auth.keys import SigningKey
from auth.rooms import CODE_MISSES_PER_MINUTE, PRIVATE_ROOMS_PER_MINUTE
from auth.tokens import TokenIssuer
from infra import directory as d
from infra.directory import Entry
from tests.auth.conftest import AuthUnderTest, MakeAuth
from tests.auth.test_api import assert_error

pytestmark = pytest.mark.timeout(60)

GAMES = [
    {"name": "arena", "max_players": 4, "options": ["mode", "map", "max_players"]},
    {"name": "cards", "max_players": 6},
]


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def register_server(
    r: aioredis.Redis, server_id: str = "s1", games: list[Any] | None = GAMES
) -> None:
    """What a room server's registry entry will hold (server.store.register_server)."""
    info: dict[str, Any] = {"id": server_id, "ws_url": f"ws://{server_id}.test/v1/ws"}
    if games is not None:
        info["games"] = games
    await r.hset(d.SERVERS_KEY, server_id, orjson.dumps(info))


@pytest.fixture
async def auth(make_auth: MakeAuth, r: aioredis.Redis) -> AuthUnderTest:
    await register_server(r)
    made: AuthUnderTest = await make_auth()
    return made


async def bearer(client: httpx.AsyncClient) -> dict[str, str]:
    response = await client.post("/v1/guest")
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


@pytest.fixture
async def h(auth: AuthUnderTest) -> dict[str, str]:
    return await bearer(auth.client)


def room(name: str, players: int = 0, max_players: int = 4, **fields: Any) -> Entry:
    base: dict[str, Any] = {"owner": "s1", "epoch": 1}
    base.update(fields)
    return Entry(room=name, game="arena", players=players, max_players=max_players, **base)


async def directory_keys(r: aioredis.Redis) -> dict[bytes | str, Any]:
    """Every directory key with its content, to prove a refused request wrote nothing."""
    out: dict[bytes | str, Any] = {}
    for key in sorted(await r.keys("sr:dir:*")):
        kind = await r.type(key)
        if kind == b"hash":
            out[key] = await r.hgetall(key)
        elif kind == b"zset":
            out[key] = await r.zrange(key, 0, -1, withscores=True)
        else:
            out[key] = await r.get(key)
    return out


# ---------------------------------------------------------------- tokens


ROUTES = [
    ("GET", "/v1/rooms?game=arena", None),
    ("POST", "/v1/rooms/quick-join", {"game": "arena"}),
    ("POST", "/v1/rooms/private", {"game": "arena"}),
    ("GET", "/v1/rooms/private/ABCDEF", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
async def test_every_route_needs_a_valid_access_token(
    auth: AuthUnderTest, method: str, path: str, body: Any
) -> None:
    client = auth.client
    settings = auth.services.settings

    async def call(headers: dict[str, str]) -> httpx.Response:
        return await client.request(method, path, json=body, headers=headers)

    missing = await call({})
    assert_error(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert_error(await call({"Authorization": "Basic dXNlcjpwYXNz"}), 401, "unauthorized")
    assert_error(await call({"Authorization": "Bearer not-a-jwt"}), 401, "token_malformed")
    assert_error(await call({"Authorization": "Bearer " + "a" * 5000}), 401, "token_too_large")
    expired = TokenIssuer(
        auth.services.keyring, issuer=settings.issuer, audience=settings.audience, ttl=60
    ).issue("g_x", "x", now=time.time() - 3600)
    assert_error(await call({"Authorization": f"Bearer {expired}"}), 401, "token_expired")
    stranger = SigningKey.from_private(Ed25519PrivateKey.generate())
    forged = jwt.encode(
        {"iss": "stateroom", "aud": "stateroom", "sub": "g_x", "iat": int(time.time()),
         "exp": int(time.time()) + 60},
        stranger.private_key,
        algorithm="EdDSA",
        headers={"kid": stranger.kid},
    )  # fmt: skip
    assert_error(await call({"Authorization": f"Bearer {forged}"}), 401, "unknown_key")
    other_audience = TokenIssuer(
        auth.services.keyring, issuer=settings.issuer, audience="elsewhere", ttl=60
    ).issue("g_x", "x")
    assert_error(await call({"Authorization": f"Bearer {other_audience}"}), 401, "token_invalid")
    # a logged-out session's token is refused although it has not expired yet
    guest = (await client.post("/v1/guest")).json()
    await client.post("/v1/logout", json={"refresh_token": guest["refresh_token"]})
    revoked = {"Authorization": f"Bearer {guest['access_token']}"}
    assert_error(await call(revoked), 401, "session_revoked")


# ---------------------------------------------------------------- listing


async def test_listing(auth: AuthUnderTest, h: dict[str, str], r: aioredis.Redis) -> None:
    await d.publish_many(
        r,
        [
            room("ffa", 2, options={"mode": "ffa", "map": "dust"}, metadata={"round": 2}),
            room("ctf", 1, options={"mode": "ctf"}, joinable=False),
            room("secret", 1, options={"mode": "ffa"}, private=True, join_code="ABCDEF"),
            room("closing", 3, options={"mode": "ffa"}),
        ],
    )
    response = await auth.client.get("/v1/rooms", params={"game": "arena"}, headers=h)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["game"] == "arena"
    assert [x["room"] for x in body["rooms"]] == ["closing", "ffa", "ctf"]  # no private room
    assert body["rooms"][1] == {
        "room": "ffa",
        "game": "arena",
        "players": 2,
        "max_players": 4,
        "options": {"mode": "ffa", "map": "dust"},
        "metadata": {"round": 2},
        "joinable": True,
    }
    ffa = await auth.client.get("/v1/rooms?game=arena&mode=ffa&limit=1", headers=h)
    assert [x["room"] for x in ffa.json()["rooms"]] == ["closing"]
    # a room that closes leaves the listing at once
    await d.remove(r, "closing", "arena")
    after = await auth.client.get("/v1/rooms?game=arena&mode=ffa", headers=h)
    assert [x["room"] for x in after.json()["rooms"]] == ["ffa"]
    # a game with no rooms lists none
    assert (await auth.client.get("/v1/rooms?game=cards", headers=h)).json() == {
        "game": "cards",
        "rooms": [],
    }


async def test_an_expired_entry_leaves_the_listing(
    auth: AuthUnderTest, h: dict[str, str], r: aioredis.Redis
) -> None:
    await d.publish(r, room("orphan", 1), ttl_ms=300)
    listed = await auth.client.get("/v1/rooms?game=arena", headers=h)
    assert [x["room"] for x in listed.json()["rooms"]] == ["orphan"]
    start = time.monotonic()
    while time.monotonic() - start < 3:
        rooms = (await auth.client.get("/v1/rooms?game=arena", headers=h)).json()["rooms"]
        if not rooms:
            break
        await asyncio.sleep(0.02)
    assert time.monotonic() - start < 0.3 + 0.6, "gone within the TTL (+ polling slack)"


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("", 422, "validation_failed"),
        ("?game=", 422, "validation_failed"),
        ("?game=chess", 404, "unknown_game"),
        ("?game=NOT%20A%20GAME", 404, "unknown_game"),
        ("?game=arena&limit=0", 422, "validation_failed"),
        ("?game=arena&limit=101", 422, "validation_failed"),
        ("?game=arena&limit=ten", 422, "validation_failed"),
        ("?game=arena&game=cards", 422, "validation_failed"),
        ("?game=arena&mode=a&mode=b", 422, "validation_failed"),
        ("?game=arena&colour=red", 422, "invalid_options"),
        ("?game=arena&private=true", 422, "invalid_options"),
        ("?game=arena&mode=" + "x" * 65, 422, "invalid_options"),
        ("?game=cards&" + "&".join(f"k{i}=1" for i in range(9)), 422, "invalid_options"),
    ],
)
async def test_bad_listing_queries(
    auth: AuthUnderTest, h: dict[str, str], query: str, status: int, code: str
) -> None:
    assert_error(await auth.client.get("/v1/rooms" + query, headers=h), status, code)


# ---------------------------------------------------------------- quick-join


async def test_quick_join_an_existing_room(
    auth: AuthUnderTest, h: dict[str, str], r: aioredis.Redis
) -> None:
    await d.publish_many(
        r,
        [
            room("two", 2, options={"mode": "ffa"}),
            room("one", 1, options={"mode": "ffa", "map": "mill"}),
            room("ctf", 0, options={"mode": "ctf"}),
        ],
    )
    response = await auth.client.post(
        "/v1/rooms/quick-join", json={"game": "arena", "options": {"mode": "ffa"}}, headers=h
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {
        "room": "one",
        "game": "arena",
        "created": False,
        "running": True,
        "options": {"mode": "ffa", "map": "mill"},
        "players": 1,
        "max_players": 4,
        "reserved_until": pytest.approx(time.time() + 10, abs=2),
        "ws_url": "ws://s1.test/v1/ws",
    }


async def test_quick_join_names_a_new_room_when_none_matches(
    auth: AuthUnderTest, h: dict[str, str], r: aioredis.Redis
) -> None:
    await d.publish(r, room("ffa", 3, options={"mode": "ffa"}))
    response = await auth.client.post(
        "/v1/rooms/quick-join",
        json={"game": "arena", "options": {"mode": "ctf", "max_players": 2}},
        headers=h,
    )
    body = response.json()
    assert response.status_code == 200 and body["created"] and not body["running"]
    assert d.ROOM_NAME.fullmatch(body["room"]) and body["room"] != "ffa"
    assert body["options"] == {"mode": "ctf", "max_players": 2}  # join with these
    assert body["max_players"] == 2 and body["ws_url"] is None
    # the next player with the same wish gets the same new room, until it is full
    other = await bearer(auth.client)
    second = await auth.client.post(
        "/v1/rooms/quick-join",
        json={"game": "arena", "options": {"mode": "ctf", "max_players": 2}},
        headers=other,
    )
    assert second.json()["room"] == body["room"] and not second.json()["created"]


async def test_100_concurrent_quick_joins_through_the_api(
    auth: AuthUnderTest, make_auth: MakeAuth, r: aioredis.Redis
) -> None:
    # two replicas of the service (their own Redis pools), the joiners split between them
    other: AuthUnderTest = await make_auth()
    clients = [auth.client, other.client]
    headers = await asyncio.gather(*(bearer(clients[i % 2]) for i in range(100)))
    responses = await asyncio.gather(
        *(
            clients[(i // 2) % 2].post(
                "/v1/rooms/quick-join",
                json={"game": "arena", "options": {"mode": "ffa"}},
                headers=hh,
            )
            for i, hh in enumerate(headers)
        )
    )
    assert all(x.status_code == 200 for x in responses), [x.text for x in responses][:3]
    per_room = Counter(x.json()["room"] for x in responses)
    assert len(per_room) == 25 and set(per_room.values()) == {4}, per_room
    assert sum(x.json()["created"] for x in responses) == 25
    for name in per_room:
        entry = await d.lookup(r, "arena", name)
        assert entry is not None and entry.players + entry.reserved == entry.max_players == 4
    # each replica counts its own requests
    for client in clients:
        metrics = (await client.get("/metrics")).text
        assert (
            'stateroom_auth_requests_total{method="POST",route="/v1/rooms/quick-join",'
            'status="200"} 50.0'
        ) in metrics
        assert "stateroom_auth_quick_joins_total" in metrics
    total = 0.0
    for client in clients:
        for line in (await client.get("/metrics")).text.splitlines():
            if line.startswith('stateroom_auth_quick_joins_total{result="created"}'):
                total += float(line.split()[-1])
    assert total == 25.0


BAD_BODIES: list[tuple[Any, int, str]] = [
    ({"game": "chess"}, 404, "unknown_game"),
    ({"game": "arena", "options": {"colour": "red"}}, 422, "invalid_options"),
    ({"game": "arena", "options": {"mode": {"nested": 1}}}, 422, "invalid_options"),
    ({"game": "arena", "options": {"mode": 1.5}}, 422, "invalid_options"),
    ({"game": "arena", "options": {"mode": None}}, 422, "invalid_options"),
    ({"game": "arena", "options": {"mode": "x" * 65}}, 422, "invalid_options"),
    ({"game": "arena", "options": ["mode"]}, 422, "invalid_options"),
    ({"game": "arena", "options": {"private": True}}, 422, "invalid_options"),
    ({"game": "arena", "options": {"max_players": 5}}, 422, "invalid_options"),
    ({"game": "arena", "options": {"max_players": "2"}}, 422, "invalid_options"),
    ({"game": "cards", "options": {f"k{i}": 1 for i in range(9)}}, 422, "invalid_options"),
    ({"game": 7}, 422, "validation_failed"),
    ({}, 422, "validation_failed"),
    ([], 422, "validation_failed"),
]


@pytest.mark.parametrize("path", ["/v1/rooms/quick-join", "/v1/rooms/private"])
async def test_bad_bodies_get_their_error_and_change_nothing(
    auth: AuthUnderTest, h: dict[str, str], r: aioredis.Redis, path: str
) -> None:
    await d.publish(r, room("ffa", 1, options={"mode": "ffa"}))
    before = await directory_keys(r)
    for body, status, code in BAD_BODIES:
        assert_error(await auth.client.post(path, json=body, headers=h), status, code)
    post = auth.client.post
    huge = b'{"game": "arena", "options": {"mode": "' + b"x" * 20_000 + b'"}}'
    json_headers = {**h, "content-type": "application/json"}
    assert_error(await post(path, content=huge, headers=json_headers), 413, "payload_too_large")
    assert_error(await post(path, content=b"{nope", headers=json_headers), 400, "invalid_json")
    assert_error(await post(path, content=b"game=arena", headers=h), 415, "unsupported_media_type")
    assert await directory_keys(r) == before


async def test_without_games_in_the_registry_every_game_is_unknown(
    make_auth: MakeAuth, r: aioredis.Redis
) -> None:
    await register_server(r, "old", games=None)  # a server from before the field existed
    auth: AuthUnderTest = await make_auth()
    h = await bearer(auth.client)
    response = await auth.client.post("/v1/rooms/quick-join", json={"game": "arena"}, headers=h)
    assert_error(response, 404, "unknown_game")
    assert "no room server has published its games" in response.json()["error"]["message"]


# ---------------------------------------------------------------- private rooms


async def test_private_rooms_by_code(
    auth: AuthUnderTest, h: dict[str, str], r: aioredis.Redis
) -> None:
    made = await auth.client.post(
        "/v1/rooms/private", json={"game": "arena", "options": {"map": "dust"}}, headers=h
    )
    assert made.status_code == 201, made.text
    body = made.json()
    code, name = body["code"], body["room"]
    assert d.CODE_PATTERN.fullmatch(code) and d.ROOM_NAME.fullmatch(name)
    assert body == {
        "code": code,
        "room": name,
        "game": "arena",
        "options": {"map": "dust"},
        "max_players": 4,
        "expires_in": 600,
    }
    # a friend resolves the code (typed in lower case too)
    friend = await bearer(auth.client)
    found = await auth.client.get(f"/v1/rooms/private/{code.lower()}", headers=friend)
    assert found.status_code == 200, found.text
    assert found.json() == {
        "code": code,
        "room": name,
        "game": "arena",
        "players": 0,
        "max_players": 4,
        "options": {"map": "dust"},
        "metadata": {},
        "joinable": True,
        "running": False,
        "ws_url": None,
    }
    # the room server creates it, private, and publishes it with its code
    await d.publish(r, room(name, 1, private=True, join_code=code, options={"map": "dust"}))
    running = (await auth.client.get(f"/v1/rooms/private/{code}", headers=friend)).json()
    assert running["running"] and running["players"] == 1
    assert running["ws_url"] == "ws://s1.test/v1/ws"
    # never listed, never handed out by quick-join
    listed = await auth.client.get("/v1/rooms?game=arena", headers=h)
    assert listed.json()["rooms"] == []
    joined = await auth.client.post(
        "/v1/rooms/quick-join", json={"game": "arena", "options": {"map": "dust"}}, headers=h
    )
    assert joined.json()["room"] != name
    # closed: the code is gone
    await d.remove(r, name, "arena")
    assert_error(await auth.client.get(f"/v1/rooms/private/{code}", headers=h), 404, "unknown_code")


async def test_unknown_codes_are_404_and_guessing_is_bounded(
    auth: AuthUnderTest, h: dict[str, str]
) -> None:
    for code in ["ABCDEF", "abc", "ABCDE0", "%20", "A" * 300][:CODE_MISSES_PER_MINUTE]:
        response = await auth.client.get(f"/v1/rooms/private/{code}", headers=h)
        assert_error(response, 404, "unknown_code")
    for _ in range(CODE_MISSES_PER_MINUTE - 5):
        await auth.client.get("/v1/rooms/private/ZZZZZZ", headers=h)
    limited = await auth.client.get("/v1/rooms/private/ZZZZZZ", headers=h)
    assert_error(limited, 429, "rate_limited")
    assert int(limited.headers["retry-after"]) >= 1
    # another player is not affected
    other = await bearer(auth.client)
    assert_error(
        await auth.client.get("/v1/rooms/private/ZZZZZZ", headers=other), 404, "unknown_code"
    )


async def test_private_rooms_per_player_are_budgeted(
    auth: AuthUnderTest, h: dict[str, str]
) -> None:
    for _ in range(PRIVATE_ROOMS_PER_MINUTE):
        made = await auth.client.post("/v1/rooms/private", json={"game": "cards"}, headers=h)
        assert made.status_code == 201
    over = await auth.client.post("/v1/rooms/private", json={"game": "cards"}, headers=h)
    assert_error(over, 429, "rate_limited")
    metrics = (await auth.client.get("/metrics")).text
    assert 'stateroom_auth_rate_limited_total{limit="player"} 1.0' in metrics
    assert f"stateroom_auth_private_rooms_total {float(PRIVATE_ROOMS_PER_MINUTE)}" in metrics


async def test_openapi_documents_the_rooms_api(auth: AuthUnderTest) -> None:
    spec = (await auth.client.get("/openapi.json")).json()
    paths = spec["paths"]
    assert set(paths["/v1/rooms"]) == {"get"}
    assert set(paths["/v1/rooms/quick-join"]) == {"post"}
    assert set(paths["/v1/rooms/private"]) == {"post"}
    assert set(paths["/v1/rooms/private/{code}"]) == {"get"}
    for path in ("/v1/rooms", "/v1/rooms/quick-join", "/v1/rooms/private"):
        operation = next(iter(paths[path].values()))
        assert operation["security"] == [{"accessToken": []}]
        assert {"401", "404", "422", "429"} <= set(operation["responses"])
    assert "404" in paths["/v1/rooms/private/{code}"]["get"]["responses"]
    assert "accessToken" in spec["components"]["securitySchemes"]
    for schema in ("Room", "RoomList", "RoomRequest", "QuickJoin", "PrivateRoom", "Options"):
        assert schema in spec["components"]["schemas"]
