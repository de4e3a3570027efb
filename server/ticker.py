"""One clock per tick rate for every room of an event loop.

A room used to be an asyncio Task that slept until its next tick: per room and
tick a timer, a sleep future, a timeout context and a task wake-up, which at 200
rooms of 4 cost more than the rooms' own work. A ``Ticker`` is one timer
(``loop.call_at``) on the multiples of the period; each firing calls
``on_clock`` of every room of that rate in one pass, and the rooms do their tick
synchronously (the journal write is a future with a callback, see
``server.room``). Rooms of one server tick in the same loop turn, so their
journal appends still leave in one pipeline.

A ticker with no rooms cancels its timer; the first room added starts it again.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Protocol

log = logging.getLogger("stateroom.ticker")


class Clocked(Protocol):
    """What a ticker drives: called once per period, must not raise or block."""

    def on_clock(self, now: float) -> None: ...


class Ticker:
    """Calls ``on_clock`` of its rooms at every multiple of ``1 / rate`` seconds
    (``loop.time()``), in the order they were added."""

    def __init__(self, loop: asyncio.AbstractEventLoop, rate: int) -> None:
        self.loop = loop
        self.period = 1.0 / rate
        self._rooms: dict[Clocked, None] = {}  # insertion-ordered set
        self._timer: asyncio.TimerHandle | None = None
        self._next_at = 0.0
        self.fired = 0  # clock passes since creation (tests, idle measurements)

    def __len__(self) -> int:
        return len(self._rooms)

    def add(self, room: Clocked) -> None:
        self._rooms[room] = None
        if self._timer is None:
            period = self.period
            self._next_at = (self.loop.time() // period + 1) * period
            self._timer = self.loop.call_at(self._next_at, self._fire)

    def discard(self, room: Clocked) -> None:
        self._rooms.pop(room, None)
        if not self._rooms and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self.fired += 1
        now = self.loop.time()
        period = self.period
        # The next slot on the common grid; a loop that fell behind by more than a
        # period skips the missed slots instead of firing them back to back.
        next_at = self._next_at + period
        if next_at <= now:
            next_at = (now // period + 1) * period
        self._next_at = next_at
        self._timer = self.loop.call_at(next_at, self._fire)
        for room in list(self._rooms):
            try:
                room.on_clock(now)
            except Exception:  # a room's own errors are its own; the clock goes on
                log.exception("tick of %r failed", room)


_TICKERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, Ticker]] = (
    weakref.WeakKeyDictionary()
)


def ticker_for(rate: int) -> Ticker:
    """The running loop's ticker at ``rate`` ticks per second (made on first use)."""
    loop = asyncio.get_running_loop()
    by_rate = _TICKERS.setdefault(loop, {})
    ticker = by_rate.get(rate)
    if ticker is None:
        ticker = by_rate[rate] = Ticker(loop, rate)
    return ticker
