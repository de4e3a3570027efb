"""The heartbeat lists the same busiest rooms as ranking every room would, cheaper."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from server.app import ROOM_STATS_CAP, busiest_rooms


@dataclass
class FakeRoom:
    """What busiest_rooms looks at: the connected sessions and the name."""

    name: str
    sessions: dict[str, Any] = field(default_factory=dict)


@pytest.mark.parametrize("busy", [0, 1, 150, ROOM_STATS_CAP, 600])
def test_busiest_rooms_rank_by_players_then_name(busy: int) -> None:
    rng = random.Random(busy)
    rooms = {f"r{i:04d}": FakeRoom(f"r{i:04d}") for i in rng.sample(range(5000), 1000)}
    for room in rng.sample(list(rooms.values()), busy):
        room.sessions = {f"p{k}": None for k in range(rng.randint(1, 8))}
    expected = sorted(rooms.values(), key=lambda r: (-len(r.sessions), r.name))
    got = busiest_rooms(rooms)  # type: ignore[arg-type]
    assert [r.name for r in got] == [r.name for r in expected[:ROOM_STATS_CAP]]


def test_few_rooms_are_all_listed() -> None:
    rooms = {name: FakeRoom(name) for name in ("b", "a")}
    assert {r.name for r in busiest_rooms(rooms)} == {"a", "b"}  # type: ignore[arg-type]
