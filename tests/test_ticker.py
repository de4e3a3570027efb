"""server.ticker on a fake loop: rooms spread over the phases of a period, each ticks
once a period at its phase's slot, empty phases cost no wake-up, a late loop catches
up without ticking a room twice in one period."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from server.ticker import Ticker

pytestmark = pytest.mark.timeout(10)


class FakeTimer:
    def __init__(self, loop: FakeLoop, when: float, callback: Any) -> None:
        self.loop, self.when, self.callback, self.cancelled = loop, when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """time() and call_at() only: the test moves the clock and runs due timers."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now
        self.timers: list[FakeTimer] = []
        self.wakeups = 0

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Any) -> FakeTimer:
        timer = FakeTimer(self, when, callback)
        self.timers.append(timer)
        return timer

    def run_until(self, until: float) -> None:
        while True:
            due = [t for t in self.timers if not t.cancelled and t.when <= until]
            if not due:
                self.now = until
                return
            timer = min(due, key=lambda t: t.when)
            self.timers.remove(timer)
            self.now = max(self.now, timer.when)
            self.wakeups += 1
            timer.callback()


class Room:
    def __init__(self, loop: FakeLoop) -> None:
        self.loop = loop
        self.ticks: list[float] = []

    def on_clock(self, now: float) -> None:
        self.ticks.append(now)


def ticker(loop: FakeLoop, rate: int = 20, phases: int = 4) -> Ticker:
    return Ticker(loop, rate, phases)  # type: ignore[arg-type]


def test_rooms_spread_over_the_phases_and_each_ticks_once_a_period() -> None:
    loop = FakeLoop()
    clock = ticker(loop)
    rooms = [Room(loop) for _ in range(10)]
    for room in rooms:
        clock.add(room)
    assert clock.phase_sizes() == [3, 3, 2, 2]
    loop.run_until(loop.now + 1.0)
    for room in rooms:
        assert len(room.ticks) == 20
        gaps = [b - a for a, b in zip(room.ticks, room.ticks[1:], strict=False)]
        assert all(gap == pytest.approx(0.05) for gap in gaps)
    # Rooms of different phases tick at different slots, 12.5 ms apart.
    offsets = sorted({round((room.ticks[0] * 80) % 4) for room in rooms})
    assert offsets == [0, 1, 2, 3]
    assert loop.wakeups == 80


def test_one_room_costs_one_wakeup_a_period() -> None:
    loop = FakeLoop()
    clock = ticker(loop)
    room = Room(loop)
    clock.add(room)
    loop.run_until(loop.now + 1.0)
    assert len(room.ticks) == 20 and loop.wakeups == 20


def test_a_room_added_to_an_empty_phase_before_the_pending_slot_ticks_there() -> None:
    loop = FakeLoop(now=100.0)  # slot 8000; slot n is phase n % 4
    clock = ticker(loop)
    first = Room(loop)
    clock.add(first)  # phase 0: the timer waits for slot 8004 (100.05)
    loop.run_until(100.001)
    second = Room(loop)
    clock.add(second)  # phase 1, whose slot 8001 (100.0125) comes first
    loop.run_until(100.19)
    assert second.ticks[0] == pytest.approx(100.0125)
    assert first.ticks[0] == pytest.approx(100.05)
    assert len(second.ticks) == 4 and len(first.ticks) == 3


def test_removed_rooms_stop_the_clock() -> None:
    loop = FakeLoop()
    clock = ticker(loop)
    rooms = [Room(loop) for _ in range(3)]
    for room in rooms:
        clock.add(room)
    for room in rooms:
        clock.discard(room)
    assert len(clock) == 0 and clock._timer is None
    loop.run_until(loop.now + 1.0)
    assert loop.wakeups == 0 and not any(room.ticks for room in rooms)


def stuck_for(seconds: float) -> tuple[FakeLoop, list[Room], list[int]]:
    """Four rooms on four phases play for 0.1 s, then the loop is stuck for ``seconds``
    and runs what is due; returns the ticks each room made once it is free."""
    loop = FakeLoop()
    clock = ticker(loop)
    rooms = [Room(loop) for _ in range(4)]
    for room in rooms:
        clock.add(room)
    loop.run_until(loop.now + 0.1)
    counts = [len(room.ticks) for room in rooms]
    loop.now += seconds
    loop.run_until(loop.now)
    return loop, rooms, [len(r.ticks) - before for r, before in zip(rooms, counts, strict=True)]


def test_a_loop_late_by_a_slot_fires_the_next_phases_at_once() -> None:
    # Stuck for 30 ms (more than two slots, less than a period): the missed slots fire
    # back to back when it is free, each phase once.
    loop, rooms, late = stuck_for(0.03)
    assert max(late) <= 1
    loop.run_until(loop.now + 1.0)
    for room in rooms:
        gaps = [b - a for a, b in zip(room.ticks, room.ticks[1:], strict=False)]
        assert min(gaps) > 0.0 and max(gaps) < 0.1


def test_a_loop_late_by_more_than_a_period_skips_the_missed_slots() -> None:
    # Six periods stuck: not six ticks each in a burst, at most one, then the grid again.
    _, _, late = stuck_for(0.3)
    assert max(late) <= 1


def test_one_phase_skips_a_slot_already_past_as_before_phases() -> None:
    """With one phase (the default), a firing more than a period late does not fire the
    missed slot at once: the next tick is on the grid after now."""
    loop = FakeLoop(now=100.001)
    clock = ticker(loop, phases=1)
    room = Room(loop)
    clock.add(room)
    loop.run_until(100.06)
    assert room.ticks == [pytest.approx(100.05)]
    loop.now = 100.17  # stuck past the slots at 100.10 and 100.15
    loop.run_until(100.17)
    assert room.ticks[1:] == [pytest.approx(100.17)]  # the late firing itself, once
    loop.run_until(100.26)
    assert room.ticks[2:] == [pytest.approx(100.2), pytest.approx(100.25)]


async def test_the_real_loop_drives_it() -> None:
    clock = Ticker(asyncio.get_running_loop(), 100, 4)
    ticked = asyncio.Event()

    class Once:
        def on_clock(self, now: float) -> None:
            ticked.set()

    room = Once()
    clock.add(room)
    await asyncio.wait_for(ticked.wait(), 2)
    clock.discard(room)
