"""The game API's views, events, options and hooks, on the pure engine (no store)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.engine import RoomEngine, RoomFull
from server.errors import InvalidOptions
from server.game import Emitted, Game, IllegalInput, PlayerInput
from server.games.arena import Arena
from server.options import room_options


class Hands(Game):
    """Each player holds a private hand; playing a card tells everyone, drawing tells you."""

    name: ClassVar[str] = "hands"
    max_players: ClassVar[int] = 6

    def __init__(self, rng: int, hands: dict[str, list[int]], mode: str, open_seats: bool) -> None:
        self.rng = rng
        self.hands = hands
        self.mode = mode
        self.open_seats = open_seats

    @classmethod
    def create(cls, seed: int) -> Self:
        return cls(seed, {}, "classic", True)

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        mode = options.get("mode", "classic")
        if mode not in ("classic", "fast") or set(options) - {"mode"}:
            raise InvalidOptions("hands takes only mode: classic or fast")
        return {"mode": mode}

    def setup(self, options: Mapping[str, Any]) -> None:
        self.mode = str(options.get("mode", "classic"))

    def _draw(self) -> int:
        self.rng = (self.rng * 6364136223846793005 + 1442695040888963407) % 2**64
        return self.rng % 52

    def join(self, player_id: str, name: str) -> None:
        self.hands[player_id] = [self._draw() for _ in range(3)]
        self.emit({"joined": name})

    def leave(self, player_id: str) -> None:
        self.hands.pop(player_id, None)

    def validate_input(self, player_id: str, data: Any) -> Any:
        if data not in ("play", "draw", "close"):
            raise IllegalInput("play, draw or close")
        return data

    def tick(self, inputs: Sequence[PlayerInput]) -> Mapping[str, Any]:
        for player_id, action in inputs:
            hand = self.hands[player_id]
            if action == "play" and hand:
                self.emit({"played": hand.pop(), "by": player_id})
            elif action == "draw":
                card = self._draw()
                hand.append(card)
                self.emit({"drew": card}, to=player_id)
            elif action == "close":
                self.open_seats = False
        return {"counts": {p: len(h) for p, h in self.hands.items()}, "mode": self.mode}

    def view(self, player_id: str) -> Any:
        return {"hand": list(self.hands.get(player_id, []))}

    def joinable(self) -> bool:
        return self.open_seats

    def snapshot(self) -> dict[str, Any]:
        hands = {p: list(h) for p, h in self.hands.items()}  # a copy, as a checkpoint is
        return {"rng": self.rng, "hands": hands, "mode": self.mode, "open": self.open_seats}

    @classmethod
    def restore(cls, snapshot: dict[str, Any]) -> Self:
        hands = {p: list(h) for p, h in snapshot["hands"].items()}
        return cls(snapshot["rng"], hands, snapshot["mode"], snapshot["open"])


def room(options: Mapping[str, Any] | None = None) -> RoomEngine:
    validated = room_options(Hands, options or {})
    game = Hands.create(7)
    game.setup(validated)
    return RoomEngine(game, options=validated)


def test_a_view_is_the_players_own_and_nobody_elses() -> None:
    engine = room()
    engine.offer_join("a", "Ann")
    engine.offer_join("b", "Bob")
    engine.step()
    hands = {p: engine.view(p)["hand"] for p in ("a", "b")}
    assert hands["a"] == engine.game.hands["a"] and hands["b"] == engine.game.hands["b"]
    assert engine.view("nobody") == {"hand": []}
    assert "hand" not in str(engine.last_state)  # the public part holds no cards


def test_events_belong_to_their_tick_and_their_recipients() -> None:
    engine = room()
    engine.offer_join("a", "Ann")
    engine.offer_join("b", "Bob")
    joined = engine.step()
    assert [e.data for e in joined.emitted] == [{"joined": "Ann"}, {"joined": "Bob"}]
    assert all(e.to is None for e in joined.emitted)
    engine.offer_input("a", 1, "draw")
    engine.offer_input("b", 1, "play")
    outcome = engine.step()
    drew = [e for e in outcome.emitted if "drew" in e.data]
    assert len(drew) == 1 and drew[0].to == ("a",)
    assert drew[0].for_player("a") and not drew[0].for_player("b")
    assert engine.step().emitted == []  # a quiet tick has none


def test_options_are_validated_generic_first_then_by_the_game() -> None:
    assert room_options(Hands, {}) == {"mode": "classic"}
    assert room_options(Hands, {"private": True, "max_players": 2, "mode": "fast"}) == {
        "private": True,
        "max_players": 2,
        "mode": "fast",
    }
    for bad, words in [
        ({"mode": "chess"}, "classic or fast"),
        ({"max_players": 7}, "1..6"),
        ({"max_players": 0}, "1..6"),
        ({"max_players": True}, "integer"),
        ({"private": "yes"}, "boolean"),
        ({"x": 1.5}, "string, an integer or a boolean"),
        ({"x": [1]}, "string, an integer or a boolean"),
        ({"k" * 33: 1}, "1-32"),
        ({"s": "x" * 65}, "64"),
        ({f"k{i}": i for i in range(9)}, "at most 8"),
        ([("mode", "fast")], "map"),
    ]:
        with pytest.raises(InvalidOptions, match=words):
            room_options(Hands, bad)
    with pytest.raises(InvalidOptions, match="no room options"):
        room_options(Arena, {"mode": "fast"})
    assert room_options(Arena, {"max_players": 8}) == {"max_players": 8}


def test_setup_sees_the_options_and_max_players_lowers_the_seat_limit() -> None:
    engine = room({"mode": "fast", "max_players": 2})
    assert engine.game.mode == "fast" and engine.max_players == 2
    engine.offer_join("a", "A")
    engine.offer_join("b", "B")
    with pytest.raises(RoomFull, match="2 players"):
        engine.offer_join("c", "C")


def test_a_room_closed_to_newcomers_still_resumes_its_players() -> None:
    engine = room()
    engine.offer_join("a", "A")
    engine.step()
    engine.offer_input("a", 1, "close")
    engine.step()
    with pytest.raises(RoomFull, match="no new players"):
        engine.offer_join("b", "B")
    assert engine.offer_join("a", "A") is False  # a resume


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["join", "leave", "play", "draw", "none"]),
            st.sampled_from(["a", "b", "c", "d"]),
        ),
        min_size=1,
        max_size=40,
    ),
    st.integers(min_value=0, max_value=40),
)
def test_a_rebuilt_room_derives_the_same_events_and_views(
    script: list[tuple[str, str]], cut: int
) -> None:
    """Checkpoint at any tick, replay the journal: every later tick emits the same events
    and every player sees the same private part as in the live room."""
    live = room()
    seqs: dict[str, int] = {}
    journal: list[tuple[int, list[Any]]] = []
    emitted: list[list[Emitted]] = []
    views: list[dict[str, Any]] = []
    snapshot: dict[str, Any] | None = None
    for index, (action, player) in enumerate(script):
        if index == cut:
            snapshot = live.snapshot()
        try:
            if action == "join":
                live.offer_join(player, player.upper())
            elif action == "leave":
                live.offer_leave(player)
            elif action in ("play", "draw") and player in live.seats:
                seqs[player] = seqs.get(player, 0) + 1
                live.offer_input(player, seqs[player], action)
        except RoomFull:
            pass
        outcome = live.step()
        journal.append((outcome.tick, outcome.events))
        emitted.append(outcome.emitted)
        views.append({p: live.view(p) for p in live.seats})
        if outcome.events and any(e[0] == "j" for e in outcome.events):
            seqs = {p: s for p, s in seqs.items() if p in live.seats}
    if snapshot is None:
        return
    rebuilt = RoomEngine.restore(Hands, snapshot, options=live.options)
    for (tick, events), expected_events, expected_views in zip(
        journal[cut:], emitted[cut:], views[cut:], strict=True
    ):
        rebuilt.apply(tick, events)
        assert rebuilt.last_emitted == expected_events
        assert {p: rebuilt.view(p) for p in rebuilt.seats} == expected_views
