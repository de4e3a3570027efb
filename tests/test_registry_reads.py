"""The failover poll's registry read (``RoomStore.servers_and_clients``, 20 times a second
on every server) against a real Valkey: the lean RESP path answers what redis-py's
pipeline answers, in RESP2 and RESP3; a server that leaves the registry (a drain) is gone
from the next poll, not from the next full read up to a second later; a server with only
a full entry (from before the compact records) is still listed."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from infra.liveness import LIVENESS_PREFIX
from server.store import LIVE_KEY, SERVERS_KEY, RoomStore

pytestmark = pytest.mark.timeout(30)


async def register(store: RoomStore, server_id: str, liveness_id: int) -> None:
    await store.register_server(
        server_id,
        {"id": server_id, "ws_url": f"ws://{server_id}", "liveness_id": liveness_id, "rooms": 0},
    )


@pytest.mark.parametrize("protocol", [2, 3])
async def test_the_poll_reads_the_same_on_both_paths(redis_url: str, protocol: int) -> None:
    client = aioredis.Redis.from_url(redis_url, protocol=protocol)
    liveness = aioredis.Redis.from_url(redis_url)
    try:
        await liveness.client_setname(f"{LIVENESS_PREFIX}s1")
        live_id = int(await liveness.client_id())
        lean, plain = RoomStore(client), RoomStore(client, fast_scripts=False)
        assert plain.scripts.pipe is None
        assert lean.scripts.pipe is not None
        await register(lean, "s1", live_id)
        await register(lean, "s2", 999_999)  # its liveness connection is not there
        ids = [str(live_id), "999999"]
        got_lean = await lean.servers_and_clients(ids)
        got_plain = await plain.servers_and_clients(ids)
        (servers, clients), (plain_servers, plain_clients) = got_lean, got_plain
        assert servers == plain_servers and set(servers) == {"s1", "s2"}
        assert servers["s1"]["ws_url"] == "ws://s1"
        assert clients is not None and plain_clients is not None
        assert [c["name"] for c in clients] == [c["name"] for c in plain_clients]
        assert [c["name"] for c in clients] == [f"{LIVENESS_PREFIX}s1"]
        assert lean.liveness.judge(clients) == {"s1"}
    finally:
        await liveness.aclose()
        await client.aclose()


async def test_a_server_that_leaves_is_gone_from_the_next_poll(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        store, peer = RoomStore(client), RoomStore(client)
        await register(peer, "s1", 11)
        await register(peer, "leaving", 12)
        # A server of a version before the compact records: a full entry only.
        await client.hset(SERVERS_KEY, "old", '{"id": "old", "liveness_id": 13}')
        assert set(await store.servers()) == {"s1", "leaving", "old"}  # a full read
        await peer.unregister_server("leaving")  # its drain starts
        # Within REGISTRY_EVERY_S of the full read: the compact records decide.
        assert set(await store.servers()) == {"s1", "old"}
        servers, _ = await store.servers_and_clients(["11"])
        assert set(servers) == {"s1", "old"}
        # Back (a restart under the same id): listed again at once.
        await register(peer, "leaving", 14)
        assert set(await store.servers()) == {"s1", "leaving", "old"}
        assert await client.hexists(LIVE_KEY, "leaving")
    finally:
        await client.aclose()
