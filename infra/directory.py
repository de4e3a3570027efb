"""The room directory in Redis: what room servers publish, and what matchmaking reads.

Room servers are the writers (``publish`` every second for each room they run,
``remove`` when a room closes); the login service's stateless HTTP API is the reader
(``list_public``, ``quick_join``, ``create_private``, ``private_room``). Both sides import
this module; it imports nothing from ``auth``, ``server`` or ``client``.

Layout
------

Everything a quick-join must see at once lives under one hash tag per **game** (not the
room's ``{room}`` tag of ``server.store``: a quick-join compares all the rooms of a
game), so one Lua script picks a room and reserves a seat atomically, also on Redis
Cluster, and every script names all the keys it touches::

    sr:dir:{game:G}:entries  hash  ROOM -> JSON entry (room, game, max_players, options,
                                   metadata, private, join_code, joinable, owner, epoch,
                                   players) as the owner published it
    sr:dir:{game:G}:seats    hash  ROOM -> "PLAYERS MAX EPOCH FLAGS UPDATED_MS"
                                   the numbers the scripts read (no JSON decoding in Lua);
                                   FLAGS: j joinable, v private, w pending (named, not yet
                                   published by an owner), - none
    sr:dir:{game:G}:opts     hash  ROOM -> the options as "\n"-delimited tokens
                                   ``["key",value]`` (sorted), matched with plain find
    sr:dir:{game:G}:exp      zset  ROOM -> expiry (ms, Redis clock); every room of G
    sr:dir:{game:G}:public   zset  ROOM -> listing score; public published rooms only
    sr:dir:{game:G}:open     zset  ROOM -> players + reserved; public, joinable rooms with
                                   a free seat (pending quick-join rooms too)
    sr:dir:{game:G}:resv     zset  "ROOM\\nPLAYER" -> expiry (ms): one reservation a seat
    sr:dir:{game:G}:rcount   hash  ROOM -> live reservations (always = members in resv)
    sr:dir:{game:G}:held     hash  PLAYER -> ROOM of the player's live reservation

    sr:dir:code:CODE         string JSON {"game", "room"}  a private room's join code
                                   (its own slot); TTL 10 min until the room runs,
                                   then the entry's TTL, refreshed by each publish

Expiry without a TTL per hash field: every entry has an expiry time in ``exp`` (Redis's
own clock, ``TIME``, so the clocks of room servers and login replicas never matter);
readers ignore an entry past it, and every write script first prunes what has expired
(entries and reservations, up to 256 of each per call). The game's keys themselves get a
``PEXPIRE`` of 15 min on every write, so an abandoned game leaves nothing behind.

Lifetimes (defaults):

- a published entry: ``ENTRY_TTL_MS`` = 5 s. The owner looks at its rooms every
  ``REFRESH_EVERY_S`` = 1 s and publishes those whose entry changed; an unchanged entry
  only has its expiry extended (``refresh_many``: one script call per game, not one per
  room) once ``TTL_REFRESH_EVERY_S`` = 2 s old. So a room whose owner died leaves the
  listing within 5 s, and comes back within a second of a new owner taking it over; a
  room that closes is ``remove``\\ d at once;
- a seat reservation: ``RESERVATION_TTL_MS`` = 10 s;
- a pending quick-join room (a name quick-join handed out, no owner yet): as long as its
  newest reservation;
- a pending private room and its code: ``PRIVATE_PENDING_TTL_MS`` = 10 min.

Seat accounting (why quick-join never overfills)
------------------------------------------------

The owner publishes once a second, so ``players`` lags. Quick-join therefore *reserves*
a seat in the same script that picks the room: the room's occupancy is

    occupancy = players (last published) + live reservations of players not seated then

and a room is a candidate only while ``occupancy < max_players``. A reservation is keyed
by player: ``publish`` takes the ids of the players seated in the room (``seated``) and
deletes their reservations in the same script that stores the new count, so a player is
counted by its reservation until the owner's count includes it, then by the count —
never twice, never zero times. A reservation whose player never joins expires after
10 s and frees its seat. A player holds at most one reservation per game: a new
quick-join moves it (so one player cannot hold many seats), and repeating a quick-join
(or a retried call after a lost reply) returns the room the player already holds.

Quick-join, one script: prune; the player's own live reservation if its room still
matches; else the least-occupied candidate of ``open`` (ties by name) whose options
contain the wanted ones (at most ``scan`` = 256 candidates examined); else create a
pending entry for the new name the caller chose. Then reserve. Concurrent quick-joins
are serialised by Redis, so 100 of them for rooms of 4 make 25 rooms of exactly 4.

Hot spots (Redis Cluster)
-------------------------

Keys are per game: games spread over the cluster's slots, and no key is shared by all
games. A single popular game is one slot (one primary's core) by construction — the
price of an atomic least-full pick over all its rooms. What keeps that slot cool:

- reads that need no atomicity (listing, private lookups) run in the login service,
  which scales out: a page is one ``ZREVRANGE``, then ``HMGET`` and ``ZMSCORE`` in
  one pipeline (no Lua);
- ``publish`` is one short script per room that changed; ``publish_many`` sends a
  server's rooms in one pipeline (one round trip, each room still atomic); an unchanged
  room's expiry is extended by one ``refresh_many`` call per game; key TTLs are
  renewed only once half spent (or set on a key just created), and seated players are
  only looked up when the room holds reservations;
- quick-join examines only rooms with a free seat (``open``), 16 at a time, stops at
  the first that matches, and is bounded by ``scan``.

Measured on the 2-core development VM (Valkey 8, ``INFO commandstats``, 1 000 and
10 000 rooms of one game): a publish costs about 25 µs of Redis time, a quick-join
about 60 µs (about 120 µs when it examines 256 candidates that do not match), a listing
no Lua at all (about 1.3 ms of the caller's time for 50 rooms). So one game's slot, on
one core, keeps about 25 000 rooms refreshed every second (0.6 core) with room for
about 6 000 quick-joins a second. Beyond that, split the game into N sub-games (tags
``{game:G#0}`` …), each its own slot: quick-join tries them in turn and listing reads
them all, at the cost of least-full being exact only within a sub-game.
"""

