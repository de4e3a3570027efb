"""A read-only view of a cluster, from Redis: servers, rooms, and each room's last recovery.

``stateroom status`` (server/) and the login service's dashboard (auth/) both show it;
the walls keep auth/ from importing server/, so the read lives here, over the shared key
layout (``infra.room_keys``). Nothing here writes.

One clock: the kill and takeover records hold ms since the Unix epoch read from Redis
``TIME`` by whoever wrote them, and "now" below is Redis ``TIME`` too, so a recovery's
durations and the ages shown do not depend on the clocks of the hosts involved.

A recovery, as recorded in Redis:

- ``sr:{R}:killed`` (hash, written by ``kill-room`` or the launcher): ``killed_ms``,
  ``pid``, ``server``, ``epoch`` (the killed owner's);
- ``sr:{R}:takeover`` (hash, written by the new owner): ``epoch``, ``server``,
  ``old_server``, ``old_epoch``, ``detected_ms``, ``claimed_ms``, ``restored_ms``,
  ``first_tick_ms``, ``first_tick``, ``players_expected``, ``player:<id>`` = when
  that player's session resumed on the new owner, and ``gone:<id>`` = when a restored
  seat's grace period ran out before its player came back (it no longer holds the
  recovery open).

``timeline`` turns the two into steps (kill -> claim -> first tick -> each player back);
a kill and a takeover belong to the same recovery when ``takeover.old_epoch ==
kill.epoch``, and only then do steps carry ``since_kill_ms``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from infra import liveness, rooms_index
from infra.redis_url import is_cluster
from infra.room_keys import LOAD_KEY, SERVERS_KEY, room_keys, rooms_index_key

PLAYER_FIELD = "player:"
GONE_FIELD = "gone:"  # a restored seat whose grace period ran out before its player came back
# Order of steps that tie at one ms.
STEP_ORDER = {"kill": 0, "claim": 1, "first_tick": 2, "player_back": 3, "player_gone": 4}


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int | None:
    """An integer field of a record, or None when absent or not an integer."""
    if value is None:
        return None
    try:
        return int(_s(value))
    except ValueError:
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _decoded(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in raw.items()}


# ---------------------------------------------------------------- recovery records


@dataclass(frozen=True)
class Kill:
    """The last SIGKILL of a room's owner (``sr:{R}:killed``)."""

    killed_ms: int
    pid: int | None
    server: str
    epoch: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "killed_ms": self.killed_ms,
            "pid": self.pid,
            "server": self.server,
            "epoch": self.epoch,
        }


@dataclass(frozen=True)
class Takeover:
    """The last takeover of a room by a new owner (``sr:{R}:takeover``).

    The new owner may write it in steps (claim first, players as they come back), so
    every time is optional.
    """

    epoch: int
    server: str
    old_server: str
    old_epoch: int | None
    detected_ms: int | None = None
    claimed_ms: int | None = None
    restored_ms: int | None = None
    first_tick_ms: int | None = None
    first_tick: int | None = None
    players_expected: int | None = None
    players_back: dict[str, int] = field(default_factory=dict)
    players_gone: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "server": self.server,
            "old_server": self.old_server,
            "old_epoch": self.old_epoch,
            "detected_ms": self.detected_ms,
            "claimed_ms": self.claimed_ms,
            "restored_ms": self.restored_ms,
            "first_tick_ms": self.first_tick_ms,
            "first_tick": self.first_tick,
            "players_expected": self.players_expected,
            "players_back": dict(sorted(self.players_back.items(), key=lambda kv: kv[1])),
            "players_gone": dict(sorted(self.players_gone.items(), key=lambda kv: kv[1])),
        }


def parse_kill(raw: Mapping[Any, Any]) -> Kill | None:
    """The kill record, or None when there is none (or it has no ``killed_ms``)."""
    record = _decoded(raw)
    killed_ms = _int(record.get("killed_ms"))
    if killed_ms is None:
        return None
    return Kill(
        killed_ms=killed_ms,
        pid=_int(record.get("pid")),
        server=record.get("server", ""),
        epoch=_int(record.get("epoch")),
    )


