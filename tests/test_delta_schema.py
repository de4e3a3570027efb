"""Delta sync, schema layer: slots, masks, fixed-point numbers, differences.

The client sees the *quantized* view: every ``fixed`` field rounded to its precision, as a
float. The properties compare what a decoder rebuilds with that view, computed here
independently of the module: keyframe + deltas give it exactly at every tick, through msgpack
and JSON alike, with entities added, removed, moved, removed and re-added (same tick and
next), with keyframes taken anywhere and missed deltas refused. The arena, whose positions
are already rounded to 0.01, is rebuilt exactly, and stays within its bytes budget.
"""

from __future__ import annotations

import math
import os
import random
import uuid
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.worldgame import BenchArena
from server.games.arena import Arena
from server.protocol import JSON, MSGPACK
from server.protocol.delta import (
    SAFE_INT,
    Collection,
    DeltaBaseMismatch,
    DeltaDecoder,
    DeltaEncoder,
    DeltaError,
    Field,
    Schema,
    SchemaError,
    ViewError,
    quantize_view,
)
from server.protocol.schemas import ARENA_SCHEMA
from tests.test_delta import VALUES, strict_equal

# STATEROOM_DELTA_EXAMPLES=2000 for a longer soak than the suite's ~10 s.
FAST = settings(
    max_examples=int(os.environ.get("STATEROOM_DELTA_EXAMPLES", 30)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

ENTITY = (
    Field("name", "str"),
    Field("x", "fixed", 0.01),
    Field("y", "fixed", 0.5, diff=False),
    Field("hp", "int"),
    Field("rank", "int", diff=False),
    Field("speed", "float"),
    Field("alive", "bool"),
    Field("tags", "any"),
)
SCHEMA = Schema(
    (
        Field("round", "int"),
        Field("clock", "fixed", 0.001),
        Field("mode", "str"),
        Collection("ents", ENTITY),
        Collection(
            "cells", (Field("x", "fixed", 0.01), Field("owner", "any")), keyed=False, tuples=True
        ),
        Collection("marks", (Field("v", "int"),), keyed=False),
        Collection("set", ()),
    )
)
SCALES = {"x": 100, "y": 2, "clock": 1000}
# ids that look like markers, and the empty string, among ordinary ones
IDS = ["e0", "e1", "e2", "e3", "e4", "r", "a", "c", "", "é" * 3]

INT64 = st.integers(-(2**63), 2**63 - 1)
SMALL_INT = st.integers(-1000, 1000)
COORD = st.floats(-1e6, 1e6, allow_nan=False) | st.integers(-(10**6), 10**6)
FLOAT = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([0.0, -0.0])
NAME = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)


def expected(view: dict[str, Any]) -> dict[str, Any]:
    """What the client must see: written out for SCHEMA, independently of the module."""

    def fixed(value: float, scale: int) -> float:
        return round(value * scale) / scale

    def entity(e: dict[str, Any]) -> dict[str, Any]:
        return {
            **e,
            "x": fixed(e["x"], 100),
            "y": fixed(e["y"], 2),
            "speed": float(e["speed"]),
            "tags": list(e["tags"]) if isinstance(e["tags"], tuple) else e["tags"],
        }

    out = dict(view)
    out["clock"] = fixed(view["clock"], 1000)
    out["ents"] = {key: entity(e) for key, e in view["ents"].items()}
    out["cells"] = [[fixed(x, 100), owner] for x, owner in view["cells"]]
    out["marks"] = [dict(m) for m in view["marks"]]
    out["set"] = dict(view["set"])
    return out


@st.composite
def entity(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "name": draw(NAME),
        "x": draw(COORD),
        "y": draw(COORD),
        "hp": draw(INT64 | SMALL_INT),
        "rank": draw(SMALL_INT),
        "speed": draw(FLOAT),
        "alive": draw(st.booleans()),
        "tags": draw(VALUES),
    }


@st.composite
def moved(draw: st.DrawFn, e: dict[str, Any]) -> dict[str, Any]:
    """The same entity one tick later: some fields nudged, some replaced, some kept."""
    out = dict(e)
    for key in draw(st.sets(st.sampled_from(list(e)), max_size=4)):
        if key == "x":
            out["x"] = round(e["x"] + draw(st.floats(-0.6, 0.6)), 2)
        elif key == "hp":
            # small steps, and jumps of more than 2^53 (the record is then replaced whole)
            out["hp"] = draw(st.sampled_from([e["hp"] + 1, e["hp"] - 7, -e["hp"], 2**62, -(2**62)]))
            out["hp"] = max(-(2**63), min(2**63 - 1, out["hp"]))
        elif key == "alive":
            out["alive"] = not e["alive"]
        else:
            out[key] = draw(entity())[key]
    return out


@st.composite
def views(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A sequence of views: entities come, go, move, and come back."""
    ents: dict[str, Any] = {}
    cells: list[list[Any]] = []
    out = []
    rest: dict[str, Any] = {}
    clock = draw(COORD)
    for _ in range(draw(st.integers(1, 8))):
        present = draw(st.sets(st.sampled_from(IDS), max_size=6))
        new_ents = {}
        for key in sorted(present, key=lambda _: draw(st.integers(0, 9))):
            if key in ents and draw(st.booleans()):
                new_ents[key] = draw(moved(ents[key]))
            elif key in ents and draw(st.booleans()):
                new_ents[key] = ents[key]
            else:
                new_ents[key] = draw(entity())
        ents = new_ents
        length = draw(st.integers(0, 4))
        cells = [
            cells[i] if i < len(cells) and draw(st.booleans()) else [draw(COORD), draw(VALUES)]
            for i in range(length)
        ]
        if draw(st.integers(0, 3)) == 0:
            cells = [*cells, (draw(COORD), None)]  # a tuple record, seen as a list
        if draw(st.booleans()):
            rest = {k: draw(VALUES) for k in draw(st.sets(st.sampled_from(["extra", "s", "p"])))}
        clock = draw(st.sampled_from([clock, clock + 0.05, draw(COORD)]))
        out.append(
            {
                "round": draw(st.sampled_from([1, 2, 2**62, -(2**62)])),
                "clock": clock,
                "mode": draw(st.sampled_from(["lobby", "play"])),
                "ents": ents,
                "cells": cells,
                "marks": [{"v": v} for v in draw(st.lists(SMALL_INT, max_size=3))],
                "set": {k: {} for k in draw(st.sets(st.sampled_from(IDS), max_size=3))},
                **rest,
            }
        )
    return out


def via_msgpack(payload: dict[str, Any]) -> Any:
    return msgpack.unpackb(MSGPACK.encode(payload), raw=False)


def via_json(payload: dict[str, Any]) -> Any:
    return orjson.loads(JSON.encode(payload))


@FAST
@given(views())
def test_keyframe_then_deltas_give_the_quantized_view_at_every_tick(
    seq: list[dict[str, Any]],
) -> None:
    encoder = DeltaEncoder(SCHEMA, stream=3)
    by_msgpack, by_json = DeltaDecoder(), DeltaDecoder()
    for tick, view in enumerate(seq, start=1):
        want = expected(view)
        assert strict_equal(quantize_view(SCHEMA, view), want)
        payload = encoder.delta(tick, view)
        assert strict_equal(by_msgpack.apply(via_msgpack(payload)), want)
        assert strict_equal(by_json.apply(via_json(payload)), want)
    assert by_msgpack.schema == SCHEMA  # learnt from the keyframe


@FAST
@given(views(), st.data())
def test_keyframes_anywhere_and_missed_deltas_with_a_schema(
    seq: list[dict[str, Any]], data: st.DataObject
) -> None:
    encoder = DeltaEncoder(SCHEMA)
    payloads, keyframes = [], []
    for tick, view in enumerate(seq, start=1):
        payloads.append(MSGPACK.encode(encoder.delta(tick, view)))
        keyframes.append(MSGPACK.encode(encoder.current_keyframe()))
    start = data.draw(st.integers(0, len(seq) - 1))
    late = DeltaDecoder()
    assert strict_equal(late.apply(msgpack.unpackb(keyframes[start])), expected(seq[start]))
    for index in range(start + 1, len(seq)):
        # the same bytes as everyone else's: the shared delta holds nothing per client
        assert strict_equal(late.apply(msgpack.unpackb(payloads[index])), expected(seq[index]))
    if len(seq) >= 3:
        missed = data.draw(st.integers(1, len(seq) - 2))
        client = DeltaDecoder()
        for index in range(missed):
            client.apply(msgpack.unpackb(payloads[index]))
        with pytest.raises(DeltaBaseMismatch):
            client.apply(msgpack.unpackb(payloads[missed + 1]))
        assert strict_equal(client.view, expected(seq[missed - 1]))
        client.apply(msgpack.unpackb(keyframes[missed + 1]))
        for index in range(missed + 2, len(seq)):
            assert strict_equal(
                client.apply(msgpack.unpackb(payloads[index])), expected(seq[index])
            )


def _ent(x: float = 1.0, hp: int = 10) -> dict[str, Any]:
    return {
        "name": "n",
        "x": x,
        "y": 0.5,
        "hp": hp,
        "rank": 1,
        "speed": 0.0,
        "alive": True,
        "tags": [],
    }


def _view(ents: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "round": 1,
        "clock": 0.0,
        "mode": "m",
        "ents": ents,
        "cells": [],
        "marks": [],
        "set": {},
        **extra,
    }


def test_removal_then_readd_in_the_same_tick_and_the_next() -> None:
    encoder, decoder = DeltaEncoder(SCHEMA), DeltaDecoder()
    ticks = [
        {"a": _ent(), "b": _ent()},
        {"b": _ent(), "c": _ent(2.0)},  # a leaves, c takes its slot in the same tick
        {"b": _ent(), "c": _ent(2.0)},
        {"c": _ent(2.5)},  # b leaves
        {"c": _ent(2.5), "b": _ent(9.0)},  # b is back the next tick: a fresh record
        {"b": _ent(9.0), "c": _ent(2.5, hp=2**62)},  # c's hp jumps by > 2^53
    ]
    payloads = []
    for tick, ents in enumerate(ticks, start=1):
        payload = encoder.delta(tick, _view(ents))
        payloads.append(payload)
        assert strict_equal(decoder.apply(via_json(payload)), expected(_view(ents)))
    ents_of = [p.get("patch", {}).get("ents") for p in payloads]
    assert ents_of[1]["r"] == [0] and ents_of[1]["a"][:2] == [0, "c"]  # the lowest slot again
    assert ents_of[2] is None
    assert ents_of[3] == {"r": [1], "c": [0, 0b10, 50]}
    assert ents_of[4]["a"][:2] == [1, "b"]
    assert ents_of[5]["r"] == [0] and ents_of[5]["a"][:2] == [0, "c"]  # replaced whole
    assert ents_of[5]["a"][5] == 2**62


def test_changed_fields_travel_as_a_mask_and_differences() -> None:
    encoder = DeltaEncoder(SCHEMA)
    encoder.delta(1, _view({"a": _ent(1.0), "b": _ent(2.0), "c": _ent(3.0)}))
    payload = encoder.delta(2, _view({"a": _ent(1.0), "b": _ent(2.3, hp=11), "c": _ent(2.99)}))
    # b: slot 1 (skip 1), x and hp changed (bits 1 and 3): +30 hundredths, +1; c: skip 0, x -1
    assert payload["patch"] == {"ents": {"c": [1, 0b1010, 30, 1, 0, 0b10, -1]}}


def test_top_level_numbers_that_jump_too_far_travel_absolute() -> None:
    encoder, decoder = DeltaEncoder(SCHEMA), DeltaDecoder()
    for tick, value in enumerate([0, 5, 2**62, -(2**62), -(2**62) + 1], start=1):
        payload = encoder.delta(tick, _view({}, round=value))
        assert strict_equal(decoder.apply(via_json(payload)), expected(_view({}, round=value)))
        if tick == 3:
            assert payload["patch"]["round"] == [2**62]
        if tick == 5:
            assert payload["patch"]["round"] == 1


def test_list_collections_grow_shrink_and_resend_when_a_difference_is_too_big() -> None:
    schema = Schema((Collection("l", (Field("v", "int"),), keyed=False, tuples=True),))
    encoder, decoder = DeltaEncoder(schema), DeltaDecoder()
    lists = [[], [[1]], [[1], [2], [3]], [[1], [5]], [[1], [5]], [[2**62], [5]], [], [[0]]]
    for tick, value in enumerate(lists, start=1):
        payload = encoder.delta(tick, {"l": value})
        assert strict_equal(decoder.apply(via_msgpack(payload)), {"l": value})
        if tick == 4:
            assert payload["patch"]["l"] == {"n": 2, "c": [1, 1, 3]}
        if tick == 6:
            assert payload["patch"]["l"] == {"n": 0, "a": [2**62, 5]}


def test_the_arena_is_rebuilt_exactly_with_joins_and_leaves() -> None:
    game = Arena.create(11)
    rng = random.Random(5)
    encoder = DeltaEncoder(ARENA_SCHEMA, stream=1)
    decoder = DeltaDecoder()
    seated: list[str] = []
    for tick in range(1, 61):
        if rng.random() < 0.3 and len(seated) < 64:
            player = f"g_{rng.randrange(40):04x}"
            if player not in seated:
                game.join(player, f"p{tick}")
                seated.append(player)
        if seated and rng.random() < 0.15:
            game.leave(seated.pop(rng.randrange(len(seated))))
        inputs = []
        for player in seated:
            angle = rng.random() * 2 * math.pi
            inputs.append(
                (
                    player,
                    game.validate_input(player, {"dx": math.cos(angle), "dy": math.sin(angle)}),
                )
            )
        view = game.tick(inputs)
        got = decoder.apply(msgpack.unpackb(MSGPACK.encode(encoder.delta(tick, view))))
        # positions are rounded to 0.01 by the rules: the quantized view is the view itself
        assert strict_equal(got, dict(view)), tick


def test_arena_n200_schema_delta_is_within_18_bytes_per_player_per_update() -> None:
    game = BenchArena.create(3)
    players = [str(uuid.UUID(int=i + 1)) for i in range(200)]
    for index, player in enumerate(players):
        game.join(player, f"bot-{index}")
    rng = random.Random(9)
    encoder = DeltaEncoder(ARENA_SCHEMA)
    sizes = []
    for tick in range(1, 21):
        inputs = []
        for player in players:
            angle = rng.random() * 2 * math.pi
            inputs.append(
                (
                    player,
                    game.validate_input(player, {"dx": math.cos(angle), "dy": math.sin(angle)}),
                )
            )
        payload = encoder.delta(tick, game.tick(inputs))
        if tick > 1:
            sizes.append(len(MSGPACK.encode(payload)) / 200)
    assert max(sizes) <= 18, sizes


def test_schema_wire_form_round_trips_and_travels_in_keyframes_only() -> None:
    for schema in (SCHEMA, ARENA_SCHEMA):
        assert Schema.from_wire(orjson.loads(orjson.dumps(schema.to_wire()))) == schema
    encoder = DeltaEncoder(ARENA_SCHEMA)
    keyframe = encoder.delta(1, {"w": 64, "h": 32, "players": {}, "pickups": [[1.5, 2.25]]})
    assert keyframe["schema"] == ARENA_SCHEMA.to_wire()
    assert keyframe["view"] == {"w": 64, "h": 32, "players": [], "pickups": [150, 225]}
    assert "schema" not in encoder.delta(
        2, {"w": 64, "h": 32, "players": {}, "pickups": [[1.5, 2.25]]}
    )


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Field("x", "fixed"), "precision"),
        (lambda: Field("x", "fixed", 0.3), "1/k"),
        (lambda: Field("x", "fixed", 2.0), "precision"),
        (lambda: Field("x", "int", 0.01), "only 'fixed'"),
        (lambda: Field("x", "number"), "unknown kind"),
        (lambda: Field("", "int"), "name"),
        (lambda: Schema((Field("a", "int"), Field("a", "str"))), "unique"),
        (lambda: Collection("c", tuple(Field(f"f{i}", "int") for i in range(32))), "at most 31"),
        (lambda: Collection("c", (), keyed=False), "at least one field"),
    ],
)
def test_unusable_schemas_are_refused(make: Any, match: str) -> None:
    with pytest.raises(SchemaError, match=match):
        make()


@pytest.mark.parametrize(
    "change",
    [
        {"ents": {"a": {**_ent(), "x": math.nan}}},
        {"ents": {"a": {**_ent(), "x": math.inf}}},
        {"ents": {"a": {**_ent(), "x": 1e300}}},
        {"ents": {"a": {**_ent(), "x": "1"}}},
        {"ents": {"a": {**_ent(), "hp": 1.0}}},
        {"ents": {"a": {**_ent(), "hp": True}}},
        {"ents": {"a": {**_ent(), "hp": 2**63}}},
        {"ents": {"a": {**_ent(), "alive": 1}}},
        {"ents": {"a": {**_ent(), "speed": math.nan}}},
        {"ents": {"a": {**_ent(), "tags": [math.nan]}}},
        {"ents": {"a": {**_ent(), "extra": 1}}},
        {"ents": {"a": {k: v for k, v in _ent().items() if k != "hp"}}},
        {"ents": {"a": [1]}},
        {"ents": [_ent()]},
        {"cells": [[1.0]]},
        {"cells": {"a": [1.0, None]}},
        {"clock": math.nan},
        {"round": 0.5},
    ],
)
def test_views_that_do_not_match_the_schema_are_refused(change: dict[str, Any]) -> None:
    for ticks in (1, 2):  # in a keyframe, and in a delta
        encoder = DeltaEncoder(SCHEMA)
        if ticks == 2:
            encoder.delta(1, _view({"a": _ent()}))
        with pytest.raises(ViewError):
            encoder.delta(ticks, {**_view({"a": _ent()}), **change})
        assert "base" not in encoder.delta(5, _view({}))  # starts over with a keyframe
    with pytest.raises(ViewError):
        quantize_view(SCHEMA, {**_view({"a": _ent()}), **change})
    with pytest.raises(ViewError, match="lacks the declared field"):
        DeltaEncoder(SCHEMA).delta(1, {"round": 1})


@pytest.mark.parametrize(
    "patch",
    [
        {"ents": {"r": [7]}},
        {"ents": {"r": "0"}},
        {"ents": {"c": [0, 0]}},
        {"ents": {"c": [0, 1 << 8, 1]}},
        {"ents": {"c": [1, 2, 5]}},
        {"ents": {"c": [0, 2, 0.5]}},
        {"ents": {"c": [0, 1, 5]}},
        {"ents": {"c": [0, 2]}},
        {"ents": {"c": {}}},
        {"ents": {"a": [0, "b", *([0] * 8)]}},
        {"ents": {"a": [1, "a", *([0] * 8)]}},
        {"ents": {"a": [1, "b"]}},
        {"ents": []},
        {"round": 0.5},
        {"round": [0.5]},
        {"mode": 5},
        {"cells": {"n": 3}},
        {"cells": {"a": [1]}},
        {"set": {"a": [0]}},
    ],
)
def test_malformed_schema_deltas_raise_delta_error(patch: dict[str, Any]) -> None:
    encoder, decoder = DeltaEncoder(SCHEMA), DeltaDecoder()
    decoder.apply(via_msgpack(encoder.delta(1, _view({"a": _ent()}))))
    with pytest.raises(DeltaError):
        decoder.apply({"tick": 2, "base": 1, "patch": patch})
    assert decoder.tick is None


@pytest.mark.parametrize(
    "schema",
    [
        "no",
        [{"name": "a", "kind": "fixed", "scale": 0, "diff": True}],
        [{"name": "a", "kind": "fixed", "scale": 1.5, "diff": True}],
        [{"name": "a", "kind": "int"}],
        [{"name": "a", "kind": "wat"}],
        [{"name": "a", "kind": "map", "record": "obj", "fields": [{"name": "b", "kind": "map"}]}],
        [{"name": 5, "kind": "int", "diff": True}],
    ],
)
def test_keyframes_with_a_bad_schema_raise_delta_error(schema: Any) -> None:
    with pytest.raises(DeltaError):
        DeltaDecoder().apply({"tick": 1, "schema": schema, "view": {}})


def test_quantization_is_what_the_client_divides_back() -> None:
    schema = Schema((Field("v", "fixed", 0.01),))
    encoder, decoder = DeltaEncoder(schema), DeltaDecoder()
    for tick, value in enumerate([10.6, 0.005, 0.015, -0.0, 7, -12.345, 90071992547.4], start=1):
        payload = encoder.delta(tick, {"v": value})
        got = decoder.apply(via_json(payload))["v"]
        assert type(got) is float and got == round(value * 100) / 100
    with pytest.raises(ViewError):
        DeltaEncoder(schema).delta(1, {"v": SAFE_INT / 10})
