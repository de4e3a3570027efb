"""CPU of a room server holding many rooms with nobody in them (issue 10, deliverable 5).

Valkey + auth + ONE durable room server (as ``bench/arena.py`` starts them, the server and
Valkey on CPU 0). R rooms are made the way real ones become idle: a player joins, plays
one input (the state acks it), then either disconnects (its seat waits out its grace
period: ``grace`` rooms) or sends ``leave`` (the room, played and empty, waits
``empty_room_s`` before closing: ``empty`` rooms). Grace and the empty-room time are
raised to 600 s so every room is still there during the window. After ``--settle``
seconds the server's CPU (utime + stime from /proc) is measured over ``--seconds``.

``--compare REF`` measures REF's room server the same way in the same run (a git
worktree, as ``bench/arena.py --compare``), first REF then this tree.

``--servers 2`` runs two room servers (both on CPU 0 with Valkey) and lets placement
spread the rooms over them: then each server's failover watcher also watches the
other's rooms, which is where the cost of reading every peer's lease on every poll
showed. ``server_cpu_cores`` is then the sum of the servers' CPU (what the deployment
pays for its idle rooms), ``per_server_cores`` each one's.

Prints ONE JSON object: per tree the rooms made, the server's CPU in cores over the
window, Valkey's, the ticks journaled per second (the server's tick counter), RSS, and
the paused-rooms gauge where the server has one; with ``--compare`` the ratio.

    .venv/bin/python bench/idle_rooms.py                    # 1000 rooms, ~1 min
    .venv/bin/python bench/idle_rooms.py --compare 6c5cf3a  # and the same on 6c5cf3a
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import msgpack
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.arena import Tree, current_tree, drop_ref_tree, ref_tree
from bench.common import (
    CpuWindow,
    Stack,
    cpu_count,
    emit,
    log,
    metric_delta,
    proc_rss_mb,
    scrape,
)

SERVER_ARGS = [
    "--grace-s", "600",
    "--empty-room-s", "600",
    "--rooms-per-player", "1000000",
    "--rooms-per-minute", "1000000",
    "--sessions-per-player", "1000000",
    "--max-rooms", "100000",
]  # fmt: skip


async def make_room(ws_url: str, token: str, room: str, leave: bool) -> None:
    """``join_and_play``, retried while the server answers ``unavailable`` or closes the
    connection with a reconnect code (a busy server, e.g. an old one creating hundreds
    of rooms at once, or a room that moved meanwhile on a loaded machine)."""
    for attempt in range(20):
        try:
            await join_and_play(ws_url, token, room, leave)
            return
        except Unavailable:
            pass
        except websockets.ConnectionClosedError as exc:
            if exc.rcvd is None or exc.rcvd.code not in RECONNECT_CODES:
                raise
        await asyncio.sleep(0.1 * (attempt + 1))
    raise RuntimeError(f"join {room}: still unavailable after 20 attempts")


# Close codes that tell a client to reconnect (docs/protocol.md): the room moved (4020,
# 4021) or closed before it was played (4030: a new join makes it again).
RECONNECT_CODES = {4020, 4021, 4030}


class Unavailable(Exception):
    """The server answered the join with ``unavailable``: retry."""


class Redirected(Exception):
    """The server sent the join to the room's (or placement's) server: go there."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


async def join_and_play(ws_url: str, token: str, room: str, leave: bool) -> None:
    """Join ``room`` (following one redirect), get one input acked, then disconnect (or
    leave the room)."""
    try:
        await _join_and_play(ws_url, token, room, leave)
    except Redirected as redirect:
        await _join_and_play(redirect.url, token, room, leave)


async def _join_and_play(ws_url: str, token: str, room: str, leave: bool) -> None:
    async with websockets.connect(
        ws_url,
        subprotocols=["stateroom.v1.msgpack"],  # type: ignore[list-item]
        open_timeout=30,
    ) as ws:
        await ws.send(msgpack.packb({"t": "join", "room": room, "token": token, "v": 1}))
        welcome = msgpack.unpackb(await ws.recv())
        if welcome.get("t") == "error" and welcome.get("code") == "unavailable":
            raise Unavailable(welcome.get("message"))
        if welcome.get("t") == "redirect" and welcome.get("url"):
            raise Redirected(str(welcome["url"]))
        if welcome.get("t") != "welcome":
            raise RuntimeError(f"join {room}: {welcome}")
        await ws.send(msgpack.packb({"t": "input", "seq": 1, "data": {"dx": 0.0, "dy": 0.0}}))
        while True:
            message = msgpack.unpackb(await ws.recv())
            if message.get("t") == "state" and message.get("ack") == 1:
                break
        if leave:
            await ws.send(msgpack.packb({"t": "leave"}))
            await ws.wait_closed()