def parse_takeover(raw: Mapping[Any, Any]) -> Takeover | None:
    """The takeover record, or None when there is none (or it has no ``epoch``)."""
    record = _decoded(raw)
    epoch = _int(record.get("epoch"))
    if epoch is None:
        return None
    back: dict[str, int] = {}
    gone: dict[str, int] = {}
    for key, value in record.items():
        for prefix, into in ((PLAYER_FIELD, back), (GONE_FIELD, gone)):
            if key.startswith(prefix) and len(key) > len(prefix):
                at = _int(value)
                if at is not None:
                    into[key[len(prefix) :]] = at
    return Takeover(
        epoch=epoch,
        server=record.get("server", ""),
        old_server=record.get("old_server", ""),
        old_epoch=_int(record.get("old_epoch")),
        detected_ms=_int(record.get("detected_ms")),
        claimed_ms=_int(record.get("claimed_ms")),
        restored_ms=_int(record.get("restored_ms")),
        first_tick_ms=_int(record.get("first_tick_ms")),
        first_tick=_int(record.get("first_tick")),
        players_expected=_int(record.get("players_expected")),
        players_back=back,
        players_gone=gone,
    )


@dataclass(frozen=True)
class Timeline:
    """The steps of a room's last recovery, and whether it is over."""

    steps: list[dict[str, Any]]
    # The kill and the takeover are of the same owner (takeover.old_epoch == kill.epoch).
    of_kill: bool
    # Claimed, first tick journaled, and every player expected is back.
    complete: bool
    players_expected: int | None
    players_back: int

    def summary(self) -> dict[str, Any]:
        first_tick = next((s for s in self.steps if s["step"] == "first_tick"), None)
        return {
            "steps": len(self.steps),
            "of_kill": self.of_kill,
            "complete": self.complete,
            "players_expected": self.players_expected,
            "players_back": self.players_back,
            # kill -> first tick of the new owner: how long the room did not run
            "unavailable_ms": first_tick["since_kill_ms"] if first_tick else None,
        }


def timeline(kill: Kill | None, takeover: Takeover | None) -> Timeline:
    """Steps kill -> claim -> first_tick -> player_back (one per player), in time order.

    Each step is ``{"step", "at_ms", "since_kill_ms"}`` plus what it is about
    (``server``/``epoch``, ``tick``, ``player``). A kill newer than the takeover (the new
    owner has not written its record yet) gives the kill alone, not complete; a takeover
    with no kill of its owner (a crash, a freeze) gives its steps with ``since_kill_ms``
    None.
    """
    of_kill = (
        kill is not None
        and takeover is not None
        and kill.epoch is not None
        and takeover.old_epoch == kill.epoch
    )
    if kill is not None and not of_kill:
        stale_takeover = (
            takeover is None
            or takeover.old_epoch is None
            or kill.epoch is None
            or takeover.old_epoch < kill.epoch
        )
        if stale_takeover:
            takeover = None  # the recovery of this kill has not been recorded yet
        else:
            kill = None  # a later takeover that no kill caused
    base = kill.killed_ms if kill is not None and of_kill else None

    def step(name: str, at_ms: int, **about: Any) -> dict[str, Any]:
        since = at_ms - base if base is not None else None
        return {"step": name, "at_ms": at_ms, "since_kill_ms": since, **about}

    steps: list[dict[str, Any]] = []
    if kill is not None:
        steps.append(step("kill", kill.killed_ms, server=kill.server, epoch=kill.epoch))
    if takeover is None:
        return Timeline(steps, of_kill=False, complete=False, players_expected=None, players_back=0)
    if takeover.claimed_ms is not None:
        steps.append(
            step("claim", takeover.claimed_ms, server=takeover.server, epoch=takeover.epoch)
        )
    if takeover.first_tick_ms is not None:
        steps.append(step("first_tick", takeover.first_tick_ms, tick=takeover.first_tick))
    for player, at_ms in sorted(takeover.players_back.items(), key=lambda kv: (kv[1], kv[0])):
        steps.append(step("player_back", at_ms, player=player))
    for player, at_ms in sorted(takeover.players_gone.items(), key=lambda kv: (kv[1], kv[0])):
        steps.append(step("player_gone", at_ms, player=player))
    # In time order: a player's session may resume before the room's first tick.
    steps.sort(key=lambda s: (s["at_ms"], STEP_ORDER[s["step"]]))
    expected = takeover.players_expected
    complete = (
        takeover.claimed_ms is not None
        and takeover.first_tick_ms is not None
        and len(takeover.players_back) + len(takeover.players_gone) >= (expected or 0)
    )
    return Timeline(
        steps,
        of_kill=of_kill,
        complete=complete,
        players_expected=expected,
        players_back=len(takeover.players_back),
    )


