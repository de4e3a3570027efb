"""The SDK on protocol v2 against real processes (Valkey, the login service, two room
servers with the test game ``tests.games:Cards`` besides the arena).

What the tests prove, through the SDK's public API only: a player's ``State.private``
is its own hand and equals the cards its private events told it about; every event
reaches the application exactly once and in order (each recipient's events are
numbered by the game), also across a SIGKILL of the room's owner; room options go in
with the join and come back in ``RoomClient.options``; a v2 and a v1 client of one
arena room see the same world; ``stateroom bots`` drives the card game by a policy
and finds no event twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from client.bots import BotOptions, failures, load_policy, run_bots
from client.sdk import AuthClient, RoomClient, State
from server.killroom import kill_room
from tests.cluster import LocalCluster, cluster_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with cluster_for(
        tmp_path_factory.mktemp("live"), servers=2, extra=("--games", "tests.games:Cards")
    ) as local:
        yield local


async def tokens(cluster: LocalCluster, *names: str) -> list[str]:
    auth = AuthClient(cluster.auth_url)
    try:
        return [(await auth.guest(name)).access_token for name in names]
    finally:
        await auth.aclose()


class Reader:
    """Keeps every state a client delivers, in the background."""

    def __init__(self, client: RoomClient) -> None:
        self.client = client
        self.states: list[State] = []
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for state in self.client.states():
            self.states.append(state)

    async def until(self, predicate: Any, within: float = 10) -> State:
        async with asyncio.timeout(within):
            while not (self.states and predicate(self.states[-1])):
                if self.task.done():
                    self.task.result()
                await asyncio.sleep(0.02)
        return self.states[-1]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def check_cards(me: str, states: list[State]) -> None:
    """Exactly once and in order: the player's ``drew`` events are numbered 1, 2, 3...
    (per recipient), the public ``who`` events contiguously from the first seen; and the
    player's private hand is exactly the cards its events told it it drew."""
    events = [e for s in states for e in s.events]
    drew = [e for e in events if "drew" in e]
    who = [e["n"] for e in events if "who" in e]
    assert [e["n"] for e in drew] == list(range(1, len(drew) + 1))
    if who:
        assert who == list(range(who[0], who[0] + len(who)))
    hand = states[-1].private["hand"]
    assert hand == [e["drew"] for e in drew]
    assert all(card.startswith(f"secret-{me}-") for card in hand)
    ticks = [s.tick for s in states]
    assert ticks == sorted(set(ticks))


async def test_cards_views_events_and_options_through_the_sdk(live: LocalCluster) -> None:
    ann_token, bob_token = await tokens(live, "ann", "bob")
    urls = live.info.ws_urls
    async with (
        RoomClient(urls, "table-1", ann_token, game="cards", options={"max_players": 4}) as ann,
        RoomClient(urls, "table-1", bob_token, game="cards", encoding="json") as bob,
    ):
        assert ann.version == bob.version == 2
        assert ann.options is not None and ann.options.get("max_players") == 4
        assert bob.options == ann.options  # the room's options, whoever asks
        readers = [Reader(ann), Reader(bob)]
        for _ in range(12):
            ann.send_input("draw")
            bob.send_input("draw")
            await asyncio.sleep(0.03)
        for reader in readers:
            last = await reader.until(lambda s: s.ack == 12)
            await reader.until(lambda s, t=last.tick: s.tick > t + 2)
            await reader.stop()
    check_cards(ann.player_id, readers[0].states)
    check_cards(bob.player_id, readers[1].states)
    assert len(readers[0].states[-1].private["hand"]) == 12
    assert ann.stats.resyncs == 0 and bob.stats.resyncs == 0


async def test_a_v2_and_a_v1_client_of_one_arena_room_see_the_same_world(
    live: LocalCluster,
) -> None:
    new_token, old_token = await tokens(live, "new", "old")
    urls = live.info.ws_urls
    async with (
        RoomClient(urls, "arena-mixed", new_token) as new,
        RoomClient(urls, "arena-mixed", old_token, protocol=1) as old,
    ):
        assert (new.version, old.version) == (2, 1)
        readers = [Reader(new), Reader(old)]
        for _ in range(10):
            new.send_input({"dx": 1, "dy": 0.5})
            old.send_input({"dx": -1, "dy": 0})
            await asyncio.sleep(0.05)
        for reader in readers:
            await reader.until(lambda s: s.ack == 10)
        await readers[0].until(lambda s, t=readers[1].states[-1].tick: s.tick > t)
        for reader in readers:
            await reader.stop()
    v1 = {s.tick: s.state for s in readers[1].states}
    common = [s for s in readers[0].states if s.tick in v1]
    assert len(common) > 10
    for state in common:
        assert state.state == v1[state.tick], state.tick
    assert all(s.private is None and s.events == [] for s in readers[0].states)


