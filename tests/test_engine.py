"""The pure RoomEngine with Arena, stepped without sleeping: seats, inputs, acks, replay."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.engine import Event, JournalGap, RoomEngine, RoomFull, Verdict
from server.errors import GameError, IllegalInput
from server.game import PlayerInput
from server.games.arena import Arena
from tests.games import Counter

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RIGHT = {"dx": 1, "dy": 0}


def engine(seed: int = 1, **options: Any) -> RoomEngine:
    return RoomEngine(Arena.create(seed), **options)


def joined(*ids: str, seed: int = 1) -> RoomEngine:
    room = engine(seed)
    for player_id in ids:
        assert room.offer_join(player_id, player_id.upper())
    room.step()
    return room


def player(room: RoomEngine, player_id: str) -> dict[str, Any]:
    assert room.last_state is not None
    result: dict[str, Any] = room.last_state["players"][player_id]
    return result


class StrictArena(Arena):
    """An arena that fails loudly when the engine hands it an input of an unknown player."""

    max_players = 3

    def tick(self, inputs: Sequence[PlayerInput]) -> Mapping[str, Any]:
        for player_id, _ in inputs:
            assert player_id in self._players, f"input for unknown player {player_id}"
        return super().tick(inputs)


# -- joins and leaves ----------------------------------------------------------------


def test_join_is_applied_at_the_next_tick() -> None:
    room = engine()
    assert room.offer_join("a", "Ann")
    assert room.seats["a"].ack == 0
    outcome = room.step()
    assert outcome.tick == 1 and room.tick == 1
    assert outcome.events == [["j", "a", "Ann"]]
    assert outcome.state is room.last_state
    assert player(room, "a")["name"] == "Ann"


def test_second_join_of_a_seated_player_is_a_resume() -> None:
    room = joined("a")
    assert room.offer_join("a", "Ann") is False
    assert room.step().events == []


def test_leave_frees_the_seat_at_the_next_tick() -> None:
    room = joined("a", "b")
    room.offer_leave("a")
    room.offer_leave("a")  # once is enough
    room.offer_leave("nobody")
    assert room.offer_input("a", 1, RIGHT) is Verdict.NOT_SEATED
    with pytest.raises(RoomFull):
        room.offer_join("a", "Ann")  # still leaving
    outcome = room.step()
    assert outcome.events == [["l", "a"]]
    assert "a" not in room.seats
    assert outcome.state is not None and set(outcome.state["players"]) == {"b"}
    assert room.offer_join("a", "Ann")  # a fresh seat afterwards
    room.step()
    assert player(room, "a")["inputs"] == 0


def test_input_then_leave_in_the_same_tick_never_reaches_the_game() -> None:
    room = RoomEngine(StrictArena.create(1))
    room.offer_join("a", "A")
    room.offer_join("b", "B")
    room.step()
    assert room.offer_input("a", 1, RIGHT) is Verdict.ACCEPTED
    assert room.offer_input("b", 1, RIGHT) is Verdict.ACCEPTED
    room.offer_leave("a")
    outcome = room.step()
    assert outcome.events[-1] == ["l", "a"]
    assert player(room, "b")["inputs"] == 1


def test_input_for_an_unknown_player_is_not_seated() -> None:
    assert engine().offer_input("ghost", 1, RIGHT) is Verdict.NOT_SEATED


def test_room_full() -> None:
    room = RoomEngine(StrictArena.create(1))
    for player_id in "abc":
        room.offer_join(player_id, player_id)
    with pytest.raises(RoomFull, match="full"):
        room.offer_join("d", "d")
    room.step()
    with pytest.raises(RoomFull):
        room.offer_join("d", "d")
    assert room.offer_join("a", "a") is False  # a seated player may always resume


def test_arena_seats_sixty_four() -> None:
    room = engine()
    for index in range(Arena.max_players):
        room.offer_join(f"p{index}", "x")
    with pytest.raises(RoomFull):
        room.offer_join("one-too-many", "x")


# -- inputs, sequences, acks ------------------------------------------------------------


def test_inputs_are_applied_in_arrival_order_the_tick_after_they_arrive() -> None:
    room = joined("a", "b")
    room.offer_input("b", 1, {"dx": 0, "dy": 1})
    room.offer_input("a", 1, {"dx": 1, "dy": 0})
    room.offer_input("a", 2, {"dx": 0, "dy": -1})
    assert room.seats["a"].ack == 0  # accepted, not applied yet
    assert room.seats["a"].accepted == 2 and room.seats["a"].pending == 2
    before = dict(player(room, "a"))
    outcome = room.step()
    assert outcome.events == [
        ["i", "b", 1, [0.0, 1.0]],
        ["i", "a", 1, [1.0, 0.0]],
        ["i", "a", 2, [0.0, -1.0]],
    ]
    after = player(room, "a")
    assert after["x"] == before["x"]  # the last input of the tick set the heading
    assert after["y"] == pytest.approx(max(0.0, before["y"] - 0.6))
    assert (room.seats["a"].ack, room.seats["b"].ack) == (2, 1)
    assert (after["inputs"], player(room, "b")["inputs"]) == (2, 1)
    assert room.seats["a"].pending == 0


def test_duplicates_are_dropped_before_and_after_apply() -> None:
    room = joined("a")
    assert room.offer_input("a", 1, RIGHT) is Verdict.ACCEPTED
    assert room.offer_input("a", 1, RIGHT) is Verdict.DUPLICATE
    room.step()
    for seq in (1, 0, -5):
        assert room.offer_input("a", seq, RIGHT) is Verdict.DUPLICATE
    assert room.offer_input("a", 2, RIGHT) is Verdict.ACCEPTED
    assert room.offer_input("a", 2, RIGHT) is Verdict.DUPLICATE
    room.step()
    assert room.seats["a"].ack == 2
    assert player(room, "a")["inputs"] == 2


def test_sequences_are_strictly_in_order() -> None:
    """A gap is refused, so an ack never covers an input the server did not apply."""
    room = joined("a")
    assert room.offer_input("a", 2, RIGHT) is Verdict.OUT_OF_ORDER  # a seat starts at 1
    assert room.offer_input("a", 1, RIGHT) is Verdict.ACCEPTED
    assert room.offer_input("a", 3, RIGHT) is Verdict.OUT_OF_ORDER  # 2 is missing
    assert room.seats["a"].accepted == 1
    assert room.offer_input("a", 2, RIGHT) is Verdict.ACCEPTED
    assert room.offer_input("a", 3, RIGHT) is Verdict.ACCEPTED
    room.step()
    assert room.seats["a"].ack == 3 and player(room, "a")["inputs"] == 3


def test_an_input_dropped_for_a_full_queue_blocks_later_ones_until_resent() -> None:
    room = joined("a")
    for seq in range(1, 33):
        assert room.offer_input("a", seq, RIGHT) is Verdict.ACCEPTED
    assert room.offer_input("a", 33, RIGHT) is Verdict.QUEUE_FULL
    room.step()
    assert room.offer_input("a", 34, RIGHT) is Verdict.OUT_OF_ORDER
    assert room.offer_input("a", 33, RIGHT) is Verdict.ACCEPTED
    room.step()
    assert room.seats["a"].ack == 33 and player(room, "a")["inputs"] == 33


def test_queue_full_until_the_next_tick() -> None:
    room = joined("a")
    for seq in range(1, 33):
        assert room.offer_input("a", seq, RIGHT) is Verdict.ACCEPTED
    assert room.offer_input("a", 33, RIGHT) is Verdict.QUEUE_FULL
    assert room.seats["a"].accepted == 32
    room.step()
    assert room.seats["a"].ack == 32 and room.seats["a"].pending == 0
    assert room.offer_input("a", 33, RIGHT) is Verdict.ACCEPTED
    room.step()
    assert player(room, "a")["inputs"] == 33


@pytest.mark.parametrize(
    "data", [None, {"dx": 1}, {"dx": "1", "dy": 0}, {"dx": True, "dy": 0}, [1, 0]]
)
def test_illegal_input_raises_and_changes_nothing(data: Any) -> None:
    room = joined("a")
    room.offer_input("a", 1, RIGHT)
    snapshot = room.snapshot()
    seat_before = (room.seats["a"].accepted, room.seats["a"].pending, room.seats["a"].ack)
    with pytest.raises(IllegalInput):
        room.offer_input("a", 2, data)
    assert (room.seats["a"].accepted, room.seats["a"].pending, room.seats["a"].ack) == seat_before
    assert room.snapshot() == snapshot
    assert room.step().events == [["i", "a", 1, [1.0, 0.0]]]
    assert room.offer_input("a", 2, RIGHT) is Verdict.ACCEPTED  # seq 2 is still free


def test_apply_refuses_a_gap_in_the_journal() -> None:
    room = joined("a")
    with pytest.raises(JournalGap):
        room.apply(room.tick + 2, [])
    with pytest.raises(JournalGap):
        room.apply(room.tick, [])
    room.apply(room.tick + 1, [])
    assert room.tick == 2


def test_apply_refuses_an_unknown_event() -> None:
    room = joined("a")
    with pytest.raises(IllegalInput):
        room.apply(room.tick + 1, [["x", "a"]])


def test_apply_ignores_inputs_already_applied_and_of_unknown_players() -> None:
    room = joined("a")
    room.offer_input("a", 2, RIGHT)
    room.step()
    room.apply(room.tick + 1, [["i", "a", 2, [0.0, 1.0]], ["i", "ghost", 1, [1.0, 0.0]]])
    assert player(room, "a")["inputs"] == 1 and room.seats["a"].ack == 2


# -- snapshot, restore, replay -------------------------------------------------------------


def test_snapshot_round_trips_through_msgpack_and_keeps_acks() -> None:
    room = joined("a", "b")
    room.offer_input("a", 1, RIGHT)
    room.offer_input("a", 2, RIGHT)
    room.step()
    room.offer_input("b", 1, RIGHT)  # queued, not applied: not in the snapshot
    snapshot = msgpack.unpackb(msgpack.packb(room.snapshot()), raw=False)
    copy = RoomEngine.restore(Arena, snapshot)
    assert copy.tick == room.tick
    assert (copy.seats["a"].ack, copy.seats["a"].accepted) == (2, 2)
    assert (copy.seats["b"].ack, copy.seats["b"].accepted) == (0, 0)
    assert copy.offer_input("a", 2, RIGHT) is Verdict.DUPLICATE
    assert copy.offer_input("b", 1, RIGHT) is Verdict.ACCEPTED  # the client resends it


def test_snapshot_leaves_out_a_seat_whose_join_is_still_queued() -> None:
    room = joined("a")
    room.offer_join("b", "B")
    snapshot = room.snapshot()
    assert [seat[0] for seat in snapshot["seats"]] == ["a"]
    copy = RoomEngine.restore(Arena, snapshot)
    assert copy.offer_join("b", "B") is True  # a fresh join, not a false resume
    copy.step()
    assert player(copy, "b")["name"] == "B"


def test_restore_refuses_an_unknown_snapshot_version() -> None:
    with pytest.raises(GameError):
        RoomEngine.restore(Arena, {"v": 0, "tick": 0, "game": {}, "seats": []})


def test_restore_passes_options() -> None:
    room = joined("a")
    copy = RoomEngine.restore(Arena, room.snapshot(), max_pending_per_player=1)
    assert copy.max_pending_per_player == 1


# Operations for the determinism property: what clients and the clock do to a room.
player_ids = st.sampled_from(["a", "b", "c", "d", "e"])
direction = st.fixed_dictionaries(
    {
        "dx": st.one_of(st.integers(-3, 3), st.floats(-2, 2, allow_nan=False)),
        "dy": st.one_of(st.integers(-3, 3), st.floats(-2, 2, allow_nan=False)),
    }
)
operation = st.one_of(
    st.tuples(st.just("join"), player_ids),
    st.tuples(st.just("leave"), player_ids),
    st.tuples(st.just("input"), player_ids, st.integers(0, 6), direction),
    st.tuples(st.just("step")),
    st.tuples(st.just("step")),
)


def drive(room: RoomEngine, operations: list[Any]) -> list[tuple[int, list[Event], bytes]]:
    """Play operations against a live room; return the journal (tick, events, encoded state)."""
    journal = []
    next_seq: dict[str, int] = {}
    for op in operations:
        if op[0] == "join":
            try:
                room.offer_join(op[1], op[1].upper())
            except RoomFull:
                pass
        elif op[0] == "leave":
            room.offer_leave(op[1])
        elif op[0] == "input":
            # Mostly the next seq, sometimes a resend or a skip: duplicates and gaps.
            base = next_seq.get(op[1], 1)
            seq = max(1, base + op[2] - 2)
            if room.offer_input(op[1], seq, op[3]) is Verdict.ACCEPTED:
                next_seq[op[1]] = seq + 1
        else:
            outcome = room.step()
            # The journal travels as msgpack.
            events = msgpack.unpackb(msgpack.packb(outcome.events), raw=False)
            journal.append((outcome.tick, events, orjson.dumps(outcome.state)))
    outcome = room.step()
    journal.append((outcome.tick, outcome.events, orjson.dumps(outcome.state)))
    return journal


@given(
    seed=st.integers(0, 2**64 - 1),
    operations=st.lists(operation, max_size=60),
    allowance=st.integers(0, 6),
    claim_allowance=st.integers(0, 6),
)
def test_catch_up_to_its_own_claim_tick_is_the_room_one_tick_past_the_allowance(
    seed: int, operations: list[Any], allowance: int, claim_allowance: int
) -> None:
    """The claim tick (server/store.py ``_CLAIM``) journals, with no event, the tick after
    the ticks the old owner could have published: the rebuild ends there and returns it
    (to publish at once); a later rebuild replays it as any entry, and its allowance."""
    live = engine(seed)
    journal = drive(live, operations)
    kept = without_implied(journal, allowance)
    claim_tick = kept[-1][0] + allowance + 1
    with_claim = [*kept, (claim_tick, [], claim_allowance)]

    rebuilt = engine(seed)
    outcome = rebuilt.catch_up(with_claim, 0, claims={claim_tick}, own_claim=claim_tick)
    assert outcome is not None and outcome.tick == claim_tick == rebuilt.tick
    assert outcome.events == [] and outcome.emitted == []  # (Arena emits none)
    while live.tick < claim_tick:
        live.step()
    assert rebuilt.snapshot() == live.snapshot()
    assert orjson.dumps(outcome.state) == orjson.dumps(live.last_state)

    later = engine(seed)  # the next owner: the claim tick is an entry like any other
    assert later.catch_up(with_claim, 0, claims={claim_tick}) is None
    assert later.tick == claim_tick + claim_allowance


def test_catch_up_to_its_own_claim_tick_returns_the_game_events_nobody_saw() -> None:
    """Ticks 2-4 were the old owner's allowance; 3 beeps, so it published at most 2, and
    the claim tick 5 is published with the events of 3 (and none of its own)."""
    room = RoomEngine(Beeper({}))
    entries = [(1, [["j", "a", "A"]], 3), (5, [], 4)]
    outcome = room.catch_up(entries, 0, claims={5}, own_claim=5)
    assert outcome is not None and outcome.tick == 5 and room.tick == 5
    assert [event.data for event in outcome.emitted] == [{"beep": 3}]
    # Beeper emits every 3rd tick: 6 is one too, which a claim at 6 returns with 3's.
    room = RoomEngine(Beeper({}))
    outcome = room.catch_up([(1, [], 4), (6, [], 4)], 0, claims={6}, own_claim=6)
    assert outcome is not None and [e.data for e in outcome.emitted] == [
        {"beep": 3},
        {"beep": 6},
    ]


def test_a_later_rebuild_replays_the_events_of_a_claims_gap_without_a_journal_gap() -> None:
    """Before someone else's claim tick, a missing tick may emit (its claimer stored the
    events with its claim tick); before any other entry it may not."""
    room = RoomEngine(Beeper({}))
    assert room.catch_up([(1, [], 3), (5, [], 4), (6, [["j", "a", "A"]], 0)], 0, claims={5}) is None
    assert room.tick == 6
    with pytest.raises(JournalGap, match="not deterministic"):
        RoomEngine(Beeper({})).catch_up([(1, [], 3), (5, [], 4)], 0)


@FAST
@given(
    seed=st.integers(0, 2**64 - 1),
    before=st.lists(operation, max_size=40),
    after=st.lists(operation, max_size=40),
)
def test_snapshot_restore_replay_gives_identical_states_tick_by_tick(
    seed: int, before: list[Any], after: list[Any]
) -> None:
    live = engine(seed)
    head = drive(live, before)
    snapshot = msgpack.unpackb(msgpack.packb(live.snapshot()), raw=False)
    tail = drive(live, after)

    # A new owner: restore the checkpoint and replay the journal after it.
    rebuilt = RoomEngine.restore(Arena, snapshot)
    for tick, events, state in tail:
        assert orjson.dumps(rebuilt.apply(tick, events)) == state
    assert rebuilt.snapshot() == live.snapshot()

    # And from nothing: the whole journal from tick 1 rebuilds the same room.
    scratch = engine(seed)
    for tick, events, state in head + tail:
        assert orjson.dumps(scratch.apply(tick, events)) == state
    assert scratch.snapshot() == live.snapshot()


@FAST
@given(counts=st.lists(st.lists(st.integers(0, 40), min_size=2, max_size=2), max_size=15))
def test_acked_inputs_are_applied_exactly_once(counts: list[list[int]]) -> None:
    """After any tick, a player that sent seq 1..N has inputs == ack (the bots' invariant)."""
    room = joined("a", "b")
    sent = {"a": 0, "b": 0}
    for per_player in counts:
        for player_id, count in zip(("a", "b"), per_player, strict=True):
            for _ in range(count):
                seq = sent[player_id] + 1
                if room.offer_input(player_id, seq, RIGHT) is Verdict.ACCEPTED:
                    sent[player_id] = seq
                # A resend of anything already accepted changes nothing.
                if sent[player_id]:
                    resend = room.offer_input(player_id, sent[player_id], RIGHT)
                    assert resend is Verdict.DUPLICATE
        room.step()
        for player_id in ("a", "b"):
            assert room.seats[player_id].ack == sent[player_id]
            assert player(room, player_id)["inputs"] == sent[player_id]


# -- implied ticks: a journal without its eventless ticks (server/room.py) --------------


class Beeper(Counter):
    """Counter that emits a public event every ``every``-th tick, inputs or not."""

    every = 3

    def __init__(self, counts: dict[str, int], ticks: int = 0) -> None:
        super().__init__(counts)
        self.ticks = ticks

    def tick(self, inputs: Sequence[PlayerInput]) -> Mapping[str, Any]:
        state = super().tick(inputs)
        self.ticks += 1
        if self.ticks % self.every == 0:
            self.emit({"beep": self.ticks})
        return state

    def snapshot(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "ticks": self.ticks}

    @classmethod
    def restore(cls, snapshot: dict[str, Any]) -> Beeper:
        return cls(dict(snapshot["counts"]), snapshot["ticks"])


def without_implied(
    journal: list[tuple[int, list[Event], bytes]], allowance: int
) -> list[tuple[int, list[Event], int]]:
    """What a room journals under ``--implied-ticks allowance``: an eventless tick within
    the allowance of the last journaled one is left out (Arena emits no events)."""
    kept: list[tuple[int, list[Event], int]] = []
    until = -1
    for tick, events, _state in journal:
        if events or tick > until:
            kept.append((tick, events, allowance))
            until = tick + allowance
    return kept


@FAST
@given(
    seed=st.integers(0, 2**64 - 1),
    operations=st.lists(operation, max_size=60),
    allowance=st.integers(0, 6),
)
def test_catch_up_rebuilds_the_room_and_runs_on_to_the_end_of_the_allowance(
    seed: int, operations: list[Any], allowance: int
) -> None:
    live = engine(seed)
    journal = drive(live, operations)
    kept = without_implied(journal, allowance)

    rebuilt = engine(seed)
    assert rebuilt.catch_up(kept, 0) is None
    # It stands at the last tick its previous owner could have published: the live room
    # run on with no event to that tick is the same room.
    assert rebuilt.tick == kept[-1][0] + allowance
    while live.tick < rebuilt.tick:
        live.step()
    assert rebuilt.snapshot() == live.snapshot()
    assert orjson.dumps(rebuilt.last_state) == orjson.dumps(live.last_state)


def test_catch_up_refuses_a_gap_over_the_allowance() -> None:
    room = joined("a")  # tick 1
    with pytest.raises(JournalGap, match="more than the 2 ticks"):
        room.catch_up([(5, [], 2)], 2)  # ticks 2-4 missing: 3 > 2
    assert room.tick == 1  # nothing was replayed


def test_catch_up_refuses_a_missing_tick_that_emits() -> None:
    room = RoomEngine(Beeper({}))
    with pytest.raises(JournalGap, match="not deterministic"):
        room.catch_up([(1, [], 4), (4, [], 4)], 0)  # tick 3 beeps: it had to be journaled


def test_catch_up_stops_at_the_first_run_tick_that_emits_and_returns_it() -> None:
    room = RoomEngine(Beeper({}))
    outcome = room.catch_up([(1, [["j", "a", "A"]], 4)], 0)
    assert outcome is not None and outcome.tick == 3 and room.tick == 3
    assert [event.data for event in outcome.emitted] == [{"beep": 3}]
    assert outcome.events == []


@FAST
@given(
    seed=st.integers(0, 2**64 - 1),
    before=st.lists(operation, max_size=40),
    after=st.lists(operation, max_size=40),
    allowance=st.integers(0, 6),
)
def test_catch_up_from_a_checkpoint_uses_what_is_left_of_its_allowance(
    seed: int, before: list[Any], after: list[Any], allowance: int
) -> None:
    """A checkpoint may fall on an implied tick: it stores what is left of the allowance
    there (server/room.py ``_packed_snapshot``), which covers the gap to the next entry."""
    live = engine(seed)
    head = drive(live, before)
    snapshot = msgpack.unpackb(msgpack.packb(live.snapshot()), raw=False)
    at = live.tick
    tail = drive(live, after)
    kept = without_implied(head + tail, allowance)
    last_before = max(tick for tick, _, _ in kept if tick <= at)
    left = max(0, last_before + allowance - at)

    rebuilt = RoomEngine.restore(Arena, snapshot)
    assert rebuilt.catch_up([entry for entry in kept if entry[0] > at], left) is None
    assert rebuilt.tick == max(kept[-1][0] + allowance, at + left)
    while live.tick < rebuilt.tick:
        live.step()
    assert rebuilt.snapshot() == live.snapshot()
