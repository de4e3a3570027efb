"""Everything a room server keeps in Redis: directory, fenced leases, journal, checkpoints.

Keys of one room share the ``{room}`` hash tag, so a room lives in one Redis
Cluster slot and its scripts run atomically:

    sr:{R}:lease     "EPOCH|SERVER"  with a TTL      who owns R right now (the fence)
    sr:{R}:epoch     int, INCR on every claim        monotonic ownership counter
    sr:{R}:meta      hash: game, seed, creator, options (JSON), code (private rooms),
                     owner, url, epoch, last_owner (kept when a release clears owner), created
    sr:{R}:journal   stream, one entry per tick, ID "TICK-EPOCH", field e = events
    sr:{R}:ckpt      hash: tick, epoch, at (ms), data (msgpack snapshot); :ckpt:prev the one before
    sr:{R}:events    stream, one entry per tick that emitted game events, ID "TICK-EPOCH",
                     field v = [[data, recipients|nil], ...]; the last grace period's ticks
    sr:{R}:takeover  hash, the last takeover's timeline (TTL 1 h), written by the new
                     owner: epoch, server, old_server, old_epoch, detected_ms, claimed_ms
                     (in the claim script), restored_ms, players_expected,
                     expected_players, first_tick_ms, first_tick, player:ID (stamps),
                     stamped_ms (the last stamp's time, which keeps them in order)
    sr:{R}:killed    hash, the last kill by kill-room (TTL 1 h): killed_ms, pid, server,
                     epoch

Times in the takeover and kill records are Redis ``TIME`` in ms since the Unix epoch:
one clock for every server and tool, so the durations between them are real.

Global, advisory keys (not needed for correctness):

    sr:servers       hash SERVER -> JSON {ws_url, pid, rooms, players, room_stats, ...}
                     the full registry entries (what the tools show)
    sr:live          hash SERVER -> JSON {ws_url, rooms, liveness_id, liveness_node, ...}
                     the compact part every server polls (``servers()``)
    sr:rooms         hash ROOM -> JSON {owner, epoch, game} (infra/rooms_index.py; on a
                     Redis Cluster split into 16 buckets sr:rooms:{rooms:NN})
    sr:load          zset SERVER -> rooms (+ placements not yet claimed)
    {sr:load}:placed:R  SERVER chosen for a new room R, for a few seconds (in the slot
                     of sr:load, so the placement script touches one slot)

Fencing: every write of a room is a Lua script that first checks that the
lease still holds this owner's ``EPOCH|SERVER``; a stale owner gets
``FENCED`` and can never write again. A journal append also extends the
lease, so a ticking room renews it every tick for free.

Liveness: each server keeps one connection named ``sr:SERVER``. When a
process dies, the kernel closes that socket and Redis drops the client at
once, so peers see a killed owner in one poll of ``CLIENT LIST`` instead of
waiting out the lease. A frozen or cut-off owner keeps its socket (or
Redis cannot tell), so peers wait for its lease to expire. On a Redis Cluster
``CLIENT LIST`` is per node: see infra/liveness.py.

Redis Cluster: every script touches keys of one slot (tests/test_script_slots.py lists
them all), and the multi-key reads (``MGET`` of leases, ``TIME`` next to them) are split
by slot where a cluster needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import orjson
import redis.asyncio as aioredis
from redis._parsers.helpers import parse_client_list
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisError, ResponseError

# Re-exported: the key layout moved to infra/ so read-only tools can share it.
from infra import rooms_index
from infra.cluster_pipeline import per_node
from infra.liveness import LivenessCheck
from infra.redis_scripts import ScriptCall
from infra.redis_url import is_cluster
from infra.resp_pipeline import RespPipeline
from infra.room_keys import LIVE_KEY as LIVE_KEY
from infra.room_keys import LIVENESS_PREFIX as LIVENESS_PREFIX
from infra.room_keys import LOAD_KEY as LOAD_KEY
from infra.room_keys import ROOMS_KEY as ROOMS_KEY
from infra.room_keys import SERVERS_KEY as SERVERS_KEY
from infra.room_keys import lease_key, rooms_index_key
from infra.room_keys import liveness_name as liveness_name
from infra.room_keys import room_keys as room_keys
from server.durability import Durability
from server.errors import OwnershipLost
from server.turn_batch import TurnBatch

# How often ``servers()`` re-reads the full registry entries (several KB each); the
# compact liveness records are read on every call.
REGISTRY_EVERY_S = 1.0
# Longest the last registry read stands in for one that failed (a cluster shard failing
# over): a server registered later, or re-registered with a new liveness id, waits that long.
STALE_REGISTRY_S = 5.0
# The fields of a registry entry every server polls (the compact record, sr:live).
LIVE_FIELDS = ("ws_url", "rooms", "players", "liveness_id", "liveness_node", "name", "pid")


def placed_key(room: str) -> str:
    """Where placement keeps the server chosen for new room ``room``: in sr:load's slot."""
    return f"{{{LOAD_KEY}}}:placed:{room}"


_PLACE = """
local placed = redis.call('GET', KEYS[2])
if placed then return placed end
local best, best_load = nil, nil
for i = 3, #ARGV do
  local load = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i]) or '0')
  if best == nil or load < best_load then best, best_load = ARGV[i], load end
end
if best == nil or best_load >= tonumber(ARGV[2]) then return '' end
redis.call('ZINCRBY', KEYS[1], 1, best)
redis.call('SET', KEYS[2], best, 'PX', ARGV[1])
return best
"""

# The lease, its remaining ms and the clock of the room's node, in one read of one slot
# (a cluster refuses TIME in a pipeline; and this is the clock the claim script uses).
_LEASE_AND_TIME = """
local t = redis.call('TIME')
return {redis.call('GET', KEYS[1]) or '', redis.call('PTTL', KEYS[1]), t[1], t[2]}
"""

# Redis Cluster only: the watcher's read of many leases that one node serves, in one
# command and with the node's clock. The one script that is not one-slot, and why that is
# safe: it writes nothing (``no-writes``), so there is no atomicity to keep across slots;
# its keys are ARGV (a cluster client would route KEYS by slot) and all served by the node
# it is sent to (``allow-cross-slot-keys``); a key the node no longer serves (a slot
# moving) fails the call, and the watcher skips that node for one poll. Why a script: a
# client pipeline of 950 GETs costs the room server ~20 ms of Python per poll; this, ~2 ms.
_LEASES_ON_NODE = """#!lua flags=no-writes,allow-cross-slot-keys
local t = redis.call('TIME')
local out = {t[1], t[2]}
for i, key in ipairs(ARGV) do out[i + 2] = redis.call('GET', key) or '' end
return out
"""

