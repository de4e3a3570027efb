"""Redis key layout of rooms and servers, shared by the room servers (which write it)
and by read-only tools on either side of the walls (status, the dashboard).

Every key of one room carries the ``{room}`` hash tag, so a room's scripts touch one
Redis Cluster slot. The server-wide keys below are not per room.
"""

from __future__ import annotations

SERVERS_KEY = "sr:servers"
ROOMS_KEY = "sr:rooms"
LOAD_KEY = "sr:load"
LIVENESS_PREFIX = "sr:"


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


def liveness_name(server_id: str) -> str:
    """Client name of a server's liveness connection (``CLIENT SETNAME``)."""
    return f"{LIVENESS_PREFIX}{server_id}"
