"""``stateroom status``: servers, rooms, owners, epochs, ticks, players, checkpoint age."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from infra.cluster_file import load_cluster
from infra.errors import InfraError
from infra.redis_url import connect as connect_redis
from server.store import RoomStore, room_keys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", required=True, help="cluster.json written by stateroom up")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


async def collect(redis_url: str) -> dict[str, Any]:
    redis = connect_redis(redis_url)
    store = RoomStore(redis)
    try:
        live = await store.live_server_ids()
        servers = await store.servers()
        now = time.time()
        server_rows = [
            {
                "id": sid,
                "ws_url": info.get("ws_url"),
                "pid": info.get("pid"),
                "live": sid in live,
                "rooms": info.get("rooms", 0),
                "players": info.get("players", 0),
                "heartbeat_age_s": round(now - float(info.get("heartbeat_at", now)), 1),
            }
            for sid, info in sorted(servers.items())
        ]
        rooms = []
        for name, entry in sorted((await store.rooms_index()).items()):
            keys = room_keys(name)
            lease = await store.owner(name)
            last = await store.last_journaled(name)
            ckpt_tick, ckpt_at = await redis.hmget(keys["ckpt"], ["tick", "at"])
            tick = last[0] if last else 0
            players = None
            if lease is not None:
                players = servers.get(lease.server_id, {}).get("room_players", {}).get(name)
            rooms.append(
                {
                    "room": name,
                    "game": entry.get("game"),
                    "owner": lease.server_id if lease else None,
                    "owner_live": bool(lease and lease.server_id in live),
                    "epoch": lease.epoch if lease else entry.get("epoch"),
                    "tick": tick,
                    "players": players,
                    "checkpoint_tick": int(ckpt_tick) if ckpt_tick else None,
                    "checkpoint_age_s": round(now - int(ckpt_at) / 1000, 2) if ckpt_at else None,
                }
            )
        return {"servers": server_rows, "rooms": rooms}
    finally:
        await redis.aclose()


def run(args: argparse.Namespace) -> int:
    cluster = load_cluster(Path(args.cluster))
    try:
        report = asyncio.run(collect(cluster.redis_url))
    except (RedisError, OSError, InfraError) as exc:
        # The URL carries the password: show it redacted, and scrub the error too.
        print(
            f"status: cannot read the cluster from Redis at {cluster.redis_url_redacted}: "
            f"{cluster.scrub(str(exc)) or type(exc).__name__}",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{'SERVER':<16} {'LIVE':<5} {'PID':>7} {'ROOMS':>5} {'PLAYERS':>7}  URL")
    for s in report["servers"]:
        live = "yes" if s["live"] else "NO"
        print(
            f"{s['id']:<16} {live:<5} {s['pid']!s:>7} {s['rooms']:>5} {s['players']:>7}  "
            f"{s['ws_url']}"
        )
    print()
    header = ("ROOM", "GAME", "OWNER", "EPOCH", "TICK", "PLAYERS", "CKPT AGE")
    print("{:<20} {:<8} {:<16} {:>5} {:>8} {:>7} {:>8}".format(*header))
    for r in report["rooms"]:
        print(
            f"{r['room']:<20} {r['game'] or '-':<8} {r['owner'] or '(none)':<16} {r['epoch']!s:>5} "
            f"{r['tick']:>8} {r['players'] if r['players'] is not None else '-'!s:>7} "
            f"{r['checkpoint_age_s'] if r['checkpoint_age_s'] is not None else '-'!s:>8}"
        )
    return 0
