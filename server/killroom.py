"""``stateroom kill-room``: SIGKILL the process that owns a room and time its recovery.

The owner is found through the room's lease in Redis and its pid through
the server registry. Recovery is observed in Redis, without joining the
room: the room is running again when its journal holds a tick written under
a newer epoch, because a tick is journaled just before it is published.
``unavailable_ms`` runs from the kill to that first tick of the new owner.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from infra.cluster_file import load_cluster
from infra.errors import InfraError
from infra.redis_url import connect as connect_redis
from server.store import RoomStore


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("room", help="room name")
    parser.add_argument("--cluster", required=True, help="cluster.json written by stateroom up")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for recovery")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


class KillRoomError(Exception):
    """The room or its owner could not be found, or it did not recover in time."""


async def kill_room(redis_url: str, room: str, timeout: float = 15.0) -> dict[str, Any]:
    redis = connect_redis(redis_url)
    store = RoomStore(redis)
    try:
        lease = await store.owner(room)
        if lease is None:
            raise KillRoomError(f"room {room!r} has no owner right now (is anybody playing in it?)")
        servers = await store.servers()
        info = servers.get(lease.server_id)
        if info is None:
            raise KillRoomError(f"owner {lease.server_id} of room {room!r} is not registered")
        pid = int(info["pid"])
        before = await store.last_journaled(room)
        last_tick = before[0] if before else 0
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        deadline = killed_at + timeout
        while time.monotonic() < deadline:
            newest = await store.last_journaled(room)
            if newest is not None:
                first_tick, new_epoch = newest
                if new_epoch > lease.epoch:
                    recovered_at = time.monotonic()
                    new = await store.owner(room)
                    return {
                        "room": room,
                        "killed_pid": pid,
                        "old_server": lease.server_id,
                        "new_server": new.server_id if new else None,
                        "old_epoch": lease.epoch,
                        "new_epoch": new_epoch,
                        "last_tick_seen_before_kill": last_tick,
                        "recovered_tick": first_tick - 1,
                        "unavailable_ms": round((recovered_at - killed_at) * 1000, 1),
                    }
            await asyncio.sleep(0.005)
        raise KillRoomError(f"room {room!r} did not run again within {timeout}s")
    finally:
        await redis.aclose()


def run(args: argparse.Namespace) -> int:
    cluster = load_cluster(Path(args.cluster))
    try:
        report = asyncio.run(kill_room(cluster.redis_url, args.room, args.timeout))
    except KillRoomError as exc:
        print(f"kill-room: {exc}")
        return 1
    except (RedisError, InfraError) as exc:
        # The URL carries the password: show it redacted, and scrub the error too.
        print(
            f"kill-room: cannot reach Redis at {cluster.redis_url_redacted}: "
            f"{cluster.scrub(str(exc)) or type(exc).__name__}"
        )
        return 1
    if args.json:
        print(json.dumps(report))
    else:
        r = report
        print(
            f"killed {r['old_server']} (pid {r['killed_pid']}, epoch {r['old_epoch']}); "
            f"room {r['room']} recovered on {r['new_server']} (epoch {r['new_epoch']}) "
            f"at tick {r['recovered_tick']} after {r['unavailable_ms']} ms"
        )
    return 0
