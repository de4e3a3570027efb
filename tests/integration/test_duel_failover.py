"""Duel across a kill of the room's owner mid-round, on the raw v2 wire: no player ever
holds another's cards, and every event reaches its recipient exactly once.

Each player is a plain v2 client: it decodes the shared and private delta streams,
plays one of its cards whenever the round is waiting for it, and after its connection
drops joins again on the other server with ``since`` = the last tick it applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from client.sdk import AuthClient
from server.protocol.delta import DeltaDecoder
from server.store import RoomStore
from tests.cluster import LocalCluster
from tests.integration.faults import owner, server_name, wait_for
from tests.integration.test_room_server import open_ws

pytestmark = pytest.mark.slow

V2 = [Subprotocol("stateroom.v2.msgpack")]
ROOM = "duel-kill"
OPTIONS = {"hand": 4, "target": 9}


@dataclass
class Player:
    token: str
    urls: list[str]
    player_id: str = ""
    since: int = 0
    seq: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    views: list[Any] = field(default_factory=list)
    last_shared: Any = None
    connections: int = 0
    welcomed_options: list[dict[str, Any]] = field(default_factory=list)
    stop: bool = False

    async def play(self) -> None:
        rng = random.Random(self.token)
        turn = 0
        while not self.stop:
            url = self.urls[turn % len(self.urls)]
            turn += 1
            try:
                await self._session(url, rng)
            except (ConnectionClosed, InvalidStatus, OSError, TimeoutError):
                await asyncio.sleep(0.05)

    async def _session(self, url: str, rng: random.Random) -> None:
        ws = await open_ws(url, self.token, subprotocols=V2)
        try:
            join = {
                "t": "join",
                "v": 2,
                "room": ROOM,
                "game": "duel",
                "since": self.since,
                "options": OPTIONS,
            }
            await ws.send(msgpack.packb(join))
            shared, private = DeltaDecoder(), DeltaDecoder()
            while not self.stop:
                async with asyncio.timeout(1.0):
                    message = msgpack.unpackb(await ws.recv())
                kind = message["t"]
                if kind == "redirect":
                    self.urls.insert(0, message["url"])
                    return
                if kind == "welcome":
                    self.player_id = message["player_id"]
                    self.connections += 1
                    self.welcomed_options.append(message["options"])
                    # Inputs after the ack were lost with the old owner: this client plays
                    # again from its view, numbering from the ack (protocol.md §5).
                    self.seq = message["ack"]
                    continue
                if kind != "state" or message["tick"] <= self.since:
                    continue
                self.last_shared = shared.apply(message["shared"])
                mine = private.apply(message["private"]) if "private" in message else None
                self.events += message.get("events", [])
                self.views.append(mine)
                self.since = message["tick"]  # applied, events included
                public = self.last_shared
                if mine and mine.get("played") is None and self.player_id not in public["played"]:
                    self.seq += 1
                    card = rng.choice(mine["hand"])
                    await ws.send(
                        msgpack.packb({"t": "input", "seq": self.seq, "data": {"play": card}})
                    )
                    await asyncio.sleep(0.15)  # rounds take a few ticks: the kill lands mid-round
        finally:
            await ws.close()


async def test_a_duel_survives_a_kill_without_leaking_or_repeating(
    cluster: LocalCluster,
) -> None:
    auth = AuthClient(cluster.auth_url)
    try:
        tokens = [(await auth.guest(f"d{i}")).access_token for i in range(3)]
    finally:
        await auth.aclose()
    players = [Player(t, list(cluster.info.ws_urls)) for t in tokens]
    redis = aioredis.Redis.from_url(cluster.redis_url, socket_timeout=2)
    store = RoomStore(redis)
    tasks = [asyncio.ensure_future(p.play()) for p in players]
    try:

        async def rounds_played(at_least: int) -> bool:
            shared = players[0].last_shared
            return shared is not None and shared["round"] > at_least

        await wait_for(lambda: rounds_played(3), 20, "three rounds")
        lease = await owner(store, ROOM)
        assert lease is not None
        cluster.kill(await server_name(store, lease.server_id))
        killed_round = players[0].last_shared["round"]
        await wait_for(lambda: rounds_played(killed_round + 3), 30, "three rounds after the kill")
    finally:
        for p in players:
            p.stop = True
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await redis.aclose()
    ids = {p.player_id for p in players}
    for p in players:
        # The creator's options, validated by the game, kept by the new owner.
        assert p.welcomed_options == [OPTIONS] * len(p.welcomed_options)
        assert p.connections >= 2, "every player moved to the new owner"
        to_me = [e for e in p.events if e["kind"] == "dealt"]
        public = [e for e in p.events if e["kind"] != "dealt"]
        # Exactly once, in order: each recipient's numbers run 1, 2, 3, ... without gaps.
        assert [e["n"] for e in to_me] == list(range(1, len(to_me) + 1)), to_me
        numbers = [e["n"] for e in public]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers
        # The hand a player sees is the cards it was dealt, less the ones it played:
        # its own cards and nobody else's.
        dealt = sorted(c for e in to_me for c in e["cards"])
        played = sorted(e["cards"][p.player_id] for e in public if e["kind"] == "round")
        hand = sorted(p.views[-1]["hand"])
        pending = p.views[-1]["played"]
        expected = list(dealt)
        for card in [*played, *([pending] if pending is not None else [])]:
            expected.remove(card)
        assert hand == sorted(expected)
        assert all(v is None or set(v) == {"hand", "played"} for v in p.views)
    rounds = [e for e in players[0].events if e["kind"] == "round"]
    assert len(rounds) >= 6
    assert all(set(r["cards"]) == ids for r in rounds if r["round"] >= killed_round)
