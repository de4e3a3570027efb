"""Room options: what the player creating a room may ask for, checked before it exists.

Pure. The shape is fixed for every game, so a bad map is refused the same way
everywhere (the matchmaking API applies the same rules): a flat map of at most
``MAX_OPTIONS`` keys of at most ``MAX_KEY`` characters, each value a string (at most
``MAX_VALUE`` characters), an int or a bool. Two keys mean the same for every game:

    private      bool   not in the public listing; joined by name or private code
    max_players  int    a seat limit below the game's own (1 .. Game.max_players)

Everything else goes to ``Game.validate_options``, which may refuse it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.errors import InvalidOptions
from server.game import Game

MAX_OPTIONS = 8
MAX_KEY = 32
MAX_VALUE = 64
GENERIC = ("private", "max_players")


def check_shape(options: Any) -> dict[str, str | int | bool]:
    """The options map if its shape is acceptable for any game; else InvalidOptions."""
    if not isinstance(options, Mapping):
        raise InvalidOptions("'options' must be a map")
    if len(options) > MAX_OPTIONS:
        raise InvalidOptions(f"at most {MAX_OPTIONS} room options")
    checked: dict[str, str | int | bool] = {}
    for key, value in options.items():
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY:
            raise InvalidOptions(f"option names are 1-{MAX_KEY} characters")
        if isinstance(value, str):
            if len(value) > MAX_VALUE:
                raise InvalidOptions(f"option {key!r}: at most {MAX_VALUE} characters")
        elif not isinstance(value, int):  # bool is an int
            raise InvalidOptions(f"option {key!r} must be a string, an integer or a boolean")
        checked[key] = value
    return checked


def room_options(game_class: type[Game], options: Any) -> dict[str, Any]:
    """Validate a new room's options for ``game_class``: the generic ones here, the rest
    by the game. Returns what the room stores (and ``Game.setup`` receives)."""
    raw = check_shape(options if options is not None else {})
    result: dict[str, Any] = {}
    private = raw.pop("private", False)
    if not isinstance(private, bool):
        raise InvalidOptions("option 'private' must be a boolean")
    if private:
        result["private"] = True
    if "max_players" in raw:
        seats = raw.pop("max_players")
        if isinstance(seats, bool) or not isinstance(seats, int):
            raise InvalidOptions("option 'max_players' must be an integer")
        if not 1 <= seats <= game_class.max_players:
            raise InvalidOptions(
                f"option 'max_players' must be in 1..{game_class.max_players} for"
                f" {game_class.name!r}"
            )
        result["max_players"] = seats
    result.update(game_class.validate_options(raw))
    return result
