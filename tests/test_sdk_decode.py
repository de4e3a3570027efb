"""The SDK's lazy decoding of server frames (``client.sdk._decode_server_frame``).

On a msgpack connection a state message's ``state`` is only skipped over when the frame
arrives and decoded on first access to ``State.state``; everything else must behave as a
full decode: same values, any key order, and ProtocolError (never another exception) for
a malformed frame.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import pickle
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.sdk import State, _decode_server_frame, _make_state
from server.games.arena import Arena
from server.protocol import JSON, MSGPACK, ProtocolError, StateFrame

MODEST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# msgpack values that round-trip with the SDK's options (raw=False, lists for arrays).
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(st.text(max_size=10) | st.integers(-5, 5), inner, max_size=6)
    ),
    max_leaves=40,
)


def decode_state(frame: bytes, text: bool = False) -> State:
    message = _decode_server_frame(frame, text)
    assert message["t"] == "state"
    return _make_state(message, "server-a", 7)


def pack(message: Any) -> bytes:
    packed: bytes = msgpack.packb(message, use_bin_type=True)
    return packed


def arena_state(players: int) -> Any:
    arena = Arena.create(1)
    for index in range(players):
        arena.join(f"p{index}", f"bot-{index}")
    arena.tick([(f"p{index}", [0.6, -0.8]) for index in range(players)])
    return arena.tick([])


# -- equality with a full decode ------------------------------------------------------------


@MODEST
@given(state=values, tick=st.integers(0, 2**40), ack=st.integers(0, 2**40))
def test_lazy_state_equals_full_decode(state: Any, tick: int, ack: int) -> None:
    frame = StateFrame(tick, state).encode_for(MSGPACK, ack)
    full = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    got = decode_state(frame)
    was_decoded = got.decoded
    assert (got.tick, got.ack, got.server, got.epoch) == (tick, ack, "server-a", 7)
    assert got.state == full["state"]
    assert (was_decoded, got.decoded) == (False, True)
    assert got.state is got.state  # decoded once, cached
    assert got == State(tick, ack, full["state"], "server-a", 7)


@MODEST
@given(
    state=values,
    extra=st.dictionaries(st.sampled_from(["v", "x", "note", "7"]), values, max_size=3),
    order=st.permutations(["t", "tick", "state", "ack", "extra"]),
)
def test_any_key_order(state: Any, extra: dict[str, Any], order: list[str]) -> None:
    fields: dict[str, Any] = {"t": "state", "tick": 42, "state": state, "ack": 9}
    message: dict[str, Any] = {}
    for key in order:
        if key == "extra":
            message.update(extra)
        else:
            message[key] = fields[key]
    frame = pack(message)
    decoded = _decode_server_frame(frame, False)
    got = _make_state(decoded, "s", 1)
    assert (got.tick, got.ack) == (42, 9)
    assert got.state == msgpack.unpackb(frame, raw=False, strict_map_key=False)["state"]
    for key, value in extra.items():
        assert decoded[key] == value


@pytest.mark.parametrize("order", list(itertools.permutations(["t", "tick", "state", "ack"])))
def test_every_order_of_the_four_keys(order: tuple[str, ...]) -> None:
    state = arena_state(5)
    fields: dict[str, Any] = {"t": "state", "tick": 3, "state": state, "ack": 2}
    got = decode_state(pack({key: fields[key] for key in order}))
    assert (got.tick, got.ack, got.state) == (3, 2, state)


def test_realistic_arena_frame() -> None:
    state = arena_state(200)
    frame = StateFrame(1234, state).encode_for(MSGPACK, 567)
    got = decode_state(frame)
    assert (got.tick, got.ack) == (1234, 567)
    assert "not decoded" in repr(got)
    assert got.state == msgpack.unpackb(frame, raw=False, strict_map_key=False)["state"]
    assert got.state["players"]["p7"]["name"] == "bot-7"


def test_json_frames_decode_fully_into_the_same_type() -> None:
    state = arena_state(3)
    got = decode_state(StateFrame(5, state).encode_for(JSON, 4), text=True)
    assert got.decoded
    assert got == State(5, 4, orjson.loads(orjson.dumps(state)), "server-a", 7)


def test_non_state_messages_decode_fully() -> None:
    welcome = {"t": "welcome", "player_id": "p", "server": "s", "epoch": 3, "ack": 0}
    assert _decode_server_frame(pack(welcome), False) == welcome
    odd = {"state": {"a": [1, 2]}, "t": "error", "code": "x"}  # a "state" field elsewhere
    assert _decode_server_frame(pack(odd), False) == odd
    assert _decode_server_frame(pack({"t": "pong"}), False) == {"t": "pong"}


def test_state_is_immutable_and_keeps_its_constructor() -> None:
    state = State(1, 2, {"a": 1}, "s", 3)
    assert state.state == {"a": 1} and state.decoded
    assert state == State(tick=1, ack=2, state={"a": 1}, server="s", epoch=3)
    assert state != State(1, 2, {"a": 2}, "s", 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.tick = 5
    with pytest.raises(AttributeError):
        state.state = {}  # type: ignore[misc]
    lazy = decode_state(GOOD)
    assert copy.copy(lazy) == lazy and pickle.loads(pickle.dumps(lazy)) == lazy


# -- malformed frames ---------------------------------------------------------------------

GOOD = StateFrame(10, {"players": {"p": {"inputs": 3}}, "w": 100}).encode_for(MSGPACK, 3)


@pytest.mark.parametrize(
    "frame",
    [
        pack([1, 2, 3]),  # not a map
        pack("state"),
        pack(None),
        b"",
        b"\xc1",  # never used
        pack({"t": "state", "state": {}, "ack": 1}),  # no tick
        pack({"t": "state", "tick": 1, "state": {}}),  # no ack
        pack({"t": "state", "tick": 1, "ack": 1}),  # no state
        pack({"t": "state", "tick": "1", "state": {}, "ack": 1}),  # tick not an int
        pack({"t": "state", "tick": 1.0, "state": {}, "ack": 1}),
        pack({"t": "state", "tick": True, "state": {}, "ack": 1}),
        pack({"t": "state", "tick": 1, "state": {}, "ack": None}),  # ack not an int
        pack({"t": "state", "tick": 1, "state": {}, "ack": [1]}),
        GOOD + b"\x00",  # trailing bytes
        GOOD + GOOD,
        b"\x81\x91\x01\x01",  # {[1]: 1}: an unhashable key
        b"\x81\xa1t\xa2\xff\xfe",  # invalid UTF-8 in a decoded field
    ],
)
def test_malformed_frames_are_protocol_errors(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        _decode_server_frame(frame, False)


def test_every_truncation_is_a_protocol_error() -> None:
    frame = StateFrame(10, arena_state(3)).encode_for(MSGPACK, 3)
    for end in range(len(frame)):
        with pytest.raises(ProtocolError):
            _decode_server_frame(frame[:end], False)


def test_text_frame_on_a_msgpack_connection() -> None:
    with pytest.raises(ProtocolError):
        _decode_server_frame('{"t":"pong"}', False)


def test_bad_state_content_fails_on_access_as_protocol_error() -> None:
    # skip() checks the structure only; what needs a full decode fails on first access.
    frame = b"\x84\xa1t\xa5state\xa4tick\x01\xa5state\xa2\xff\xfe\xa3ack\x01"
    got = decode_state(frame)
    with pytest.raises(ProtocolError):
        _ = got.state


@MODEST
@given(data=st.binary(max_size=64))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    try:
        message = _decode_server_frame(data, False)
    except ProtocolError:
        return
    assert isinstance(message, dict)
    if message.get("t") == "state":
        try:
            _ = _make_state(message, "s", 1).state
        except ProtocolError:
            pass


@MODEST
@given(state=values, cut=st.integers(0, 2**16), junk=st.binary(min_size=1, max_size=8))
def test_mangled_state_frames_never_raise_anything_else(state: Any, cut: int, junk: bytes) -> None:
    frame = StateFrame(1, state).encode_for(MSGPACK, 1)
    for bad in (frame[: cut % len(frame)], frame + junk, junk + frame):
        try:
            message = _decode_server_frame(bad, False)
        except ProtocolError:
            continue
        if message.get("t") == "state":
            try:
                _ = _make_state(message, "s", 1).state
            except ProtocolError:
                pass


def test_json_malformed_frames_are_protocol_errors() -> None:
    for frame in (b"[1]", b"{", b'{"t":"state","tick":1,"state":{}}', b'{"t":"state","ack":1}'):
        with pytest.raises(ProtocolError):
            _decode_server_frame(frame, True)
