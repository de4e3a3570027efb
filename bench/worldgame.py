"""Games used only by the benches.

- ``BenchArena``: the built-in arena rules unchanged, with the seat cap raised from 64 to
  1000 so the reference scenario (N up to 400 in one room) can run at all. It keeps the name
  ``arena`` so ``stateroom bots`` (which joins without naming a game) gets it; the room
  server loads it with ``--games bench.worldgame:BenchArena``, which replaces the built-in
  entry of the same name.
- ``World``: a deterministic world of E moving entities, for checkpoint and journal cost
  against world size. Each player steers one entity; every entity moves every tick and
  bounces off the walls. Its randomness is a splitmix64 state kept in the snapshot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

from server.errors import IllegalInput
from server.game import Game, PlayerInput
from server.games.arena import Arena

_MASK64 = (1 << 64) - 1


class BenchArena(Arena):
    """Arena with room for the reference scenario's 400 players."""

    max_players: ClassVar[int] = 1000


def _splitmix64(state: int) -> tuple[int, int]:
    state = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return state, z ^ (z >> 31)


class World(Game):
    """E entities [x, y, vx, vy] in a SIZE x SIZE box; players steer entity ``hash % E``."""

    name: ClassVar[str] = "world"
    tick_rate: ClassVar[int] = 20
    max_players: ClassVar[int] = 1000
    SIZE: ClassVar[float] = 1000.0
    #: Entities of a new world; set per run by ``World.sized(E)``.
    entities: ClassVar[int] = 1000

    def __init__(
        self, rng: int, ents: list[list[float]], players: dict[str, list[Any]], tick: int
    ) -> None:
        self._rng = rng & _MASK64
        self._ents = ents
        self._players = players  # id -> [name, entity index, inputs applied]
        self._tick = tick

    @classmethod
    def sized(cls, entities: int) -> type[World]:
        return type(f"World{entities}", (cls,), {"entities": entities})

    def _random(self) -> float:
        self._rng, out = _splitmix64(self._rng)
        return (out >> 11) * (1.0 / (1 << 53))

    @classmethod
    def create(cls, seed: int) -> Self:
        game = cls(seed, [], {}, 0)
        size = cls.SIZE
        for _ in range(cls.entities):
            game._ents.append(
                [
                    game._random() * size,
                    game._random() * size,
                    game._random() * 2 - 1,
                    game._random() * 2 - 1,
                ]
            )
        return game

    def join(self, player_id: str, name: str) -> None:
        if player_id not in self._players:
            index = int(self._random() * len(self._ents)) if self._ents else 0
            self._players[player_id] = [name, index, 0]

    def leave(self, player_id: str) -> None:
        self._players.pop(player_id, None)

    def validate_input(self, player_id: str, data: Any) -> list[float]:
        if not isinstance(data, dict) or data.keys() != {"dx", "dy"}:
            raise IllegalInput('input must be {"dx": number, "dy": number}')
        dx, dy = data["dx"], data["dy"]
        if any(isinstance(v, bool) or not isinstance(v, int | float) for v in (dx, dy)):
            raise IllegalInput("dx and dy must be numbers")
        dx, dy = float(dx), float(dy)
        if not (math.isfinite(dx) and math.isfinite(dy)):
            raise IllegalInput("dx and dy must be finite")
        length = math.hypot(dx, dy)
        if length > 1.0:
            dx, dy = dx / length, dy / length
        return [dx, dy]

    def tick(self, inputs: Sequence[PlayerInput]) -> Mapping[str, Any]:
        ents = self._ents
        for player_id, (dx, dy) in inputs:
            player = self._players.get(player_id)
            if player is None or not ents:
                continue
            ent = ents[player[1]]
            ent[2], ent[3] = dx, dy
            player[2] += 1
        size = self.SIZE
        for ent in ents:
            x = ent[0] + ent[2]
            y = ent[1] + ent[3]
            if x < 0.0 or x > size:
                ent[2] = -ent[2]
                x = min(max(x, 0.0), size)
            if y < 0.0 or y > size:
                ent[3] = -ent[3]
                y = min(max(y, 0.0), size)
            ent[0], ent[1] = x, y
        self._tick += 1
        # The public state stays small (a real game would send an area of interest).
        return {
            "tick": self._tick,
            "entities": len(ents),
            "players": {pid: {"inputs": p[2]} for pid, p in self._players.items()},
        }

    def snapshot(self) -> dict[str, Any]:
        return {
            "rng": self._rng - (1 << 64) if self._rng >= 1 << 63 else self._rng,
            "tick": self._tick,
            "ents": self._ents,  # packed at once by the caller; never kept
            "players": self._players,
        }

    @classmethod
    def restore(cls, snapshot: dict[str, Any]) -> Self:
        return cls(
            int(snapshot["rng"]) & _MASK64,
            [list(e) for e in snapshot["ents"]],
            {pid: list(p) for pid, p in snapshot["players"].items()},
            int(snapshot["tick"]),
        )
