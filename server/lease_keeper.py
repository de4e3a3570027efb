"""One timer keeps the leases of every paused room of a server.

A paused room (nobody connected: "idle rooms" in server/room.py) still holds its lease,
renewed every ``lease_ms / 3``. Each paused room used to wake on a timer of its own and
send its own renewal: at 1,000 idle rooms that was 1,000 timers, futures and script
calls a second, about a third of an idle server's CPU, and timers a few ms apart split
the renewals over hundreds of small writes. Here the paused rooms wait in the slots of
a ``grid_s`` grid; one timer takes the rooms due at each slot and renews them with one
call (``RoomStore.renew_many``: one script per chunk of rooms on one Redis, one call
per room in one pipeline on a cluster).

A room whose renewal fails (Redis unreachable) is tried again at the next slot; the
room itself decides when that is too late (``renew_deadline``: then it is fenced, as a
ticking room is). A fenced reply fences it at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from collections.abc import Sequence
from typing import Any, Protocol

from server.errors import OwnershipLost

log = logging.getLogger("stateroom.lease_keeper")

RENEW_GRID_S = 0.25
EARLY_S = 0.002  # a timer may fire this much before its slot and still take it

__all__ = ["RENEW_GRID_S", "Kept", "LeaseKeeper", "keeper_for"]


class Kept(Protocol):
    """What the keeper asks of a paused room."""

    lease: Any

    def renew_due_at(self) -> float:
        """When (``time.monotonic()``) its lease should next be renewed."""
        ...

    def renew_deadline(self) -> float:
        """When an unrenewed lease must stop the room."""
        ...

    def lease_lost(self, reason: str) -> None:
        """Its lease could not be renewed in time, or was taken: stop the room."""
        ...

    def lease_renewed(self, sent_at: float, error: BaseException | None) -> None:
        """The renewal sent at ``sent_at`` answered (``error`` None: renewed)."""
        ...


class Renewer(Protocol):
    async def renew_many(self, leases: Sequence[Any]) -> list[BaseException | None]: ...


class LeaseKeeper:
    """Renews the leases of the rooms it keeps, due room by due room, one call a slot."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, store: Renewer, grid_s: float = RENEW_GRID_S
    ) -> None:
        self.loop = loop
        self.store = store
        self.grid_s = grid_s
        self._slots: dict[int, dict[Kept, None]] = {}  # slot -> rooms due then
        self._slot_of: dict[Kept, int] = {}
        self._renewing: dict[Kept, float] = {}  # room -> when its renewal was sent
        self._timer: asyncio.TimerHandle | None = None
        self._timer_slot: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.renewals = 0  # leases sent for renewal (tests, measurements)
        self.calls = 0  # renew_many calls

    def __len__(self) -> int:
        return len(self._slot_of) + len(self._renewing)

    def __contains__(self, room: object) -> bool:
        return room in self._slot_of or room in self._renewing

    def add(self, room: Kept) -> None:
        """Keep ``room``'s lease from now on (a room just paused)."""
        if room in self:
            return
        self._place(room, room.renew_due_at(), time.monotonic())
        self._arm()

    def discard(self, room: Kept) -> None:
        """Stop keeping ``room`` (resumed or closed); a renewal in flight is ignored."""
        slot = self._slot_of.pop(room, None)
        if slot is not None:
            rooms = self._slots.get(slot)
            if rooms is not None:
                rooms.pop(room, None)
                if not rooms:
                    del self._slots[slot]
        self._renewing.pop(room, None)
        if not self._slot_of and not self._renewing and self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_slot = None

    def _place(self, room: Kept, due_at: float, now: float) -> None:
        # A slot still to come: never the one being fired (a room due in the past, e.g.
        # a failed renewal, goes to the next slot).
        slot = max(math.ceil(due_at / self.grid_s), math.floor(now / self.grid_s) + 1)
        self._slot_of[room] = slot
        self._slots.setdefault(slot, {})[room] = None

    def _arm(self) -> None:
        """The timer at the first slot with rooms (or the next one while renewals are in
        flight: an answer past a room's deadline must not wait for other rooms)."""
        slots = list(self._slots)
        if self._renewing:
            slots.append(math.floor(time.monotonic() / self.grid_s) + 1)
        if not slots:
            return
        first = min(slots)
        if self._timer is not None:
            if self._timer_slot is not None and self._timer_slot <= first:
                return
            self._timer.cancel()
        self._timer_slot = first
        delay = max(0.0, first * self.grid_s - time.monotonic())
        self._timer = self.loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = self._timer_slot = None
        now = time.monotonic()
        current = math.floor((now + EARLY_S) / self.grid_s)
        due: list[Kept] = []
        for slot in [s for s in self._slots if s <= current]:
            for room in self._slots.pop(slot):
                del self._slot_of[room]
                due.append(room)
        for room, _sent_at in list(self._renewing.items()):
            if now >= room.renew_deadline():  # its answer is overdue: it stops
                self._renewing.pop(room, None)
                self._lost(room)
        batch: list[Kept] = []
        for room in due:
            if now >= room.renew_deadline():
                self._lost(room)
            else:
                batch.append(room)
                self._renewing[room] = now
        if batch:
            self.calls += 1
            self.renewals += len(batch)
            task = self.loop.create_task(self._renew(batch, now))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._arm()

    def _lost(self, room: Kept) -> None:
        try:
            room.lease_lost(f"room {room.lease.room}: could not renew the lease in time")
        except Exception:
            log.exception("stopping %r failed", room)

    async def _renew(self, batch: list[Kept], sent_at: float) -> None:
        try:
            results: Sequence[BaseException | None] = await self.store.renew_many(
                [room.lease for room in batch]
            )
        except Exception as exc:  # the whole call: every room tries again
            results = [exc] * len(batch)
        transient = [e for e in results if e is not None and not isinstance(e, OwnershipLost)]
        if transient:  # once per call, not once per room (each room logs at debug)
            log.warning(
                "lease renewal of %d paused rooms failed (%s); retrying at the next slot",
                len(transient),
                transient[0],
            )
        now = time.monotonic()
        for room, error in zip(batch, results, strict=True):
            if self._renewing.get(room) != sent_at:
                continue  # resumed or closed meanwhile
            try:
                room.lease_renewed(sent_at, error)
            except Exception:
                log.exception("renewal answer of %r failed", room)
            if self._renewing.get(room) == sent_at:
                # Still kept (its answer did not stop it): its next renewal, or a retry
                # at the next slot if this one failed.
                del self._renewing[room]
                self._place(room, room.renew_due_at(), now)
        self._arm()


_KEEPERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, LeaseKeeper]] = (
    weakref.WeakKeyDictionary()
)


def keeper_for(store: Renewer) -> LeaseKeeper:
    """The running loop's keeper of ``store``'s paused leases (made on first use)."""
    loop = asyncio.get_running_loop()
    by_store = _KEEPERS.setdefault(loop, {})
    keeper = by_store.get(id(store))
    if keeper is None or keeper.store is not store:
        keeper = by_store[id(store)] = LeaseKeeper(loop, store)
    return keeper
