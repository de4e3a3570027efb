"""Arena rules, stepped without a clock: speed limit, bounds, pickups, determinism."""

from __future__ import annotations

import math
import time
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.errors import GameError, IllegalInput
from server.games import available_games
from server.games.arena import (
    HEIGHT,
    MAX_SPEED,
    PICKUP_RADIUS,
    PICKUPS,
    WIDTH,
    Arena,
    _Player,
)

STEP = MAX_SPEED / Arena.tick_rate
EPSILON = 0.01  # two coordinates rounded to 2 decimals: at most 0.005 * sqrt(2) off

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
)
raw_input = st.fixed_dictionaries({"dx": numbers, "dy": numbers})


def players(state: Any) -> dict[str, Any]:
    result: dict[str, Any] = state["players"]
    return result


def test_registered_as_builtin() -> None:
    assert available_games()["arena"] is Arena
    assert (Arena.name, Arena.tick_rate, Arena.max_players) == ("arena", 20, 64)


def test_create_spawns_pickups_inside_the_world() -> None:
    state = Arena.create(7).tick([])
    assert state["w"] == WIDTH and state["h"] == HEIGHT
    assert len(state["pickups"]) == PICKUPS
    for x, y in state["pickups"]:
        assert 0 <= x <= WIDTH and 0 <= y <= HEIGHT
    assert state["players"] == {}


def test_join_spawns_at_a_point_inside_and_is_idempotent() -> None:
    game = Arena.create(1)
    game.join("a", "Ann")
    first = game.tick([])["players"]["a"]
    assert first == {"name": "Ann", "x": first["x"], "y": first["y"], "score": 0, "inputs": 0}
    assert 0 <= first["x"] <= WIDTH and 0 <= first["y"] <= HEIGHT
    game.join("a", "Ann again")  # a replayed join must not move or reset the player
    assert game.tick([])["players"]["a"] == first


def test_spawn_points_differ_between_players_and_seeds() -> None:
    game = Arena.create(1)
    for index in range(10):
        game.join(f"p{index}", "x")
    points = {(p["x"], p["y"]) for p in game.tick([])["players"].values()}
    assert len(points) == 10
    other = Arena.create(2)
    other.join("p0", "x")
    assert other.tick([])["players"]["p0"] != game.tick([])["players"]["p0"]


def test_leave_removes_the_player_and_unknown_ids_are_ignored() -> None:
    game = Arena.create(1)
    game.join("a", "Ann")
    game.leave("a")
    game.leave("nobody")
    state = game.tick([("ghost", [1.0, 0.0])])
    assert state["players"] == {}


# -- validate_input ----------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        None,
        1,
        "up",
        [1, 0],
        {},
        {"dx": 1},
        {"dy": 1},
        {"dx": 1, "dy": 0, "dz": 0},
        {"dx": "1", "dy": 0},
        {"dx": None, "dy": 0},
        {"dx": True, "dy": 0},
        {"dx": 0, "dy": False},
        {"dx": [1], "dy": 0},
        {"dx": {"v": 1}, "dy": 0},
        {"dx": float("nan"), "dy": 0},
        {"dx": 0, "dy": float("inf")},
        {"dx": float("-inf"), "dy": 0},
        {1: 1, 2: 2},
    ],
    ids=repr,
)
def test_validate_input_refuses(data: Any) -> None:
    with pytest.raises(IllegalInput):
        Arena.create(1).validate_input("a", data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"dx": 0, "dy": 0}, [0.0, 0.0]),
        ({"dx": 1, "dy": 0}, [1.0, 0.0]),
        ({"dx": -0.5, "dy": 0.25}, [-0.5, 0.25]),
        ({"dx": 3, "dy": 4}, [0.6, 0.8]),
        ({"dx": 100, "dy": 0}, [1.0, 0.0]),
        ({"dx": -1e308, "dy": -1e308}, [-math.sqrt(0.5), -math.sqrt(0.5)]),
        ({"dx": 10**400, "dy": 0}, [1.0, 0.0]),
        ({"dx": -0.0, "dy": 0.0}, [0.0, 0.0]),
    ],
)
def test_validate_input_normalises(data: dict[str, Any], expected: list[float]) -> None:
    heading = Arena.create(1).validate_input("a", data)
    assert heading == pytest.approx(expected)
    assert all(type(value) is float for value in heading)


@FAST
@given(raw_input)
def test_validated_heading_is_finite_and_at_most_unit_length(data: dict[str, Any]) -> None:
    dx, dy = Arena.create(1).validate_input("a", data)
    assert math.isfinite(dx) and math.isfinite(dy)
    assert math.hypot(dx, dy) <= 1.0 + 1e-12
    # Survives both journal encodings unchanged.
    assert msgpack.unpackb(msgpack.packb([dx, dy])) == [dx, dy]
    assert orjson.loads(orjson.dumps([dx, dy])) == [dx, dy]


# -- movement ----------------------------------------------------------------------


