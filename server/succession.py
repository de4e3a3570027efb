"""Which live server takes over which orphaned room, without any coordination.

When a room server dies, every survivor's watcher sees all of its rooms orphaned in the
same poll. If each claimed every room, the fastest watcher would take nearly all of them
(measured: 198 of 200 rooms on one of two survivors) and rebuild them on one core while
the other core idled. Instead each room has one *successor* among the live servers:
rendezvous (highest-random-weight) hashing of the room's name with each server's id. Every
watcher computes the same successor from the same set of live servers, so a dead server's
rooms spread evenly over the survivors (binomially: 200 rooms over 2 survivors give
100 ± 7), and a server that dies or joins moves only the rooms it was successor of.

A watcher claims at once the orphans it is the successor of, and any other orphan that
is still orphaned ``FALLBACK_POLLS`` polls later (its successor is slow, still starting,
or sees a different set of live servers): no room waits for a server that will never
claim it. Two servers claiming the same room is harmless (the claim script is atomic;
one wins).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

# Polls an orphan waits for its successor before any live server claims it (3 x 50 ms).
FALLBACK_POLLS = 3

__all__ = ["FALLBACK_POLLS", "successor"]


def successor(room: str, servers: Iterable[str]) -> str:
    """The server among ``servers`` that should take ``room`` over ("" when none)."""
    return max(servers, key=lambda server: (_weight(room, server), server), default="")


def _weight(room: str, server: str) -> bytes:
    # A hash, not Python's hash(): the same in every process (PYTHONHASHSEED varies).
    return hashlib.blake2b(f"{room}\x00{server}".encode(), digest_size=8).digest()
