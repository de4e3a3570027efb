"""Cluster-wide quotas kept in Redis: rooms a player may create, sessions it may hold.

A room ticks, journals and checkpoints from the moment it exists, so creating one is
spending the cluster's CPU and Redis: it is a budget, not a free action.

- **Live rooms per creator** (``rooms_per_player``, default 3) and **sessions per
  player** (``sessions_per_player``, default 4) are *slot sets*: a sorted set per player
  whose members (room names) carry an expiry time. A slot is taken atomically (one Lua
  script: drop expired members, refuse at the limit, add), refreshed by the server that
  runs the room or the session (``refresh``, every few seconds, batched), and given back
  when the room closes or the session ends. If every server holding slots dies, they
  expire by themselves within ``SLOT_TTL_MS``; a takeover keeps refreshing them.
- **Room creations per minute**, per player (``rooms_per_minute``, 10) and per client
  address (``rooms_per_address_per_minute``, 60; IPv6 by /64): fixed one-minute windows.

Each key holds one player's or address's data, so every script touches one key and is
Redis Cluster safe.

    sr:quota:rooms:{PLAYER}         zset room -> expiry ms     live rooms created by PLAYER
    sr:quota:sessions:{PLAYER}      zset room -> expiry ms     rooms PLAYER is connected to
    sr:quota:created:{KEY}:MINUTE   int, 61 s TTL              creations in that minute
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from infra.resp_pipeline import RespPipeline
from server.protocol import ErrorCode
from server.turn_batch import TurnBatch

SLOT_TTL_MS = 30_000
REFRESH_EVERY_S = 5.0

_TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return 1
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""

_COUNT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], 61) end
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return 0
end
return 1
"""


@dataclass(frozen=True, slots=True)
class QuotaLimits:
    rooms_per_player: int = 3
    rooms_per_minute: int = 10
    rooms_per_address_per_minute: int = 60
    sessions_per_player: int = 4


class QuotaExceeded(Exception):
    """A quota is used up; ``code`` is the error code sent before close 4011."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def rooms_key(player_id: str) -> str:
    return f"sr:quota:rooms:{{{player_id}}}"


def sessions_key(player_id: str) -> str:
    return f"sr:quota:sessions:{{{player_id}}}"


def _created_key(who: str, minute: int) -> str:
    return f"sr:quota:created:{{{who}}}:{minute}"


class ScriptSubmitter(Protocol):
    """What batches script calls (server/store.py's ScriptBatcher)."""

    def submit(
        self, script: AsyncScript, keys: list[str], args: list[Any]
    ) -> asyncio.Future[Any]: ...


class _SlotReleases(TurnBatch[tuple[str, str], Any]):
    """Slots given back in one event-loop turn, in one round trip.

    A room's players often leave together (a match ends, a network blip, a proxy
    restart): 800 sessions ending at once were 800 ``ZREM`` calls, each awaiting a
    pooled connection of its own, so the pool opened a couple of hundred new Redis
    connections on the event loop (about 1 ms of CPU each) while every room ticked."""

    def __init__(self, redis: aioredis.Redis, pipe: RespPipeline | None) -> None:
        super().__init__()
        self.redis = redis
        self.pipe = pipe

    def release(self, key: str, member: str) -> asyncio.Future[Any]:
        return self._enqueue((key, member))

    async def _send(self, requests: list[tuple[str, str]]) -> list[Any]:
        commands = [("ZREM", key, member) for key, member in requests]
        if self.pipe is not None:
            return await self.pipe.execute(commands)
        async with self.redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute(raise_on_error=False))