async def make_rooms(stack: Stack, count: int, players: int) -> float:
    """``count`` idle rooms (half grace, half empty), ``players`` guests making them in
    parallel; returns the seconds it took."""
    started = time.monotonic()
    ws_url = stack.ws_url(stack.children[0])
    auth_url = json.loads(stack.cluster_file.read_text())["auth_url"]
    async with httpx.AsyncClient(base_url=auth_url, timeout=30) as http:
        tokens = [
            (await http.post("/v1/guest", json={})).json()["access_token"] for _ in range(players)
        ]

    async def player(index: int) -> None:
        for n in range(index, count, players):
            await make_room(ws_url, tokens[index], f"idle-{n}", leave=n % 2 == 1)

    await asyncio.gather(*(player(i) for i in range(players)))
    return time.monotonic() - started


def measure(tree: Tree, opts: argparse.Namespace) -> dict[str, Any]:
    two = cpu_count() >= 2
    stack = Stack(
        servers=opts.servers,
        server_args=list(SERVER_ARGS),
        server_cpus={0} if two else None,
        redis_cpus={0} if two else None,
        auth_cpus={1} if two else None,
        server_root=tree.root,
    )
    stack.start()
    try:
        servers = stack.children
        assert all(c.pid for c in servers) and stack.redis is not None and stack.redis.pid
        log(f"{tree.name}: making {opts.rooms} idle rooms on {len(servers)} server(s)")
        made_s = asyncio.run(make_rooms(stack, opts.rooms, opts.players))
        time.sleep(opts.settle)
        metrics_urls = [stack.metrics_url(c) for c in servers]
        before = [scrape(url) for url in metrics_urls]
        pids: dict[str, int] = {c.name: c.pid for c in servers if c.pid is not None}
        window = CpuWindow({**pids, "redis": stack.redis.pid})
        window.start()
        time.sleep(opts.seconds)
        window.stop()
        after = [scrape(url) for url in metrics_urls]

        def total(name: str) -> float:
            return sum(a.get(name, 0.0) for a in after)

        ticks = sum(
            metric_delta(a, b, "stateroom_tick_seconds_count")
            for a, b in zip(after, before, strict=True)
        )
        paused = all("stateroom_rooms_paused" in a for a in after)
        per_server = {name: round(window.cores(name), 4) for name in pids}
        point: dict[str, Any] = {
            "tree": tree.name,
            "commit": tree.commit[:10],
            "servers": len(servers),
            "rooms_made": opts.rooms,
            "rooms_running": int(total("stateroom_rooms")),
            "rooms_paused": int(total("stateroom_rooms_paused")) if paused else None,
            "make_s": round(made_s, 1),
            "server_cpu_cores": round(sum(window.cores(name) for name in pids), 4),
            "per_server_cores": per_server,
            "redis_cpu_cores": round(window.cores("redis"), 4),
            "ticks_per_s": round(ticks / opts.seconds, 1),
            "rss_mb": round(sum(proc_rss_mb(pid) for pid in pids.values()), 1),
        }
        log(
            f"{tree.name}: {point['rooms_running']} rooms, server {point['server_cpu_cores']}"
            f" cores, valkey {point['redis_cpu_cores']}, {point['ticks_per_s']} ticks/s"
        )
        return point
    finally:
        stack.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--players", type=int, default=20, help="guests making the rooms")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before the window")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window")
    parser.add_argument("--compare", metavar="REF", help="also measure REF's room server")
    parser.add_argument(
        "--servers", type=int, default=1, help="room servers (placement spreads the rooms)"
    )
    opts = parser.parse_args()
    # SIGTERM ends the run like Ctrl-C: the stacks and the worktree are stopped/removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if opts.rooms < 1 or opts.players < 1 or opts.seconds <= 0 or opts.settle < 0:
        parser.error("--rooms and --players must be >= 1, --seconds > 0, --settle >= 0")
    if opts.servers < 1:
        parser.error("--servers must be >= 1")
    started = time.monotonic()
    trees = [current_tree()]
    with tempfile.TemporaryDirectory(prefix="stateroom-idle-") as parent:
        if opts.compare:
            trees.insert(0, ref_tree(opts.compare, Path(parent)))
        try:
            points = [measure(tree, opts) for tree in trees]
        finally:
            for tree in trees:
                if tree.name == "ref":
                    drop_ref_tree(tree)
    result: dict[str, Any] = {
        "bench": "idle_rooms",
        "points": points,
        "target": "server_cpu_cores < 0.05 with 1000 idle rooms",
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    if len(points) == 2 and points[0]["server_cpu_cores"]:
        result["ratio"] = round(points[1]["server_cpu_cores"] / points[0]["server_cpu_cores"], 3)
    result["met"] = points[-1]["server_cpu_cores"] < 0.05
    emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
