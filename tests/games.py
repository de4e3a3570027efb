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


class Cards(Game):
    """Hidden hands: each player's cards are private; drawing tells the drawer which card
    (a private event) and everyone that somebody drew (a public event). Every event
    carries a sequence number, per recipient, so tests can see one lost or repeated."""

    name: ClassVar[str] = "cards"
    tick_rate: ClassVar[int] = 20
    max_players: ClassVar[int] = 8

    def __init__(self, rng: int, hands: dict[str, list[str]], sent: dict[str, int]) -> None:
        self.rng = rng
        self.hands = hands
        self.sent = sent  # events emitted so far, per recipient ("*": public ones)

    @classmethod
    def create(cls, seed: int) -> Self:
        return cls(seed & (2**63 - 1), {}, {})

    def _card(self, player_id: str) -> str:
        self.rng = (self.rng * 6364136223846793005 + 1442695040888963407) % 2**63
        return f"secret-{player_id}-{self.rng % 10_000}"

    def _emit(self, data: dict[str, Any], to: str | None) -> None:
        key = to or "*"
        self.sent[key] = self.sent.get(key, 0) + 1
        self.emit({**data, "n": self.sent[key]}, to=to)

    def join(self, player_id: str, name: str) -> None:
        self.hands.setdefault(player_id, [])

    def leave(self, player_id: str) -> None:
        self.hands.pop(player_id, None)

    def validate_input(self, player_id: str, data: Any) -> Any:
        if data != "draw":
            raise IllegalInput('send "draw"')
        return data

    def tick(self, inputs: Sequence[PlayerInput]) -> Mapping[str, Any]:
        for player_id, _ in inputs:
            card = self._card(player_id)
            self.hands[player_id].append(card)
            self._emit({"drew": card}, to=player_id)
            self._emit({"who": player_id}, to=None)
        return {"counts": {p: len(h) for p, h in self.hands.items()}}

    def view(self, player_id: str) -> Any:
        return {"hand": list(self.hands.get(player_id, []))}

    def snapshot(self) -> dict[str, Any]:
        return {
            "rng": self.rng,
            "hands": {p: list(h) for p, h in self.hands.items()},
            "sent": dict(self.sent),
        }

    @classmethod
    def restore(cls, snapshot: dict[str, Any]) -> Self:
        hands = {p: list(h) for p, h in snapshot["hands"].items()}
        return cls(snapshot["rng"], hands, dict(snapshot["sent"]))
