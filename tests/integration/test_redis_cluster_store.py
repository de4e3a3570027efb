"""The room store on a real Valkey cluster, one shard's primary dead: what the other
shards' rooms still get (its own session cluster data, emptied first)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
import redis

from infra.embedded_cluster import EmbeddedCluster
from infra.embedded_redis import EmbeddedRedis, ping
from infra.redis_url import connect
from server.store import RoomStore, room_keys

pytestmark = pytest.mark.slow


async def test_a_dead_shard_fails_only_its_own_batched_appends(
    valkey_cluster: EmbeddedCluster, cluster_url: str
) -> None:
    """The journal appends of one tick leave in one batch: with the primary of room A's
    shard dead, B's append (another shard) still lands, and only A's fails."""
    client = connect(cluster_url, socket_timeout=1, socket_connect_timeout=1)
    store = RoomStore(client, lease_ms=60_000)
    names = [f"batch-{i}" for i in range(40)]
    primary_of = {n: valkey_cluster.primary_of(room_keys(n)["lease"]) for n in names}
    room_a = names[0]
    room_b = next(n for n in names if primary_of[n] is not primary_of[room_a])
    victim = primary_of[room_a]
    try:
        leases = [(await store.claim(r, "s1", "ws://x", "arena")).lease for r in (room_a, room_b)]
        for tick in range(1, 6):  # batched (one event-loop turn), as a server's rooms tick
            if tick == 2:
                valkey_cluster.kill(victim)
            results = await asyncio.gather(
                *(store.append(lease, tick, []) for lease in leases), return_exceptions=True
            )
            if tick > 1:
                assert isinstance(results[0], redis.RedisError | OSError), (tick, results)
                assert results[1] is None, (tick, results)
        assert await store.last_journaled(room_b) == (5, leases[1].epoch)
    finally:
        await client.aclose()
        valkey_cluster.restart(victim)  # from this thread: see EmbeddedRedis.spawn
        await asyncio.to_thread(valkey_cluster.wait_ok, 30)


def test_a_server_started_from_a_worker_thread_outlives_the_thread(tmp_path: Path) -> None:
    """PDEATHSIG follows the thread that started a child: a Valkey (a cluster node
    restarted through asyncio.to_thread, say) must not be SIGTERMed when that thread
    ends."""
    server = EmbeddedRedis(tmp_path / "redis")
    worker = threading.Thread(target=server.start)
    worker.start()
    worker.join(30)
    try:
        assert not worker.is_alive() and server.process is not None
        time.sleep(1.0)  # a PDEATHSIG (SIGTERM) would have ended it by now
        assert server.process.poll() is None
        assert ping(server.host, server.port, password=server.password)
    finally:
        server.stop()