from __future__ import annotations

import re
import secrets
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from infra.errors import InfraError
from infra.redis_scripts import ScriptCall, run_pipelined
from infra.redis_url import is_cluster

__all__ = [
    "CODE_ALPHABET",
    "ENTRY_TTL_MS",
    "PRIVATE_PENDING_TTL_MS",
    "REFRESH_EVERY_S",
    "RESERVATION_TTL_MS",
    "SERVERS_KEY",
    "TTL_REFRESH_EVERY_S",
    "DirectoryError",
    "Entry",
    "GameInfo",
    "InvalidEntry",
    "InvalidOptions",
    "PrivateRoom",
    "QuickJoin",
    "Reservation",
    "canonical_options",
    "check_options",
    "create_private",
    "games",
    "list_public",
    "lookup",
    "new_private_code",
    "new_room_name",
    "private_room",
    "publish",
    "publish_many",
    "quick_join",
    "refresh_many",
    "remove",
    "server_ws_url",
]

ENTRY_TTL_MS = 5_000
REFRESH_EVERY_S = 1.0
TTL_REFRESH_EVERY_S = 2.0  # an unchanged entry's expiry is extended this often
RESERVATION_TTL_MS = 10_000
PRIVATE_PENDING_TTL_MS = 600_000
KEY_TTL_MS = 900_000  # the game's keys, renewed on every write
QUICK_JOIN_SCAN = 256  # candidates a quick-join examines at most
LIST_SCAN = 1_000  # entries a listing examines at most (filters may skip many)
LIST_LIMIT_MAX = 100

MAX_OPTIONS = 8
OPTION_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,32}")
OPTION_STRING_MAX = 64
OPTION_INT_MAX = 2**53  # JSON-safe everywhere (JavaScript numbers)
MAX_METADATA_BYTES = 2048
ROOM_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")  # as the wire protocol's join
GAME_NAME = re.compile(r"[a-z0-9_\-]{1,32}")

# Unambiguous: no 0/O, no 1/I. 32 symbols, so 6 of them are 30 bits (about 1.07e9 codes).
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 6
CODE_PATTERN = re.compile(f"[{CODE_ALPHABET}]{{{CODE_LENGTH}}}")
_NAME_ALPHABET = CODE_ALPHABET.lower()

SERVERS_KEY = "sr:servers"  # the room servers' registry (server.store); read-only here
CODE_PREFIX = "sr:dir:code:"

OptionValue = str | int | bool


class DirectoryError(InfraError):
    """Root of the directory's errors."""


class InvalidOptions(DirectoryError, ValueError):
    """Room options that are not a flat map of at most 8 short keys to str/int/bool."""


class InvalidEntry(DirectoryError, ValueError):
    """An entry a room server tried to publish is malformed (a bug in the publisher)."""


# ---------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class Entry:
    """One room in the directory.

    The owner sets the first group of fields when it publishes; ``seated`` (the ids of
    the players seated in the room, the ones its ``players`` count includes) is used to
    settle their reservations and is not stored. The last group is read back.
    """

    room: str
    game: str
    players: int = 0
    max_players: int = 64
    options: Mapping[str, OptionValue] = field(default_factory=dict)
    private: bool = False
    join_code: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    joinable: bool = True
    owner: str = ""
    epoch: int = 0
    seated: tuple[str, ...] = ()
    # read back
    reserved: int = 0
    pending: bool = False  # named by quick-join or a private code; no owner published yet
    updated_at: float = 0.0  # Unix seconds (Redis clock)
    expires_at: float = 0.0

    @property
    def free_seats(self) -> int:
        return max(0, self.max_players - self.players - self.reserved)


@dataclass(frozen=True, slots=True)
class Reservation:
    player: str
    room: str
    expires_at: float  # Unix seconds (Redis clock)


@dataclass(frozen=True, slots=True)
class QuickJoin:
    room: str
    created: bool  # this call named a new room: nobody runs it yet
    reservation: Reservation
    entry: Entry  # the room as the directory has it now (options to join with)


