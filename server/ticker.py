"""One clock per tick rate for every room of an event loop, its rooms spread over phases.

A room used to be an asyncio Task that slept until its next tick: per room and
tick a timer, a sleep future, a timeout context and a task wake-up, which at 200
rooms of 4 cost more than the rooms' own work. A ``Ticker`` is one timer
(``loop.call_at``) on a grid of ``phases`` slots per period; each room belongs to one
phase and is called (``on_clock``) once per period, at its phase's slot. The rooms
do their tick synchronously (the journal write is a future with a callback, see
``server.room``), so the rooms of one phase tick in the same loop turn and their
journal appends leave in one pipeline.

Why phases: with every room on one slot, a server's whole tick was one burst. At 200
rooms of 4 the burst (the rooms' steps, one pipeline, then every publish) took ~20 ms
of a 50 ms period, every room's journal write waited for all of it, and the inputs
that arrived meanwhile waited in the sockets. Spread over phases, a room waits only
for its own phase's share; the cost is a few more (smaller) pipelines per period.
Measured (docs/operations.md, "Tick phases"): 4 phases cut p99 input latency at 600-800
players in rooms of 4 by ~30 % (median), but made a 1,000-room mass failover ~0.2 s slower, so
the default stays 1 (``--tick-phases``). A room joins the least-populated phase.
Phases without rooms are not fired, so one room (or one phase's worth) costs one timer
per period, as before.

A ticker with no rooms cancels its timer; the first room added starts it again.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Protocol

log = logging.getLogger("stateroom.ticker")

# Slots per period by default (the server's --tick-phases). One is the fastest mass
# failover measured; more phases cut the steady-state burst (at 4 and 20 Hz, a slot
# every 12.5 ms) but add a pipeline per slot.
PHASES = 1


class Clocked(Protocol):
    """What a ticker drives: called once per period, must not raise or block."""

    def on_clock(self, now: float) -> None: ...


class Ticker:
    """Calls ``on_clock`` of each of its rooms once per ``1 / rate`` seconds
    (``loop.time()``), at its phase's slot: the multiples of the period plus
    ``phase / phases`` of it. Within a phase, rooms are called in the order they were
    added."""

    def __init__(self, loop: asyncio.AbstractEventLoop, rate: int, phases: int = PHASES) -> None:
        self.loop = loop
        self.period = 1.0 / rate
        self.phases = phases
        self._slot = self.period / phases
        # Insertion-ordered sets, one per phase, and each room's phase.
        self._groups: list[dict[Clocked, None]] = [{} for _ in range(phases)]
        self._phase_of: dict[Clocked, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._next_slot = 0  # index of the next slot on the grid (slot * _slot seconds)
        self.fired = 0  # slots fired since creation (tests, idle measurements)

    def __len__(self) -> int:
        return len(self._phase_of)

    def __contains__(self, room: object) -> bool:
        return room in self._phase_of

    def phase_sizes(self) -> list[int]:
        return [len(group) for group in self._groups]

    def add(self, room: Clocked) -> None:
        if room in self._phase_of:
            return
        groups = self._groups
        phase = min(range(self.phases), key=lambda index: len(groups[index]))
        groups[phase][room] = None
        self._phase_of[room] = phase
        if self._timer is None:
            self._schedule(self._slot_after(self.loop.time()))
        elif len(groups[phase]) == 1:
            # A phase that was empty may come before the slot the timer waits for.
            self._timer.cancel()
            self._schedule(min(self._next_slot, self._slot_after(self.loop.time())))

    def discard(self, room: Clocked) -> None:
        phase = self._phase_of.pop(room, None)
        if phase is None:
            return
        del self._groups[phase][room]
        if not self._phase_of and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _slot_after(self, now: float) -> int:
        """The index of the first slot strictly after ``now`` (float division can land
        one below: 100.0 // 0.0125 is 7999.0)."""
        slot = int(now // self._slot) + 1
        return slot + 1 if slot * self._slot <= now else slot

    def _schedule(self, slot: int) -> None:
        """Set the timer for the first slot at or after ``slot`` whose phase has rooms."""
        phases, groups = self.phases, self._groups
        for _ in range(phases):
            if groups[slot % phases]:
                break
            slot += 1
        self._next_slot = slot
        self._timer = self.loop.call_at(slot * self._slot, self._fire)

    def _fire(self) -> None:
        self.fired += 1
        now = self.loop.time()
        slot = self._next_slot
        group = self._groups[slot % self.phases]
        # The next slot on the common grid. Slots missed by a loop that fell behind by
        # the other phases' share of a period are skipped, not fired back to back (with
        # one phase: any slot already past, as before phases); a loop less late fires
        # the next phases at once, so each room still ticks once a period.
        following = slot + 1
        if (following + self.phases - 1) * self._slot <= now:
            following = self._slot_after(now)
        self._schedule(following)
        for room in list(group):
            try:
                room.on_clock(now)
            except Exception:  # a room's own errors are its own; the clock goes on
                log.exception("tick of %r failed", room)


_TICKERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[int, int], Ticker]] = (
    weakref.WeakKeyDictionary()
)


def ticker_for(rate: int, phases: int = PHASES) -> Ticker:
    """The running loop's ticker at ``rate`` ticks per second over ``phases`` slots
    (made on first use)."""
    loop = asyncio.get_running_loop()
    by_rate = _TICKERS.setdefault(loop, {})
    ticker = by_rate.get((rate, phases))
    if ticker is None:
        ticker = by_rate[(rate, phases)] = Ticker(loop, rate, phases)
    return ticker