def seated(seed: int = 3, *ids: str) -> Arena:
    game = Arena.create(seed)
    for player_id in ids or ("a",):
        game.join(player_id, player_id.upper())
    return game


def test_moves_heading_times_speed_per_tick_and_keeps_moving() -> None:
    game = seated()
    before = game.tick([])["players"]["a"]
    game._players["a"].x, game._players["a"].y = 10.0, 10.0  # away from the walls
    state = game.tick([("a", game.validate_input("a", {"dx": 1, "dy": 0}))])
    assert (state["players"]["a"]["x"], state["players"]["a"]["y"]) == (10.6, 10.0)
    state = game.tick([])
    assert state["players"]["a"]["x"] == 11.2  # keeps its heading without new input
    state = game.tick([("a", [0.0, 0.0])])
    state = game.tick([])
    assert state["players"]["a"]["x"] == 11.2  # stopped
    assert before["inputs"] == 0 and state["players"]["a"]["inputs"] == 2


def test_last_input_of_a_tick_sets_the_heading_and_every_input_counts() -> None:
    game = seated()
    game._players["a"].x, game._players["a"].y = 20.0, 20.0
    inputs = [("a", [1.0, 0.0])] * 31 + [("a", [0.0, -1.0])]
    state = game.tick(inputs)
    assert state["players"]["a"]["x"] == 20.0
    assert state["players"]["a"]["y"] == pytest.approx(20.0 - STEP)
    assert state["players"]["a"]["inputs"] == 32


def test_positions_are_clamped_to_the_world() -> None:
    game = seated()
    game.tick([("a", [-1.0, -1.0])])
    for _ in range(200):
        state = game.tick([])
    assert (state["players"]["a"]["x"], state["players"]["a"]["y"]) == (0.0, 0.0)
    game.tick([("a", [1.0, 1.0])])
    for _ in range(400):
        state = game.tick([])
    entry = state["players"]["a"]
    assert (entry["x"], entry["y"]) == (float(WIDTH), float(HEIGHT))
    assert type(entry["x"]) is float and type(entry["y"]) is float


def test_positions_are_rounded_to_two_decimals() -> None:
    game = seated()
    state = game.tick([("a", game.validate_input("a", {"dx": 1, "dy": 3}))])
    for _ in range(5):
        for entry in state["players"].values():
            assert round(entry["x"], 2) == entry["x"] and round(entry["y"], 2) == entry["y"]
        state = game.tick([])


@FAST
@given(
    seed=st.integers(min_value=0, max_value=2**64 - 1),
    ticks=st.lists(st.lists(raw_input, max_size=32), min_size=1, max_size=12),
)
def test_speed_limit_under_any_input(seed: int, ticks: list[list[dict[str, Any]]]) -> None:
    """However many inputs a tick holds, nobody moves more than MAX_SPEED / tick_rate."""
    game = seated(seed, "a", "b")
    last = {pid: (p["x"], p["y"]) for pid, p in players(game.tick([])).items()}
    sent = 0
    for batch in ticks:
        inputs = [("a", game.validate_input("a", data)) for data in batch]
        state = game.tick(inputs)
        for pid, entry in players(state).items():
            x, y = entry["x"], entry["y"]
            assert 0 <= x <= WIDTH and 0 <= y <= HEIGHT
            assert math.hypot(x - last[pid][0], y - last[pid][1]) <= STEP + EPSILON
            last[pid] = (x, y)
        sent += len(batch)
        assert players(state)["a"]["inputs"] == sent


@FAST
@given(batches=st.lists(st.integers(min_value=0, max_value=32), min_size=1, max_size=20))
def test_inputs_counter_counts_every_applied_input(batches: list[int]) -> None:
    game = seated(5, "a", "b")
    total = 0
    for count in batches:
        total += count
        state = game.tick([("a", [0.5, 0.5])] * count)
        assert players(state)["a"]["inputs"] == total
        assert players(state)["b"]["inputs"] == 0


# -- pickups -------------------------------------------------------------------------


def test_pickup_is_collected_scores_and_respawns_elsewhere() -> None:
    game = seated(11, "a", "b")
    target = list(game._pickups[0])
    game._players["a"].x, game._players["a"].y = target[0], target[1]
    state = game.tick([])
    assert players(state)["a"]["score"] == 1
    assert len(state["pickups"]) == PICKUPS
    assert state["pickups"][0] != target
    x, y = state["pickups"][0]
    assert 0 <= x <= WIDTH and 0 <= y <= HEIGHT


def test_pickup_radius_is_inclusive_and_exclusive_beyond() -> None:
    game = Arena(1, {"a": _Player("A", 10.0, 10.0)}, [[10.0 + PICKUP_RADIUS, 10.0], [30.0, 30.0]])
    state = game.tick([])
    assert players(state)["a"]["score"] == 1
    game = Arena(1, {"a": _Player("A", 10.0, 10.0)}, [[10.0 + PICKUP_RADIUS + 0.01, 10.0]])
    state = game.tick([])
    assert players(state)["a"]["score"] == 0


