"""Arena, the sample game: players move in a bounded 2D world and collect pickups.

Rules (the server is authoritative; clients only send a direction):

- The world is ``WIDTH`` x ``HEIGHT`` units; players spawn at random points.
- An input is ``{"dx": number, "dy": number}``, a heading. A longer vector is
  clamped to length 1 rather than refused, so a cheating client gains nothing.
- The last input of a tick sets the heading; every tick a player moves
  ``heading * MAX_SPEED / tick_rate`` and keeps that heading until the next
  input (``dx = dy = 0`` stops). However many inputs arrive in a tick, a
  player never moves faster than ``MAX_SPEED``.
- ``PICKUPS`` pickups lie about; a player within ``PICKUP_RADIUS`` of one
  scores a point and the pickup respawns elsewhere.

All randomness comes from a splitmix64 generator whose state is one int kept
in the game state, so a tick depends only on the state and the inputs, and a
room restored from a snapshot plays on identically on another server.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

from server.errors import GameError, IllegalInput
from server.game import Game, PlayerInput
from server.protocol.delta import Schema
from server.protocol.schemas import ARENA_SCHEMA

WIDTH = 64
HEIGHT = 32
MAX_SPEED = 12.0  # units per second
PICKUPS = 8
PICKUP_RADIUS = 1.0
SNAPSHOT_VERSION = 1

_MASK64 = (1 << 64) - 1
_INPUT_KEYS = frozenset({"dx", "dy"})


def _splitmix64(state: int) -> tuple[int, int]:
    """One step of splitmix64: (new state, 64-bit output). Tiny, fast, and portable."""
    state = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return state, z ^ (z >> 31)


def _to_signed(value: int) -> int:
    """uint64 → int64, so snapshots stay within every decoder's integer range."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _checked(data: Any) -> tuple[float, float]:
    """An input's (dx, dy) as floats, or IllegalInput saying what is wrong."""
    if not isinstance(data, dict):
        raise IllegalInput('arena input must be a map {"dx": number, "dy": number}')
    if data.keys() != _INPUT_KEYS:
        raise IllegalInput('arena input must have exactly the keys "dx" and "dy"')
    return _component(data, "dx"), _component(data, "dy")


def _component(data: dict[Any, Any], key: str) -> float:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise IllegalInput(f"'{key}' must be a number")
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:  # beyond any float: still just a direction, clamped later
            return 1e308 if value > 0 else -1e308
    if not math.isfinite(value):
        raise IllegalInput(f"'{key}' must be finite")
    return value


class _Player:
    """One player's private state; a plain slotted object because ticks touch it often."""

    __slots__ = ("hx", "hy", "inputs", "name", "score", "x", "y")

    def __init__(
        self,
        name: str,
        x: float,
        y: float,
        hx: float = 0.0,
        hy: float = 0.0,
        score: int = 0,
        inputs: int = 0,
    ) -> None:
        self.name = name
        self.x = x
        self.y = y
        self.hx = hx
        self.hy = hy
        self.score = score
        self.inputs = inputs


