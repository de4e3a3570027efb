"""The takeover record's later stamps: what a room's new owner adds after its claim.

The claim script writes ``sr:{R}:takeover`` (epoch, server, old_server, old_epoch,
detected_ms, claimed_ms). The new owner then stamps, each once and in this order
of events: ``restored_ms`` with ``players_expected`` and ``expected_players`` (the
state was rebuilt), ``first_tick_ms`` and ``first_tick`` (the first tick journaled,
hence published, under the new epoch), ``player:ID`` when a restored seat's
player is back, or ``gone:ID`` when its grace period ran out first. Each stamp is
one small fenced script off the tick's path (a background write, never awaited by
the tick), and the writes of one room go one after the other. A stamp is the event's
time on Redis's clock, not its write's: the write carries the event's age, which
Redis subtracts from its clock (a survivor rebuilding 500 rooms writes its stamps up
to ~0.5 s after the events, and they used to say when the write ran).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable

from redis.exceptions import RedisError

from server.redis_errors import REDIS_DOWN
from server.store import Lease, RoomStore

log = logging.getLogger("stateroom.room")


class TakeoverTimeline:
    """Stamps one takeover's record for the room that owns it (one per takeover)."""

    def __init__(self, store: RoomStore, lease: Lease, expected: Iterable[str]) -> None:
        self.store = store
        self.lease = lease
        self.expected = sorted(expected)
        self._awaiting = set(self.expected)
        self._first_tick_done = False
        self._pending: list[tuple[float, dict[str, str]]] = []  # (when, stamps)
        self._writer: asyncio.Task[None] | None = None

    def restored(self) -> None:
        self._write(
            {
                "restored_ms": "",
                "players_expected": str(len(self.expected)),
                "expected_players": json.dumps(self.expected),
            }
        )

    def first_tick(self, tick: int) -> None:
        if self._first_tick_done:
            return
        self._first_tick_done = True
        self._write({"first_tick_ms": "", "first_tick": str(tick)})

    def player_back(self, player_id: str) -> None:
        """A restored seat's player has a session on the new owner (first time only)."""
        if player_id in self._awaiting:
            self._awaiting.discard(player_id)
            self._write({f"player:{player_id}": ""})

    def player_gone(self, player_id: str) -> None:
        """A restored seat's grace period ran out before its player came back: the
        recovery no longer waits for that player (``gone:ID``)."""
        if player_id in self._awaiting:
            self._awaiting.discard(player_id)
            self._write({f"gone:{player_id}": ""})

    @property
    def done(self) -> bool:
        return self._first_tick_done and not self._awaiting

    def _write(self, stamps: dict[str, str]) -> None:
        self._pending.append((time.monotonic(), stamps))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self._pending:
            happened, stamps = self._pending.pop(0)
            age_ms = round((time.monotonic() - happened) * 1000)
            try:
                await self.store.stamp_takeover(self.lease, stamps, age_ms)
            except (*REDIS_DOWN, RedisError) as exc:  # a record, not the room: drop it
                log.debug("room=%s takeover stamp %s lost: %s", self.lease.room, stamps, exc)
