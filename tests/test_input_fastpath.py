"""The input fast path (``parse_input``) against the generic decode + parse.

It must accept exactly inputs the generic path turns into the same InputMessage and
return None for everything else (the generic path then gives the documented error),
whatever the bytes: valid inputs, near-misses (wrong seq, extra keys, deep data,
out-of-range numbers, huge frames) and mutated frames.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.protocol import JSON, MSGPACK, Codec, InputMessage, ProtocolError, parse_input
from server.protocol import parse_client_message as parse
from server.protocol.codec import INT_MAX, INT_MIN, MAX_ARRAY_LEN, MAX_MAP_LEN, MAX_STR_LEN
from server.protocol.messages import MAX_SEQ, pack_uint

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CODECS = (MSGPACK, JSON)


def generic(codec: Codec, frame: bytes | str) -> object:
    """What the endpoint's generic path makes of a frame: a message or the error code."""
    try:
        return parse(codec.decode(frame))
    except ProtocolError as exc:
        return exc.code


def encode(codec: Codec, value: Any) -> bytes:
    return orjson.dumps(value) if codec.text else msgpack.packb(value, use_bin_type=True)


def agrees(codec: Codec, frame: bytes | str) -> InputMessage | None:
    fast = parse_input(codec, frame)
    if fast is not None:
        assert generic(codec, frame) == fast
    return fast


numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=INT_MIN, max_value=INT_MAX),
)
anything = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**64), max_value=2**64 - 1),
        st.floats(),
        st.text(max_size=8),
        st.binary(max_size=4),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.subprotocol)
def test_the_common_input_takes_the_fast_path(codec: Codec) -> None:
    frame = encode(codec, {"t": "input", "seq": 7, "data": {"dx": 0.5, "dy": -1}})
    assert agrees(codec, frame) == InputMessage(7, {"dx": 0.5, "dy": -1})
    for data in (None, 3, "left", [1.5, 2], {}, [], True):
        assert agrees(codec, encode(codec, {"t": "input", "seq": 1, "data": data})) is not None


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.subprotocol)
@pytest.mark.parametrize(
    "message",
    [
        {"t": "input", "seq": 0, "data": {}},
        {"t": "input", "seq": MAX_SEQ + 1, "data": {}},
        {"t": "input", "seq": True, "data": {}},
        {"t": "input", "seq": 1.0, "data": {}},
        {"t": "input", "seq": 1},
        {"t": "input", "seq": 1, "data": {}, "extra": 1},
        {"t": "ping", "id": 1, "data": 1},
        {"t": "input", "seq": 1, "data": {"deep": {"x": 1}}},
        {"t": "input", "seq": 1, "data": {"k" * 65: 1}},
        {"t": "input", "seq": 1, "data": {str(i): i for i in range(MAX_MAP_LEN + 1)}},
        {"t": "input", "seq": 1, "data": list(range(MAX_ARRAY_LEN + 1))},
        {"t": "input", "seq": 1, "data": "s" * (MAX_STR_LEN + 1)},
        ["t", "input"],
    ],
)
def test_near_misses_go_to_the_generic_path(codec: Codec, message: Any) -> None:
    assert parse_input(codec, encode(codec, message)) is None


def test_what_only_one_codec_can_carry_goes_to_the_generic_path() -> None:
    for data in (math.inf, math.nan, 2**63, 2**64 - 1, b"raw", msgpack.ExtType(1, b"x")):
        frame = msgpack.packb({"t": "input", "seq": 1, "data": {"v": data}}, use_bin_type=True)
        assert parse_input(MSGPACK, frame) is None
        assert generic(MSGPACK, frame) != InputMessage(1, {"v": data})
    text = b'{"t":"input","seq":1,"data":{"v":1e999}}'
    assert parse_input(JSON, text) is None
    assert parse_input(MSGPACK, text.decode()) is None  # a text frame on a binary codec
    good = msgpack.packb({"t": "input", "seq": 1, "data": 1})
    assert parse_input(MSGPACK, good + b"\x00") is None  # trailing bytes
    assert parse_input(MSGPACK, good + b" " * 20000) is None  # over MAX_MESSAGE_BYTES


@FAST
@given(seq=st.integers(-5, MAX_SEQ + 5), data=anything, codec=st.sampled_from(CODECS))
def test_any_input_shape_agrees_with_the_generic_path(seq: int, data: Any, codec: Codec) -> None:
    try:
        frame = encode(codec, {"t": "input", "seq": seq, "data": data})
    except (TypeError, ValueError, OverflowError, orjson.JSONEncodeError):
        return  # not representable in this codec
    agrees(codec, frame)


@FAST
@given(
    data=st.dictionaries(st.text(max_size=8), numbers, max_size=6),
    cut=st.integers(0, 60),
    flip=st.integers(0, 255),
    codec=st.sampled_from(CODECS),
)
def test_mutated_frames_agree_with_the_generic_path(
    data: dict[str, Any], cut: int, flip: int, codec: Codec
) -> None:
    frame = bytearray(encode(codec, {"t": "input", "seq": 3, "data": data}))
    if frame:
        frame[cut % len(frame)] ^= flip
    agrees(codec, bytes(frame))
    agrees(codec, bytes(frame[: cut % (len(frame) + 1)]))


@FAST
@given(st.one_of(st.integers(-(2**63), 2**64 - 1), st.integers(-40, 70000)))
def test_pack_uint_is_what_msgpack_packs(value: int) -> None:
    """The state frame's ack: the same bytes as msgpack, so nothing on the wire changes."""
    assert pack_uint(value) == msgpack.packb(value)
