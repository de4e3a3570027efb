"""Protocol v2 against real processes, read off the raw WebSocket: keyframe + deltas give
what a v1 client sees, private parts reach only their player, events arrive with their
tick, room options are validated and kept, and a v1 client plays on in the same room."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from client.sdk import AuthClient
from server.protocol import CloseCode
from server.protocol.delta import DeltaDecoder, quantize_view
from server.protocol.schemas import ARENA_SCHEMA
from tests.cluster import LocalCluster, cluster_for
from tests.integration.test_room_server import close_code, open_ws, recv

V2 = [Subprotocol("stateroom.v2.msgpack")]
V2_JSON = [Subprotocol("stateroom.v2.json")]


@pytest.fixture(scope="module")
def v2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with cluster_for(
        tmp_path_factory.mktemp("v2"), servers=1, extra=("--games", "tests.games:Cards")
    ) as local:
        yield local


async def tokens(cluster: LocalCluster, count: int) -> list[str]:
    auth = AuthClient(cluster.auth_url)
    try:
        return [(await auth.guest(f"p{i}")).access_token for i in range(count)]
    finally:
        await auth.aclose()


async def join_v2(
    cluster: LocalCluster, token: str, room: str, **fields: Any
) -> tuple[ClientConnection, dict[str, Any]]:
    subprotocols = fields.pop("subprotocols", V2)
    ws = await open_ws(cluster.info.ws_urls[0], token, subprotocols=subprotocols)
    join = {"t": "join", "v": 2, "room": room, **fields}
    if ws.subprotocol and ws.subprotocol.endswith("json"):
        import orjson

        await ws.send(orjson.dumps(join).decode())
    else:
        await ws.send(msgpack.packb(join))
    return ws, await recv(ws)


class Reader:
    """Reads v2 states off a raw connection, applying the deltas."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.shared = DeltaDecoder()
        self.private = DeltaDecoder()
        self.raw: list[bytes | str] = []

    async def state(self) -> dict[str, Any]:
        while True:
            async with asyncio.timeout(5):
                frame = await self.ws.recv()
            self.raw.append(frame)
            message = msgpack.unpackb(frame) if isinstance(frame, bytes) else _json(frame)
            if message["t"] == "state":
                message["view"] = self.shared.apply(message["shared"])
                if "private" in message:
                    message["mine"] = self.private.apply(message["private"])
                return message


def _json(frame: str) -> dict[str, Any]:
    import orjson

    value: dict[str, Any] = orjson.loads(frame)
    return value


async def test_v2_arena_deltas_give_what_a_v1_client_sees(v2: LocalCluster) -> None:
    old_token, new_token, json_token = await tokens(v2, 3)
    v1 = await open_ws(v2.info.ws_urls[0], old_token)
    await v1.send(msgpack.packb({"t": "join", "room": "both"}))
    assert (await recv(v1))["t"] == "welcome"
    ws, welcome = await join_v2(v2, new_token, "both")
    assert welcome["t"] == "welcome" and welcome["v"] == 2 and welcome["options"] == {}
    reader = Reader(ws)
    ws_json, _ = await join_v2(v2, json_token, "both", subprotocols=V2_JSON)
    json_reader = Reader(ws_json)
    await v1.send(msgpack.packb({"t": "input", "seq": 1, "data": {"dx": 1, "dy": 0.5}}))
    v1_states: dict[int, Any] = {}
    first = await reader.state()
    assert "base" not in first["shared"]  # the first state after welcome: a keyframe
    seen = 0
    while seen < 30:
        state = await reader.state()
        json_state = await json_reader.state()
        while json_state["tick"] < state["tick"]:
            json_state = await json_reader.state()
        while not v1_states or max(v1_states) < state["tick"]:
            message = await recv(v1)
            if message["t"] == "state":
                v1_states[message["tick"]] = message["state"]
        if state["tick"] in v1_states:
            expected = quantize_view(ARENA_SCHEMA, v1_states[state["tick"]])
            assert state["view"] == expected
            assert json_state["view"] == expected
            seen += 1
    full = sum(len(msgpack.packb(s)) for s in v1_states.values()) / len(v1_states)
    deltas = [len(f) for f in reader.raw[2:]]
    assert sum(deltas) / len(deltas) < full  # deltas are smaller than full states
    for sock in (v1, ws, ws_json):
        await sock.close()