@dataclass(frozen=True, slots=True)
class PrivateRoom:
    code: str
    room: str
    entry: Entry


@dataclass(frozen=True, slots=True)
class GameInfo:
    """A game some room server runs, from its registry entry (``games``)."""

    name: str
    max_players: int | None = None
    options: frozenset[str] | None = None  # option names, when the servers list them


# ---------------------------------------------------------------- validation


def check_options(value: Any, *, what: str = "options") -> dict[str, OptionValue]:
    """``value`` as room options, or raise InvalidOptions saying what is wrong.

    A flat JSON object of at most 8 keys (``[A-Za-z0-9_.-]{1,32}``) whose values are
    strings (at most 64 characters), integers (|n| <= 2^53) or booleans. The game
    validates the rest when the room is created.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidOptions(f"{what} must be a JSON object")
    if len(value) > MAX_OPTIONS:
        raise InvalidOptions(f"{what} has {len(value)} keys; at most {MAX_OPTIONS}")
    checked: dict[str, OptionValue] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not OPTION_KEY.fullmatch(key):
            raise InvalidOptions(
                f"{what}: key {str(key)[:40]!r} must be 1-32 characters of A-Z a-z 0-9 _ . -"
            )
        if isinstance(item, bool):
            checked[key] = item
        elif isinstance(item, int):
            if abs(item) > OPTION_INT_MAX:
                raise InvalidOptions(f"{what}.{key}: integers are at most 2^53 in size")
            checked[key] = item
        elif isinstance(item, str):
            if len(item) > OPTION_STRING_MAX or not item.isprintable():
                raise InvalidOptions(
                    f"{what}.{key}: strings are 0-{OPTION_STRING_MAX} printable characters"
                )
            checked[key] = item
        else:
            raise InvalidOptions(
                f"{what}.{key}: values are strings, integers or booleans "
                f"(got {type(item).__name__})"
            )
    return checked


def _token(key: str, value: OptionValue) -> str:
    return "\n" + orjson.dumps([key, value]).decode() + "\n"


def canonical_options(options: Mapping[str, OptionValue]) -> str:
    """The options as the scripts match them: sorted ``["key",value]`` tokens between
    newlines (JSON never writes a raw newline, so a token matches only a whole token)."""
    if not options:
        return "\n"
    return "\n" + "\n".join(orjson.dumps([k, options[k]]).decode() for k in sorted(options)) + "\n"


def query_form(value: OptionValue) -> str:
    """How an option value is written in a query string (``?mode=ffa&ranked=true``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _check_entry(entry: Entry) -> tuple[bytes, str]:
    if not ROOM_NAME.fullmatch(entry.room):
        raise InvalidEntry(f"bad room name {entry.room!r}")
    if not GAME_NAME.fullmatch(entry.game):
        raise InvalidEntry(f"bad game name {entry.game!r}")
    if not 0 <= entry.players <= 100_000 or not 1 <= entry.max_players <= 100_000:
        raise InvalidEntry(f"{entry.room}: players/max_players out of range")
    try:
        options = check_options(entry.options)
    except InvalidOptions as exc:
        raise InvalidEntry(f"{entry.room}: {exc}") from None
    if not isinstance(entry.metadata, Mapping):
        raise InvalidEntry(f"{entry.room}: metadata must be a map")
    if entry.private and not (entry.join_code and CODE_PATTERN.fullmatch(entry.join_code)):
        raise InvalidEntry(f"{entry.room}: a private room needs its join_code")
    for player in entry.seated:
        if "\n" in player:
            raise InvalidEntry(f"{entry.room}: bad player id {player!r}")
    try:
        metadata = orjson.dumps(dict(entry.metadata))
    except TypeError as exc:
        raise InvalidEntry(f"{entry.room}: metadata is not JSON-able ({exc})") from None
    if len(metadata) > MAX_METADATA_BYTES:
        raise InvalidEntry(f"{entry.room}: metadata over {MAX_METADATA_BYTES} bytes")
    return _stored(entry, options), canonical_options(options)


def _stored(entry: Entry, options: Mapping[str, OptionValue]) -> bytes:
    return orjson.dumps(
        {
            "room": entry.room,
            "game": entry.game,
            "players": entry.players,
            "max_players": entry.max_players,
            "options": dict(options),
            "private": entry.private,
            "join_code": entry.join_code,
            "metadata": dict(entry.metadata),
            "joinable": entry.joinable,
            "owner": entry.owner,
            "epoch": entry.epoch,
        }
    )


def _flags(*, joinable: bool, private: bool, pending: bool) -> str:
    flags = ("j" if joinable else "") + ("v" if private else "") + ("w" if pending else "")
    return flags or "-"


def new_private_code() -> str:
    """A random join code: 6 symbols of an alphabet without 0/O/1/I (about 1e9 codes)."""
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def new_room_name(game: str, *, private: bool = False) -> str:
    """A fresh room name: ``G.xxxxxxxxxx`` (public, 50 bits) or ``G.p.<22 chars>``
    (private: 128 bits, as hard to guess as a token, since a name is enough to join)."""
    if private:
        return f"{game}.p.{secrets.token_urlsafe(16)}"
    return f"{game}." + "".join(secrets.choice(_NAME_ALPHABET) for _ in range(10))


def normalise_code(code: str) -> str | None:
    """The code in its stored form (upper case), or None when it cannot be a code."""
    code = code.strip().upper()
    return code if CODE_PATTERN.fullmatch(code) else None


# ---------------------------------------------------------------- keys and scripts


def game_keys(game: str) -> list[str]:
    """The nine keys of ``game``'s directory, in the order every script takes them."""
    base = f"sr:dir:{{game:{game}}}"
    names = ("entries", "seats", "opts", "exp", "public", "open", "resv", "rcount", "held")
    return [f"{base}:{name}" for name in names]


def code_key(code: str) -> str:
    return CODE_PREFIX + code


_COMMON = """
local K_ENTRIES, K_SEATS, K_OPTS, K_EXP = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_PUBLIC, K_OPEN, K_RESV, K_RCOUNT, K_HELD = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function seats_of(room)
  local s = redis.call('HGET', K_SEATS, room)
  if not s then return nil end
  local p, m, e, f = string.match(s, '^(%d+) (%d+) (%d+) (%S+)')
  return tonumber(p), tonumber(m), tonumber(e), f
end

local function has(flags, c) return string.find(flags, c, 1, true) ~= nil end

local function rcount(room) return tonumber(redis.call('HGET', K_RCOUNT, room) or '0') end

local function alive(room)
  local e = redis.call('ZSCORE', K_EXP, room)
  return e and tonumber(e) > now
end

-- keep K_OPEN right for one room: public, joinable, alive, with a free seat
local function refresh_open(room)
  local p, m, e, f = seats_of(room)
  if p == nil or has(f, 'v') or not has(f, 'j') or not alive(room) then
    redis.call('ZREM', K_OPEN, room)
    return
  end
  local occupancy = p + rcount(room)
  if occupancy < m then
    redis.call('ZADD', K_OPEN, occupancy, room)
  else
    redis.call('ZREM', K_OPEN, room)
  end
end

-- delete one reservation ("ROOM\\nPLAYER"); the room it was in, or nil
local function drop_reservation(member)
  if redis.call('ZREM', K_RESV, member) == 0 then return nil end
  local nl = string.find(member, '\\n', 1, true)
  local room, player = string.sub(member, 1, nl - 1), string.sub(member, nl + 1)
  if redis.call('HINCRBY', K_RCOUNT, room, -1) <= 0 then redis.call('HDEL', K_RCOUNT, room) end
  if redis.call('HGET', K_HELD, player) == room then redis.call('HDEL', K_HELD, player) end
  return room
end

-- forget a room's entry (its reservations stay until they expire: rcount stays exact)
local function forget(room)
  redis.call('HDEL', K_ENTRIES, room)
  redis.call('HDEL', K_SEATS, room)
  redis.call('HDEL', K_OPTS, room)
  redis.call('ZREM', K_EXP, room)
  redis.call('ZREM', K_PUBLIC, room)
  redis.call('ZREM', K_OPEN, room)
end

local function prune()
  local touched = {}
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', K_RESV, '-inf', now, 'LIMIT', 0, 256)) do
    local room = drop_reservation(m)
    if room then touched[room] = true end
  end
  for _, room in ipairs(redis.call('ZRANGEBYSCORE', K_EXP, '-inf', now, 'LIMIT', 0, 256)) do
    forget(room)
    touched[room] = nil
  end
  for room, _ in pairs(touched) do refresh_open(room) end
end

-- every key of the game has a TTL: renewed once half spent, or set on a key this call
-- (re)created; PTTL is a read, so most calls write (and replicate) no PEXPIRE at all
local function keep(ttl)
  local renew = redis.call('PTTL', K_EXP) < tonumber(ttl) / 2
  for i = 1, 9 do
    if renew or redis.call('PTTL', KEYS[i]) == -1 then redis.call('PEXPIRE', KEYS[i], ttl) end
  end
end
"""

# ARGV: room, entry json, players, max, epoch, flags, opts, ttl ms, key ttl ms, seated...
_PUBLISH = (
    _COMMON
    + """
local room = ARGV[1]
local epoch = tonumber(ARGV[5])
prune()
local _, _, stored_epoch = seats_of(room)
if stored_epoch and stored_epoch > epoch then return 0 end
local reserved = rcount(room)
if reserved > 0 then
  for i = 10, #ARGV do drop_reservation(room .. '\\n' .. ARGV[i]) end
  reserved = rcount(room)
end
local players, max, flags = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[6]
redis.call('HSET', K_ENTRIES, room, ARGV[2])
redis.call('HSET', K_SEATS, room,
           players .. ' ' .. max .. ' ' .. epoch .. ' ' .. flags .. ' ' .. now)
redis.call('HSET', K_OPTS, room, ARGV[7])
redis.call('ZADD', K_EXP, now + tonumber(ARGV[8]), room)
if has(flags, 'v') then
  redis.call('ZREM', K_PUBLIC, room)
else
  local score = players
  if has(flags, 'j') and players + reserved < max then score = score + 1000000 end
  redis.call('ZADD', K_PUBLIC, score, room)
end
-- refresh_open, without reading back what was just written
if has(flags, 'j') and not has(flags, 'v') and players + reserved < max then
  redis.call('ZADD', K_OPEN, players + reserved, room)
else
  redis.call('ZREM', K_OPEN, room)
end
keep(ARGV[9])
return 1
"""
)

# ARGV: ttl ms, key ttl ms, then room, epoch pairs -> the rooms NOT refreshed (absent,
# expired, or published by a newer owner): their owner publishes them in full instead.
_REFRESH = (
    _COMMON
    + """
prune()
local ttl = tonumber(ARGV[1])
local missed = {}
for i = 3, #ARGV, 2 do
  local room = ARGV[i]
  local _, _, stored_epoch = seats_of(room)
  if stored_epoch == tonumber(ARGV[i + 1]) and alive(room) then
    redis.call('ZADD', K_EXP, now + ttl, room)
  else
    missed[#missed + 1] = room
  end
end
keep(ARGV[2])
return missed
"""
)

# ARGV: room, epoch (-1: any) -> {1, entry json} | {0, ''}
_REMOVE = (
    _COMMON
    + """
local room = ARGV[1]
prune()
local _, _, stored_epoch = seats_of(room)
local epoch = tonumber(ARGV[2])
if stored_epoch and epoch >= 0 and stored_epoch > epoch then return {0, ''} end
local entry = redis.call('HGET', K_ENTRIES, room) or ''
forget(room)
return {1, entry}
"""
)

# ARGV: player, new room, new entry json, new max, new opts, resv ttl, scan, key ttl,
#       n wanted, wanted tokens...
# -> {room, created, reservation expiry ms, entry json, seats, reserved, entry expiry ms}
#    | {'taken'} (the new name exists: the caller retries with another)
_QUICK_JOIN = (
    _COMMON
    + """
local player, new_room = ARGV[1], ARGV[2]
local resv_ttl, scan = tonumber(ARGV[6]), tonumber(ARGV[7])
local n = tonumber(ARGV[9])
prune()

local function matches(room)
  local canon = redis.call('HGET', K_OPTS, room)
  if not canon then return false end
  for i = 10, 9 + n do
    if not string.find(canon, ARGV[i], 1, true) then return false end
  end
  return true
end

local function usable(room)
  local p, m, e, f = seats_of(room)
  return p ~= nil and has(f, 'j') and not has(f, 'v') and alive(room), p, m
end

local chosen, created = nil, 0
local held = redis.call('HGET', K_HELD, player)
if held then
  local expiry = redis.call('ZSCORE', K_RESV, held .. '\\n' .. player)
  if expiry and tonumber(expiry) > now and usable(held) and matches(held) then
    chosen = held
  end
end
local start = 0
while not chosen and start < scan do
  local page = redis.call('ZRANGE', K_OPEN, start, math.min(start + 15, scan - 1))
  for _, room in ipairs(page) do
    if matches(room) then
      local ok, p, m = usable(room)
      if ok and p + rcount(room) < m then
        chosen = room
        break
      end
    end
  end
  if #page < 16 then break end
  start = start + 16
end
if not chosen then
  if redis.call('HEXISTS', K_SEATS, new_room) == 1 then return {'taken'} end
  chosen, created = new_room, 1
  redis.call('HSET', K_ENTRIES, new_room, ARGV[3])
  redis.call('HSET', K_SEATS, new_room, '0 ' .. ARGV[4] .. ' 0 jw ' .. now)
  redis.call('HSET', K_OPTS, new_room, ARGV[5])
end

local expiry = now + resv_ttl
if redis.call('ZADD', K_RESV, expiry, chosen .. '\\n' .. player) == 1 then
  redis.call('HINCRBY', K_RCOUNT, chosen, 1)
end
if held and held ~= chosen then
  drop_reservation(held .. '\\n' .. player)
  refresh_open(held)
end
redis.call('HSET', K_HELD, player, chosen)
local _, _, _, flags = seats_of(chosen)
-- a pending room lives as long as its newest reservation (GT also adds a new member)
if has(flags, 'w') then redis.call('ZADD', K_EXP, 'GT', expiry, chosen) end
refresh_open(chosen)
keep(ARGV[8])
return {chosen, created, expiry, redis.call('HGET', K_ENTRIES, chosen),
        redis.call('HGET', K_SEATS, chosen), rcount(chosen),
        redis.call('ZSCORE', K_EXP, chosen)}
"""
)

# ARGV: room, entry json, max, opts, ttl ms, key ttl ms -> 1 | 0 (the name is taken)
_PENDING_PRIVATE = (
    _COMMON
    + """
local room = ARGV[1]
prune()
if redis.call('HEXISTS', K_SEATS, room) == 1 then return 0 end
redis.call('HSET', K_ENTRIES, room, ARGV[2])
redis.call('HSET', K_SEATS, room, '0 ' .. ARGV[3] .. ' 0 jvw ' .. now)
redis.call('HSET', K_OPTS, room, ARGV[4])
redis.call('ZADD', K_EXP, now + tonumber(ARGV[5]), room)
keep(ARGV[6])
return 1
"""
)

# KEYS[1] code key; ARGV: value, ttl ms, 'set'|'del'. Only touches a code that is absent
# or already names this room, so a code reused by another room is never overwritten.
_CODE = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
if ARGV[3] == 'del' then
  if cur then redis.call('DEL', KEYS[1]) end
  return 1
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class _Scripts:
    publish: AsyncScript
    refresh: AsyncScript
    remove: AsyncScript
    quick_join: AsyncScript
    pending_private: AsyncScript
    code: AsyncScript


_scripts: weakref.WeakKeyDictionary[aioredis.Redis, _Scripts] = weakref.WeakKeyDictionary()


def _scripts_of(redis: aioredis.Redis) -> _Scripts:
    found = _scripts.get(redis)
    if found is None:
        found = _Scripts(
            publish=redis.register_script(_PUBLISH),
            refresh=redis.register_script(_REFRESH),
            remove=redis.register_script(_REMOVE),
            quick_join=redis.register_script(_QUICK_JOIN),
            pending_private=redis.register_script(_PENDING_PRIVATE),
            code=redis.register_script(_CODE),
        )
        _scripts[redis] = found
    return found


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _code_value(game: str, room: str) -> bytes:
    return orjson.dumps({"game": game, "room": room})


def _entry_from(
    raw: Any, seats: Any, expires_ms: Any, reserved: Any, *, now_ms: float | None = None
) -> Entry | None:
    """An Entry from what Redis holds, or None if it is missing or expired."""
    if raw is None or seats is None or expires_ms is None:
        return None
    expires = float(expires_ms)
    if now_ms is not None and expires <= now_ms:
        return None
    data = orjson.loads(raw)
    players, max_players, epoch, flags, updated = _s(seats).split(" ")
    return Entry(
        room=data["room"],
        game=data["game"],
        players=int(players),
        max_players=int(max_players),
        options=data.get("options") or {},
        private="v" in flags,
        join_code=data.get("join_code"),
        metadata=data.get("metadata") or {},
        joinable="j" in flags,
        owner=data.get("owner") or "",
        epoch=int(epoch),
        reserved=int(reserved or 0),
        pending="w" in flags,
        updated_at=int(updated) / 1000,
        expires_at=expires / 1000,
    )


async def _now_ms(redis: aioredis.Redis) -> float:
    seconds, micros = await redis.time()
    return seconds * 1000 + micros // 1000


# ---------------------------------------------------------------- writers (room servers)


async def publish(redis: aioredis.Redis, entry: Entry, *, ttl_ms: int = ENTRY_TTL_MS) -> bool:
    """Publish (or refresh) one room; False when a newer owner (higher ``epoch``) has
    published it already. Call it when the room starts and every ``REFRESH_EVERY_S``."""
    (result,) = await publish_many(redis, [entry], ttl_ms=ttl_ms)
    return result


async def publish_many(
    redis: aioredis.Redis, entries: Sequence[Entry], *, ttl_ms: int = ENTRY_TTL_MS
) -> list[bool]:
    """``publish`` for many rooms in one round trip (a non-transactional pipeline; each
    room is still one atomic script). Raises InvalidEntry before sending anything if
    one entry is malformed."""
    if not entries:
        return []
    prepared = [(entry, *_check_entry(entry)) for entry in entries]
    scripts = _scripts_of(redis)
    calls: list[ScriptCall] = []
    for entry, stored, canon in prepared:
        flags = _flags(joinable=entry.joinable, private=entry.private, pending=False)
        calls.append(
            (
                scripts.publish,
                game_keys(entry.game),
                [
                    entry.room,
                    stored,
                    entry.players,
                    entry.max_players,
                    entry.epoch,
                    flags,
                    canon,
                    ttl_ms,
                    KEY_TTL_MS,
                    *entry.seated,
                ],
            )
        )
        if entry.private and entry.join_code:
            calls.append(
                (
                    scripts.code,
                    [code_key(entry.join_code)],
                    [_code_value(entry.game, entry.room), ttl_ms, "set"],
                )
            )
    # One round trip (one per node on a Redis Cluster); the first error is raised.
    results = await run_pipelined(redis, calls)
    for result in results:
        if isinstance(result, Exception):
            raise result
    out: list[bool] = []
    index = 0
    for entry, _, _ in prepared:
        out.append(bool(results[index]))
        index += 2 if entry.private and entry.join_code else 1
    return out


REFRESH_CHUNK = 500  # rooms per refresh script call: each call holds Redis ~1 ms at most


async def refresh_many(
    redis: aioredis.Redis,
    rooms: Sequence[tuple[str, str, int]],
    *,
    ttl_ms: int = ENTRY_TTL_MS,
) -> set[str]:
    """Extend the expiry of published entries whose content did not change, given as
    (room, game, epoch): one script call per game (and per ``REFRESH_CHUNK`` rooms)
    instead of a publish per room. Only an entry still alive and published at exactly
    that epoch is extended. Returns the rooms that were not (absent, expired, or taken
    by a newer owner): publish them in full. A private room's join code has its own TTL:
    refresh such rooms with ``publish_many``."""
    if not rooms:
        return set()
    by_game: dict[str, list[tuple[str, int]]] = {}
    for room, game, epoch in rooms:
        by_game.setdefault(game, []).append((room, epoch))
    scripts = _scripts_of(redis)
    calls: list[ScriptCall] = []
    for game, members in sorted(by_game.items()):
        for start in range(0, len(members), REFRESH_CHUNK):
            args: list[Any] = [ttl_ms, KEY_TTL_MS]
            for room, epoch in members[start : start + REFRESH_CHUNK]:
                args += [room, epoch]
            calls.append((scripts.refresh, game_keys(game), args))
    results = await run_pipelined(redis, calls)
    missed: set[str] = set()
    for result in results:
        if isinstance(result, Exception):
            raise result
        missed.update(_s(room) for room in result)
    return missed


async def remove(redis: aioredis.Redis, room: str, game: str, *, epoch: int = -1) -> bool:
    """Take a closed room out of the directory at once (and its join code). With
    ``epoch``, only if no newer owner has published it. Seat reservations for it simply
    expire."""
    scripts = _scripts_of(redis)
    removed, raw = await scripts.remove(keys=game_keys(game), args=[room, epoch])
    if not int(removed):
        return False
    if raw:
        code = orjson.loads(raw).get("join_code")
        if isinstance(code, str) and code:
            await scripts.code(keys=[code_key(code)], args=[_code_value(game, room), 0, "del"])
    return True


# ---------------------------------------------------------------- readers (matchmaking)


async def lookup(redis: aioredis.Redis, game: str, room: str) -> Entry | None:
    """The room's entry, published or pending, or None. A room server calls it when it
    creates a room, to learn whether the name was handed out for a private room (then
    create it private, with the entry's options and join code) or by a quick-join."""
    entries, seats, _, exp, *_, rcount, _ = game_keys(game)
    clustered = is_cluster(redis)  # a cluster pipeline refuses TIME (a keyless command)
    now_ms = await _now_ms(redis) if clustered else 0.0
    async with redis.pipeline(transaction=False) as pipe:
        if not clustered:
            pipe.time()
        pipe.hget(entries, room)
        pipe.hget(seats, room)
        pipe.zscore(exp, room)
        pipe.hget(rcount, room)
        replies = await pipe.execute()
    if not clustered:
        seconds, micros = replies.pop(0)
        now_ms = seconds * 1000 + micros // 1000
    raw, seat, expires, reserved = replies
    return _entry_from(raw, seat, expires, reserved, now_ms=now_ms)


def _matches(entry: Entry, wanted: Mapping[str, str]) -> bool:
    for key, value in wanted.items():
        if key not in entry.options or query_form(entry.options[key]) != value:
            return False
    return True


async def list_public(
    redis: aioredis.Redis,
    game: str,
    *,
    options_filter: Mapping[str, OptionValue] | None = None,
    limit: int = 50,
    scan: int = LIST_SCAN,
) -> list[Entry]:
    """Public published rooms of ``game``: joinable ones with a free seat first, then
    busiest first. ``options_filter`` keeps rooms whose options have these values
    (compared in their query-string form: ``4`` matches ``"4"``, ``True`` ``"true"``).
    At most ``scan`` entries are examined. Read-only; no Lua."""
    limit = max(1, min(limit, LIST_LIMIT_MAX))
    wanted = {k: query_form(v) for k, v in (options_filter or {}).items()}
    entries_key, seats_key, _, exp_key, public_key, _, _, rcount_key, _ = game_keys(game)
    found: list[Entry] = []
    start = 0
    page = min(max(limit * 2, 20), 200)
    now_ms = await _now_ms(redis)
    while len(found) < limit and start < scan:
        names = [_s(n) for n in await redis.zrevrange(public_key, start, start + page - 1)]
        if not names:
            break
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hmget(entries_key, names)
            pipe.hmget(seats_key, names)
            pipe.zmscore(exp_key, names)
            pipe.hmget(rcount_key, names)
            raws, seats, expiries, reserved = await pipe.execute()
        for raw, seat, expires, held in zip(raws, seats, expiries, reserved, strict=True):
            entry = _entry_from(raw, seat, expires, held, now_ms=now_ms)
            if entry is None or entry.private or entry.pending:
                continue
            if _matches(entry, wanted):
                found.append(entry)
                if len(found) == limit:
                    break
        start += page
    return found


async def quick_join(
    redis: aioredis.Redis,
    game: str,
    options: Mapping[str, OptionValue],
    *,
    player: str,
    max_players_default: int,
    reservation_ms: int = RESERVATION_TTL_MS,
    scan: int = QUICK_JOIN_SCAN,
) -> QuickJoin:
    """Reserve a seat for ``player`` in the least-full joinable public room of ``game``
    whose options include ``options``; if there is none, in a new room (a fresh name,
    entered as pending with ``max_players_default`` seats so that concurrent
    quick-joins fill it too). The caller's ``join`` of a new room creates it."""
    checked = check_options(options)
    if "\n" in player or not player:
        raise DirectoryError("a reservation needs a player id")
    wanted = [_token(k, checked[k]) for k in sorted(checked)]
    canon = canonical_options(checked)
    scripts = _scripts_of(redis)
    for _ in range(5):
        name = new_room_name(game)
        pending = Entry(room=name, game=game, max_players=max_players_default, options=checked)
        result = await scripts.quick_join(
            keys=game_keys(game),
            args=[
                player,
                name,
                _stored(pending, checked),
                max_players_default,
                canon,
                reservation_ms,
                scan,
                KEY_TTL_MS,
                len(wanted),
                *wanted,
            ],
        )
        if _s(result[0]) == "taken":
            continue
        room, created, expiry, raw, seats, reserved, entry_expiry = result
        entry = _entry_from(raw, seats, entry_expiry, reserved)
        assert entry is not None
        return QuickJoin(
            room=_s(room),
            created=bool(int(created)),
            reservation=Reservation(player, _s(room), int(expiry) / 1000),
            entry=entry,
        )
    raise DirectoryError("could not find a free room name; retry")


async def create_private(
    redis: aioredis.Redis,
    game: str,
    options: Mapping[str, OptionValue],
    *,
    max_players: int,
    ttl_ms: int = PRIVATE_PENDING_TTL_MS,
) -> PrivateRoom:
    """Name a private room and give it a join code (collision-checked with SET NX); both
    live ``ttl_ms`` (10 min) until an owner publishes the room, then as long as it runs.
    The creator's ``join`` with the room name creates it."""
    checked = check_options(options)
    scripts = _scripts_of(redis)
    room = new_room_name(game, private=True)
    value = _code_value(game, room)
    for _ in range(10):
        code = new_private_code()
        if await redis.set(code_key(code), value, nx=True, px=ttl_ms):
            break
    else:
        raise DirectoryError("could not find a free join code; retry")
    entry = Entry(
        room=room,
        game=game,
        max_players=max_players,
        options=checked,
        private=True,
        join_code=code,
    )
    stored, canon = _check_entry(entry)
    if not await scripts.pending_private(
        keys=game_keys(game), args=[room, stored, max_players, canon, ttl_ms, KEY_TTL_MS]
    ):
        await scripts.code(keys=[code_key(code)], args=[value, 0, "del"])
        raise DirectoryError("room name collision; retry")
    found = await lookup(redis, game, room)
    assert found is not None
    return PrivateRoom(code=code, room=room, entry=found)


async def private_room(redis: aioredis.Redis, code: str) -> Entry | None:
    """The room a join code names (pending or running), or None."""
    normal = normalise_code(code)
    if normal is None:
        return None
    raw = await redis.get(code_key(normal))
    if raw is None:
        return None
    target = orjson.loads(raw)
    entry = await lookup(redis, str(target["game"]), str(target["room"]))
    if entry is None or not entry.private or entry.join_code != normal:
        return None
    return entry


# ---------------------------------------------------------------- the servers' registry


def _games_of(info: Any) -> Iterable[GameInfo]:
    """The ``games`` field of one registry entry: names, or objects
    ``{"name", "max_players", "options": [names]}``; anything else is skipped."""
    listed = info.get("games") if isinstance(info, dict) else None
    if not isinstance(listed, list):
        return
    for item in listed:
        if isinstance(item, str) and GAME_NAME.fullmatch(item):
            yield GameInfo(item)
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            name = item["name"]
            if not GAME_NAME.fullmatch(name):
                continue
            top = item.get("max_players")
            names = item.get("options")
            yield GameInfo(
                name,
                top if isinstance(top, int) and not isinstance(top, bool) and top > 0 else None,
                frozenset(n for n in names if isinstance(n, str))
                if isinstance(names, list)
                else None,
            )


def merge_games(registry: Mapping[str, Any]) -> dict[str, GameInfo]:
    """Games of every registry entry: the smallest ``max_players`` any server states,
    the union of the option names (None if no server lists them)."""
    merged: dict[str, GameInfo] = {}
    for info in registry.values():
        for game in _games_of(info):
            known = merged.get(game.name)
            if known is None:
                merged[game.name] = game
                continue
            tops = [t for t in (known.max_players, game.max_players) if t is not None]
            names = [n for n in (known.options, game.options) if n is not None]
            merged[game.name] = GameInfo(
                game.name,
                min(tops) if tops else None,
                frozenset().union(*names) if names else None,
            )
    return merged


async def games(redis: aioredis.Redis) -> dict[str, GameInfo]:
    """The games the registered room servers run (``sr:servers`` entries' ``games``).
    Entries without the field contribute nothing."""
    raw = await redis.hgetall(SERVERS_KEY)
    registry: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            registry[_s(key)] = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
    return merge_games(registry)


async def server_ws_url(redis: aioredis.Redis, server_id: str) -> str | None:
    """The ``ws_url`` a registered room server publishes, or None."""
    if not server_id:
        return None
    raw = await redis.hget(SERVERS_KEY, server_id)
    if raw is None:
        return None
    try:
        info = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    url = info.get("ws_url") if isinstance(info, dict) else None
    return url if isinstance(url, str) and url else None
