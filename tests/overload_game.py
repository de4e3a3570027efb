"""A game whose tick burns CPU, to drive a room server into overload in tests
(``--games tests.overload_game:Burner``): each room costs ``BURN_S`` of CPU per tick."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

from server.game import Game, IllegalInput, PlayerInput

BURN_S = 0.005  # per room and tick: 10 % of a core per room at 20 Hz


class Burner(Game):
    """Counts ticks; every tick spins for BURN_S (a game that is too heavy for its core)."""

    name: ClassVar[str] = "burner"
    tick_rate: ClassVar[int] = 20

    def __init__(self, ticks: int) -> None:
        self.ticks = ticks

    @classmethod
    def create(cls, seed: int) -> Self:
        return cls(0)

    def join(self, player_id: str, name: str) -> None:
        pass

    def leave(self, player_id: str) -> None:
        pass

    def validate_input(self, player_id: str, data: Any) -> Any:
        raise IllegalInput("this game takes no input")

    def tick(self, inputs: Sequence[PlayerInput]) -> Mapping[str, Any]:
        until = time.perf_counter() + BURN_S
        while time.perf_counter() < until:
            pass
        self.ticks += 1
        return {"ticks": self.ticks}

    def snapshot(self) -> dict[str, Any]:
        return {"ticks": self.ticks}

    @classmethod
    def restore(cls, snapshot: dict[str, Any]) -> Self:
        return cls(int(snapshot["ticks"]))