# Redis TIME as milliseconds since the Unix epoch, a string (one clock for every server).
_NOW_MS = """
local t = redis.call('TIME')
local now = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
"""

_CLAIM = (
    """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[4] then return {0, cur, ''} end
local existed = redis.call('HEXISTS', KEYS[3], 'game') == 1
if ARGV[8] == '1' and not existed then return {0, '', ''} end
local old_epoch = redis.call('GET', KEYS[2]) or ''
local old_server = ''
if cur then
  old_server = string.match(cur, '^[^|]*|(.*)$') or ''
elseif existed then
  local prev = redis.call('HMGET', KEYS[3], 'last_owner', 'owner')
  old_server = prev[1] or prev[2] or ''
end
local epoch = redis.call('INCR', KEYS[2])
local lease = epoch .. '|' .. ARGV[1]
redis.call('SET', KEYS[1], lease, 'PX', ARGV[3])
if not existed then
  redis.call('HSET', KEYS[3], 'game', ARGV[5], 'seed', ARGV[6], 'created', ARGV[7],
             'creator', ARGV[9], 'options', ARGV[10], 'code', ARGV[11])
end
redis.call('HSET', KEYS[3], 'owner', ARGV[1], 'last_owner', ARGV[1], 'url', ARGV[2],
           'epoch', epoch)
local meta = redis.call('HMGET', KEYS[3], 'game', 'creator')
local takeover = 0
if existed then
"""
    + _NOW_MS
    + """
  local detected = ARGV[12]
  if detected == '' then detected = now end
  redis.call('DEL', KEYS[4])
  redis.call('HSET', KEYS[4], 'epoch', epoch, 'server', ARGV[1], 'old_server', old_server,
             'old_epoch', old_epoch, 'detected_ms', detected, 'claimed_ms', now)
  redis.call('PEXPIRE', KEYS[4], ARGV[13])
  takeover = 1
end
if takeover == 1 and tonumber(ARGV[15]) > 0 then
  -- The claim tick (server/engine.py, RoomEngine.catch_up): the first tick after the
  -- ticks the old owner may have published (its last entry's, or the checkpoint's,
  -- allowance of implied ticks) is journaled here, with no event, as this epoch's: the
  -- new owner publishes it as soon as it has rebuilt the room, with no second round
  -- trip, and ARGV[15] implied ticks after it. Not written when the last tick cannot
  -- be told (a checkpoint of an older version, no checkpoint and no entry).
  -- pcall, tonumber: a key that cannot be read, or a checkpoint field that is no
  -- number, leaves the tick out (the rebuild reports a broken checkpoint).
  local base = nil
  local cp = redis.pcall('HMGET', KEYS[5], 'tick', 'implied')
  local tail = redis.pcall('XREVRANGE', KEYS[6], '+', '-', 'COUNT', 1)
  if cp.err or tail.err then cp, tail = {}, {} end
  local cp_tick, cp_implied = tonumber(cp[1]), tonumber(cp[2])
  local last = tail[1]
  local last_tick = last and tonumber(string.match(last[1], '^(%d+)-'))
  if cp[1] and not cp_tick then
    base = nil
  elseif last_tick and (not cp_tick or last_tick > cp_tick) then
    local allowance = 0
    for i = 1, #last[2], 2 do
      if last[2][i] == 'k' then allowance = tonumber(last[2][i + 1]) or 0 end
    end
    base = last_tick + allowance
  elseif cp_tick and cp_implied then
    base = cp_tick + cp_implied
  end
  if base then
    redis.pcall('XADD', KEYS[6], string.format('%.0f', base + 1) .. '-' .. epoch,
                'e', ARGV[16], 'k', ARGV[15], 'c', '1')
  end
end
if ARGV[14] == '1' then
  -- The room's record for its rebuild, read in the claim: no second round trip. pcall:
  -- a key that cannot be read (a wrong type) is an error in its place, which the
  -- rebuild turns into "cannot be rebuilt" and a released lease, not a failed claim.
  return {1, lease, meta[1], meta[2] or '', takeover, redis.pcall('HGETALL', KEYS[5]),
          redis.pcall('XRANGE', KEYS[6], '-', '+'), redis.pcall('HGETALL', KEYS[3]),
          redis.pcall('XRANGE', KEYS[7], '-', '+')}
end
return {1, lease, meta[1], meta[2] or '', takeover}
"""
)

_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('FENCED') end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# Paused rooms' leases, renewed together (server/lease_keeper.py). Its keys span slots:
# on one Redis (or Sentinel) only, never on a cluster, where each lease has its own
# _RENEW call. ARGV: each key's token in order, then the lease ms. 1: renewed, 0: fenced.
_RENEW_MANY = """
local ms = ARGV[#ARGV]
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i] then
    redis.call('PEXPIRE', key, ms)
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""
# Leases per _RENEW_MANY call: ~0.5 ms of Valkey time on a 2-core VM (SLOWLOG), what a
# tick's journal write can wait behind it, at most 4 times a second.
RENEW_MANY_CHUNK = 200

_APPEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('FENCED') end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if ARGV[5] ~= '' then
  redis.call('XADD', KEYS[3], ARGV[3], 'v', ARGV[5])
  redis.call('XTRIM', KEYS[3], 'MINID', ARGV[6])
end
if ARGV[8] == '1' then return ARGV[3] end  -- the claim tick: journaled by the claim
return redis.call('XADD', KEYS[2], ARGV[3], 'e', ARGV[4], 'k', ARGV[7])
"""

_CHECKPOINT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('FENCED') end
local prev_tick = redis.call('HGET', KEYS[2], 'tick')
if prev_tick then
  redis.call('RENAME', KEYS[2], KEYS[3])
  redis.call('XTRIM', KEYS[4], 'MINID', (tonumber(prev_tick) + 1) .. '-0')
end
redis.call('HSET', KEYS[2], 'tick', ARGV[2], 'epoch', ARGV[3], 'data', ARGV[4], 'at', ARGV[5])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[2], 'implied', ARGV[6]) end
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], 'owner', '', 'url', '')
return 1
"""

_DELETE_ROOM = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', unpack(KEYS))
return 1
"""

