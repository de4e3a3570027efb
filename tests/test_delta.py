"""Delta sync, generic layer (server/protocol/delta.py, docs/delta-format.md).

Properties, for random sequences of random views: keyframe + deltas give exactly the view
at every tick (types included: 1, 1.0 and True differ, so do 0.0 and -0.0), through
msgpack and through JSON alike; a decoder that misses a delta refuses the next and takes a
keyframe; a keyframe can be taken at any tick and decoding goes on from it.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.protocol import JSON, MSGPACK, ProtocolError
from server.protocol.delta import (
    SAFE_INT,
    DeltaBaseMismatch,
    DeltaDecoder,
    DeltaEncoder,
    DeltaError,
    ViewError,
)

# STATEROOM_DELTA_EXAMPLES=2000 for a longer soak than the suite's ~10 s.
FAST = settings(
    max_examples=int(os.environ.get("STATEROOM_DELTA_EXAMPLES", 40)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Keys that collide with the format's own markers, so a patch that confused the two breaks.
KEYS = st.sampled_from(["s", "r", "p", "tick", "base", "view", "patch", "stream", "rest", "", "k"])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.sampled_from([0, 1, -1, 2**53, -(2**63), 2**63 - 1])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0.0, -0.0, 1.0, 1e308, 5e-324])
    | st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=20,
)
VIEWS = st.dictionaries(KEYS, VALUES, max_size=6)


def strict_equal(a: Any, b: Any) -> bool:
    """Equality that tells 1 / 1.0 / True and 0.0 / -0.0 apart (written independently of
    the module's own comparison)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(strict_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(strict_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def via_msgpack(payload: dict[str, Any]) -> Any:
    return msgpack.unpackb(MSGPACK.encode(payload), raw=False)


def via_json(payload: dict[str, Any]) -> Any:
    return orjson.loads(JSON.encode(payload))


@st.composite
def mutated(draw: st.DrawFn, value: Any, depth: int = 0) -> Any:
    """A random edit of ``value``: keep, replace, or (maps) drop / add / edit some keys."""
    choice = draw(st.integers(0, 9))
    if choice < 3:
        return value
    if choice < 5 or depth > 3:
        return draw(VALUES)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if draw(st.integers(0, 5)):
                out[key] = draw(mutated(item, depth + 1))
        for key in draw(st.lists(KEYS, max_size=2)):
            out[key] = draw(VALUES)
        return out
    if isinstance(value, list) and value:
        index = draw(st.integers(0, len(value) - 1))
        return [*value[:index], draw(mutated(value[index], depth + 1)), *value[index + 1 :]]
    return draw(VALUES)


@st.composite
def view_sequences(draw: st.DrawFn) -> list[dict[str, Any]]:
    views = [draw(VIEWS)]
    for _ in range(draw(st.integers(1, 7))):
        nxt = draw(mutated(views[-1]))
        views.append(nxt if isinstance(nxt, dict) else {"v": nxt})
    return views


@FAST
@given(view_sequences())
def test_keyframe_then_deltas_give_every_view_exactly_in_both_encodings(
    views: list[dict[str, Any]],
) -> None:
    encoder = DeltaEncoder()
    by_msgpack, by_json = DeltaDecoder(), DeltaDecoder()
    for tick, view in enumerate(views, start=1):
        payload = encoder.delta(tick, view)
        assert ("base" in payload) == (tick > 1)
        got_m = by_msgpack.apply(via_msgpack(payload))
        got_j = by_json.apply(via_json(payload))
        assert strict_equal(got_m, view)
        assert strict_equal(got_j, view)
        assert by_msgpack.tick == by_json.tick == tick


@FAST
@given(view_sequences(), st.data())
def test_a_keyframe_at_any_tick_resumes_and_a_missed_delta_is_refused(
    views: list[dict[str, Any]], data: st.DataObject
) -> None:
    encoder = DeltaEncoder(stream=7)
    payloads = []
    keyframes = []
    for tick, view in enumerate(views, start=1):
        payloads.append(via_msgpack(encoder.delta(tick, view)))
        keyframes.append(via_msgpack(encoder.current_keyframe()))
    # A client that joins at any tick (keyframe of that tick) follows the shared deltas.
    start = data.draw(st.integers(0, len(views) - 1))
    late = DeltaDecoder()
    late.apply(keyframes[start])
    for index in range(start + 1, len(views)):
        assert strict_equal(late.apply(payloads[index]), views[index])
    # A client that misses one delta refuses the next one, unchanged, then resumes.
    if len(views) >= 3:
        missed = data.draw(st.integers(1, len(views) - 2))
        client = DeltaDecoder()
        for index in range(missed):
            client.apply(payloads[index])
        held = copy.deepcopy(client.view)
        with pytest.raises(DeltaBaseMismatch) as refused:
            client.apply(payloads[missed + 1])
        assert refused.value.base == missed + 1 and refused.value.held == missed
        assert isinstance(refused.value, ProtocolError)
        assert client.tick == missed and strict_equal(client.view, held)
        client.apply(keyframes[missed + 1])
        for index in range(missed + 2, len(views)):
            assert strict_equal(client.apply(payloads[index]), views[index])


@FAST
@given(view_sequences())
def test_views_handed_out_are_never_changed_later(views: list[dict[str, Any]]) -> None:
    encoder, decoder = DeltaEncoder(), DeltaDecoder()
    seen = []
    for tick, view in enumerate(views, start=1):
        got = decoder.apply(via_msgpack(encoder.delta(tick, view)))
        seen.append((got, copy.deepcopy(got)))
    for got, frozen in seen:
        assert strict_equal(got, frozen)


def test_a_game_that_mutates_its_view_in_place_still_gets_correct_deltas() -> None:
    view: dict[str, Any] = {"players": {"a": {"x": 1.0, "tags": [1]}}, "n": 0}
    encoder, decoder = DeltaEncoder(), DeltaDecoder()
    for tick in range(1, 6):
        view["n"] += 1
        view["players"]["a"]["x"] += 0.5
        view["players"]["a"]["tags"].append(tick)
        if tick == 3:
            view["players"]["b"] = {"x": 0.0, "tags": []}
        assert strict_equal(decoder.apply(via_json(encoder.delta(tick, view))), view)


def test_type_changes_are_sent_even_when_python_calls_the_values_equal() -> None:
    encoder, decoder = DeltaEncoder(), DeltaDecoder()
    values: list[Any] = [1, 1.0, True, 1, 0.0, -0.0, 0, False, None, [], {}, "", [1], (1,)]
    for tick, value in enumerate(values, start=1):
        view = {"v": value}
        got = decoder.apply(via_msgpack(encoder.delta(tick, view)))
        expected = {"v": list(value) if isinstance(value, tuple) else value}
        assert strict_equal(got, expected), (tick, value, got)
    # a tuple equals the list it replaces: nothing to send
    assert encoder.delta(len(values) + 1, {"v": [1]}) == {"tick": len(values) + 1, "base": 14}


def test_unchanged_views_give_empty_deltas_and_keys_like_markers_are_data() -> None:
    encoder, decoder = DeltaEncoder(), DeltaDecoder()
    view = {"s": {"r": ["p"]}, "p": {"s": {}}, "r": [], "tick": 5, "base": None}
    decoder.apply(encoder.delta(1, view))
    empty = encoder.delta(2, copy.deepcopy(view))
    assert empty == {"tick": 2, "base": 1}
    assert decoder.apply(empty) is decoder.view
    nxt = {"s": {"r": ["p", "s"]}, "p": {}, "tick": 6, "base": {"s": 1}}
    payload = encoder.delta(3, nxt)
    assert payload["patch"]["r"] == ["r"]
    assert strict_equal(decoder.apply(via_json(payload)), nxt)


def test_empty_maps_nested_maps_and_removals() -> None:
    encoder, decoder = DeltaEncoder(), DeltaDecoder()
    views: list[dict[str, Any]] = [
        {},
        {"a": {}},
        {"a": {"b": {}}},
        {"a": {"b": {"c": 1}}},
        {"a": {"b": {}}},
        {"a": 1},
        {"a": {"b": {}}},
        {},
    ]
    for tick, view in enumerate(views, start=1):
        assert strict_equal(decoder.apply(via_msgpack(encoder.delta(tick, view))), view)


def test_views_that_are_not_maps_are_replaced_whole() -> None:
    encoder, decoder = DeltaEncoder(), DeltaDecoder()
    for tick, view in enumerate([[1, 2], {"a": 1}, "text", None, {"a": 1}, {"a": 2}], start=1):
        assert strict_equal(decoder.apply(via_json(encoder.delta(tick, view))), view)


def test_big_ints_round_trip_exactly_as_ints_in_both_encodings() -> None:
    encoder = DeltaEncoder()
    by_msgpack, by_json = DeltaDecoder(), DeltaDecoder()
    values = [2**63 - 1, -(2**63), 2**53 + 1, 2**32, -(2**32) - 1, 0]
    for tick, value in enumerate(values, start=1):
        payload = encoder.delta(tick, {"big": value, "list": [value]})
        for decoder, via in ((by_msgpack, via_msgpack), (by_json, via_json)):
            got = decoder.apply(via(payload))
            assert type(got["big"]) is int and got["big"] == value
            assert type(got["list"][0]) is int and got["list"][0] == value


@pytest.mark.parametrize(
    "bad",
    [
        {"x": math.nan},
        {"x": [1.0, math.inf]},
        {"x": {"y": -math.inf}},
        {"x": 2**63},
        {"x": -(2**63) - 1},
        {"x": {1: "non-string key"}},
        {"x": b"bytes"},
        {"x": {1.5}},
    ],
)
def test_views_outside_the_value_model_are_refused_and_the_stream_restarts(
    bad: dict[str, Any],
) -> None:
    encoder = DeltaEncoder()
    encoder.delta(1, {"x": 0})
    with pytest.raises(ViewError):
        encoder.delta(2, bad)
    # nothing was sent for tick 2; the encoder starts over with a keyframe
    assert "base" not in encoder.delta(3, {"x": 1})
    with pytest.raises(ViewError):
        DeltaEncoder().keyframe(1, bad)


def test_deep_views_are_refused_not_crashed() -> None:
    deep: Any = 0
    for _ in range(40):
        deep = {"d": deep}
    with pytest.raises(ViewError):
        DeltaEncoder().delta(1, deep)


def test_ticks_must_grow_and_keyframes_need_an_encoded_tick() -> None:
    encoder = DeltaEncoder()
    with pytest.raises(ValueError, match="nothing encoded"):
        encoder.current_keyframe()
    encoder.delta(5, {})
    for bad in (5, 4, -1, 2**53, 1.5, True):
        with pytest.raises(ValueError):
            encoder.delta(bad, {})  # type: ignore[arg-type]
    assert encoder.current_keyframe() == {"tick": 5, "view": {}}
    assert encoder.keyframe(6, {"a": 1}) == {"tick": 6, "view": {"a": 1}}
    assert encoder.delta(7, {"a": 1}) == {"tick": 7, "base": 6}


def test_a_delta_of_another_stream_is_refused() -> None:
    old, new = DeltaEncoder(stream=1), DeltaEncoder(stream=2)
    decoder = DeltaDecoder()
    decoder.apply(old.delta(10, {"a": 1}))
    new.delta(10, {"a": 5})
    with pytest.raises(DeltaBaseMismatch, match="another stream"):
        decoder.apply(new.delta(11, {"a": 6}))
    assert decoder.view == {"a": 1}
    decoder.apply(new.current_keyframe())
    assert decoder.apply(new.delta(12, {"a": 7})) == {"a": 7}
    assert decoder.stream == 2


def test_a_decoder_without_a_view_refuses_deltas() -> None:
    with pytest.raises(DeltaBaseMismatch):
        DeltaDecoder().apply({"tick": 2, "base": 1, "patch": {"s": {"a": 1}}})


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"tick": "1", "view": {}},
        {"tick": -1, "view": {}},
        {"tick": 2**53, "view": {}},
        {"tick": 3},
        {"tick": 2, "base": 1, "patch": {"r": ["missing"]}},
        {"tick": 2, "base": 1, "patch": {"p": {"a": {"s": {}}}}},
        {"tick": 2, "base": 1, "patch": {"p": {"missing": {"s": {}}}}},
        {"tick": 2, "base": 1, "patch": {"s": [1]}},
        {"tick": 2, "base": 1, "patch": {"r": "a"}},
        {"tick": 2, "base": 1, "patch": {"p": []}},
        {"tick": 2, "base": 1, "patch": 5},
        {"tick": 1, "base": 1, "patch": {}},
    ],
)
def test_malformed_payloads_raise_delta_error_and_need_a_keyframe(payload: Any) -> None:
    decoder = DeltaDecoder()
    decoder.apply({"tick": 1, "view": {"a": 1, "m": {}}})
    with pytest.raises(DeltaError):
        decoder.apply(payload)
    if isinstance(payload, dict) and payload.get("tick") == 2:
        assert decoder.tick is None  # half-applied? no: empty, and refuses deltas until a keyframe
        with pytest.raises(DeltaBaseMismatch):
            decoder.apply({"tick": 3, "base": 2})


def test_the_format_adds_only_javascript_safe_ints() -> None:
    encoder = DeltaEncoder(stream=SAFE_INT)
    payload = encoder.delta(SAFE_INT - 1, {"a": 1})
    payload = encoder.delta(SAFE_INT, {"a": 2})
    assert payload == {
        "tick": SAFE_INT,
        "base": SAFE_INT - 1,
        "stream": SAFE_INT,
        "patch": {"s": {"a": 2}},
    }
    assert via_json(payload) == payload
    for bad in (-1, 2**53, True, 1.5):
        with pytest.raises(ValueError):
            DeltaEncoder(stream=bad)  # type: ignore[arg-type]