class Arena(Game):
    """The bounded 2D arena (see the module docstring for the rules)."""

    name: ClassVar[str] = "arena"
    tick_rate: ClassVar[int] = 20
    max_players: ClassVar[int] = 64
    # An arena input is {"dx": float, "dy": float}: about 25 bytes; 256 leaves room.
    max_input_bytes: ClassVar[int] = 256
    # Positions travel as integers at the arena's own 0.01 rounding (protocol v2).
    state_schema: ClassVar[Schema | None] = ARENA_SCHEMA

    def __init__(self, rng: int, players: dict[str, _Player], pickups: list[list[float]]) -> None:
        self._rng = rng & _MASK64
        self._players = players
        self._pickups = pickups

    # -- randomness ---------------------------------------------------------

    def _random(self) -> float:
        """A float in [0, 1) from the game's own generator."""
        self._rng, out = _splitmix64(self._rng)
        return (out >> 11) * (1.0 / (1 << 53))

    def _random_point(self) -> list[float]:
        return [round(self._random() * WIDTH, 2), round(self._random() * HEIGHT, 2)]

    # -- the Game API ---------------------------------------------------------

    @classmethod
    def create(cls, seed: int) -> Self:
        game = cls(seed, {}, [])
        game._pickups = [game._random_point() for _ in range(PICKUPS)]
        return game

    def join(self, player_id: str, name: str) -> None:
        if player_id in self._players:
            return  # idempotent: a replayed join must not move or reset the player
        x, y = self._random_point()
        self._players[player_id] = _Player(name, x, y)

    def leave(self, player_id: str) -> None:
        self._players.pop(player_id, None)

    def validate_input(self, player_id: str, data: Any) -> list[float]:
        """``{"dx", "dy"}`` → a heading ``[dx, dy]`` of length at most 1."""
        if type(data) is dict and len(data) == 2:
            dx, dy = data.get("dx"), data.get("dy")
            # The common input, two finite floats, skips the checks that would pass.
            if type(dx) is not float or type(dy) is not float or dx - dx or dy - dy:
                dx, dy = _checked(data)
        else:
            dx, dy = _checked(data)
        # Scale by the larger component first so the length cannot overflow.
        largest = max(abs(dx), abs(dy))
        if largest > 1.0:
            dx, dy = dx / largest, dy / largest
        length = math.hypot(dx, dy)
        if length > 1.0:
            dx, dy = dx / length, dy / length
        return [dx + 0.0, dy + 0.0]  # + 0.0 turns -0.0 into 0.0

    def tick(self, inputs: Sequence[PlayerInput]) -> Mapping[str, Any]:
        players = self._players
        for player_id, (hx, hy) in inputs:
            player = players.get(player_id)
            if player is None:
                continue  # left in this very tick
            player.hx, player.hy = hx, hy
            player.inputs += 1
        step = MAX_SPEED / self.tick_rate
        width, height = float(WIDTH), float(HEIGHT)  # floats, so x and y never turn into ints
        for player in players.values():
            hx, hy = player.hx, player.hy
            if hx or hy:
                # Clamped to [0, size] as min(max(v, 0.0), size) does, without the calls.
                x = player.x + hx * step
                y = player.y + hy * step
                player.x = round(0.0 if x < 0.0 else width if x > width else x, 2)
                player.y = round(0.0 if y < 0.0 else height if y > height else y, 2)
        self._collect()
        return {
            "w": WIDTH,
            "h": HEIGHT,
            "players": {
                player_id: {
                    "name": p.name,
                    "x": p.x,
                    "y": p.y,
                    "score": p.score,
                    "inputs": p.inputs,
                }
                for player_id, p in players.items()
            },
            # A pickup is replaced, never changed in place (_collect): sharing the inner
            # lists with a state already sent is safe, the outer list is this tick's.
            "pickups": list(self._pickups),
        }

    def _collect(self) -> None:
        """Each pickup goes to the first player (in join order) within reach, then respawns.

        PICKUPS x players distance checks per tick: linear in players.
        """
        if not self._players:
            return
        reach = PICKUP_RADIUS * PICKUP_RADIUS
        players = list(self._players.values())
        for index, (px, py) in enumerate(self._pickups):
            for player in players:
                ddx, ddy = player.x - px, player.y - py
                if ddx * ddx + ddy * ddy <= reach:
                    player.score += 1
                    self._pickups[index] = self._random_point()
                    break

    # -- persistence -----------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "v": SNAPSHOT_VERSION,
            "rng": _to_signed(self._rng),
            "players": [
                [player_id, p.name, p.x, p.y, p.hx, p.hy, p.score, p.inputs]
                for player_id, p in self._players.items()
            ],
            "pickups": [list(pickup) for pickup in self._pickups],
        }

    @classmethod
    def restore(cls, snapshot: dict[str, Any]) -> Self:
        if snapshot.get("v") != SNAPSHOT_VERSION:
            raise GameError(f"unsupported arena snapshot version {snapshot.get('v')!r}")
        try:
            players = {
                str(entry[0]): _Player(
                    str(entry[1]),
                    float(entry[2]),
                    float(entry[3]),
                    float(entry[4]),
                    float(entry[5]),
                    int(entry[6]),
                    int(entry[7]),
                )
                for entry in snapshot["players"]
            }
            pickups = [[float(x), float(y)] for x, y in snapshot["pickups"]]
            rng = int(snapshot["rng"])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise GameError(f"corrupt arena snapshot: {exc!r}") from exc
        return cls(rng, players, pickups)