async def test_an_input_the_game_refuses_is_dropped_and_the_next_ones_are_acked(
    live: LocalCluster,
) -> None:
    """An illegal input (the arena wants exactly dx and dy) is refused without using up
    its seq; the SDK drops it instead of resending it for ever, so the inputs queued
    behind it move down one seq and are all applied."""
    (token,) = await tokens(live, "sloppy")
    async with RoomClient(live.info.ws_urls, "arena-refused", token) as client:
        reader = Reader(client)
        assert client.send_input({"dx": 1, "dy": 0}) == 1
        assert client.send_input({"dx": 1, "jump": True}) == 2  # refused by the game
        for _ in range(5):
            client.send_input({"dx": 0, "dy": 1})
        state = await reader.until(lambda s: s.ack == 6)
        await reader.stop()
        assert client.refused == [{"dx": 1, "jump": True}]
        assert client.stats.inputs_refused == 1 and client.unacked == 0
        assert client.stats.errors.get("illegal_input") == 1
        assert state.ack == 6 and client.stats.inputs_acked == 6


async def test_bots_play_the_card_game_by_policy_and_see_no_event_twice(
    live: LocalCluster,
) -> None:
    setup = BotOptions(policy=load_policy("tests.test_sdk_bots:draw"), game="cards", event_seq="n")
    summary = await run_bots(live.info, "table-bots", 4, 2.0, rate=10, setup=setup)
    assert failures(summary) == [], summary
    assert summary["inputs_acked"] == summary["inputs_sent"] >= 4 * 15
    # Each draw tells the drawer its card and everyone that somebody drew.
    assert summary["events_received"] >= summary["inputs_acked"] * 2
    assert summary["duplicate_events"] == 0 and summary["resyncs"] == 0


async def test_bots_play_duel_with_its_policy(live: LocalCluster) -> None:
    setup = BotOptions(
        policy=load_policy("client.bots:DuelPolicy"),
        game="duel",
        options={"hand": 3, "target": 2},
        event_seq="n",
    )
    summary = await run_bots(live.info, "duel-bots", 3, 3.0, rate=20, setup=setup)
    assert failures(summary) == [], summary
    # Rounds are played (every player once per round: played, round, dealt events).
    assert summary["inputs_acked"] >= 3 * 5 and summary["events_received"] > 30
    assert summary["duplicate_events"] == 0 and summary["errors"] == {}, summary


async def test_events_exactly_once_and_hands_intact_across_a_kill_of_the_owner(
    live: LocalCluster,
) -> None:
    # Last in this module: it leaves the cluster with one room server.
    names = ("kim", "lee", "max")
    urls = live.info.ws_urls
    clients = [
        RoomClient(urls, "table-kill", token, game="cards") for token in await tokens(live, *names)
    ]
    for client in clients:
        await client.connect()
    readers = [Reader(c) for c in clients]
    stop = asyncio.Event()

    async def play(client: RoomClient) -> None:
        while not stop.is_set():
            client.send_input("draw")
            await asyncio.sleep(0.1)

    players = [asyncio.create_task(play(c)) for c in clients]
    try:
        await asyncio.sleep(1.5)
        report = await kill_room(live.redis_url, "table-kill", timeout=15)
        assert report["new_server"] != report["old_server"]
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.gather(*players)
        for client, reader in zip(clients, readers, strict=True):
            async with asyncio.timeout(10):
                while client.unacked:
                    await asyncio.sleep(0.02)
            last = await reader.until(lambda s, c=client: s.ack == c.stats.max_ack)
            await reader.until(lambda s, t=last.tick: s.tick > t + 2)
    finally:
        stop.set()
        for reader in readers:
            await reader.stop()
        for client in clients:
            await client.close()
    for client, reader in zip(clients, readers, strict=True):
        assert client.stats.reconnects >= 1
        assert client.stats.ack_regressions == 0 and client.stats.rollbacks == 0
        check_cards(client.player_id, reader.states)
        assert len(reader.states[-1].private["hand"]) == client.stats.max_ack
