"""The game API: what a developer writes to add a game without touching the engine.

A game is a pure, deterministic state machine (Nakama's match-loop contract):
the engine owns the clock, the queues, the sockets and persistence, and calls
the game with one batch of inputs per tick. Given the same snapshot and the
same calls, a game must produce the same states, which is how a room is
rebuilt on another server after a crash (checkpoint + journal replay). So:
no wall clock, no global ``random`` — keep a seeded RNG inside the state.

What each player sees: ``tick`` returns the *public* state, shared by every
player; ``view(player_id)`` returns that player's *private* part (a hand of
cards, what is in its field of view), which no other player ever receives.
During ``tick`` (and ``join``/``leave``) a game may ``emit`` events addressed to
one player, a set of players or everyone ("you picked up X", "round over");
an event belongs to the tick that emitted it and is delivered with that tick's
state, exactly once per player. Because events come out of the same journaled
calls as the state, a rebuilt room derives the same events again.

Room options: the player whose join creates a room may pass options; the
engine validates the generic ones (``private``, ``max_players``) and hands the
rest to ``validate_options``. ``setup`` sees them once, when the room is
created; they are stored with the room and survive takeovers
(``self.options`` is not restored by the engine: keep what you need of them in
your snapshot).

Register a game by listing it in the ``stateroom.games`` entry-point group
(``mygame = "my_package.game:MyGame"``) or with ``stateroom server --games
my_package.game:MyGame``; the built-in games are in ``server.games``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from server.errors import IllegalInput, InvalidOptions
from server.protocol.delta import Schema

__all__ = ["Emitted", "Game", "IllegalInput", "InvalidOptions", "PlayerInput"]

# (player_id, validated input data), in arrival order within a tick.
PlayerInput = tuple[str, Any]


@dataclass(frozen=True, slots=True)
class Emitted:
    """One event a game emitted: ``to`` is None for everyone, else its recipients."""

    data: Any
    to: tuple[str, ...] | None = None

    def for_player(self, player_id: str) -> bool:
        return self.to is None or player_id in self.to


class Game(ABC):
    """One game instance: the whole world of one room."""

    #: Name clients use in ``join`` (``[a-z0-9_-]{1,32}``).
    name: ClassVar[str]
    #: Ticks per second; the engine runs the room at this rate.
    tick_rate: ClassVar[int] = 20
    #: How the public state is described to protocol-v2 clients: a compact schema
    #: (``server.protocol.delta.Schema``: field order, integers at a declared precision)
    #: or None for the generic delta of any state.
    state_schema: ClassVar[Schema | None] = None
    #: Names of the room options ``validate_options`` accepts, for the room listing's
    #: filters and the matchmaking API (``max_players`` and ``private`` are generic).
    option_names: ClassVar[tuple[str, ...]] = ()
    #: Seats per room; a join beyond this is refused with ``room_full``.
    max_players: ClassVar[int] = 64
    #: Largest encoded ``input`` message (bytes, envelope included) a player may send once
    #: seated. Bigger ones are refused with ``invalid_message`` and count against the
    #: player's byte budget; keep it close to what the game's inputs really need.
    max_input_bytes: ClassVar[int] = 1024
    #: Whether the room keeps ticking while no player is connected. False (the default):
    #: a room nobody has watched for a second pauses (no tick, nothing journaled, its
    #: lease still renewed) until a player connects, a seat's grace period ends or the
    #: empty room closes. Ticks are the game's clock, so the game never sees the pause;
    #: set True for a world that must move on unwatched (a round timer, bots).
    ticks_unwatched: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def create(cls, seed: int) -> Self:
        """A new world; ``seed`` feeds the game's own RNG."""

    # -- room options and lifecycle (optional) ------------------------------------

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Check the game-specific room options of a new room and return them
        normalised (what ``setup`` receives and the room stores); raise InvalidOptions
        to refuse. The default accepts none."""
        if options:
            raise InvalidOptions(
                f"game {cls.name!r} takes no room options (got {', '.join(sorted(options)[:8])})"
            )
        return {}

    def setup(self, options: Mapping[str, Any]) -> None:
        """Called once when the room is created, after ``create``, with its validated
        options (generic ones included: ``private``, ``max_players``)."""
        return None  # optional hook

    def dispose(self) -> None:
        """The room closes for good (it is empty); not called when it moves servers."""
        return None  # optional hook

    # -- what players see (optional) ---------------------------------------------

    def view(self, player_id: str) -> Any:
        """This player's private part of the state after the latest tick, or None.
        Only this player receives it. Must be pure, like ``tick``."""
        return None

    def metadata(self) -> Mapping[str, Any]:
        """A small public map for the room listing (e.g. the round, the map); JSON-able,
        at most a few hundred bytes."""
        return {}

    def joinable(self) -> bool:
        """Whether new players may join now (e.g. False once a round started). Players
        who hold a seat can always resume it."""
        return True

    def emit(self, data: Any, to: str | Iterable[str] | None = None) -> None:
        """Emit an event from ``tick``, ``join`` or ``leave``: to everyone (``to`` None),
        one player, or a set. Delivered with this tick's state, once per player."""
        recipients = None if to is None else (to,) if isinstance(to, str) else tuple(to)
        outbox: list[Emitted] = self.__dict__.setdefault("_stateroom_outbox", [])
        outbox.append(Emitted(data, recipients))

    def take_emitted(self) -> list[Emitted]:
        """The events emitted since the last call (the engine calls it every tick)."""
        outbox: list[Emitted] = self.__dict__.pop("_stateroom_outbox", [])
        return outbox

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
