"""Login → join → play → leave against real processes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from client.sdk import AuthClient, RoomClient, State
from tests.cluster import LocalCluster


async def state_where(
    client: RoomClient, predicate: Callable[[State], bool], within: float = 5
) -> State:
    """The first delivered state that satisfies ``predicate``."""
    async with asyncio.timeout(within):
        while True:
            state = await client.next_state()
            if predicate(state):
                return state


async def test_two_players_play_in_one_room(cluster: LocalCluster) -> None:
    auth = AuthClient(cluster.auth_url)
    alice_tokens = await auth.guest("alice")
    bob_tokens = await auth.guest("bob")
    urls = cluster.info.ws_urls
    async with (
        RoomClient(urls, "duel", alice_tokens.access_token) as alice,
        RoomClient(urls, "duel", bob_tokens.access_token, encoding="json") as bob,
    ):
        assert alice.server == bob.server  # both ended up on the owner
        for _ in range(5):
            alice.send_input({"dx": 1, "dy": 0})
            bob.send_input({"dx": 0, "dy": 1})
            await asyncio.sleep(0.05)
        seen = await state_where(alice, lambda s: s.ack == 5)
        players = seen.state["players"]
        assert players[alice.player_id]["inputs"] == 5
        assert players[alice.player_id]["name"] == "alice"
        seen_by_bob = await state_where(bob, lambda s: s.ack == 5)
        assert seen_by_bob.state["players"][bob.player_id]["inputs"] == 5
        start = players[alice.player_id]["x"]
        later = await state_where(alice, lambda s: s.tick > seen.tick + 5)
        moved = later.state["players"][alice.player_id]["x"]
        assert moved > start or moved == later.state["w"]  # keeps moving right (or at the edge)
        assert alice.stats.rollbacks == 0 and alice.stats.ack_regressions == 0
        await bob.leave()
        await state_where(alice, lambda s: bob.player_id not in s.state["players"])
    await auth.aclose()
