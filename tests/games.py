"""A second game for tests that need two (``--games tests.games:Counter``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

from server.game import Game, IllegalInput, PlayerInput
from server.protocol.delta import Collection, Field, Schema


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


class Vault(Game):
    """Secrets for leak tests: every string only some players may see reads
    ``secret-<owners>-<nnnnnn>`` (``owners`` the ids allowed to see it, joined by ``+``;
    ``nnnnnn`` unique in the room), so a leak shows up by scanning any frame's bytes.

    Public state: a ``round`` counter, each player's ``score`` and position ``x`` (a
    float), and who acted ``last``. Private part: the player's ``hand`` of secret cards
    and its secret ``note``. Inputs: ``"draw"`` (a card: private event to the drawer, a
    public one to all), ``"discard"`` (the oldest card), ``"note"`` (a new secret note),
    ``["move", dx]``, ``["whisper", to]`` (a secret event to the sender and ``to``) and
    ``"group"`` (a secret event to every other seated player). Joins emit a public event
    and a private secret one, leaves a public one. Every event has a unique ``id`` and
    ``n``: per recipient (``"*"`` for everyone), the count of events sent to it so far."""

    name: ClassVar[str] = "vault"
    tick_rate: ClassVar[int] = 20
    max_players: ClassVar[int] = 16

    def __init__(self, state: dict[str, Any]) -> None:
        self.counter: int = state["counter"]
        self.round: int = state["round"]
        self.last: str | None = state["last"]
        self.players: dict[str, dict[str, Any]] = {p: dict(r) for p, r in state["players"].items()}
        self.hands: dict[str, list[str]] = {p: list(h) for p, h in state["hands"].items()}
        self.notes: dict[str, str | None] = dict(state["notes"])
        self.sent: dict[str, int] = dict(state["sent"])

    @classmethod
    def create(cls, seed: int) -> Self:
        return cls(
            {
                "counter": seed % 1000,
                "round": 0,
                "last": None,
                "players": {},
                "hands": {},
                "notes": {},
                "sent": {},
            }
        )

    def _secret(self, owners: Sequence[str]) -> str:
        self.counter += 1
        return f"secret-{'+'.join(sorted(owners))}-{self.counter:06d}"

    def _emit(self, data: dict[str, Any], to: Sequence[str] | None) -> None:
        self.counter += 1
        keys = ["*"] if to is None else list(to)
        numbers = {}
        for key in keys:
            self.sent[key] = self.sent.get(key, 0) + 1
            numbers[key] = self.sent[key]
        self.emit({**data, "id": self.counter, "n": numbers}, to=None if to is None else to)

    def join(self, player_id: str, name: str) -> None:
        self.players[player_id] = {"score": 0, "x": 0.0}
        self.hands[player_id] = []
        self.notes[player_id] = None
        self._emit({"joined": player_id}, None)
        self._emit({"hello": self._secret([player_id])}, [player_id])

    def leave(self, player_id: str) -> None:
        self.players.pop(player_id, None)
        self.hands.pop(player_id, None)
        self.notes.pop(player_id, None)
        self._emit({"left": player_id}, None)

    def validate_input(self, player_id: str, data: Any) -> Any:
        if data in ("draw", "discard", "note", "group"):
            return data
        if isinstance(data, list) and len(data) == 2:
            kind, arg = data
            number = isinstance(arg, int | float) and not isinstance(arg, bool)
            if kind == "move" and number and -100 <= arg <= 100:
                return ["move", float(arg)]
            if kind == "whisper" and isinstance(arg, str) and 0 < len(arg) <= 32:
                return ["whisper", arg]
        raise IllegalInput('send "draw", "discard", "note", "group", ["move", dx], ["whisper", id]')

    def tick(self, inputs: Sequence[PlayerInput]) -> Mapping[str, Any]:
        self.round += 1
        for player_id, data in inputs:
            self.last = player_id
            if data == "draw":
                card = self._secret([player_id])
                self.hands[player_id].append(card)
                self._emit({"drew": card}, [player_id])
                self._emit({"who": player_id}, None)
            elif data == "discard":
                if self.hands[player_id]:
                    card = self.hands[player_id].pop(0)
                    self._emit({"discarded": card}, [player_id])
            elif data == "note":
                self.notes[player_id] = self._secret([player_id])
            elif data == "group":
                others = sorted(p for p in self.players if p != player_id)
                if others:
                    self._emit({"group": self._secret(others)}, others)
            elif data[0] == "move":
                record = self.players[player_id]
                record["x"] = record["x"] + data[1]
                record["score"] += 1
            else:  # whisper
                pair = sorted({player_id, data[1]})
                self._emit({"whisper": self._secret(pair)}, pair)
        return {
            "round": self.round,
            "players": {p: dict(r) for p, r in self.players.items()},
            "last": self.last,
        }

    def view(self, player_id: str) -> Any:
        return {"hand": list(self.hands.get(player_id, [])), "note": self.notes.get(player_id)}

    def snapshot(self) -> dict[str, Any]:
        return {
            "counter": self.counter,
            "round": self.round,
            "last": self.last,
            "players": {p: dict(r) for p, r in self.players.items()},
            "hands": {p: list(h) for p, h in self.hands.items()},
            "notes": dict(self.notes),
            "sent": dict(self.sent),
        }

    @classmethod
    def restore(cls, snapshot: dict[str, Any]) -> Self:
        return cls(snapshot)


class SchemaVault(Vault):
    """``Vault`` with a compact schema for its public state: ``round`` an int, the players
    a keyed collection (``x`` at a precision of 0.01), ``last`` left to the generic patch."""

    name: ClassVar[str] = "vault-schema"
    state_schema: ClassVar[Schema | None] = Schema(
        (
            Field("round", "int"),
            Collection("players", (Field("score", "int"), Field("x", "fixed", precision=0.01))),
        )
    )