# A later stamp of the takeover record (restored, first tick, a player back): written
# only while the record is still this epoch's, so an old owner never overwrites a newer
# takeover. ARGV: epoch, the event's age in ms when the call was made, then name/value
# pairs. An empty value is the event's time on Redis's clock: now minus that age, so a
# stamp written late (its owner's loop busy with a mass takeover) still says when the
# event happened; never before the record's previous stamp (stamped_ms) or its claim,
# so the order of the events holds.
_STAMP_TAKEOVER = (
    """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return '' end
"""
    + _NOW_MS
    + """
local at = tonumber(now) - tonumber(ARGV[2])
local last = tonumber(redis.call('HGET', KEYS[1], 'stamped_ms')
  or redis.call('HGET', KEYS[1], 'claimed_ms') or '0')
if at < last then at = last end
at = string.format('%.0f', at)
for i = 3, #ARGV, 2 do
  local value = ARGV[i + 1]
  if value == '' then value = at end
  redis.call('HSET', KEYS[1], ARGV[i], value)
end
redis.call('HSET', KEYS[1], 'stamped_ms', at)
return at
"""
)

# The kill record, written by `kill-room` (or the launcher) right before the SIGKILL.
_RECORD_KILL = (
    _NOW_MS
    + """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'killed_ms', now, 'pid', ARGV[1], 'server', ARGV[2], 'epoch', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return now
"""
)

# How long the takeover and kill records of a room are kept.
RECORD_TTL_MS = 3600 * 1000


@dataclass(frozen=True, slots=True)
class Lease:
    """Proof of ownership of one room: what every fenced write presents."""

    room: str
    epoch: int
    server_id: str
    # "epoch|server", what the lease key holds: made once (every tick's write sends it).
    token: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "token", f"{self.epoch}|{self.server_id}")

    @classmethod
    def parse(cls, room: str, value: str) -> Lease:
        epoch, _, server_id = value.partition("|")
        return cls(room, int(epoch), server_id)


@dataclass(frozen=True, slots=True)
class Claim:
    """Outcome of a claim: either our lease, or who holds the room."""

    won: bool
    lease: Lease
    game: str
    creator: str = ""  # the player whose join created the room (quota owner)
    takeover: bool = False  # an existing room claimed anew: its takeover record was written
    # ``claim(index_later=True)``: the room index's write, for the caller to await.
    indexed: asyncio.Future[Any] | None = None
    # ``claim(with_record=True)`` and won: what a rebuild reads, read by the claim itself,
    # as the script returned it (``room_record`` parses it: the caller does, where a room
    # that cannot be rebuilt is handled).
    raw_record: tuple[Any, ...] | None = None


@dataclass(frozen=True, slots=True)
class RoomRecord:
    """Everything a rebuild reads of a room: checkpoint, the journal after it, meta,
    options and the recent events."""

    checkpoint: Checkpoint | None
    entries: list[JournalEntry]
    meta: dict[str, str]
    options: dict[str, Any]
    events: list[tuple[int, list[Any]]]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    tick: int
    epoch: int
    snapshot: dict[str, Any]


@dataclass(frozen=True, slots=True)
class JournalEntry:
    tick: int
    epoch: int
    events: list[Any]
    # How many eventless ticks its owner could publish after it without an entry of
    # their own (the entry's ``k`` field; 0 in entries of older versions).
    implied: int = 0
    # Written by the claim of its epoch (``c``), not by a tick: the claim tick
    # (RoomEngine.catch_up); the ticks missing before it may emit.
    claimed: bool = False


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _time_ms(reply: Any) -> int:
    """redis-py's ``TIME`` reply, (seconds, microseconds), in ms since the Unix epoch."""
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000


def _parse_entry_id(entry_id: Any) -> tuple[int, int]:
    tick, _, epoch = _s(entry_id).partition("-")
    return int(tick), int(epoch)


@contextlib.contextmanager
def _fenced(lease: Lease) -> Iterator[None]:
    """Turn the scripts' FENCED reply into OwnershipLost."""
    try:
        yield
    except ResponseError as exc:
        lost = fenced_error(lease, exc)
        if lost is not exc:
            raise lost from None
        raise


def replaced(lease: Lease) -> OwnershipLost:
    """What a write under ``lease`` meets once another epoch holds the room."""
    return OwnershipLost(f"room {lease.room}: epoch {lease.epoch} was replaced")


def fenced_error(lease: Lease, exc: BaseException) -> BaseException:
    """A script's FENCED reply as OwnershipLost; any other error as it is (for the
    callers of ``append_soon``, which get the reply in a future)."""
    if isinstance(exc, ResponseError) and "FENCED" in str(exc):
        return replaced(lease)
    return exc


