"""Game registry: built-in games, ``stateroom.games`` entry points, and ``module:Class``."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from server.errors import ConfigError
from server.game import Game

BUILTIN = {"arena": "server.games.arena:Arena", "duel": "server.games.duel:Duel"}
DEFAULT_GAME = "arena"  # what a join without "game" plays, and a room index entry without one


def _load_reference(reference: str) -> type[Game]:
    module_name, _, attribute = reference.partition(":")
    try:
        game_class = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load game {reference!r}: {exc}") from exc
    if not (isinstance(game_class, type) and issubclass(game_class, Game)):
        raise ConfigError(f"{reference!r} is not a subclass of server.game.Game")
    return game_class


def available_games(extra: list[str] | None = None) -> dict[str, type[Game]]:
    """Every game this server can host, by name."""
    references = dict(BUILTIN)
    for entry in entry_points(group="stateroom.games"):
        references[entry.name] = entry.value
    games: dict[str, type[Game]] = {}
    for reference in [*references.values(), *(extra or [])]:
        game_class = _load_reference(reference)
        games[game_class.name] = game_class
    return games
