"""A room whose checkpoint or journal cannot be read: a clear refusal, the lease given back,
no crash."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgpack
import pytest
import redis.asyncio as aioredis

from client.sdk import AuthClient, RoomClient
from server.protocol import CloseCode
from server.store import ROOMS_KEY, room_keys
from tests.cluster import start_cluster
from tests.integration.test_room_server import close_code, open_ws, recv
from tests.support import Processes


@pytest.mark.parametrize("broken", ["checkpoint", "journal"])
async def test_unreadable_state_is_refused_and_the_lease_released(
    processes: Processes, tmp_path: Path, broken: str
) -> None:
    cluster = start_cluster(processes, tmp_path, servers=1)
    redis = aioredis.Redis.from_url(cluster.redis_url)
    auth = AuthClient(cluster.auth_url)
    try:
        room = f"broken-{broken}"
        keys = room_keys(room)
        await redis.hset(keys["meta"], mapping={"game": "arena", "seed": 1, "created": 0})
        if broken == "checkpoint":  # not msgpack
            data = {"tick": 5, "epoch": 1, "at": 0, "data": b"\xc1"}
            await redis.hset(keys["ckpt"], mapping=data)  # type: ignore[arg-type]
        else:  # not a stream: the claim's read of it fails (WRONGTYPE)
            await redis.set(keys["journal"], "not a stream")
        await redis.hset(ROOMS_KEY, room, '{"owner": "", "epoch": 1, "game": "arena"}')
        token = (await auth.guest("p")).access_token
        server = next(iter(cluster.servers.values()))
        ws = await open_ws(server.ws_url, token)
        await ws.send(msgpack.packb({"t": "join", "room": room}))
        error = await recv(ws)
        assert (error["t"], error["code"]) == ("error", "unavailable")
        # Retryable, with backoff: 4500 for a state that does not decode, 4020 for Redis
        # answering an error (the room's key of the wrong type).
        expected = CloseCode.INTERNAL_ERROR if broken == "checkpoint" else CloseCode.RECONNECT
        assert await close_code(ws) == expected
        # Nobody sits on the room's lease, and the servers keep serving other rooms.
        async with asyncio.timeout(5):
            while await redis.exists(keys["lease"]):
                await asyncio.sleep(0.05)
        healthy = RoomClient(cluster.info.ws_urls, "healthy", token)
        await healthy.connect()
        assert (await healthy.next_state(5)).tick > 0
        await healthy.close()
        assert "cannot be rebuilt" in cluster.log(server.name)
    finally:
        await auth.aclose()
        await redis.aclose()
        processes.stop_all()
        cluster.redis.stop()
