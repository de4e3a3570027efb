"""Rendezvous successors of orphaned rooms (server/succession.py): pure, no Redis."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

from server.succession import successor

ROOMS = [f"room-{i}" for i in range(1000)]


def test_every_watcher_computes_the_same_successor() -> None:
    servers = ["s2-a1b2c3", "s3-d4e5f6", "s4-0a0b0c"]
    for room in ROOMS[:50]:
        assert successor(room, servers) == successor(room, list(reversed(servers)))
        assert successor(room, servers) in servers
    # The same in another process (no dependency on PYTHONHASHSEED).
    code = "from server.succession import successor; print(successor('room-7', ['a', 'b', 'c']))"
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345"},
    )
    assert other.stdout.strip() == successor("room-7", ["a", "b", "c"])


def test_a_dead_servers_rooms_spread_evenly() -> None:
    for survivors in (["s2-x", "s3-y"], ["h1-a", "h1-b", "h2-a", "h2-b"]):
        shares = Counter(successor(room, survivors) for room in ROOMS)
        assert set(shares) == set(survivors)
        even = len(ROOMS) / len(survivors)
        # Binomial spread: within 15 % of an even share at 1000 rooms.
        assert all(abs(count - even) < 0.15 * even for count in shares.values()), shares


def test_a_server_leaving_moves_only_its_own_rooms() -> None:
    before = {room: successor(room, ["a", "b", "c"]) for room in ROOMS}
    after = {room: successor(room, ["a", "b"]) for room in ROOMS}
    moved = [room for room in ROOMS if before[room] != after[room]]
    assert moved and all(before[room] == "c" for room in moved)


def test_no_candidates() -> None:
    assert successor("room", []) == ""
