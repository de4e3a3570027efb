"""Seats outlive connections for the grace period; empty rooms close and forget their keys."""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis.asyncio as aioredis

from client.sdk import AuthClient, RoomClient
from server.store import ROOMS_KEY, room_keys
from tests.cluster import start_cluster
from tests.integration.test_play import state_where
from tests.support import Processes


async def test_grace_period_then_empty_room_closes(processes: Processes, tmp_path: Path) -> None:
    local = start_cluster(
        processes, tmp_path, servers=1, extra=("--grace-s", "1", "--empty-room-s", "1")
    )
    auth = AuthClient(local.auth_url)
    redis = aioredis.Redis.from_url(local.redis_url)
    try:
        urls = local.info.ws_urls
        watcher_tokens = await auth.guest("watcher")
        dropper_tokens = await auth.guest("dropper")
        watcher = RoomClient(urls, "lifecycle", watcher_tokens.access_token)
        await watcher.connect()
        dropper = RoomClient(urls, "lifecycle", dropper_tokens.access_token)
        await dropper.connect()
        dropper_id = dropper.player_id
        await state_where(watcher, lambda s: dropper_id in s.state["players"])
        await dropper.close()  # a dropped connection, not a leave: the seat is kept
        await asyncio.sleep(0.5)
        assert dropper_id in (await watcher.next_state(2)).state["players"]
        # Back within the grace period: the same seat, resumed.
        again = RoomClient(urls, "lifecycle", dropper_tokens.access_token)
        await again.connect()
        assert again.player_id == dropper_id
        await again.close()
        # Gone for longer than the grace period: the seat is freed.
        await state_where(watcher, lambda s: dropper_id not in s.state["players"], within=5)
        await watcher.leave()
        keys = room_keys("lifecycle")

        async def forgotten() -> bool:
            return not await redis.exists(keys["meta"], keys["journal"], keys["lease"]) and not (
                await redis.hexists(ROOMS_KEY, "lifecycle")
            )

        async with asyncio.timeout(10):
            while not await forgotten():
                await asyncio.sleep(0.1)
        # Joining again creates a fresh room.
        fresh = RoomClient(urls, "lifecycle", watcher_tokens.access_token)
        await fresh.connect()
        first = await fresh.next_state(5)
        assert first.tick < 40 and set(first.state["players"]) == {fresh.player_id}
        await fresh.close()
    finally:
        await redis.aclose()
        await auth.aclose()
        processes.stop_all()
        local.redis.stop()
