"""Duel, the card game with hidden hands: rules, options, events, views, replay."""

from __future__ import annotations

import msgpack
import pytest

from server.engine import RoomEngine
from server.errors import IllegalInput, InvalidOptions
from server.games.duel import Duel
from server.options import room_options


def new_room(**options: object) -> RoomEngine:
    validated = room_options(Duel, options)
    game = Duel.create(1234)
    game.setup(validated)
    return RoomEngine(game, options=validated)


def seat(engine: RoomEngine, *players: str) -> None:
    for p in players:
        engine.offer_join(p, p.upper())
    engine.step()


def test_options_are_checked() -> None:
    assert room_options(Duel, {}) == {"hand": 5, "target": 3}
    assert room_options(Duel, {"hand": 3, "target": 1, "max_players": 2}) == {
        "max_players": 2,
        "hand": 3,
        "target": 1,
    }
    for bad in ({"hand": 2}, {"hand": 8}, {"target": 0}, {"hand": "5"}, {"mode": "x"}):
        with pytest.raises(InvalidOptions):
            room_options(Duel, bad)


def test_a_round_reveals_scores_and_deals() -> None:
    engine = new_room(hand=3, target=2)
    seat(engine, "a", "b")
    hands = {p: engine.view(p)["hand"] for p in ("a", "b")}
    assert all(len(h) == 3 for h in hands.values())
    engine.offer_input("a", 1, {"play": max(hands["a"])})
    outcome = engine.step()
    assert [e.data["kind"] for e in outcome.emitted] == ["played"]
    assert outcome.state["played"] == ["a"]
    assert "cards" not in str(outcome.state["last"])  # nothing revealed yet
    engine.offer_input("b", 1, {"play": min(hands["b"])})
    outcome = engine.step()
    kinds = [(e.data["kind"], e.to) for e in outcome.emitted]
    assert ("round", None) in kinds and ("dealt", ("a",)) in kinds and ("dealt", ("b",)) in kinds
    reveal = next(e.data for e in outcome.emitted if e.data["kind"] == "round")
    assert reveal["cards"] == {"a": max(hands["a"]), "b": min(hands["b"])}
    assert all(len(engine.view(p)["hand"]) == 3 for p in ("a", "b"))


def test_cards_not_held_cannot_be_played_and_bad_inputs_are_refused() -> None:
    engine = new_room()
    seat(engine, "a", "b")
    held = engine.view("a")["hand"]
    missing = next(r for r in range(1, 14) if r not in held)
    engine.offer_input("a", 1, {"play": missing})
    assert engine.step().emitted == []  # ignored: not in the hand
    for bad in ("x", {"play": 0}, {"play": 14}, {"play": True}, {"play": 3, "x": 1}):
        with pytest.raises(IllegalInput):
            engine.game.validate_input("a", bad)


def test_a_rebuilt_match_emits_the_same_events_and_views() -> None:
    live = new_room(hand=4, target=2)
    seat(live, "a", "b", "c")
    snapshot = msgpack.unpackb(msgpack.packb(live.snapshot()), strict_map_key=False)
    journal = []
    emitted = []
    for round_no in range(6):
        for seq, p in enumerate(("a", "b", "c"), start=1):
            live.offer_input(p, round_no + 1, {"play": live.view(p)["hand"][seq % 2]})
        outcome = live.step()
        journal.append((outcome.tick, outcome.events))
        emitted.append(outcome.emitted)
    rebuilt = RoomEngine.restore(Duel, snapshot, options=live.options)
    for (tick, events), expected in zip(journal, emitted, strict=True):
        rebuilt.apply(tick, events)
        assert rebuilt.last_emitted == expected
    assert {p: rebuilt.view(p) for p in "abc"} == {p: live.view(p) for p in "abc"}
    assert live.game.metadata()["round"] == 7