class Quotas:
    """The quotas of one room server, on its Redis pool."""

    def __init__(
        self,
        redis: aioredis.Redis,
        limits: QuotaLimits,
        scripts: ScriptSubmitter | None = None,
        pipe: RespPipeline | None = None,
    ) -> None:
        self.redis = redis
        self.limits = limits
        # The room store's script batcher: a dead server's players take their session
        # slots on the survivors all at once, in one round trip per event-loop turn.
        self.scripts = scripts
        # Its lean RESP path (not on a cluster), for the refresh's thousands of commands.
        self.pipe = pipe
        self._releases = _SlotReleases(redis, pipe)
        self._take = redis.register_script(_TAKE_SLOT)
        self._count = redis.register_script(_COUNT)

    async def _take_slot(self, key: str, member: str, limit: int) -> bool:
        now = int(time.time() * 1000)
        args: list[Any] = [now, now + SLOT_TTL_MS, limit, member, SLOT_TTL_MS + 1000]
        if self.scripts is not None:
            return bool(await self.scripts.submit(self._take, [key], args))
        return bool(await self._take(keys=[key], args=args))

    async def reserve_room(self, creator: str, address_bucket: str, room: str) -> None:
        """Charge the creation of ``room`` to its creator and address, or raise."""
        limits = self.limits
        if not await self._take_slot(rooms_key(creator), room, limits.rooms_per_player):
            raise QuotaExceeded(
                ErrorCode.ROOM_QUOTA,
                f"you already run {limits.rooms_per_player} rooms; leave one or join an"
                " existing room",
            )
        minute = int(time.time() // 60)
        counted = await self._count(
            keys=[_created_key(f"p:{creator}", minute)], args=[limits.rooms_per_minute]
        )
        if counted:
            counted = await self._count(
                keys=[_created_key(f"a:{address_bucket}", minute)],
                args=[limits.rooms_per_address_per_minute],
            )
        if not counted:
            await self.release_room(creator, room)
            raise QuotaExceeded(
                ErrorCode.ROOM_QUOTA,
                "too many rooms created from this account or address in the last minute;"
                " retry in a minute",
            )

    async def release_room(self, creator: str, room: str) -> None:
        await self._releases.release(rooms_key(creator), room)

    async def take_session(self, player_id: str, room: str) -> None:
        """Count a session of ``player_id`` in ``room`` (a resume reuses its slot)."""
        limit = self.limits.sessions_per_player
        if not await self._take_slot(sessions_key(player_id), room, limit):
            raise QuotaExceeded(
                ErrorCode.CONNECTION_QUOTA,
                f"at most {limit} rooms at once per player; leave one first",
            )

    async def release_session(self, player_id: str, room: str) -> None:
        await self._releases.release(sessions_key(player_id), room)

    async def refresh(self, rooms: list[tuple[str, str]], sessions: list[tuple[str, str]]) -> None:
        """Extend the slots this server holds: (creator, room) and (player, room) pairs.
        ``ZADD XX`` only: a slot given back meanwhile is not re-created."""
        if not rooms and not sessions:
            return
        expiry = int(time.time() * 1000) + SLOT_TTL_MS
        # One ZADD and one PEXPIRE per key (a creator's rooms, a player's sessions), not
        # per slot: 1,000 rooms of 10 creators are 20 commands, not 2,000 every 5 s.
        slots: dict[str, dict[str, int]] = {}
        for creator, room in rooms:
            slots.setdefault(rooms_key(creator), {})[room] = expiry
        for player_id, room in sessions:
            slots.setdefault(sessions_key(player_id), {})[room] = expiry
        commands: list[tuple[Any, ...]] = []
        for key, members in slots.items():
            flat = [part for member, score in members.items() for part in (score, member)]
            commands.append(("ZADD", key, "XX", *flat))
            commands.append(("PEXPIRE", key, SLOT_TTL_MS + 1000))
        if self.pipe is not None:
            # 800 players are ~2,000 commands: redis-py's Python for them held the loop
            # ~41 ms every REFRESH_EVERY_S; packed and parsed in C, ~3.4 ms of CPU
            # (bench/chores.py). An error reply (a key of the wrong type) is that key's.
            await self.pipe.execute(commands)
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            await pipe.execute()
