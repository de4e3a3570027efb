"""The room's log of recent game events: each player gets the events of the ticks it has
not seen, addressed to it, once; the log keeps one grace period of ticks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.eventlog import EventLog, packed
from server.game import Emitted


def test_a_player_gets_the_events_of_the_ticks_it_missed_and_only_its_own() -> None:
    log = EventLog(keep_ticks=100)
    log.record(1, [Emitted("all-1")])
    log.record(2, [])
    log.record(3, [Emitted("a-3", ("a",)), Emitted("b-3", ("b",)), Emitted("ab-3", ("a", "b"))])
    log.record(4, [Emitted("all-4")])
    assert log.for_player("a", after=0, upto=4) == ["all-1", "a-3", "ab-3", "all-4"]
    assert log.for_player("b", after=1, upto=3) == ["b-3", "ab-3"]
    assert log.for_player("c", after=3, upto=4) == ["all-4"]
    assert log.for_player("a", after=4, upto=4) == []


def test_it_keeps_one_window_of_ticks_and_refuses_going_back() -> None:
    log = EventLog(keep_ticks=10)
    for tick in range(1, 31):
        log.record(tick, [Emitted(tick)])
    assert log.oldest == 21
    with pytest.raises(ValueError, match="after tick 30"):
        log.record(30, [Emitted("again")])


def test_stored_events_load_back_the_same() -> None:
    emitted = [Emitted({"x": 1}), Emitted("to-a", ("a",))]
    log = EventLog(keep_ticks=50)
    log.load([(7, packed(emitted))])
    assert log.for_player("a", 6, 7) == [{"x": 1}, "to-a"]
    assert log.for_player("b", 6, 7) == [{"x": 1}]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 5), st.sampled_from([None, "a", "b", "c"]))),
        max_size=30,
    ),
    st.lists(st.integers(0, 30), min_size=1, max_size=6),
)
def test_reading_in_any_chunks_gives_every_event_once(
    ticks: list[list[tuple[int, str | None]]], cuts: list[int]
) -> None:
    """However a player's reconnects split the ticks, it sees each of its events once."""
    log = EventLog(keep_ticks=1000)
    expected: list[int] = []
    for tick, events in enumerate(ticks, start=1):
        log.record(tick, [Emitted(v, None if to is None else (to,)) for v, to in events])
        expected += [v for v, to in events if to in (None, "a")]
    seen: list[int] = []
    last = 0
    for cut in [*sorted(cuts), len(ticks)]:
        upto = max(last, min(cut, len(ticks)))
        seen += log.for_player("a", last, upto)
        last = upto
    assert seen == expected
