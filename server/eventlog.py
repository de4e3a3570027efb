"""The game events of a room's recent ticks, for delivery exactly once per player.

Pure. An event belongs to the tick that emitted it and travels with that tick's state.
A player who missed ticks (a reconnect, a takeover) says which tick it saw last, and
gets every event of the later ticks addressed to it, and none it already had. The log
keeps the ticks of one grace period (a seat is freed after that anyway); the room
server fills it live and, after a takeover, from the events stream in Redis, which is
written in the same script as the tick's journal entry (``RoomStore.append``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from server.game import Emitted


class EventLog:
    """(tick, events) of the last ``keep_ticks`` ticks that emitted any, oldest first."""

    def __init__(self, keep_ticks: int) -> None:
        self.keep_ticks = keep_ticks
        self._ticks: deque[tuple[int, list[Emitted]]] = deque()

    def record(self, tick: int, emitted: list[Emitted]) -> None:
        if emitted:
            if self._ticks and self._ticks[-1][0] >= tick:
                raise ValueError(f"tick {tick} recorded after tick {self._ticks[-1][0]}")
            self._ticks.append((tick, emitted))
        while self._ticks and self._ticks[0][0] <= tick - self.keep_ticks:
            self._ticks.popleft()

    def load(self, ticks: Iterable[tuple[int, list[Any]]]) -> None:
        """Fill from stored ``[data, recipients|None]`` pairs (oldest tick first)."""
        for tick, pairs in ticks:
            self.record(tick, [Emitted(d, None if to is None else tuple(to)) for d, to in pairs])

    @property
    def oldest(self) -> int | None:
        return self._ticks[0][0] if self._ticks else None

    def for_player(self, player_id: str, after: int, upto: int) -> list[Any]:
        """The data of the events addressed to ``player_id`` in ticks ``after < t <= upto``."""
        return [
            event.data
            for tick, emitted in self._ticks
            if after < tick <= upto
            for event in emitted
            if event.for_player(player_id)
        ]


def packed(emitted: list[Emitted]) -> list[list[Any]]:
    """The stored form of one tick's events."""
    return [[event.data, None if event.to is None else list(event.to)] for event in emitted]
