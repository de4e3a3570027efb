"""Compact delta schemas of the built-in games (see ``server.protocol.delta``).

Kept in the shared protocol package, not next to the game, so a client can import
them without the server's game code (the walls of the house: the client imports only
``server.protocol``). A decoder needs none of these: every keyframe carries its schema.
"""

from __future__ import annotations

from server.protocol.delta import Collection, Field, Schema

__all__ = ["ARENA_SCHEMA"]

#: The arena's public state (docs/protocol.md §7). Positions are already rounded to two
#: decimals by the rules, so 0.01 loses nothing; a player moves at most 0.6 units a tick,
#: so a position's difference is within ±60: one or two bytes in msgpack. ``inputs`` grows
#: by one per input: one byte.
ARENA_SCHEMA = Schema(
    (
        Field("w", "int"),
        Field("h", "int"),
        Collection(
            "players",
            (
                Field("name", "str"),
                Field("x", "fixed", 0.01),
                Field("y", "fixed", 0.01),
                Field("score", "int"),
                Field("inputs", "int"),
            ),
        ),
        Collection(
            "pickups",
            (Field("x", "fixed", 0.01), Field("y", "fixed", 0.01)),
            keyed=False,
            tuples=True,
        ),
    )
)