class ScriptBatcher(TurnBatch[ScriptCall, Any]):
    """Sends the script calls made in one event-loop turn as one pipeline.

    Rooms of a server tick on a common clock, so their journal appends of one tick
    arrive together: one round trip and one write for all of them instead of one per
    room. Each call stays atomic (a script); a call's error goes to its own caller only.
    Under ``replica`` durability the batch ends with one WAIT (server/durability.py).

    On plain Redis and Sentinel the batches go out on a ``RespPipeline`` (one held
    connection of ``redis``'s pool, infra/resp_pipeline.py): redis-py's own pipeline cost
    ~28 us of Python per call, the main part of a room's Redis CPU. ``fast=False``, or a
    cluster or RESP3 client: redis-py's path.
    """

    def __init__(
        self, redis: aioredis.Redis, durability: Durability | None = None, fast: bool = True
    ) -> None:
        super().__init__()
        self.redis = redis
        self.durability = durability or Durability()
        self.pipe = RespPipeline(redis) if fast and RespPipeline.supports(redis) else None

    def submit(self, script: AsyncScript, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        return self._enqueue((script, keys, args))

    async def _send(self, calls: list[ScriptCall]) -> list[Any]:
        if self.pipe is None and len(calls) == 1 and not self.durability.replicated:
            script, keys, args = calls[0]
            return [await script(keys=keys, args=args, client=self.redis)]
        # One round trip (per node on a cluster); each call keeps its own error.
        return await self.durability.run(self.redis, calls, self.pipe)

    async def aclose(self) -> None:
        """Give the fast path's connection back (``redis.aclose()`` closes it too)."""
        if self.pipe is not None:
            await self.pipe.aclose()


class CommandBatcher(TurnBatch[tuple[Any, ...], Any]):
    """Sends the plain commands made in one event-loop turn as one pipeline.

    A server taking over a dead peer's rooms runs one task per room, all started in the
    same turn: their claims, then their checkpoint and journal reads, then their meta
    reads arrive together, and go out in one round trip per step for every room (one
    per node on a cluster) instead of one connection and one round trip per room and
    command (measured: 100 rooms claimed and rebuilt in ~30 ms instead of ~150-250 ms
    on a 2-core machine). A command's error goes to its own caller only.

    ``pipe``: the script batcher's lean RESP path (plain Redis and Sentinel), whose
    replies are parsed in C; a rebuild's reads are ~40 stream entries and three hashes
    per room, and redis-py's per-command Python was most of a mass takeover's read cost.
    Replies are shaped as redis-py's callbacks shape them (``_as_redis_py``).
    """

    def __init__(self, redis: aioredis.Redis, pipe: RespPipeline | None = None) -> None:
        super().__init__()
        self.redis = redis
        self.pipe = pipe

    def submit(self, *command: Any) -> asyncio.Future[Any]:
        return self._enqueue(command)

    async def _send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        if self.pipe is not None:
            replies = await self.pipe.execute(commands)
            return [_as_redis_py(c[0], r) for c, r in zip(commands, replies, strict=True)]
        if is_cluster(self.redis):
            # One pipeline per node: a dead node fails its own commands only (every
            # command here names its key first: HGETALL, HGET, HSET, XRANGE).
            return await per_node(
                self.redis,  # type: ignore[arg-type]
                [(command[1], command) for command in commands],
            )
        async with self.redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute(raise_on_error=False)


_NO_EVENTS = msgpack.packb([])  # a tick nobody sent anything in: most ticks of small rooms


@functools.lru_cache(maxsize=16384)
def _append_keys(room: str) -> list[str]:
    """The keys of a room's journal append (every tick of every room: built once; read
    only, never changed by a caller)."""
    keys = room_keys(room)
    return [keys["lease"], keys["journal"], keys["events"]]


def _as_redis_py(command: str, reply: Any) -> Any:
    """A raw reply (RESP2 or RESP3) to one of CommandBatcher's commands as redis-py's
    callback makes it: HGETALL a dict, XRANGE a list of (id, fields dict)."""
    if isinstance(reply, BaseException):
        return reply
    if command == "HGETALL":
        return _fields(reply)
    if command == "XRANGE":
        return [(entry_id, _fields(fields)) for entry_id, fields in reply]
    return reply


def _fields(reply: Any) -> dict[Any, Any]:
    """A hash or stream entry's fields: a RESP3 map, or a RESP2 flat list of pairs."""
    if isinstance(reply, dict):
        return reply
    if not reply:
        return {}
    pairs = iter(reply)
    return dict(zip(pairs, pairs, strict=True))


def _checkpoint_and_entries(
    raw_ckpt: Any, raw_journal: Any
) -> tuple[Checkpoint | None, list[JournalEntry]]:
    """The checkpoint (HGETALL) and the journal entries after it (XRANGE), parsed."""
    checkpoint = None
    after = -1
    if raw_ckpt:
        stored = {_s(k): v for k, v in _fields(raw_ckpt).items()}
        tick = int(_s(stored["tick"]))
        checkpoint = Checkpoint(
            tick=tick,
            epoch=int(_s(stored["epoch"])),
            snapshot=msgpack.unpackb(stored["data"], raw=False, strict_map_key=False),
        )
        after = tick
    entries = []
    for entry_id, entry_fields in raw_journal:
        tick, epoch = _parse_entry_id(entry_id)
        if tick <= after:
            continue
        entry = _fields(entry_fields)
        events = msgpack.unpackb(entry[b"e"], raw=False, strict_map_key=False)
        claimed = entry.get(b"c") == b"1"
        entries.append(JournalEntry(tick, epoch, events, int(entry.get(b"k", 0)), claimed))
    return checkpoint, entries


def _events(raw: Any) -> list[tuple[int, list[Any]]]:
    """(tick, emitted) of an events stream (XRANGE), oldest first; a tick journaled twice
    (by two epochs after a takeover) counts once: the newest."""
    by_tick: dict[int, list[Any]] = {}
    for entry_id, entry_fields in raw:
        tick, _ = _parse_entry_id(entry_id)
        packed = _fields(entry_fields)[b"v"]
        by_tick[tick] = msgpack.unpackb(packed, raw=False, strict_map_key=False)
    return sorted(by_tick.items())


def _options(raw: Any) -> dict[str, Any]:
    loaded = json.loads(_s(raw)) if raw else {}
    return loaded if isinstance(loaded, dict) else {}


def room_record(raw_ckpt: Any, raw_journal: Any, raw_meta: Any, raw_events: Any) -> RoomRecord:
    """A room's record from its raw reads (redis-py's shapes, or a script's flat lists;
    a read that failed in the script is its error, raised here)."""
    for raw in (raw_ckpt, raw_journal, raw_meta, raw_events):
        if isinstance(raw, BaseException):
            raise raw
    checkpoint, entries = _checkpoint_and_entries(raw_ckpt, raw_journal)
    meta = {_s(k): _s(v) for k, v in _fields(raw_meta).items()}
    options = _options(meta.get("options"))
    return RoomRecord(checkpoint, entries, meta, options, _events(raw_events))


class RoomStore:
    """Room persistence and ownership on one Redis connection pool."""

    def __init__(
        self,
        redis: aioredis.Redis,
        lease_ms: int = 3000,
        durability: Durability | None = None,
        journal: aioredis.Redis | None = None,
        fast_scripts: bool = True,
    ) -> None:
        self.redis = redis
        self.lease_ms = lease_ms
        # How far a journal append must reach before ``append`` returns (local/replica).
        self.durability = durability or Durability()
        # The ticks' own connections (the room server gives a small pool of its own): a
        # crowd of joins queueing for ``redis``'s pool must not hold up any tick, or its
        # rooms miss their lease renewals and fence themselves (seen with 400 joins at once).
        self.journal = journal or redis
        self.clustered = is_cluster(redis)
        self.liveness = LivenessCheck()
        self._registry: dict[str, dict[str, Any]] = {}
        self._registry_at = -REGISTRY_EVERY_S
        self._merged: dict[str, dict[str, Any]] = {}  # the last good ``servers()``
        self._compact_ids: set[str] = set()  # servers seen with a compact record
        self._live_at = -STALE_REGISTRY_S
        # ``fast_scripts``: the script batches on infra/resp_pipeline.py (one connection
        # held from each of the two pools) instead of redis-py's pipeline.
        self._batcher = ScriptBatcher(self.journal, self.durability, fast=fast_scripts)
        # Claims, takeover stamps, the joins' lease reads and quota slots: many rooms and
        # players at once after a peer's death (never waited for under replica
        # durability: see durability.py). Shared with server/quotas.py.
        self.scripts = ScriptBatcher(redis, fast=fast_scripts)
        self._commands = CommandBatcher(redis, self.scripts.pipe)
        self._lease_and_time = redis.register_script(_LEASE_AND_TIME)
        self._leases_on_node = redis.register_script(_LEASES_ON_NODE) if self.clustered else None
        self._place = redis.register_script(_PLACE)
        self._claim = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)
        self._renew_many = None if self.clustered else redis.register_script(_RENEW_MANY)
        self._append = redis.register_script(_APPEND)
        self._checkpoint = redis.register_script(_CHECKPOINT)
        self._release = redis.register_script(_RELEASE)
        self._delete = redis.register_script(_DELETE_ROOM)
        self._stamp = redis.register_script(_STAMP_TAKEOVER)
        self._record_kill = redis.register_script(_RECORD_KILL)

    async def aclose(self) -> None:
        """Give the script batches' held connections back to their pools (closing the
        clients closes them too)."""
        await self._batcher.aclose()
        await self.scripts.aclose()

    # -- ownership ------------------------------------------------------------

    async def owner(self, room: str) -> Lease | None:
        value = await self.redis.get(lease_key(room))
        return Lease.parse(room, _s(value)) if value else None

    async def owner_and_ttl(self, room: str) -> tuple[Lease | None, int, int]:
        """The lease, its remaining milliseconds (-2: no lease) and Redis's clock (ms, what a
        takeover decided on this read records as ``detected_ms``). A ticking owner renews
        its lease every tick, so a lease well below ``lease_ms`` means a stalled owner."""
        # Batched with this turn's other scripts: a dead server's players all ask at once.
        value, ttl, seconds, micros = await self.scripts.submit(
            self._lease_and_time, [lease_key(room)], []
        )
        lease = Lease.parse(room, _s(value)) if _s(value) else None
        return lease, int(ttl), _time_ms((seconds, micros))

    async def leases_and_time(self, rooms: list[str]) -> tuple[list[Lease | None], int]:
        """The leases of ``rooms`` (None: no owner) and Redis's clock (ms), in one trip
        (on a cluster: one per node, and the clock of one node)."""
        keys = [lease_key(room) for room in rooms]
        if self.clustered:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.get(key)
                values = await pipe.execute()
            now = await self.redis.time()
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.mget(keys)
                pipe.time()
                values, now = await pipe.execute()
        leases = [
            Lease.parse(room, _s(value)) if value else None
            for room, value in zip(rooms, values, strict=True)
        ]
        return leases, _time_ms(now)

    async def readable_leases(self, rooms: list[str]) -> tuple[dict[str, Lease | None], int]:
        """Like ``leases_and_time``, for the watcher: on a cluster, rooms whose shard
        cannot answer right now (its primary failing over) are left out instead of failing
        the whole read, so the other shards' rooms are still watched."""
        if not self.clustered:
            listed, now = await self.leases_and_time(rooms)
            return dict(zip(rooms, listed, strict=True)), now
        cluster: Any = self.redis
        by_node: dict[str, tuple[Any, list[str]]] = {}
        for room in rooms:
            key = lease_key(room).encode()
            try:
                node = cluster.nodes_manager.get_node_from_slot(key_slot(key))
            except RedisError:  # the slot has no primary right now
                continue
            by_node.setdefault(node.name, (node, []))[1].append(room)
        replies = await asyncio.gather(
            *(self._leases_on(node, names) for node, names in by_node.values()),
            return_exceptions=True,
        )
        found: dict[str, Lease | None] = {}
        now_ms = 0
        for reply in replies:
            if isinstance(reply, BaseException):
                if not isinstance(reply, (RedisError, OSError)):
                    raise reply
                continue  # that node cannot answer now (failover, slot moving): next poll
            on_node, node_ms = reply
            found.update(on_node)
            now_ms = now_ms or node_ms
        if by_node and not now_ms:
            failure = next(r for r in replies if isinstance(r, BaseException))
            raise failure
        return found, now_ms or await self._any_node_time()

    async def _leases_on(self, node: Any, rooms: list[str]) -> tuple[dict[str, Lease | None], int]:
        """The leases of ``rooms`` (all served by ``node``) and the node's clock, in one
        command (see _LEASES_ON_NODE)."""
        cluster: Any = self.redis
        keys = [lease_key(room) for room in rooms]
        assert self._leases_on_node is not None
        sha = self._leases_on_node.sha
        try:
            reply = await cluster.execute_command("EVALSHA", sha, 0, *keys, target_nodes=node)
        except NoScriptError:  # a node just promoted or restarted: load it there
            await cluster.execute_command("SCRIPT LOAD", _LEASES_ON_NODE, target_nodes=node)
            reply = await cluster.execute_command("EVALSHA", sha, 0, *keys, target_nodes=node)
        except ResponseError:
            # A key this node does not serve any more (a slot moved): refresh the map.
            with contextlib.suppress(RedisError, OSError):
                await cluster.nodes_manager.initialize()
            raise
        seconds, micros, *values = reply
        leases = {
            room: Lease.parse(room, _s(value)) if _s(value) else None
            for room, value in zip(rooms, values, strict=True)
        }
        return leases, _time_ms((seconds, micros))

    async def _any_node_time(self) -> int:
        """``TIME`` (ms) of the cluster's default node, or of any primary that answers
        while that one is down."""
        try:
            return _time_ms(await self.redis.time())
        except (RedisError, OSError):
            cluster: Any = self.redis
            for node in cluster.get_primaries():
                with contextlib.suppress(RedisError, OSError):
                    return _time_ms(await self.redis.time(target_nodes=node))
            raise

    async def claim(
        self,
        room: str,
        server_id: str,
        ws_url: str,
        game: str,
        replacing: Lease | None = None,
        *,
        must_exist: bool = False,
        creator: str = "",
        options: dict[str, Any] | None = None,
        join_code: str = "",
        detected_ms: int = 0,
        index_later: bool = False,
        with_record: bool = False,
        implied: int = 0,
    ) -> Claim:
        """Take the room if it is free (or still held by ``replacing``, a dead owner).

        ``must_exist``: only an existing room (a takeover, not a creation). The watcher
        claims with it, so a room that closed and deleted its keys while still listed in
        ``sr:rooms`` is never brought back to life by a peer.

        Claiming an existing room anew is a takeover: the script replaces the room's
        takeover record (``detected_ms``: Redis's clock when this server decided to take
        the room; 0 means at the claim).

        A won claim also writes the room's entry in the room index (a second command:
        on a cluster the index lives in other slots). ``index_later``: that write is not
        awaited but handed back in ``Claim.indexed``. ``with_record``: a won claim also
        returns the room's record (``Claim.raw_record``), read by the same script: a room
        being rebuilt needs no second round trip (on a loaded survivor of a mass
        failover, each one waited behind the whole crowd's joins). ``implied`` (> 0, on
        a takeover): the script also journals the claim tick, with that allowance of
        implied ticks (``RoomEngine.catch_up``), which the new owner publishes with no
        round trip of its own.
        """
        keys = room_keys(room)
        won, value, stored_game, *rest = await self.scripts.submit(
            self._claim,
            [
                keys["lease"],
                keys["epoch"],
                keys["meta"],
                keys["takeover"],
                keys["ckpt"],
                keys["journal"],
                keys["events"],
            ],
            [
                server_id,
                ws_url,
                self.lease_ms,
                replacing.token if replacing else "",
                game,
                secrets.randbits(63),
                int(time.time() * 1000),
                "1" if must_exist else "0",
                creator,
                json.dumps(options or {}, sort_keys=True),
                join_code,
                str(detected_ms) if detected_ms > 0 else "",
                RECORD_TTL_MS,
                "1" if with_record else "0",
                implied,
                _NO_EVENTS,
            ],
        )
        if not _s(value):  # must_exist, and the room is gone: drop its stale index entry
            await rooms_index.forget(self.redis, room)
            return Claim(False, Lease(room, 0, ""), "")
        lease = Lease.parse(room, _s(value))
        indexed = None
        if won:
            indexed = self._commands.submit(
                "HSET",
                rooms_index_key(room, self.clustered),
                room,
                rooms_index.entry(server_id, lease.epoch, _s(stored_game)),
            )
            if not index_later:
                await indexed
                indexed = None
        creator = _s(rest[0]) if rest else ""
        takeover = len(rest) > 1 and int(rest[1]) == 1
        raw_record = tuple(rest[2:6]) if won and len(rest) >= 6 else None
        return Claim(bool(won), lease, _s(stored_game), creator, takeover, indexed, raw_record)

    async def renew(self, lease: Lease) -> None:
        with _fenced(lease):
            await self._renew(keys=[lease_key(lease.room)], args=[lease.token, self.lease_ms])

    def renew_soon(self, lease: Lease) -> asyncio.Future[Any]:
        """``renew`` without a coroutine, batched with this turn's other calls (error raw,
        as ``append_soon``): ``renew_many``'s path on a cluster."""
        return self._batcher.submit(
            self._renew, [lease_key(lease.room)], [lease.token, self.lease_ms]
        )

    async def renew_many(self, leases: Sequence[Lease]) -> list[BaseException | None]:
        """Renew many rooms' leases at once, in this turn's batch: for each, None
        (renewed), OwnershipLost (the lease is another's), or the error of its call."""
        if self._renew_many is None:  # a cluster: one call per lease, its own slot
            replies = await asyncio.gather(
                *(self.renew_soon(lease) for lease in leases), return_exceptions=True
            )
            return [
                fenced_error(lease, reply) if isinstance(reply, BaseException) else None
                for lease, reply in zip(leases, replies, strict=True)
            ]
        chunks = [leases[i : i + RENEW_MANY_CHUNK] for i in range(0, len(leases), RENEW_MANY_CHUNK)]
        replies = await asyncio.gather(
            *(
                self._batcher.submit(
                    self._renew_many,
                    [lease_key(lease.room) for lease in chunk],
                    [*(lease.token for lease in chunk), self.lease_ms],
                )
                for chunk in chunks
            ),
            return_exceptions=True,
        )
        out: list[BaseException | None] = []
        for chunk, reply in zip(chunks, replies, strict=True):
            if isinstance(reply, BaseException):
                out.extend([reply] * len(chunk))
                continue
            for lease, renewed in zip(chunk, reply, strict=True):
                out.append(None if int(renewed) else replaced(lease))
        return out

    async def release(self, lease: Lease) -> bool:
        keys = room_keys(lease.room)
        return bool(await self._release(keys=[keys["lease"], keys["meta"]], args=[lease.token]))

    async def delete_room(self, lease: Lease) -> bool:
        """Forget a closed room entirely (only while still owning it)."""
        keys = room_keys(lease.room)
        deleted = await self._delete(
            keys=[
                keys["lease"],
                keys["meta"],
                keys["journal"],
                keys["ckpt"],
                keys["ckpt_prev"],
                keys["events"],
                keys["takeover"],
                keys["killed"],
            ],
            args=[lease.token],
        )
        if deleted:
            await rooms_index.forget(self.redis, lease.room)
        return bool(deleted)

    # -- takeover and kill records ------------------------------------------------

    async def stamp_takeover(self, lease: Lease, stamps: dict[str, str], age_ms: int = 0) -> int:
        """Add ``stamps`` to the room's takeover record if it is still ``lease``'s (an
        empty value: the event's time on Redis's clock, in ms: now minus ``age_ms``, how
        long before this call it happened). Returns that time, or 0 when the record
        belongs to another epoch (nothing written)."""
        args: list[Any] = [lease.epoch, max(0, int(age_ms))]
        for name, value in stamps.items():
            args += [name, value]
        now = await self.scripts.submit(self._stamp, [room_keys(lease.room)["takeover"]], args)
        return int(_s(now)) if _s(now) else 0

    async def takeover_record(self, room: str) -> dict[str, str]:
        raw = await self.redis.hgetall(room_keys(room)["takeover"])
        return {_s(k): _s(v) for k, v in raw.items()}

    async def record_kill(self, lease: Lease, pid: int) -> int:
        """Write the room's kill record (Redis's clock, the pid, the owner and its epoch)
        just before its owner is killed; returns ``killed_ms``."""
        now = await self._record_kill(
            keys=[room_keys(lease.room)["killed"]],
            args=[pid, lease.server_id, lease.epoch, RECORD_TTL_MS],
        )
        return int(_s(now))

    async def kill_record(self, room: str) -> dict[str, str]:
        raw = await self.redis.hgetall(room_keys(room)["killed"])
        return {_s(k): _s(v) for k, v in raw.items()}

    async def options(self, room: str) -> dict[str, Any]:
        """The room's validated options, as stored when it was created."""
        raw = await self._commands.submit("HGET", room_keys(room)["meta"], "options")
        return _options(raw)

    async def meta(self, room: str) -> dict[str, str]:
        raw = await self._commands.submit("HGETALL", room_keys(room)["meta"])
        return {_s(k): _s(v) for k, v in raw.items()}

    # -- journal and checkpoints ---------------------------------------------

    async def append(
        self,
        lease: Lease,
        tick: int,
        events: list[Any],
        emitted: list[Any] | None = None,
        keep_ticks: int = 0,
        implied: int = 0,
        claimed: bool = False,
    ) -> None:
        """Store one tick durably, renewing the lease; raise OwnershipLost if fenced.

        ``emitted``: the game events of the tick, as ``[data, recipients|None]`` pairs,
        stored in the same script (so they are durable exactly when the tick is) in a
        stream that keeps the last ``keep_ticks`` ticks: what a resuming player who
        missed them is sent, also after a takeover. ``implied``: how many eventless
        ticks the owner may publish after this one without an entry (stored with it: a
        successor replays that many, see ``RoomEngine.catch_up``). ``claimed``: the
        tick is the claim tick, journaled by the claim: only its game events are stored.
        """
        with _fenced(lease):
            await self.append_soon(lease, tick, events, emitted, keep_ticks, implied, claimed)

    def append_soon(
        self,
        lease: Lease,
        tick: int,
        events: list[Any],
        emitted: list[Any] | None = None,
        keep_ticks: int = 0,
        implied: int = 0,
        claimed: bool = False,
    ) -> asyncio.Future[Any]:
        """``append`` without a coroutine: the future of the batched call, for a tick
        loop that awaits nothing per room (its error is raw: see ``fenced_error``)."""
        packed_events = msgpack.packb(emitted, use_bin_type=True) if emitted else ""
        return self._batcher.submit(
            self._append,
            _append_keys(lease.room),
            [
                lease.token,
                self.lease_ms,
                f"{tick}-{lease.epoch}",
                msgpack.packb(events, use_bin_type=True) if events else _NO_EVENTS,
                packed_events,
                f"{max(0, tick - keep_ticks)}-0",
                implied,
                "1" if claimed else "0",
            ],
        )

    async def confirm_durable(self, lease: Lease) -> None:
        """Under ``replica`` durability: wait until a replica holds everything journaled so
        far for the room (a retried append whose entry was already there); raise
        OwnershipLost if fenced, ReplicaTimeout if no replica confirms. No-op under local."""
        with _fenced(lease):
            await self.durability.confirm(
                self.journal,
                (self._renew, [lease_key(lease.room)], [lease.token, self.lease_ms]),
                self._batcher.pipe,
            )

    async def recent_events(self, room: str) -> list[tuple[int, list[Any]]]:
        """(tick, emitted) of the ticks in the events stream, oldest first. A tick
        journaled twice (by two epochs after a takeover) counts once: the newest."""
        raw: Any = await self._commands.submit("XRANGE", room_keys(room)["events"], "-", "+")
        return _events(raw)

    async def checkpoint(
        self, lease: Lease, tick: int, data: bytes, implied: int | None = None
    ) -> None:
        """Store a packed snapshot and trim the journal up to the previous checkpoint.
        ``implied``: the snapshot's allowance of implied ticks, also stored apart from it
        for the claim script (its claim tick); None stores none, and a takeover from
        this checkpoint then has no claim tick (a wrong count could make one too early)."""
        keys = room_keys(lease.room)
        with _fenced(lease):
            # Batched with the other rooms' checkpoints of this turn: 1000 rooms writing
            # one each second must not take a pooled connection each.
            await self.scripts.submit(
                self._checkpoint,
                [keys["lease"], keys["ckpt"], keys["ckpt_prev"], keys["journal"]],
                [
                    lease.token,
                    tick,
                    lease.epoch,
                    data,
                    int(time.time() * 1000),
                    "" if implied is None else implied,
                ],
            )

    async def load(self, room: str) -> tuple[Checkpoint | None, list[JournalEntry]]:
        """The latest checkpoint and every journal entry after it, in tick order.

        Both are read in the same turn (one round trip, batched with other rooms'): the
        journal holds about two checkpoint intervals, the entries up to the checkpoint
        are skipped here."""
        keys = room_keys(room)
        ckpt_read = self._commands.submit("HGETALL", keys["ckpt"])
        journal_read = self._commands.submit("XRANGE", keys["journal"], "-", "+")
        # gather: an error of one read does not leave the other's unretrieved.
        raw, raw_entries = await asyncio.gather(ckpt_read, journal_read)
        return _checkpoint_and_entries(raw, raw_entries)

    async def first_journaled_by(self, room: str, epoch: int, look_back: int = 50) -> int | None:
        """The first tick ``epoch`` journaled, among the newest ``look_back`` entries
        (None: none of them is that epoch's)."""
        newest: Any = await self.redis.xrevrange(room_keys(room)["journal"], count=look_back)
        ticks = [tick for tick, e in (_parse_entry_id(i) for i, _ in newest) if e == epoch]
        return min(ticks) if ticks else None

    async def last_journaled(self, room: str) -> tuple[int, int] | None:
        """(tick, epoch) of the newest journal entry, or None for an empty journal."""
        last: Any = await self.redis.xrevrange(room_keys(room)["journal"], count=1)
        return _parse_entry_id(last[0][0]) if last else None

    # -- servers --------------------------------------------------------------

    async def register_server(self, server_id: str, info: dict[str, Any]) -> None:
        """Write the server's full entry and its compact liveness record."""
        compact = {k: info[k] for k in LIVE_FIELDS if k in info}
        writes = [
            (SERVERS_KEY, ("HSET", SERVERS_KEY, server_id, _json(info))),
            (LIVE_KEY, ("HSET", LIVE_KEY, server_id, _json(compact))),
        ]
        if not self.clustered:
            async with self.redis.pipeline(transaction=False) as pipe:
                for _, command in writes:
                    pipe.execute_command(*command)
                await pipe.execute()
            return
        # On a cluster each key is one shard among several: a registry write that meets a
        # shard failing over is given up (advisory; the next heartbeat writes it again),
        # so that it does not make this server look cut off from Redis.
        results = await per_node(self.redis, writes)  # type: ignore[arg-type]
        if all(isinstance(r, Exception) for r in results):
            raise results[0]

    async def unregister_server(self, server_id: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hdel(SERVERS_KEY, server_id)
            pipe.hdel(LIVE_KEY, server_id)
            pipe.zrem(LOAD_KEY, server_id)
            await pipe.execute()
        self._registry.pop(server_id, None)

    async def report_load(self, server_id: str, rooms: int) -> None:
        """Reset this server's load to what it really runs (placements became claims).
        Advisory: on a cluster, a shard failing over does not fail the heartbeat."""
        try:
            await self.redis.zadd(LOAD_KEY, {server_id: rooms})
        except (RedisError, OSError):
            if not self.clustered:
                raise

    async def placed_on(self, room: str) -> str | None:
        """The server placement chose for new room ``room`` in the last few seconds."""
        value = await self.redis.get(placed_key(room))
        return _s(value) if value else None

    async def place(
        self, room: str, candidates: list[str], max_rooms: int, hold_ms: int = 5000
    ) -> str:
        """Choose the least-loaded candidate for a new room, atomically: concurrent
        placements see each other's choices, and every join of the room gets the same one.
        "" when every candidate already runs ``max_rooms``."""
        chosen = await self._place(
            keys=[LOAD_KEY, placed_key(room)], args=[hold_ms, max_rooms, *candidates]
        )
        return _s(chosen)

    async def servers(self) -> dict[str, dict[str, Any]]:
        """The registry, as every server polls it: the compact records (``sr:live``), read
        on every call, over the full entries (``sr:servers``, with room stats: several KB
        each), re-read at most every ``REGISTRY_EVERY_S``. A server with only a full entry
        (one from before the compact records) is listed too."""
        now = time.monotonic()
        full = now - self._registry_at >= REGISTRY_EVERY_S
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(LIVE_KEY)
                if full:
                    pipe.hgetall(SERVERS_KEY)
                replies = await pipe.execute()
        except (RedisError, OSError):
            # On a cluster the registry is one shard among several: while that shard's
            # primary fails over, the last read (at most STALE_REGISTRY_S old) stands in,
            # so the other shards' rooms are still watched. One Redis: nothing to save.
            if not self.clustered or now - self._live_at > STALE_REGISTRY_S:
                raise
            return {sid: dict(info) for sid, info in self._merged.items()}
        return self._merge_registry(replies, full, now)

    async def rooms_index(self) -> dict[str, dict[str, Any]]:
        return await rooms_index.read(self.redis)

    async def live_server_ids(self, servers: dict[str, dict[str, Any]] | None = None) -> set[str]:
        """Servers whose liveness connection is open right now (infra/liveness.py; on a
        cluster, each server's node is asked, and a server on a node that is failing over
        counts as live for a while)."""
        return await self.liveness.live(self.redis, servers)

    async def servers_and_clients(
        self, ids: list[Any]
    ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]] | None]:
        """``servers()`` and ``CLIENT LIST ID ids`` in one round trip: a failover poll on
        one Redis (each round trip costs an idle server ~0.5 ms of CPU, 20 polls a
        second). On a cluster the registry and the liveness connections live on
        different nodes: ``servers()`` alone, and None."""
        if self.clustered or not ids:
            return await self.servers(), None
        now = time.monotonic()
        full = now - self._registry_at >= REGISTRY_EVERY_S
        commands: list[tuple[Any, ...]] = [("HGETALL", LIVE_KEY)]
        if full:
            commands.append(("HGETALL", SERVERS_KEY))
        commands.append(("CLIENT", "LIST", "ID", *ids))
        if self._commands.pipe is not None:
            # The lean path (the poll runs 20 times a second on every server): one
            # write in this turn's batch, replies parsed in C.
            replies = await asyncio.gather(*(self._commands.submit(*c) for c in commands))
            replies[-1] = parse_client_list(replies[-1])  # type: ignore[no-untyped-call]
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for command in commands[:-1]:
                    pipe.execute_command(*command)
                pipe.client_list(client_id=ids)
                replies = await pipe.execute()
        return self._merge_registry(replies, full, now), list(replies[-1])

    def _merge_registry(
        self, replies: list[Any], full: bool, now: float
    ) -> dict[str, dict[str, Any]]:
        """The compact records (``replies[0]``) over the full entries (``replies[1]`` when
        ``full`` was read, else the last ones read); kept for a shard failing over."""
        if full:
            self._registry = _json_hash(replies[1])
            self._registry_at = now
        compacts = _json_hash(replies[0])
        # A server that had a compact record and lost it has left the registry (a drain,
        # or removed as dead): its cached full entry goes now, not at the next full read
        # up to REGISTRY_EVERY_S later. One that never had one (before the compact
        # records existed) is listed by its full entry alone.
        self._compact_ids.update(compacts)
        merged = {
            sid: dict(info)
            for sid, info in self._registry.items()
            if sid in compacts or sid not in self._compact_ids
        }
        for sid, compact in compacts.items():
            merged[sid] = {**merged.get(sid, {}), **compact}
        self._merged, self._live_at = merged, now
        return {sid: dict(info) for sid, info in merged.items()}


def _json(value: dict[str, Any]) -> bytes:
    """A registry entry as JSON (orjson: a 1,000-room server's entry, every heartbeat)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def _json_hash(raw: dict[Any, Any]) -> dict[str, dict[str, Any]]:
    """A hash of JSON objects, decoded (a field that is not one is skipped)."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        try:
            decoded = orjson.loads(value)
        except (orjson.JSONDecodeError, TypeError):
            continue
        if isinstance(decoded, dict):
            out[_s(key)] = decoded
    return out
