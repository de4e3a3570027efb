"""The wire protocol: message parsing, server messages, state frames, every malformed input.

Property tests of the codecs (round-trips, arbitrary bytes) are in test_codec_fuzz.py.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import orjson
import pytest

from server.protocol import (
    DEFAULT_SUBPROTOCOL,
    JSON,
    JSON_V2,
    MSGPACK,
    MSGPACK_V2,
    PROTOCOL_VERSION,
    SUBPROTOCOLS,
    AuthMessage,
    CloseCode,
    Codec,
    DecodeError,
    ErrorCode,
    InputMessage,
    JoinMessage,
    LeaveMessage,
    PingMessage,
    ProtocolError,
    StateFrame,
    StateFrameV2,
    SyncMessage,
    authed_message,
    close_reason,
    codec_for_subprotocol,
    error_message,
    parse_client_message,
    pong_message,
    redirect_message,
    welcome_message,
)
from server.protocol.codec import (
    INT_MAX,
    INT_MIN,
    MAX_ARRAY_LEN,
    MAX_DEPTH,
    MAX_MAP_LEN,
    MAX_MESSAGE_BYTES,
    MAX_STR_LEN,
)
from server.protocol.messages import MAX_SEQ

CODECS = [MSGPACK, JSON]
codecs = pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)


def nested(depth: int, leaf: Any = 0) -> dict[str, Any]:
    """A message whose deepest value sits ``depth`` levels below the top-level map."""
    value: Any = leaf
    for _ in range(depth - 1):
        value = {"a": value}
    return {"t": "x", "a": value}


# -- subprotocols and codes ------------------------------------------------------------


def test_subprotocols() -> None:
    assert SUBPROTOCOLS == (
        "stateroom.v2.msgpack",
        "stateroom.v2.json",
        "stateroom.v1.msgpack",
        "stateroom.v1.json",
    )
    assert DEFAULT_SUBPROTOCOL == "stateroom.v1.msgpack"  # no offer: today's clients
    assert codec_for_subprotocol(None) is MSGPACK
    assert codec_for_subprotocol("stateroom.v1.msgpack") is MSGPACK
    assert codec_for_subprotocol("stateroom.v1.json") is JSON
    assert codec_for_subprotocol("stateroom.v2.msgpack") is MSGPACK_V2
    assert codec_for_subprotocol("stateroom.v2.json") is JSON_V2
    assert (MSGPACK.text, JSON.text, MSGPACK_V2.text, JSON_V2.text) == (False, True, False, True)
    assert (MSGPACK.version, JSON.version, MSGPACK_V2.version, JSON_V2.version) == (1, 1, 2, 2)
    assert PROTOCOL_VERSION == 1


def test_close_codes_are_application_codes_and_say_whether_to_retry() -> None:
    for code in CloseCode:
        assert 4000 <= code <= 4999
    assert int(CloseCode.RECONNECT) == 4020 and CloseCode.RECONNECT.retry
    assert int(CloseCode.REDIRECT) == 4021 and CloseCode.REDIRECT.retry
    assert CloseCode.INTERNAL_ERROR.retry
    assert CloseCode.SLOW_CONSUMER.retry  # a client that fell behind may resume its seat
    for code in (
        CloseCode.PROTOCOL_ERROR,
        CloseCode.UNAUTHORIZED,
        CloseCode.REPLACED,
        CloseCode.QUOTA_EXCEEDED,
    ):
        assert not code.retry
    assert len({int(code) for code in CloseCode}) == len(CloseCode)


def test_error_codes_are_unique_snake_case_strings() -> None:
    values = [str(code) for code in ErrorCode]
    assert len(set(values)) == len(values)
    assert all(value.replace("_", "").isalpha() and value.islower() for value in values)


def test_decode_error_is_a_protocol_error_with_invalid_message() -> None:
    error = DecodeError("bad")
    assert isinstance(error, ProtocolError)
    assert error.code is ErrorCode.INVALID_MESSAGE and error.message == "bad"


# -- client messages ----------------------------------------------------------------------


def test_parse_join_minimal_and_full() -> None:
    assert parse_client_message({"t": "join", "room": "lobby"}) == JoinMessage(
        room="lobby", game=None, token=None, version=1
    )
    full = {"t": "join", "v": 1, "room": "A-z_0.9", "game": "arena", "token": "ey.x.y"}
    assert parse_client_message(full) == JoinMessage("A-z_0.9", "arena", "ey.x.y", 1)
    long_name = parse_client_message({"t": "join", "room": "r" * 64, "extra": 1})
    assert isinstance(long_name, JoinMessage) and long_name.room == "r" * 64


def test_parse_input_leave_ping() -> None:
    assert parse_client_message({"t": "input", "seq": 1, "data": {"dx": 1, "dy": 0}}) == (
        InputMessage(seq=1, data={"dx": 1, "dy": 0})
    )
    assert parse_client_message({"t": "input", "seq": MAX_SEQ, "data": None}) == InputMessage(
        MAX_SEQ, None
    )
    assert parse_client_message({"t": "leave"}) == LeaveMessage()
    assert parse_client_message({"t": "ping", "id": 0}) == PingMessage(0)
    assert parse_client_message({"t": "ping", "id": MAX_SEQ}) == PingMessage(MAX_SEQ)
    assert MAX_SEQ == 2**53 - 1


@pytest.mark.parametrize(
    ("message", "code", "words"),
    [
        ({}, ErrorCode.UNKNOWN_TYPE, "unknown message type"),
        ({"t": "nope"}, ErrorCode.UNKNOWN_TYPE, "'nope'"),
        ({"t": 1}, ErrorCode.UNKNOWN_TYPE, "unknown"),
        ({"t": "state"}, ErrorCode.UNKNOWN_TYPE, "unknown"),  # a server message
        ({"t": "JOIN", "room": "r"}, ErrorCode.UNKNOWN_TYPE, "unknown"),
        # join
        ({"t": "join"}, ErrorCode.INVALID_MESSAGE, "'room'"),
        ({"t": "join", "room": ""}, ErrorCode.INVALID_ROOM, "'room'"),
        ({"t": "join", "room": "r" * 65}, ErrorCode.INVALID_ROOM, "1-64"),
        ({"t": "join", "room": "a b"}, ErrorCode.INVALID_ROOM, "'room'"),
        ({"t": "join", "room": "a/b"}, ErrorCode.INVALID_ROOM, "'room'"),
        ({"t": "join", "room": "é"}, ErrorCode.INVALID_ROOM, "'room'"),
        ({"t": "join", "room": "a\n"}, ErrorCode.INVALID_ROOM, "'room'"),
        ({"t": "join", "room": 5}, ErrorCode.INVALID_MESSAGE, "'room'"),
        ({"t": "join", "room": ["r"]}, ErrorCode.INVALID_MESSAGE, "'room'"),
        ({"t": "join", "room": "r", "v": 3}, ErrorCode.UNSUPPORTED_VERSION, "speaks 1 and 2"),
        (
            {"t": "join", "room": "r", "v": 2, "options": [1]},
            ErrorCode.INVALID_MESSAGE,
            "'options'",
        ),
        ({"t": "join", "room": "r", "v": 2, "since": -1}, ErrorCode.INVALID_MESSAGE, "'since'"),
        ({"t": "join", "room": "r", "v": 2, "since": 1.0}, ErrorCode.INVALID_MESSAGE, "'since'"),
        ({"t": "join", "room": "r", "v": 0}, ErrorCode.UNSUPPORTED_VERSION, "version"),
        ({"t": "join", "room": "r", "v": "1"}, ErrorCode.INVALID_MESSAGE, "'v'"),
        ({"t": "join", "room": "r", "v": None}, ErrorCode.INVALID_MESSAGE, "'v'"),
        ({"t": "join", "room": "r", "v": True}, ErrorCode.INVALID_MESSAGE, "'v'"),
        ({"t": "join", "room": "r", "v": 1.0}, ErrorCode.INVALID_MESSAGE, "'v'"),
        ({"t": "join", "room": "r", "game": 1}, ErrorCode.INVALID_MESSAGE, "'game'"),
        ({"t": "join", "room": "r", "game": "Arena"}, ErrorCode.UNKNOWN_GAME, "'game'"),
        ({"t": "join", "room": "r", "game": ""}, ErrorCode.UNKNOWN_GAME, "'game'"),
        ({"t": "join", "room": "r", "game": "g" * 33}, ErrorCode.UNKNOWN_GAME, "1-32"),
        ({"t": "join", "room": "r", "token": 1}, ErrorCode.INVALID_MESSAGE, "'token'"),
        ({"t": "join", "room": "r", "token": {}}, ErrorCode.INVALID_MESSAGE, "'token'"),
        ({"t": "join", "room": "r", "v": "x" * 5000}, ErrorCode.INVALID_MESSAGE, "'v'"),
        # auth (a fresh token on an open session)
        ({"t": "auth"}, ErrorCode.INVALID_MESSAGE, "'token'"),
        ({"t": "auth", "token": ""}, ErrorCode.INVALID_MESSAGE, "'token'"),
        ({"t": "auth", "token": 5}, ErrorCode.INVALID_MESSAGE, "'token'"),
        # input
        ({"t": "input", "seq": 1}, ErrorCode.INVALID_MESSAGE, "'data'"),
        ({"t": "input", "data": {}}, ErrorCode.INVALID_MESSAGE, "'seq'"),
        ({"t": "input", "seq": 0, "data": {}}, ErrorCode.INVALID_MESSAGE, "'seq'"),
        ({"t": "input", "seq": -1, "data": {}}, ErrorCode.INVALID_MESSAGE, "'seq'"),
        ({"t": "input", "seq": MAX_SEQ + 1, "data": {}}, ErrorCode.INVALID_MESSAGE, "'seq'"),
        ({"t": "input", "seq": 1.0, "data": {}}, ErrorCode.INVALID_MESSAGE, "'seq'"),
        ({"t": "input", "seq": True, "data": {}}, ErrorCode.INVALID_MESSAGE, "'seq'"),
        ({"t": "input", "seq": "1", "data": {}}, ErrorCode.INVALID_MESSAGE, "'seq'"),
        ({"t": "input", "seq": None, "data": {}}, ErrorCode.INVALID_MESSAGE, "'seq'"),
        # ping
        ({"t": "ping"}, ErrorCode.INVALID_MESSAGE, "'id'"),
        ({"t": "ping", "id": -1}, ErrorCode.INVALID_MESSAGE, "'id'"),
        ({"t": "ping", "id": MAX_SEQ + 1}, ErrorCode.INVALID_MESSAGE, "'id'"),
        ({"t": "ping", "id": 1.5}, ErrorCode.INVALID_MESSAGE, "'id'"),
        ({"t": "ping", "id": False}, ErrorCode.INVALID_MESSAGE, "'id'"),
        ({"t": "ping", "id": "7"}, ErrorCode.INVALID_MESSAGE, "'id'"),
    ],
    ids=repr,
)
def test_parse_refuses(message: dict[str, Any], code: ErrorCode, words: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_client_message(message)
    assert caught.value.code is code
    assert words in caught.value.message


@codecs
def test_client_messages_survive_each_codec(codec: Codec) -> None:
    messages: list[dict[str, Any]] = [
        {"t": "join", "v": 1, "room": "lobby", "game": "arena", "token": "t" * 4000},
        {"t": "input", "seq": 7, "data": {"dx": -0.5, "dy": 1}},
        {"t": "leave"},
        {"t": "ping", "id": 42},
    ]
    for message in messages:
        assert codec.decode(codec.encode(message)) == message
        parse_client_message(codec.decode(codec.encode(message)))


# -- server messages -----------------------------------------------------------------------


def test_server_messages() -> None:
    welcome = welcome_message(
        room="lobby",
        game="arena",
        player_id="u1",
        server="s1",
        epoch=3,
        tick=10,
        tick_rate=20,
        ack=5,
        resumed=True,
        token_exp=1_900_000_000,
    )
    assert welcome == {
        "t": "welcome",
        "v": 1,
        "room": "lobby",
        "game": "arena",
        "player_id": "u1",
        "server": "s1",
        "epoch": 3,
        "tick": 10,
        "tick_rate": 20,
        "ack": 5,
        "resumed": True,
        "token_exp": 1_900_000_000,
    }
    assert authed_message(1_900_000_600) == {"t": "authed", "token_exp": 1_900_000_600}
    assert parse_client_message({"t": "auth", "token": "abc"}) == AuthMessage("abc")
    assert redirect_message("lobby", "ws://h:8002/v1/ws", "s2") == {
        "t": "redirect",
        "room": "lobby",
        "url": "ws://h:8002/v1/ws",
        "server": "s2",
    }
    assert error_message(ErrorCode.ILLEGAL_INPUT, "no", seq=4) == {
        "t": "error",
        "code": "illegal_input",
        "message": "no",
        "seq": 4,
    }
    assert "seq" not in error_message(ErrorCode.NOT_JOINED, "join first")
    assert pong_message(9, 100) == {"t": "pong", "id": 9, "tick": 100}
    for message in (welcome, error_message(ErrorCode.RATE_LIMITED, "slow down")):
        for codec in CODECS:
            assert codec.decode(codec.encode(message)) == message


# -- state frames ---------------------------------------------------------------------------


ARENA_STATE = {
    "w": 64,
    "h": 32,
    "players": {"u1": {"name": "Ann", "x": 1.5, "y": 2.25, "score": 3, "inputs": 9}},
    "pickups": [[1.0, 2.0], [63.99, 0.0]],
}


@codecs
@pytest.mark.parametrize("ack", [0, 1, 127, 128, 65535, 2**32, MAX_SEQ])
def test_state_frame_decodes_to_a_state_message(codec: Codec, ack: int) -> None:
    frame = StateFrame(12, ARENA_STATE)
    encoded = frame.encode_for(codec, ack)
    decoded = orjson.loads(encoded) if codec.text else msgpack.unpackb(encoded, raw=False)
    assert decoded == {"t": "state", "tick": 12, "state": ARENA_STATE, "ack": ack}
    assert list(decoded) == ["t", "tick", "state", "ack"]
    assert codec.decode(encoded) == decoded  # small enough for the strict decoder too


@codecs
def test_state_frame_shares_one_prefix_across_players(codec: Codec) -> None:
    frame = StateFrame(5, ARENA_STATE)
    frames = [frame.encode_for(codec, ack) for ack in (0, 1, 300, 70000, MAX_SEQ)]
    reference = codec.encode({"t": "state", "tick": 5, "state": ARENA_STATE, "ack": 0})
    prefix = reference[:-2] if codec.text else reference[:-1]  # all but the ack 0 (and "}")
    for encoded in frames:
        assert encoded.startswith(prefix)
    assert frame._prefix(codec) is frame._prefix(codec)  # encoded once, reused
    assert frames[0] == reference


def test_state_frame_encodings_are_independent() -> None:
    frame = StateFrame(1, {"players": {}})
    assert orjson.loads(frame.encode_for(JSON, 2))["ack"] == 2
    assert msgpack.unpackb(frame.encode_for(MSGPACK, 3))["ack"] == 3
    assert orjson.loads(frame.encode_for(JSON, 4))["ack"] == 4


# -- limits: the largest valid value passes, one more is refused ------------------------------


def big_valid(codec: Codec, size: int) -> bytes:
    """A valid message whose encoding is exactly ``size`` bytes."""
    message: dict[str, Any] = {"t": "x"}
    index = 0
    while len(codec.encode(message)) < size - MAX_STR_LEN - 16:
        message[f"k{index}"] = "x" * MAX_STR_LEN
        index += 1
    message["pad"] = ""
    missing = size - len(codec.encode(message))
    message["pad"] = "x" * missing
    while len(codec.encode(message)) > size:  # msgpack str headers grow by a byte or two
        message["pad"] = message["pad"][:-1]
    encoded = codec.encode(message)
    assert len(encoded) == size, (len(encoded), size)
    return encoded


@codecs
@pytest.mark.parametrize(
    "message",
    [
        {"s": "x" * MAX_STR_LEN},
        {"s": "é" * MAX_STR_LEN},  # characters, not bytes, in both encodings
        {"s": "😀" * (MAX_STR_LEN // 2)},
        {"a": list(range(MAX_ARRAY_LEN))},
        {f"k{i}": i for i in range(MAX_MAP_LEN)},
        {"k" * 64: 1},
        {"i": INT_MAX, "j": INT_MIN},
        {"f": 1.7976931348623157e308, "g": -5e-324, "z": -0.0},
        {"u": "é✓😀", "n": None, "b": True, "e": "", "l": [], "m": {}},
        nested(MAX_DEPTH),
        nested(MAX_DEPTH, []),
        nested(MAX_DEPTH, {}),
    ],
    ids=lambda m: repr(m)[:40],
)
def test_values_at_the_limits_are_accepted(codec: Codec, message: dict[str, Any]) -> None:
    assert codec.decode(codec.encode(message)) == message


@codecs
def test_a_frame_of_exactly_the_maximum_size_is_accepted(codec: Codec) -> None:
    assert codec.decode(big_valid(codec, MAX_MESSAGE_BYTES))["t"] == "x"
    assert MAX_MESSAGE_BYTES == 16 * 1024


@codecs
@pytest.mark.parametrize(
    ("message", "words"),
    [
        ({"s": "x" * (MAX_STR_LEN + 1)}, "str"),
        ({"s": "é" * (MAX_STR_LEN + 1)}, "str"),
        ({"a": list(range(MAX_ARRAY_LEN + 1))}, "array"),
        ({f"k{i}": i for i in range(MAX_MAP_LEN + 1)}, "map"),
        ({"k" * 65: 1}, "keys"),
        ({"i": INT_MAX + 1}, "64-bit"),
        (nested(MAX_DEPTH + 1), "nesting"),
        (nested(MAX_DEPTH, [1]), "nesting"),
        (nested(MAX_DEPTH, {"a": None}), "nesting"),
    ],
    ids=lambda m: repr(m)[:40],
)
def test_values_beyond_the_limits_are_refused(
    codec: Codec, message: dict[str, Any], words: str
) -> None:
    with pytest.raises(DecodeError) as caught:
        codec.decode(codec.encode(message))
    assert words in caught.value.message or "invalid" in caught.value.message
    assert caught.value.message


@codecs
def test_an_oversized_frame_is_refused_before_parsing(codec: Codec) -> None:
    with pytest.raises(DecodeError, match="larger than 16384 bytes"):
        codec.decode(big_valid(codec, MAX_MESSAGE_BYTES + 1))
    with pytest.raises(DecodeError, match="larger than"):
        codec.decode(b"\x00" * (MAX_MESSAGE_BYTES + 1))


# -- every malformed input ---------------------------------------------------------------------


def f64(value: float) -> bytes:
    return b"\xcb" + struct.pack(">d", value)


MALFORMED_MSGPACK = {
    "empty frame": (b"", "incomplete"),
    "array32 of 2**32-1": (b"\xdd\xff\xff\xff\xff", "max_array_len"),
    "map32 of 2**32-1": (b"\xdf\xff\xff\xff\xff", "max_map_len"),
    "str32 of 2**32-1": (b"\x81\xa1s\xdb\xff\xff\xff\xff", "invalid msgpack"),
    "str32 top-level": (b"\xdb\xff\xff\xff\xff", "invalid msgpack"),
    "bin32 of 2**32-1": (b"\x81\xa1b\xc6\xff\xff\xff\xff", "invalid msgpack"),
    "array16 nested huge": (b"\x81\xa1a\xdc\xff\xff", "max_array_len"),
    "bin value": (msgpack.packb({"b": b"bytes"}, use_bin_type=True), "bin"),
    "bin key": (b"\x81\xc4\x01k\x01", "invalid msgpack"),
    "fixext": (b"\x81\xa1e\xd4\x01\x00", "ext"),
    "ext32 huge": (b"\x81\xa1e\xc9\xff\xff\xff\xff\x01", "invalid msgpack"),
    "timestamp ext": (msgpack.packb({"ts": msgpack.Timestamp(1, 0)}), "ext"),
    "integer key": (msgpack.packb({1: "x"}), "map key"),
    "nested integer key": (msgpack.packb({"a": {1: "x"}}), "map key"),
    "nil key": (b"\x81\xc0\x01", "map key"),
    "array key": (b"\x81\x90\x01", "invalid msgpack"),
    "float64 NaN": (b"\x81\xa1f" + f64(float("nan")), "NaN"),
    "float64 inf": (b"\x81\xa1f" + f64(float("inf")), "infinite"),
    "float64 -inf": (b"\x81\xa1f" + f64(float("-inf")), "infinite"),
    "float32 NaN": (b"\x81\xa1f\xca" + struct.pack(">f", float("nan")), "NaN"),
    "uint64 above int64": (msgpack.packb({"i": 2**64 - 1}), "64-bit"),
    "trailing byte": (msgpack.packb({"t": "ping", "id": 1}) + b"\x00", "trailing"),
    "two messages": (msgpack.packb({"t": "leave"}) * 2, "trailing"),
    "truncated map": (b"\x82\xa1t\xa4ping", "incomplete"),
    "truncated str": (b"\x81\xa1t\xa5pi", "incomplete"),
    "invalid UTF-8": (b"\x81\xa1t\xa2\xff\xfe", "utf-8"),
    "invalid UTF-8 key": (b"\x81\xa2\xc3\x28\x01", "utf-8"),
    "reserved byte 0xc1": (b"\x81\xa1t\xc1", "invalid msgpack"),
    "top-level array": (msgpack.packb(["t", "join"]), "must be a map"),
    "top-level string": (msgpack.packb("join"), "must be a map"),
    "top-level int": (b"\x01", "must be a map"),
    "top-level nil": (b"\xc0", "must be a map"),
    "deep maps": (b"\x81\xa1a" * 2000 + b"\x00", "nesting"),
    "deep arrays": (b"\x81\xa1a" + b"\x91" * 3000 + b"\x00", "nesting"),
    "nesting 9": (msgpack.packb(nested(MAX_DEPTH + 1)), "nesting"),
}

MALFORMED_JSON: dict[str, tuple[bytes | str, str]] = {
    "empty frame": (b"", "invalid JSON"),
    "empty text": ("", "invalid JSON"),
    "whitespace": (b"   ", "invalid JSON"),
    "NaN": (b'{"f":NaN}', "invalid JSON"),
    "Infinity": (b'{"f":Infinity}', "invalid JSON"),
    "-Infinity": (b'{"f":-Infinity}', "invalid JSON"),
    "overflowing float": (b'{"f":1e400}', "infinity"),
    "int above int64": (b'{"i":9223372036854775808}', "64-bit"),
    "trailing garbage": (b'{"t":"leave"} x', "after document"),
    "two messages": (b'{"t":"leave"}{"t":"leave"}', "after document"),
    "trailing comma": (b'{"t":"leave",}', "invalid JSON"),
    "single quotes": (b"{'t':'leave'}", "invalid JSON"),
    "comment": (b'{"t":"leave"} // hi', "invalid JSON"),
    "unquoted key": (b"{t:1}", "invalid JSON"),
    "truncated": (b'{"t":"le', "invalid JSON"),
    "invalid UTF-8": (b'{"t":"\xff"}', "UTF-8"),
    "overlong UTF-8": (b'{"t":"\xc0\xaf"}', "UTF-8"),
    "escaped lone surrogate": (b'{"t":"\\ud800"}', "surrogate"),
    "lone surrogate in text": ('{"t":"\ud800"}', "UTF-8"),
    "control character": (b'{"t":"a\x01b"}', "invalid JSON"),
    "top-level array": (b'["t","join"]', "must be a map"),
    "top-level string": (b'"join"', "must be a map"),
    "top-level number": (b"1", "must be a map"),
    "top-level null": (b"null", "must be a map"),
    "deep arrays": (b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}", "invalid JSON"),
    "deep maps": (b'{"a":' * 2500 + b"1" + b"}" * 2500, "invalid JSON"),
    "nesting 9": (orjson.dumps(nested(MAX_DEPTH + 1)), "nesting"),
    "long key": (b'{"' + b"k" * 65 + b'":1}', "keys"),
    "long string": (b'{"s":"' + b"x" * (MAX_STR_LEN + 1) + b'"}', "longer than"),
    "long multibyte string": (('{"s":"' + "é" * (MAX_STR_LEN + 1) + '"}').encode(), "longer"),
}


@pytest.mark.parametrize(("frame", "words"), MALFORMED_MSGPACK.values(), ids=MALFORMED_MSGPACK)
def test_malformed_msgpack(frame: bytes, words: str) -> None:
    with pytest.raises(DecodeError) as caught:
        MSGPACK.decode(frame)
    assert words.lower() in caught.value.message.lower(), caught.value.message
    assert caught.value.code is ErrorCode.INVALID_MESSAGE


@pytest.mark.parametrize(("frame", "words"), MALFORMED_JSON.values(), ids=MALFORMED_JSON)
def test_malformed_json(frame: bytes | str, words: str) -> None:
    with pytest.raises(DecodeError) as caught:
        JSON.decode(frame)
    assert words.lower() in caught.value.message.lower(), caught.value.message
    assert caught.value.code is ErrorCode.INVALID_MESSAGE


def test_a_text_frame_is_refused_by_msgpack() -> None:
    with pytest.raises(DecodeError, match="binary frames"):
        MSGPACK.decode('{"t":"leave"}')
    with pytest.raises(DecodeError, match="binary frames"):
        MSGPACK.decode("\x81\xa1t\xa5leave")


def test_json_accepts_text_and_binary_frames_alike() -> None:
    assert JSON.decode('{"t":"leave"}') == JSON.decode(b'{"t":"leave"}') == {"t": "leave"}
    assert JSON.decode(b'\n{"t": "leave"}\t') == {"t": "leave"}  # whitespace is fine


def test_json_integers_beyond_64_bits_decode_as_floats() -> None:
    """orjson's choice, documented: below -2**63 or from 2**64 on, a JSON integer is a float,
    so it can never pass as a seq or an id; from 2**63 to 2**64-1 it is refused."""
    assert JSON.decode(b'{"i":-9223372036854775809}') == {"i": float(-(2**63))}
    assert type(JSON.decode(b'{"i":18446744073709551616}')["i"]) is float
    with pytest.raises(DecodeError, match="64-bit"):
        JSON.decode(b'{"i":18446744073709551615}')
    with pytest.raises(ProtocolError, match="'seq'"):
        parse_client_message(JSON.decode(b'{"t":"input","seq":99999999999999999999,"data":0}'))


def test_json_integers_are_not_floats() -> None:
    decoded = JSON.decode(b'{"i":1,"f":1.0,"e":1e2}')
    assert type(decoded["i"]) is int and type(decoded["f"]) is float
    assert type(decoded["e"]) is float
    with pytest.raises(ProtocolError, match="'seq'"):
        parse_client_message(JSON.decode(b'{"t":"input","seq":1.0,"data":{}}'))


@codecs
def test_decoded_malformed_fields_become_protocol_errors(codec: Codec) -> None:
    """Decodable but wrong: the parser, not the codec, refuses it, still as ProtocolError."""
    for message in ({"t": "input", "seq": "1", "data": 1}, {"t": "join", "room": 3}, {"x": 1}):
        with pytest.raises(ProtocolError):
            parse_client_message(codec.decode(codec.encode(message)))


def test_errors_never_echo_a_large_client_value() -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_client_message({"t": "x" * 10_000})
    assert len(caught.value.message) < 100
    with pytest.raises(ProtocolError) as caught:
        parse_client_message({"t": "join", "room": "r", "v": 10**30})
    assert len(caught.value.message) < 120


@pytest.mark.parametrize("text", ["", "short", "é" * 200, "x" * 122 + "é", "🎲" * 40, "a" * 500])
def test_close_reason_fits_a_close_frame_in_bytes(text: str) -> None:
    cut = close_reason(text)
    assert len(cut.encode("utf-8")) <= 123
    assert text.startswith(cut)
    if len(text.encode("utf-8")) <= 123:
        assert cut == text


@codecs
def test_v2_state_frames_share_the_shared_part_and_add_each_players_own(codec: Codec) -> None:
    delta = {"base": 4, "tick": 5, "s": {"x": 1}}
    keyframes = []

    def keyframe() -> dict[str, Any]:
        keyframes.append(1)
        return {"tick": 5, "k": {"x": 1, "y": 2}}

    frame = StateFrameV2(5, delta, keyframe)
    plain = codec.decode(frame.encode_for(codec, 3))
    assert plain == {"t": "state", "tick": 5, "shared": delta, "ack": 3}
    full = codec.decode(
        frame.encode_for(codec, 4, keyframe=True, private={"hand": [1]}, events=["hi"])
    )
    assert full == {
        "t": "state",
        "tick": 5,
        "shared": {"tick": 5, "k": {"x": 1, "y": 2}},
        "ack": 4,
        "private": {"hand": [1]},
        "events": ["hi"],
    }
    frame.encode_for(codec, 5, keyframe=True)
    assert keyframes == [1]  # the keyframe is built once per tick, however many need it
    assert list(full) == ["t", "tick", "shared", "ack", "private", "events"]


@pytest.mark.parametrize("tick", [0, 127, 128, 70000, 2**32 + 5])
@pytest.mark.parametrize("ack", [0, 255, 65536, MAX_SEQ])
def test_v2_msgpack_frames_are_the_bytes_msgpack_packs(tick: int, ack: int) -> None:
    """The frame built from pre-packed parts is byte for byte what packing the message
    dict gives (smallest int forms, key order), with and without private and events."""
    delta = {"base": 4, "tick": tick, "s": {"x": 1.5, "name": "é"}}
    frame = StateFrameV2(tick, delta, lambda: {"tick": tick, "k": {}})
    for extra in ({}, {"private": {"hand": [1, 2]}}, {"events": [["hit", 3]]}):
        message = {"t": "state", "tick": tick, "shared": delta, "ack": ack, **extra}
        want = msgpack.packb(message, use_bin_type=True)
        assert frame.encode_for(MSGPACK, ack, **extra) == want  # type: ignore[arg-type]
    message = {"t": "state", "tick": tick, "state": delta, "ack": ack}
    assert StateFrame(tick, delta).encode_for(MSGPACK, ack) == msgpack.packb(message)


def test_v2_join_and_sync_parse() -> None:
    join = parse_client_message(
        {"t": "join", "v": 2, "room": "r", "options": {"mode": "fast"}, "since": 41}
    )
    assert isinstance(join, JoinMessage)
    assert (join.version, join.options, join.since) == (2, {"mode": "fast"}, 41)
    assert parse_client_message({"t": "sync"}) == SyncMessage()
    v1 = parse_client_message({"t": "join", "room": "r"})
    assert isinstance(v1, JoinMessage) and (v1.version, v1.options, v1.since) == (1, None, 0)
