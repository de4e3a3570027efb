"""Property tests of both codecs: round-trips of valid messages, and nothing but
DecodeError out of arbitrary or mutated bytes."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import orjson
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from server.protocol import JSON, MSGPACK, DecodeError, ProtocolError, StateFrame
from server.protocol import parse_client_message as parse
from server.protocol.codec import (
    INT_MAX,
    INT_MIN,
    MAX_ARRAY_LEN,
    MAX_DEPTH,
    MAX_MAP_LEN,
    MAX_MESSAGE_BYTES,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CODECS = (MSGPACK, JSON)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=INT_MIN, max_value=INT_MAX),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
keys = st.text(max_size=64)


def values(depth: int) -> st.SearchStrategy[Any]:
    """Values that may sit ``depth`` levels below the top-level map (the top is depth 0)."""
    if depth >= MAX_DEPTH:
        return scalars
    inner = values(depth + 1)
    return st.one_of(
        scalars,
        st.lists(inner, max_size=6),
        st.dictionaries(keys, inner, max_size=6),
    )


# Shallow containers most of the time, with every depth reachable.
messages = st.dictionaries(keys, values(1), max_size=8)
wide = st.fixed_dictionaries(
    {
        "a": st.lists(st.integers(-5, 5), max_size=MAX_ARRAY_LEN),
        "m": st.dictionaries(
            st.text(max_size=3), st.integers(INT_MIN, INT_MAX), max_size=MAX_MAP_LEN
        ),
    }
)


def same(left: Any, right: Any) -> bool:
    """Equality that tells 1, 1.0 and True apart and checks the sign of zero."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return list(left) == list(right) and all(same(left[k], right[k]) for k in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(map(same, left, right))
    if isinstance(left, float):
        return left == right and math.copysign(1, left) == math.copysign(1, right)
    return bool(left == right)


@FAST
@given(st.one_of(messages, wide))
def test_both_codecs_round_trip_and_agree(message: dict[str, Any]) -> None:
    decoded = []
    for codec in CODECS:
        encoded = codec.encode(message)
        assume(len(encoded) <= MAX_MESSAGE_BYTES)
        decoded.append(codec.decode(encoded))
        assert same(decoded[-1], message)
    assert same(decoded[0], decoded[1])


@FAST
@given(st.one_of(messages, wide))
def test_parse_never_raises_anything_but_protocol_error(message: dict[str, Any]) -> None:
    for kind in ("join", "input", "leave", "ping", "other"):
        try:
            parse({**message, "t": kind})
        except ProtocolError as error:
            assert error.message


@FAST
@given(tick=st.integers(0, INT_MAX), state=messages, acks=st.lists(st.integers(0, 2**53 - 1)))
def test_state_frames_for_any_state_and_acks(tick: int, state: Any, acks: list[int]) -> None:
    frame = StateFrame(tick, state)
    for codec in CODECS:
        frames = [frame.encode_for(codec, ack) for ack in [0, *acks]]
        for ack, encoded in zip([0, *acks], frames, strict=True):
            decoded = orjson.loads(encoded) if codec.text else msgpack.unpackb(encoded)
            assert same(decoded, {"t": "state", "tick": tick, "state": state, "ack": ack})
        reference = codec.encode({"t": "state", "tick": tick, "state": state, "ack": 0})
        prefix = reference[:-2] if codec.text else reference[:-1]  # all but ack 0
        assert all(encoded.startswith(prefix) for encoded in frames)


def only_decode_error(data: bytes | str) -> None:
    for codec in CODECS:
        try:
            decoded = codec.decode(data)
        except DecodeError as error:
            assert error.message
        else:
            assert isinstance(decoded, dict)
            try:
                parse(decoded)
            except ProtocolError:
                pass


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    only_decode_error(data)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=64))
def test_arbitrary_text_raises_only_decode_error(data: str) -> None:
    only_decode_error(data)


@FAST
@given(
    message=messages,
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1),
    cut=st.integers(0, 10_000),
)
def test_mutated_valid_frames_raise_only_decode_error(
    message: dict[str, Any], flips: list[tuple[int, int]], cut: int
) -> None:
    for codec in CODECS:
        data = bytearray(codec.encode(message))
        for position, byte in flips:
            data[position % len(data)] = byte
        only_decode_error(bytes(data))
        only_decode_error(bytes(data[: cut % (len(data) + 1)]))


@FAST
@given(
    header=st.sampled_from(
        [b"\xdc", b"\xdd", b"\xde", b"\xdf", b"\xda", b"\xdb", b"\xc5", b"\xc6"]
    ),
    length=st.integers(0, 2**32 - 1),
    body=st.binary(max_size=32),
)
def test_declared_lengths_never_allocate_or_escape(header: bytes, length: int, body: bytes) -> None:
    """array/map/str/bin 16 and 32 headers declaring up to 2**32-1 elements, inside a map."""
    size = 2 if header in (b"\xdc", b"\xde", b"\xda", b"\xc5") else 4
    declared = (length % (1 << (8 * size))).to_bytes(size, "big")
    only_decode_error(b"\x81\xa1x" + header + declared + body)
    only_decode_error(header + declared + body)