# ---------------------------------------------------------------- reading Redis


async def redis_now_ms(redis: aioredis.Redis) -> int:
    """Redis ``TIME`` in ms: the clock the recovery records use."""
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def read_servers(redis: aioredis.Redis) -> dict[str, dict[str, Any]]:
    """The server registry (``sr:servers``); an entry that is not a JSON object is skipped."""
    raw = await redis.hgetall(SERVERS_KEY)
    servers: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        try:
            info = json.loads(value)
        except ValueError:
            continue
        if isinstance(info, dict):
            servers[_s(key)] = info
    return servers


async def live_server_ids(
    redis: aioredis.Redis, servers: Mapping[str, Mapping[str, Any]] | None = None
) -> set[str]:
    """Servers whose liveness connection (client name ``sr:<id>``) is open right now.

    The same read as the room servers' own (``infra.liveness``): with the registry at hand
    only the registered liveness connections are listed; on a Redis Cluster each server's
    node is asked.
    """
    return await liveness.live_server_ids(redis, servers)


async def live_servers(redis: aioredis.Redis) -> list[dict[str, str]]:
    """``[{"id", "ws_url"}]`` of the live room servers, by id."""
    servers = await read_servers(redis)
    live = await live_server_ids(redis, servers) if servers else set()
    return [
        {"id": sid, "ws_url": str(info["ws_url"])}
        for sid, info in sorted(servers.items())
        if sid in live and isinstance(info.get("ws_url"), str) and info["ws_url"]
    ]


def _room_stats(info: Mapping[str, Any], room: str) -> dict[str, Any]:
    stats = info.get("room_stats")
    if not isinstance(stats, dict):
        return {}
    found = stats.get(room)
    return found if isinstance(found, dict) else {}


def _room_players(info: Mapping[str, Any], room: str) -> int | None:
    players = _count(_room_stats(info, room).get("players"))
    if players is not None:
        return players
    by_room = info.get("room_players")
    return _count(by_room.get(room)) if isinstance(by_room, dict) else None


def _server_row(
    sid: str, info: Mapping[str, Any], live: set[str], load: float | None, now_ms: int
) -> dict[str, Any]:
    heartbeat = _number(info.get("heartbeat_at"))
    return {
        "id": sid,
        "ws_url": info.get("ws_url"),
        "admin_url": info.get("admin_url"),
        "pid": info.get("pid"),
        "live": sid in live,
        "rooms": _count(info.get("rooms")) or 0,
        "players": _count(info.get("players")) or 0,
        "load": int(load) if load is not None else None,
        "heartbeat_age_s": (
            round(max(0.0, now_ms / 1000 - heartbeat), 1) if heartbeat is not None else None
        ),
    }


def _room_row(
    name: str,
    entry: Mapping[str, Any],
    replies: list[Any],
    servers: Mapping[str, Mapping[str, Any]],
    live: set[str],
    now_ms: int,
    records: bool,
) -> dict[str, Any]:
    lease_raw, journal, (ckpt_tick, ckpt_at), killed_raw, takeover_raw = replies
    owner: str | None = None
    epoch = _count(entry.get("epoch"))
    if lease_raw:
        epoch_text, _, owner = _s(lease_raw).partition("|")
        epoch = _int(epoch_text)
    info = servers.get(owner, {}) if owner else {}
    stats = _room_stats(info, name)
    tick = None
    if journal:
        tick = _int(_s(journal[0][0]).partition("-")[0])
    if tick is None:
        tick = _count(stats.get("tick"))
    kill = parse_kill(killed_raw or {})
    takeover = parse_takeover(takeover_raw or {})
    recovery = timeline(kill, takeover)
    at = _int(ckpt_at)
    row = {
        "room": name,
        "game": entry.get("game"),
        "owner": owner,
        "owner_live": bool(owner and owner in live),
        "epoch": epoch,
        "tick": tick or 0,
        "players": _room_players(info, name) if owner else None,
        "checkpoint_tick": _int(ckpt_tick),
        "checkpoint_age_s": round(max(0, now_ms - at) / 1000, 2) if at is not None else None,
        "tick_ms": _number(stats.get("tick_ms")),
        "state_bytes": _count(stats.get("state_bytes")),
        "inputs_per_s": _number(stats.get("inputs_per_s")),
        "recovery": recovery.summary(),
    }
    if records:
        row["kill"] = kill.to_json() if kill else None
        row["takeover"] = takeover.to_json() if takeover else None
        row["timeline"] = recovery.steps
    return row


