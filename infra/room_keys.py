"""Redis key layout of rooms and servers, shared by the room servers (which write it)
and by read-only tools on either side of the walls (status, the dashboard).

Every key of one room carries the ``{room}`` hash tag, so a room's scripts touch one
Redis Cluster slot. The server-wide keys below are not per room; on a Redis Cluster the
rooms index is split into ``ROOMS_SHARDS`` buckets, each its own slot (see
docs/operations.md, "Redis Cluster", for why and the numbers).
"""

from __future__ import annotations

import zlib

SERVERS_KEY = "sr:servers"
ROOMS_KEY = "sr:rooms"
LOAD_KEY = "sr:load"
# Compact liveness records (SERVER -> JSON {ws_url, rooms, liveness_id, liveness_node}),
# what every server polls; SERVERS_KEY keeps the full entries the tools read.
LIVE_KEY = "sr:live"
LIVENESS_PREFIX = "sr:"
ROOMS_SHARDS = 16  # buckets of the rooms index on a Redis Cluster (1 elsewhere: ROOMS_KEY)


def rooms_index_keys(sharded: bool) -> list[str]:
    """Every key of the rooms index: ``sr:rooms`` alone, or the cluster's buckets."""
    if not sharded:
        return [ROOMS_KEY]
    return [f"{ROOMS_KEY}:{{rooms:{index:02d}}}" for index in range(ROOMS_SHARDS)]


def rooms_index_key(room: str, sharded: bool) -> str:
    """The key of the rooms index that lists ``room`` (its bucket by CRC-32 of the name)."""
    if not sharded:
        return ROOMS_KEY
    return rooms_index_keys(True)[zlib.crc32(room.encode()) % ROOMS_SHARDS]


def server_key(server_id: str) -> str:
    """A key in the server's own slot: its liveness connection goes to the node serving
    it, so the servers' connections spread over the primaries of a cluster."""
    return f"sr:srv:{{{server_id}}}"


def room_keys(room: str) -> dict[str, str]:
    """Every key of one room, by role."""
    base = f"sr:{{{room}}}"
    return {
        "lease": f"{base}:lease",
        "epoch": f"{base}:epoch",
        "meta": f"{base}:meta",
        "journal": f"{base}:journal",
        "ckpt": f"{base}:ckpt",
        "ckpt_prev": f"{base}:ckpt:prev",
        "events": f"{base}:events",
        # The last takeover of the room, written by its new owner (timeline of a recovery).
        "takeover": f"{base}:takeover",
        # The last kill of the room's owner by `stateroom kill-room` or the dashboard.
        "killed": f"{base}:killed",
    }


def lease_key(room: str) -> str:
    """``room_keys(room)["lease"]`` without building the other keys (hot paths)."""
    return f"sr:{{{room}}}:lease"


def liveness_name(server_id: str) -> str:
    """Client name of a server's liveness connection (``CLIENT SETNAME``)."""
    return f"{LIVENESS_PREFIX}{server_id}"
