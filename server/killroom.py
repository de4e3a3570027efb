"""``stateroom kill-room``: SIGKILL the process that owns a room and time its recovery.

Two steps, kept apart so the launcher's control endpoint can run the first alone:

- ``kill_owner``: find the owner through the room's lease and its pid through the
  server registry, write the room's kill record ``sr:{R}:killed`` (``killed_ms``
  from Redis ``TIME``, pid, server, epoch), SIGKILL it, and return at once.
- ``wait_recovery``: watch Redis, without joining the room. The room runs again
  when its journal holds a tick written under a newer epoch and the new owner's
  takeover record says it published its first tick (the claim journals the claim
  tick before the rebuild); ``unavailable_ms`` runs from the kill to then (this
  machine's clock). Then the timeline is
  read from the new owner's takeover record (Redis's clock, like ``killed_ms``):
  ms since the kill of the detection, claim, restore, first tick and each player's
  return, waiting a short while for the players; one that is not back by then is
  reported missing, not waited for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from infra.cluster_file import DEFAULT_CLUSTER_FILE, load_cluster
from infra.errors import InfraError
from infra.redis_url import connect as connect_redis
from server.store import RoomStore

PLAYERS_WAIT_S = 5.0  # how long the report waits for the restored seats' players


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("room", help="room name")
    parser.add_argument(
        "--cluster",
        type=Path,
        default=DEFAULT_CLUSTER_FILE,
        help=f"cluster.json written by stateroom up (default {DEFAULT_CLUSTER_FILE})",
    )
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for recovery")
    parser.add_argument(
        "--players-wait",
        type=float,
        default=PLAYERS_WAIT_S,
        help=f"seconds to wait for the players to be back (default {PLAYERS_WAIT_S:g})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


class KillRoomError(Exception):
    """The room or its owner could not be found, or it did not recover in time.

    KillRoomError
    ├── NoOwner         the room has no owner, or its owner is not registered
    └── ForeignOwner    the owner's pid is not one the caller may kill
    """


class NoOwner(KillRoomError):
    pass


class ForeignOwner(KillRoomError):
    pass


@dataclass(frozen=True)
class Kill:
    """One SIGKILL of a room's owner, as recorded just before it."""

    room: str
    pid: int
    old_server: str
    old_epoch: int
    killed_ms: int  # Redis TIME
    killed_at: float  # this machine's monotonic clock, for unavailable_ms
    last_tick: int  # the newest tick journaled before the kill

    def report(self) -> dict[str, Any]:
        return {
            "room": self.room,
            "killed_pid": self.pid,
            "old_server": self.old_server,
            "old_epoch": self.old_epoch,
            "killed_ms": self.killed_ms,
        }


async def kill(store: RoomStore, room: str, may_kill: Callable[[int], bool] | None = None) -> Kill:
    """Record and SIGKILL the owner of ``room``. ``may_kill(pid)`` False: ForeignOwner,
    nothing killed (the launcher kills only its own children)."""
    lease = await store.owner(room)
    if lease is None:
        raise NoOwner(f"room {room!r} has no owner right now (is anybody playing in it?)")
    info = (await store.servers()).get(lease.server_id)
    if info is None or not isinstance(info.get("pid"), int):
        raise NoOwner(f"owner {lease.server_id} of room {room!r} is not registered")
    pid = int(info["pid"])
    if may_kill is not None and not may_kill(pid):
        raise ForeignOwner(
            f"owner {lease.server_id} of room {room!r} (pid {pid}) is not a process this "
            "launcher started; not killing it"
        )
    before = await store.last_journaled(room)
    killed_ms = await store.record_kill(lease, pid)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        raise NoOwner(
            f"owner {lease.server_id} of room {room!r} (pid {pid}) is not running here"
        ) from None
    return Kill(
        room,
        pid,
        lease.server_id,
        lease.epoch,
        killed_ms,
        time.monotonic(),
        before[0] if before else 0,
    )


