"""The game API: what a developer writes to add a game without touching the engine.

A game is a pure, deterministic state machine (Nakama's match-loop contract):
the engine owns the clock, the queues, the sockets and persistence, and calls
the game with one batch of inputs per tick. Given the same snapshot and the
same calls, a game must produce the same states, which is how a room is
rebuilt on another server after a crash (checkpoint + journal replay). So:
no wall clock, no global ``random`` — keep a seeded RNG inside the state.

Register a game by listing it in the ``stateroom.games`` entry-point group
(``mygame = "my_package.game:MyGame"``) or with ``stateroom server --games
my_package.game:MyGame``; the built-in games are in ``server.games``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

from server.errors import IllegalInput

__all__ = ["Game", "IllegalInput", "PlayerInput"]

# (player_id, validated input data), in arrival order within a tick.
PlayerInput = tuple[str, Any]


class Game(ABC):
    """One game instance: the whole world of one room."""

    #: Name clients use in ``join`` (``[a-z0-9_-]{1,32}``).
    name: ClassVar[str]
    #: Ticks per second; the engine runs the room at this rate.
    tick_rate: ClassVar[int] = 20
    #: Seats per room; a join beyond this is refused with ``room_full``.
    max_players: ClassVar[int] = 64
    #: Largest encoded ``input`` message (bytes, envelope included) a player may send once
    #: seated. Bigger ones are refused with ``invalid_message`` and count against the
    #: player's byte budget; keep it close to what the game's inputs really need.
    max_input_bytes: ClassVar[int] = 1024

    @classmethod
    @abstractmethod
    def create(cls, seed: int) -> Self:
        """A new world; ``seed`` feeds the game's own RNG."""

    @abstractmethod
    def join(self, player_id: str, name: str) -> None:
        """Seat a player (called between ticks, in journal order)."""

    @abstractmethod
    def leave(self, player_id: str) -> None:
        """Remove a player for good (after the reconnection grace period)."""

    @abstractmethod
    def validate_input(self, player_id: str, data: Any) -> Any:
        """Check and normalise one input when it arrives; raise IllegalInput to refuse it.

        Must be pure; the returned value is journaled and later passed to ``tick``.
        """

    @abstractmethod
    def tick(self, inputs: Sequence[PlayerInput]) -> Mapping[str, Any]:
        """Advance one tick with this tick's inputs; return the public state.

        The state is sent to every player, so it must contain only maps with
        string keys, lists, strings, finite floats, ints, bools and None.
        """

    @abstractmethod
    def snapshot(self) -> dict[str, Any]:
        """The whole state, as msgpack-able data, for checkpoints."""

    @classmethod
    @abstractmethod
    def restore(cls, snapshot: dict[str, Any]) -> Self:
        """The inverse of ``snapshot``: ``restore(g.snapshot())`` behaves exactly like ``g``."""