async def test_private_parts_reach_only_their_player_and_events_their_recipients(
    v2: LocalCluster,
) -> None:
    a_token, b_token = await tokens(v2, 2)
    a, _ = await join_v2(v2, a_token, "table", game="cards")
    b, welcome_b = await join_v2(v2, b_token, "table", game="cards")
    readers = {"a": Reader(a), "b": Reader(b)}
    for seq in range(1, 6):
        await a.send(msgpack.packb({"t": "input", "seq": seq, "data": "draw"}))
        await b.send(msgpack.packb({"t": "input", "seq": seq, "data": "draw"}))
        await asyncio.sleep(0.06)
    events: dict[str, list[Any]] = {"a": [], "b": []}
    views: dict[str, Any] = {}
    for name, reader in readers.items():
        while True:
            state = await reader.state()
            events[name] += state.get("events", [])
            views[name] = state
            if len(state["mine"]["hand"]) == 5 and state["ack"] == 5:
                break
    b_id = welcome_b["player_id"]
    a_cards = views["a"]["mine"]["hand"]
    b_cards = views["b"]["mine"]["hand"]
    assert all(c.startswith("secret-") for c in a_cards + b_cards)
    assert not set(a_cards) & set(b_cards)
    # No frame to a player ever held another player's card, in any form.
    for card in b_cards:
        assert not any(card.encode() in frame for frame in readers["a"].raw), card
    for card in a_cards:
        assert not any(card.encode() in frame for frame in readers["b"].raw), card
    # Events: my draws privately (in order, once), everyone's draws publicly.
    mine_a = [e for e in events["a"] if "drew" in e]
    assert [e["n"] for e in mine_a] == [1, 2, 3, 4, 5]
    assert [e["drew"] for e in mine_a] == a_cards
    public_b = [e for e in events["b"] if "who" in e]
    assert len(public_b) == len({e["n"] for e in public_b})  # none repeated
    assert sum(1 for e in public_b if e["who"] == b_id) == 5
    assert views["a"]["view"]["counts"] == views["b"]["view"]["counts"]
    for sock in (a, b):
        await sock.close()


async def test_room_options_are_validated_and_kept(v2: LocalCluster) -> None:
    creator, joiner, bad = await tokens(v2, 3)
    ws, welcome = await join_v2(
        v2, creator, "small", game="cards", options={"max_players": 2, "private": True}
    )
    assert welcome["options"] == {"max_players": 2, "private": True}
    other, welcome2 = await join_v2(v2, joiner, "small", options={"max_players": 8})
    assert welcome2["options"] == {"max_players": 2, "private": True}  # the room's, kept
    third, refused = await join_v2(v2, bad, "small")
    assert refused["code"] == "room_full"
    assert await close_code(third) == CloseCode.ROOM_FULL
    wrong, error = await join_v2(v2, bad, "odd", game="cards", options={"mode": "x"})
    assert error["code"] == "invalid_options" and "no room options" in error["message"]
    assert await close_code(wrong) == CloseCode.INVALID_ROOM
    typed, error = await join_v2(v2, bad, "odd2", options={"max_players": "two"})
    assert error["code"] == "invalid_options"
    await close_code(typed)
    for sock in (ws, other):
        await sock.close()


async def test_a_join_whose_version_does_not_match_its_subprotocol_is_refused(
    v2: LocalCluster,
) -> None:
    (token,) = await tokens(v2, 1)
    ws = await open_ws(v2.info.ws_urls[0], token, subprotocols=V2)
    await ws.send(msgpack.packb({"t": "join", "v": 1, "room": "mixed"}))
    error = await recv(ws)
    assert error["code"] == "unsupported_version"
    assert await close_code(ws) == CloseCode.UNSUPPORTED_VERSION


async def test_sync_brings_a_keyframe(v2: LocalCluster) -> None:
    (token,) = await tokens(v2, 1)
    ws, _ = await join_v2(v2, token, "resync")
    reader = Reader(ws)
    await reader.state()
    await reader.state()
    await ws.send(msgpack.packb({"t": "sync"}))
    for _ in range(5):
        state = await reader.state()
        if "base" not in state["shared"]:
            break
    else:
        pytest.fail("no keyframe after sync")
    reader.shared = DeltaDecoder()  # a fresh decoder starts from that keyframe
    reader.shared.apply(state["shared"])
    nxt = await reader.state()
    assert nxt["tick"] == state["tick"] + 1
    await ws.close()