async def _rooms(
    redis: aioredis.Redis,
    names: Sequence[tuple[str, Mapping[str, Any]]],
    servers: Mapping[str, Mapping[str, Any]],
    live: set[str],
    now_ms: int,
    records: bool = True,
) -> list[dict[str, Any]]:
    """One pipeline for every room: lease, newest journal entry, checkpoint, records."""
    async with redis.pipeline(transaction=False) as pipe:
        for name, _ in names:
            keys = room_keys(name)
            pipe.get(keys["lease"])
            pipe.xrevrange(keys["journal"], count=1)
            pipe.hmget(keys["ckpt"], ["tick", "at"])
            pipe.hgetall(keys["killed"])
            pipe.hgetall(keys["takeover"])
        replies: list[Any] = await pipe.execute()
    return [
        _room_row(name, entry, replies[5 * i : 5 * i + 5], servers, live, now_ms, records)
        for i, (name, entry) in enumerate(names)
    ]


async def _rooms_index(redis: aioredis.Redis) -> dict[str, dict[str, Any]]:
    """The rooms index (``sr:rooms``, or its buckets on a Redis Cluster)."""
    return await rooms_index.read(redis)


async def collect(
    redis: aioredis.Redis, *, max_rooms: int | None = None, records: bool = True
) -> dict[str, Any]:
    """``{"now_ms", "servers": [...], "rooms": [...], "rooms_total"}``, rooms by name.

    ``max_rooms`` bounds the rooms read (the first ones by name), for a view that
    polls; ``rooms_total`` says how many there are. ``records`` False leaves each room's
    ``kill``, ``takeover`` and ``timeline`` out (``recovery`` sums them up): a view that
    polls fetches one room's records when it shows them.
    """
    now_ms = await redis_now_ms(redis)
    servers = await read_servers(redis)
    live = await live_server_ids(redis, servers) if servers else set()
    scored: list[Any] = await redis.zrange(LOAD_KEY, 0, -1, withscores=True)
    loads = {_s(k): float(v) for k, v in scored}
    index = await _rooms_index(redis)
    names = sorted(index.items())
    shown = names if max_rooms is None else names[:max_rooms]
    return {
        "now_ms": now_ms,
        "servers": [
            _server_row(sid, info, live, loads.get(sid), now_ms)
            for sid, info in sorted(servers.items())
        ],
        "rooms": await _rooms(redis, shown, servers, live, now_ms, records),
        "rooms_total": len(names),
    }


async def room_detail(redis: aioredis.Redis, room: str) -> dict[str, Any] | None:
    """One room in detail (the row of ``collect`` plus its lease TTL, options, journal
    length and the owner's URL), or None when Redis knows nothing of it."""
    keys = room_keys(room)
    now_ms = await redis_now_ms(redis)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hget(rooms_index_key(room, is_cluster(redis)), room)
        pipe.exists(keys["lease"], keys["meta"], keys["killed"], keys["takeover"])
        pipe.pttl(keys["lease"])
        pipe.hmget(keys["meta"], ["game", "options", "created"])
        pipe.xlen(keys["journal"])
        (
            entry_raw,
            known,
            lease_ttl,
            (game, options_raw, created),
            journal_length,
        ) = await pipe.execute()
    if entry_raw is None and not known:
        return None
    try:
        entry = json.loads(entry_raw) if entry_raw is not None else {}
    except ValueError:
        entry = {}
    if not isinstance(entry, dict):
        entry = {}
    if game is not None and "game" not in entry:
        entry["game"] = _s(game)
    servers = await read_servers(redis)
    live = await live_server_ids(redis, servers) if servers else set()
    (row,) = await _rooms(redis, [(room, entry)], servers, live, now_ms)
    try:
        options = json.loads(options_raw) if options_raw is not None else None
    except ValueError:
        options = None
    owner_info = servers.get(row["owner"] or "", {})
    row.update(
        {
            "now_ms": now_ms,
            "owner_ws_url": owner_info.get("ws_url") if row["owner"] else None,
            "lease_ttl_ms": int(lease_ttl) if int(lease_ttl) >= 0 else None,
            "options": options if isinstance(options, dict) else None,
            "created": _int(created),
            "journal_length": int(journal_length),
        }
    )
    return row
