"""Duel: a card game with hidden hands, the sample of views, events and room options.

Each player holds a hand of cards (ranks 1-13), which only they see (``view``). A round:
every seated player plays one card from their hand; when all have played, the cards
are revealed, the highest wins the round (a tie: nobody), and everyone draws one card.
The first to ``target`` round wins takes the match; a new match starts at once.

Events: ``dealt`` (to one player: the cards it drew), ``played`` (to everyone: who
has played this round, not what), ``round`` (to everyone: the reveal and the winner),
``match`` (to everyone: the match winner). Every event carries ``n``, its number among
the events its recipient got, so a client can see one lost or repeated.

Options: ``hand`` (3-7 cards, default 5), ``target`` (1-9 round wins, default 3), and
the generic ``max_players`` (up to 8) and ``private``.

Input: ``{"play": RANK}`` with a rank the player holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

from server.errors import GameError, IllegalInput, InvalidOptions
from server.game import Game, PlayerInput

_MASK = (1 << 63) - 1
SNAPSHOT_VERSION = 1


class Duel(Game):
    name: ClassVar[str] = "duel"
    tick_rate: ClassVar[int] = 10
    max_players: ClassVar[int] = 8
    max_input_bytes: ClassVar[int] = 64
    option_names: ClassVar[tuple[str, ...]] = ("hand", "target")

    def __init__(self, state: dict[str, Any]) -> None:
        self.s = state

    # -- creation and options -------------------------------------------------------------

    @classmethod
    def create(cls, seed: int) -> Self:
        return cls(
            {
                "rng": seed & _MASK,
                "hand_size": 5,
                "target": 3,
                "hands": {},
                "scores": {},
                "played": {},  # player -> rank, this round
                "round": 1,
                "match": 1,
                "last": None,  # the last reveal: {"cards": {...}, "winner": id|None}
                "sent": {},  # events per recipient ("*": to everyone)
            }
        )

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(options) - set(cls.option_names)
        if unknown:
            raise InvalidOptions(f"duel options are hand and target (not {sorted(unknown)[0]})")
        result: dict[str, Any] = {}
        for key, low, high, default in (("hand", 3, 7, 5), ("target", 1, 9, 3)):
            value = options.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InvalidOptions(f"option {key!r} must be an integer in {low}..{high}")
            result[key] = value
        return result

    def setup(self, options: Mapping[str, Any]) -> None:
        self.s["hand_size"] = int(options.get("hand", 5))
        self.s["target"] = int(options.get("target", 3))

    # -- randomness and events -------------------------------------------------------------

    def _rank(self) -> int:
        self.s["rng"] = (self.s["rng"] * 6364136223846793005 + 1442695040888963407) & _MASK
        return int(self.s["rng"] >> 20) % 13 + 1

    def _send(self, kind: str, data: dict[str, Any], to: str | None = None) -> None:
        key = to or "*"
        sent = self.s["sent"]
        sent[key] = sent.get(key, 0) + 1
        self.emit({"kind": kind, "n": sent[key], **data}, to=to)

    # -- players ----------------------------------------------------------------------------

    def join(self, player_id: str, name: str) -> None:
        if player_id in self.s["hands"]:
            return
        hand = sorted(self._rank() for _ in range(self.s["hand_size"]))
        self.s["hands"][player_id] = hand
        self.s["scores"][player_id] = 0
        self._send("dealt", {"cards": hand}, to=player_id)

    def leave(self, player_id: str) -> None:
        self.s["hands"].pop(player_id, None)
        self.s["scores"].pop(player_id, None)
        self.s["played"].pop(player_id, None)
        self._resolve_if_complete()

    def validate_input(self, player_id: str, data: Any) -> Any:
        if not isinstance(data, dict) or set(data) != {"play"}:
            raise IllegalInput('send {"play": RANK}')
        rank = data["play"]
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= 13:
            raise IllegalInput("a rank is an integer in 1..13")
        return rank

    # -- the round ---------------------------------------------------------------------------

    def tick(self, inputs: Sequence[PlayerInput]) -> Mapping[str, Any]:
        for player_id, rank in inputs:
            hand = self.s["hands"].get(player_id)
            if hand is None or player_id in self.s["played"] or rank not in hand:
                continue  # not yours, or already played this round: ignored
            hand.remove(rank)
            self.s["played"][player_id] = rank
            self._send("played", {"who": player_id})
        self._resolve_if_complete()
        return {
            "round": self.s["round"],
            "match": self.s["match"],
            "target": self.s["target"],
            "scores": dict(self.s["scores"]),
            "played": sorted(self.s["played"]),
            "hand_sizes": {p: len(h) for p, h in self.s["hands"].items()},
            "last": self.s["last"],
        }

    def _resolve_if_complete(self) -> None:
        played = self.s["played"]
        players = self.s["hands"]
        if len(players) < 2 or set(played) != set(players):
            return
        best = max(played.values())
        winners = [p for p, r in played.items() if r == best]
        winner = winners[0] if len(winners) == 1 else None
        if winner is not None:
            self.s["scores"][winner] += 1
        self.s["last"] = {"cards": dict(played), "winner": winner, "round": self.s["round"]}
        self._send("round", {"cards": dict(played), "winner": winner, "round": self.s["round"]})
        self.s["played"] = {}
        self.s["round"] += 1
        for player_id, hand in players.items():
            card = self._rank()
            hand.append(card)
            hand.sort()
            self._send("dealt", {"cards": [card]}, to=player_id)
        if winner is not None and self.s["scores"][winner] >= self.s["target"]:
            self._send("match", {"winner": winner, "match": self.s["match"]})
            self.s["match"] += 1
            self.s["scores"] = dict.fromkeys(self.s["scores"], 0)

    # -- what each player sees ------------------------------------------------------------------

    def view(self, player_id: str) -> Any:
        hand = self.s["hands"].get(player_id)
        if hand is None:
            return None
        return {"hand": list(hand), "played": self.s["played"].get(player_id)}

    def metadata(self) -> Mapping[str, Any]:
        return {"round": self.s["round"], "match": self.s["match"]}

    # -- persistence ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        s = self.s
        return {
            "v": SNAPSHOT_VERSION,
            **{k: s[k] for k in ("rng", "hand_size", "target", "round", "match", "last")},
            "hands": {p: list(h) for p, h in s["hands"].items()},
            "scores": dict(s["scores"]),
            "played": dict(s["played"]),
            "sent": dict(s["sent"]),
        }

    @classmethod
    def restore(cls, snapshot: dict[str, Any]) -> Self:
        if snapshot.get("v") != SNAPSHOT_VERSION:
            raise GameError(f"unsupported duel snapshot version {snapshot.get('v')!r}")
        state = {k: v for k, v in snapshot.items() if k != "v"}
        state["hands"] = {p: list(h) for p, h in state["hands"].items()}
        return cls(state)