async def kill_owner(
    redis_url: str, room: str, may_kill: Callable[[int], bool] | None = None
) -> dict[str, Any]:
    """SIGKILL the owner of ``room`` and return at once: room, killed_pid, old_server,
    old_epoch, killed_ms."""
    redis = connect_redis(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        return (await kill(RoomStore(redis), room, may_kill)).report()
    finally:
        await redis.aclose()


async def wait_recovery(
    store: RoomStore, done: Kill, timeout: float = 15.0, players_wait: float = PLAYERS_WAIT_S
) -> dict[str, Any]:
    """Wait for the room's first tick under a newer epoch, then read its timeline."""
    deadline = done.killed_at + timeout
    while time.monotonic() < deadline:
        newest = await store.last_journaled(done.room)
        if newest is not None and newest[1] > done.old_epoch:
            if not await _published(store, done.room, newest[1]):
                await asyncio.sleep(0.005)
                continue
            recovered_at = time.monotonic()
            newest_tick, new_epoch = newest
            # This poll may come a tick or two late (a room taken over ticks as it starts,
            # then on the next slot of the clock): its first tick, not its newest.
            first_tick = await store.first_journaled_by(done.room, new_epoch) or newest_tick
            new = await store.owner(done.room)
            return {
                **done.report(),
                "new_server": new.server_id if new else None,
                "new_epoch": new_epoch,
                "last_tick_seen_before_kill": done.last_tick,
                "recovered_tick": first_tick - 1,
                "unavailable_ms": round((recovered_at - done.killed_at) * 1000, 1),
                "timeline": await read_timeline(store, done, new_epoch, players_wait),
            }
        await asyncio.sleep(0.005)
    raise KillRoomError(f"room {done.room!r} did not run again within {timeout}s")


async def _published(store: RoomStore, room: str, epoch: int) -> bool:
    """Whether ``epoch``'s owner has published a tick: its claim journals the claim tick
    before the room is rebuilt (docs/operations.md, "Implied ticks"), so a journal entry
    of the epoch is not enough; its takeover record's first-tick stamp is."""
    record = await store.takeover_record(room)
    return record.get("epoch") != str(epoch) or "first_tick_ms" in record


async def read_timeline(
    store: RoomStore, done: Kill, epoch: int, players_wait: float = PLAYERS_WAIT_S
) -> dict[str, Any]:
    """The takeover record of ``epoch`` as ms since the kill, once every restored seat's
    player is back or ``players_wait`` has passed (then the others are missing)."""
    deadline = time.monotonic() + players_wait
    while True:
        record = await store.takeover_record(done.room)
        ours = record.get("epoch") == str(epoch)
        expected = _expected(record) if ours else []
        back = all(f"player:{p}" in record for p in expected)
        if (ours and "first_tick_ms" in record and back) or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.02)
    if not ours:
        return {"epoch": epoch, "error": "no takeover record of this epoch"}

    def since_kill(field: str) -> int | None:
        value = record.get(field)
        return int(value) - done.killed_ms if value else None

    players = {p: since_kill(f"player:{p}") for p in expected if f"player:{p}" in record}
    return {
        "epoch": epoch,
        "server": record.get("server"),
        "old_server": record.get("old_server"),
        "old_epoch": int(record["old_epoch"]) if record.get("old_epoch") else None,
        "detected_ms": since_kill("detected_ms"),
        "claimed_ms": since_kill("claimed_ms"),
        "restored_ms": since_kill("restored_ms"),
        "first_tick_ms": since_kill("first_tick_ms"),
        "first_tick": int(record["first_tick"]) if record.get("first_tick") else None,
        "players_expected": len(expected),
        "players_ms": players,
        "players_missing": [p for p in expected if p not in players],
    }


def _expected(record: dict[str, str]) -> list[str]:
    try:
        ids = json.loads(record.get("expected_players", "[]"))
    except ValueError:
        return []
    return [str(p) for p in ids] if isinstance(ids, list) else []


async def kill_room(
    redis_url: str, room: str, timeout: float = 15.0, players_wait: float = PLAYERS_WAIT_S
) -> dict[str, Any]:
    """Kill the owner of ``room``, wait for the recovery and report it with its timeline."""
    redis = connect_redis(redis_url)
    store = RoomStore(redis)
    try:
        done = await kill(store, room)
        return await wait_recovery(store, done, timeout, players_wait)
    finally:
        await redis.aclose()


def _timeline_line(timeline: dict[str, Any]) -> str:
    if "error" in timeline:
        return f"timeline: {timeline['error']}"
    parts = [
        f"{name} +{timeline[key]} ms"
        for name, key in (
            ("detected", "detected_ms"),
            ("claimed", "claimed_ms"),
            ("restored", "restored_ms"),
            ("first tick", "first_tick_ms"),
        )
        if timeline.get(key) is not None
    ]
    parts += [f"{player} back +{ms} ms" for player, ms in timeline["players_ms"].items()]
    if timeline["players_missing"]:
        parts.append("missing: " + ", ".join(timeline["players_missing"]))
    return "timeline since the kill: " + "; ".join(parts)


def run(args: argparse.Namespace) -> int:
    if not args.cluster.exists():
        print(
            f"stateroom kill-room: no cluster file at {args.cluster}: start one with "
            "`stateroom up` or pass --cluster",
            file=sys.stderr,
        )
        return 1
    cluster = load_cluster(args.cluster)
    try:
        report = asyncio.run(
            kill_room(cluster.redis_url, args.room, args.timeout, args.players_wait)
        )
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
            f"at tick {r['recovered_tick']} after {r['unavailable_ms']} ms\n"
            + _timeline_line(r["timeline"])
        )
    return 0
