"""Errors raised by the room-server package.

StateroomError
├── ConfigError             a setting is missing or out of range
├── GameError               illegal input or game state (turned into an error message)
│   ├── IllegalInput
│   └── InvalidOptions
└── OwnershipLost           this process no longer holds a room's lease (fenced)
"""

from __future__ import annotations


class StateroomError(Exception):
    """Root of every error raised by ``server``."""


class ConfigError(StateroomError):
    """A setting is missing or invalid; the message names the flag or variable."""


class GameError(StateroomError):
    """A game refused an input or a state."""


class IllegalInput(GameError):
    """An input a game cannot apply; the room replies with an error message."""


class InvalidOptions(GameError):
    """Room options a game refuses; the join that would create the room is refused."""


class OwnershipLost(StateroomError):
    """Redis rejected a write because another server now owns the room."""
