"""A room whose checkpoint cannot be read: a clear refusal, the lease given back, no crash."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgpack
import redis.asyncio as aioredis

from client.sdk import AuthClient, RoomClient
from server.protocol import CloseCode
from server.store import ROOMS_KEY, room_keys
from tests.cluster import start_cluster
from tests.integration.test_room_server import close_code, open_ws, recv
from tests.support import Processes


async def test_unreadable_checkpoint_is_refused_and_the_lease_released(
    processes: Processes, tmp_path: Path
) -> None:
    cluster = start_cluster(processes, tmp_path, servers=1)
    redis = aioredis.Redis.from_url(cluster.redis_url)
    auth = AuthClient(cluster.auth_url)
    try:
        keys = room_keys("broken")
        await redis.hset(keys["meta"], mapping={"game": "arena", "seed": 1, "created": 0})
        await redis.hset(keys["ckpt"], mapping={"tick": 5, "epoch": 1, "at": 0, "data": b"\xc1"})
        await redis.hset(ROOMS_KEY, "broken", '{"owner": "", "epoch": 1, "game": "arena"}')
        token = (await auth.guest("p")).access_token
        server = next(iter(cluster.servers.values()))
        ws = await open_ws(server.ws_url, token)
        await ws.send(msgpack.packb({"t": "join", "room": "broken"}))
        error = await recv(ws)
        assert (error["t"], error["code"]) == ("error", "unavailable")
        assert await close_code(ws) == CloseCode.INTERNAL_ERROR  # retryable, with backoff
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