def test_one_pickup_goes_to_one_player_only() -> None:
    game = Arena(1, {"a": _Player("A", 5.0, 5.0), "b": _Player("B", 5.0, 5.0)}, [[5.0, 5.0]])
    state = game.tick([])
    assert players(state)["a"]["score"] + players(state)["b"]["score"] == 1


def test_walking_over_pickups_scores() -> None:
    """A player that sweeps the world collects something: the game stays alive."""
    game = seated(2)
    game._players["a"].x, game._players["a"].y = 0.0, 0.0
    score = 0
    for row in range(HEIGHT // 2 + 1):
        heading = [1.0, 0.0] if row % 2 == 0 else [-1.0, 0.0]
        state = game.tick([("a", heading)])
        for _ in range(int(WIDTH / STEP) + 1):
            state = game.tick([])
        game._players["a"].y = min(float(HEIGHT), row * 2.0)
        score = players(state)["a"]["score"]
    assert score >= PICKUPS
    assert len(state["pickups"]) == PICKUPS


# -- state shape, determinism, snapshots --------------------------------------------------


def check_wire_value(value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str)
            check_wire_value(item)
    elif isinstance(value, list):
        for item in value:
            check_wire_value(item)
    elif isinstance(value, float):
        assert math.isfinite(value)
    else:
        assert isinstance(value, str | int) and not isinstance(value, bool)


def run_script(game: Arena, script: list[list[tuple[str, Any]]]) -> list[Any]:
    states = []
    for batch in script:
        for player_id, data in batch:
            if data == "join":
                game.join(player_id, player_id)
            elif data == "leave":
                game.leave(player_id)
        inputs = [
            (pid, game.validate_input(pid, data)) for pid, data in batch if isinstance(data, dict)
        ]
        states.append(orjson.dumps(game.tick(inputs)))
    return states


player_ids = st.sampled_from(["a", "b", "c", "d"])
script_event = st.tuples(player_ids, st.one_of(st.just("join"), st.just("leave"), raw_input))
scripts = st.lists(st.lists(script_event, max_size=8), min_size=1, max_size=30)


@FAST
@given(seed=st.integers(min_value=0, max_value=2**64 - 1), script=scripts)
def test_same_seed_same_script_same_states(seed: int, script: list[Any]) -> None:
    states = run_script(Arena.create(seed), script)
    assert run_script(Arena.create(seed), script) == states
    for encoded in states:
        check_wire_value(orjson.loads(encoded))


@FAST
@given(
    seed=st.integers(min_value=0, max_value=2**64 - 1),
    before=scripts,
    after=scripts,
)
def test_restore_of_a_snapshot_behaves_exactly_like_the_original(
    seed: int, before: list[Any], after: list[Any]
) -> None:
    game = Arena.create(seed)
    run_script(game, before)
    snapshot = game.snapshot()
    # Through msgpack, as a checkpoint would travel, and through the JSON codec too.
    packed = msgpack.unpackb(msgpack.packb(snapshot), raw=False)
    via_json = orjson.loads(orjson.dumps(snapshot))
    assert packed == snapshot == via_json
    copies = [Arena.restore(packed), Arena.restore(via_json)]
    expected = run_script(game, after)
    for copy in copies:
        assert run_script(copy, after) == expected
        assert copy.snapshot() == game.snapshot()


def test_snapshot_holds_headings_scores_counters_and_rng() -> None:
    game = seated(9, "a")
    game.tick([("a", [0.6, 0.8])])
    snapshot = game.snapshot()
    assert set(snapshot) == {"v", "rng", "players", "pickups"}
    entry = snapshot["players"][0]
    assert entry[:2] == ["a", "A"] and entry[4:6] == [0.6, 0.8] and entry[7] == 1
    assert -(2**63) <= snapshot["rng"] < 2**63  # fits every decoder's 64-bit signed ints


def test_restore_refuses_a_corrupt_or_foreign_snapshot() -> None:
    with pytest.raises(GameError):
        Arena.restore({"v": 99})
    with pytest.raises(GameError):
        Arena.restore({"v": 1, "rng": 1, "players": [["a"]], "pickups": []})
    with pytest.raises(GameError):
        Arena.restore({"v": 1, "rng": 1, "players": []})


def test_two_hundred_players_tick_fast() -> None:
    """The reference load: 200 players in one room, each with an input, far under 50 ms."""

    game = Arena.create(4)
    for index in range(200):
        game.join(f"p{index}", f"player {index}")
    inputs = [(f"p{index}", [0.6, -0.8]) for index in range(200)]
    game.tick(inputs)
    timings = []
    for _ in range(5):  # the best of five, so a busy machine does not fail the test
        started = time.perf_counter()
        for _ in range(4):
            game.tick(inputs)
        timings.append((time.perf_counter() - started) / 4)
    per_tick = min(timings)
    assert per_tick < 0.01, f"{per_tick * 1000:.2f} ms per tick (about 0.6 ms expected)"
