"""A second game for tests that need two (``--games tests.games:Counter``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

from server.game import Game, IllegalInput, PlayerInput


class Counter(Game):
    """Each input "+1" adds one to the player's count."""

    name: ClassVar[str] = "counter"
    tick_rate: ClassVar[int] = 20

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    @classmethod
    def create(cls, seed: int) -> Self:
        return cls({})

    def join(self, player_id: str, name: str) -> None:
        self.counts.setdefault(player_id, 0)

    def leave(self, player_id: str) -> None:
        self.counts.pop(player_id, None)

    def validate_input(self, player_id: str, data: Any) -> Any:
        if data != "+1":
            raise IllegalInput('send "+1"')
        return data

    def tick(self, inputs: Sequence[PlayerInput]) -> Mapping[str, Any]:
        for player_id, _ in inputs:
            self.counts[player_id] += 1
        return {"counts": dict(self.counts)}

    def snapshot(self) -> dict[str, Any]:
        return {"counts": dict(self.counts)}

    @classmethod
    def restore(cls, snapshot: dict[str, Any]) -> Self:
        return cls(dict(snapshot["counts"]))
