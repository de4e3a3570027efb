"""The failover watcher's view of the rooms of other servers: who owns what, kept cheap.

Reading the whole rooms index and every peer's lease on every poll (50 ms) made the
watcher's cost grow with the number of rooms even when nothing happens (1,000 rooms on
2 servers: ~20,000 lease reads and 20 index reads of 1,000 entries a second, per server).
This view keeps what the last reads said — each room's game, owner and epoch — and
says which rooms a poll must read:

- **suspects**, every poll: rooms whose owner is not live (dead, or gone from the
  registry: a drain), or that have no lease, or whose owner is *quiet* (its liveness
  connection silent for a second or more: frozen or cut off). In steady state there are
  none, so a poll reads no lease and no index at all;
- **everything**, every ``scan_s`` (the watcher passes ``lease_ms / 4``): the whole index
  (new rooms of live peers, rooms deleted) and every lease not ours. That full scan is
  what finds an expired lease whose owner still looks live and was not quiet, and a
  room that moved between live servers;
- the index again, at once, when a server stops being live: so the rooms a peer created
  just before it died are among the suspects of the same poll.

The owner a room is known by is the one with the highest epoch seen, in the index or in
a lease read (a lease read that finds no lease makes the room a suspect until a read
finds an owner). A room whose lease or index bucket could not be read (a Redis Cluster
shard failing over) is read again on the next poll, not only at the next full scan.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from infra import rooms_index
from infra.redis_url import is_cluster
from server.games import DEFAULT_GAME

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from server.store import Lease

__all__ = ["Known", "WatchedRooms"]


@dataclass(slots=True)
class Known:
    """What the watcher last knew of one room ("" owner: no lease when last read)."""

    game: str
    owner: str
    epoch: int


class WatchedRooms:
    """The rooms of the index with their last known owners (module doc)."""

    def __init__(self, scan_s: float) -> None:
        self.scan_s = scan_s
        self.rooms: dict[str, Known] = {}
        self._by_owner: dict[str, set[str]] = {}  # owner ("" = none) -> its rooms
        self.index_reads = 0  # whole-index reads (tests and the bench look at them)
        self.full_scans = 0
        self._scan_at = float("-inf")  # monotonic start of the last full scan
        self._index_ok = False  # the last index read saw every bucket
        self._unread: set[str] = set()  # rooms a read should have covered and did not
        self._parsed: dict[bytes, dict[str, Any]] = {}  # raw index value -> decoded

    def scan_due(self, now: float | None = None) -> bool:
        """Whether this poll is a full scan (and then it starts now)."""
        now = time.monotonic() if now is None else now
        if now - self._scan_at < self.scan_s and self._index_ok:
            return False
        self._scan_at = now
        self.full_scans += 1
        return True

    async def read_index(self, redis: aioredis.Redis) -> None:
        """Re-read the whole index: add new rooms, drop deleted ones, learn newer owners.
        The buckets of a shard that cannot answer keep what they had."""
        sharded = is_cluster(redis)
        self._index_ok = False  # until this read succeeds: a failed one is retried next poll
        buckets = await rooms_index.read_buckets(redis, self._parsed)
        self.index_reads += 1
        self._index_ok = all(bucket is not None for bucket in buckets)
        seen: dict[str, Known] = {}
        for name, known in self.rooms.items():
            if buckets[rooms_index.bucket_of(name, sharded)] is None:
                seen[name] = known  # its shard could not answer: keep it as it was
        for bucket in buckets:
            for name, entry in (bucket or {}).items():
                seen[name] = self._merged(name, entry)
        self.rooms = seen
        by_owner: dict[str, set[str]] = {}
        for name, known in seen.items():
            by_owner.setdefault(known.owner, set()).add(name)
        self._by_owner = by_owner

    def _merged(self, name: str, entry: dict[str, Any]) -> Known:
        game = entry.get("game")
        owner = entry.get("owner")
        epoch = entry.get("epoch")
        known = self.rooms.get(name)
        game = game if isinstance(game, str) and game else DEFAULT_GAME
        fresh = Known(
            game,
            owner if isinstance(owner, str) else "",
            epoch if isinstance(epoch, int) else 0,
        )
        if known is not None and known.epoch >= fresh.epoch:
            known.game = game
            return known  # a lease read knew as much or more
        return fresh

    def to_read(self, live: set[str], quiet: set[str], me: str, full: bool) -> list[str]:
        """The rooms whose leases this poll reads (ours excluded by the caller). Not a
        full scan: found through the rooms of each suspect owner, so the cost is that of
        the suspects, not of every room."""
        if full:
            return list(self.rooms)
        names: list[str] = []
        for owner, rooms in self._by_owner.items():
            if owner != me and (not owner or owner not in live or owner in quiet):
                names.extend(rooms)
        names.extend(name for name in self._unread if name in self.rooms)
        return names

    def scan_failed(self) -> None:
        """The full scan's lease read failed: the next poll scans again."""
        self._index_ok = False

    def learn(self, asked: list[str], leases: dict[str, Lease | None]) -> None:
        """Record what a lease read found; rooms left out of it are read next poll."""
        self._unread = {name for name in asked if name not in leases}
        for name, lease in leases.items():
            known = self.rooms.get(name)
            if known is None:
                continue
            if lease is None:
                self._move(name, known, "", known.epoch)
            elif lease.epoch >= known.epoch:
                self._move(name, known, lease.server_id, lease.epoch)

    def _move(self, name: str, known: Known, owner: str, epoch: int) -> None:
        if owner != known.owner:
            rooms = self._by_owner.get(known.owner)
            if rooms is not None:
                rooms.discard(name)
                if not rooms:
                    del self._by_owner[known.owner]
            self._by_owner.setdefault(owner, set()).add(name)
        known.owner, known.epoch = owner, epoch

    def game_of(self, name: str) -> str:
        known = self.rooms.get(name)
        return known.game if known is not None else DEFAULT_GAME
