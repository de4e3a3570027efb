"""Message types of protocol v1 and their strict parsing.

Client → server: ``join``, ``input``, ``leave``, ``ping``, ``auth``; v2 also ``sync``.
Server → client: ``welcome``, ``state``, ``redirect``, ``error``, ``pong``, ``authed``.

Version 2 (``stateroom.v2.*`` subprotocols) changes ``state``: the shared public
part as a delta-sync payload (``server.protocol.delta``), plus the player's own
private part and its events of that tick; ``join`` gains ``options`` and ``since``.
Every message is a map whose ``t`` field names its type.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import orjson

from server.protocol.codec import (
    INT_MAX,
    INT_MIN,
    MAX_ARRAY_LEN,
    MAX_MAP_LEN,
    MAX_MESSAGE_BYTES,
    MAX_STR_LEN,
    Codec,
)
from server.protocol.codes import PROTOCOL_V2, PROTOCOL_VERSION, ErrorCode
from server.protocol.errors import ProtocolError

ROOM_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
GAME_NAME = re.compile(r"[a-z0-9_\-]{1,32}")
MAX_SEQ = 2**53 - 1  # exact in JSON numbers and in every client language


@dataclass(frozen=True, slots=True)
class JoinMessage:
    room: str
    game: str | None
    token: str | None
    version: int
    options: dict[str, Any] | None = None  # v2: for a room this join creates
    since: int = 0  # v2: the last tick the client saw (0: none); events after it are sent


@dataclass(slots=True)
class InputMessage:
    """Not frozen: one is made per input on the hot path, and a frozen dataclass's
    ``__init__`` (``object.__setattr__`` per field) costs as much as the decode."""

    seq: int
    data: Any


@dataclass(frozen=True, slots=True)
class LeaveMessage:
    pass


@dataclass(frozen=True, slots=True)
class PingMessage:
    id: int


@dataclass(frozen=True, slots=True)
class AuthMessage:
    """A fresh access token for the open session (sent before the current one expires)."""

    token: str


@dataclass(frozen=True, slots=True)
class SyncMessage:
    """v2: the client lost track of a delta stream; the next state carries keyframes."""


ClientMessage = JoinMessage | InputMessage | LeaveMessage | PingMessage | AuthMessage | SyncMessage


MAX_CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes


def close_reason(text: str) -> str:
    """``text`` cut to what a close frame can carry, counted in UTF-8 bytes, never
    splitting a character. Close reasons are the server's own words, never client text."""
    raw = text.encode("utf-8")
    if len(raw) <= MAX_CLOSE_REASON_BYTES:
        return text
    return raw[:MAX_CLOSE_REASON_BYTES].decode("utf-8", errors="ignore")


def shown(value: Any, limit: int = 40) -> str:
    """A client-supplied value for an error message: repr, bounded, so that an error
    never echoes a large or hostile payload back."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _invalid(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_MESSAGE, message)


def _int_field(message: dict[str, Any], name: str, low: int, high: int) -> int:
    value = message.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _invalid(f"'{name}' must be an integer in [{low}, {high}]")
    return value


def _optional_str(message: dict[str, Any], name: str) -> str | None:
    value = message.get(name)
    if value is not None and not isinstance(value, str):
        raise _invalid(f"'{name}' must be a string")
    return value


def parse_join(message: dict[str, Any]) -> JoinMessage:
    """A field of the wrong type is ``invalid_message`` (close 4000), like in every other
    message; a well-typed but unacceptable value has its own code (4004, 4006)."""
    version = message.get("v", PROTOCOL_VERSION)
    # type() check: True == 1 and 1.0 == 1 in Python, but neither is version 1.
    if type(version) is not int:
        raise _invalid("'v' must be an integer (the protocol version)")
    if version not in (PROTOCOL_VERSION, PROTOCOL_V2):
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"protocol version {shown(version)} is not supported;"
            f" this server speaks {PROTOCOL_VERSION} and {PROTOCOL_V2}",
        )
    room = message.get("room")
    if not isinstance(room, str):
        raise _invalid("'room' is required and must be a string")
    if not ROOM_NAME.fullmatch(room):
        raise ProtocolError(
            ErrorCode.INVALID_ROOM, "'room' must be 1-64 characters of A-Z a-z 0-9 _ . -"
        )
    game = _optional_str(message, "game")
    if game is not None and not GAME_NAME.fullmatch(game):
        raise ProtocolError(ErrorCode.UNKNOWN_GAME, "'game' must be 1-32 characters of a-z 0-9 _ -")
    options = message.get("options")
    if options is not None and not isinstance(options, dict):
        raise _invalid("'options' must be a map")
    since = message.get("since", 0)
    if type(since) is not int or not 0 <= since <= MAX_SEQ:
        raise _invalid(f"'since' must be an integer in [0, {MAX_SEQ}]")
    return JoinMessage(
        room=room,
        game=game,
        token=_optional_str(message, "token"),
        version=version,
        options=options,
        since=since,
    )


def parse_client_message(message: dict[str, Any]) -> ClientMessage:
    """Turn a decoded map into a typed message, or raise ProtocolError."""
    kind = message.get("t")
    if kind == "input":
        if "data" not in message:
            raise _invalid("'input' needs a 'data' field")
        return InputMessage(seq=_int_field(message, "seq", 1, MAX_SEQ), data=message["data"])
    if kind == "join":
        return parse_join(message)
    if kind == "leave":
        return LeaveMessage()
    if kind == "ping":
        return PingMessage(id=_int_field(message, "id", 0, MAX_SEQ))
    if kind == "sync":
        return SyncMessage()
    if kind == "auth":
        token = message.get("token")
        if not isinstance(token, str) or not token:
            raise _invalid("'auth' needs a non-empty string 'token'")
        return AuthMessage(token=token)
    raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {shown(kind)}")


def _plain(value: Any) -> bool:
    """True for what check_value accepts at depth 1 without walking it: a scalar, or
    one map or list of scalars within the limits. Anything else (deeper values
    included) is left to the generic path, which decides with its own errors."""
    if type(value) is dict:
        if len(value) > MAX_MAP_LEN:
            return False
        for key, item in value.items():
            if type(key) is not str or len(key) > 64:
                return False
            kind = type(item)
            if kind is float:  # the common input: inlined
                if item - item != 0.0:  # inf and NaN
                    return False
            elif not _scalar(item):
                return False
        return True
    if type(value) is list:
        return len(value) <= MAX_ARRAY_LEN and all(_scalar(item) for item in value)
    return _scalar(value)


def _scalar(value: Any) -> bool:
    kind = type(value)
    if kind is float:
        return bool(value - value == 0.0)  # False for inf and NaN
    if kind is int:
        return bool(INT_MIN <= value <= INT_MAX)
    if kind is str:
        return len(value) <= MAX_STR_LEN
    return kind is bool or value is None


def parse_input(codec: Codec, frame: bytes | str) -> InputMessage | None:
    """The common message, ``{"t": "input", "seq": N, "data": D}`` with a flat ``D``,
    decoded and parsed in one pass; None for anything else.

    It accepts exactly what ``parse_client_message(codec.decode(frame))`` turns into
    the same InputMessage, and refuses nothing itself: a None goes to that generic
    path, which gives the documented error (each input then costs one C decode and a
    few type checks instead of a walk of the whole value)."""
    if len(frame) > MAX_MESSAGE_BYTES:
        return None
    try:
        if codec.text:
            value = orjson.loads(frame)
        elif type(frame) is bytes:
            value = msgpack.unpackb(frame)
        else:
            return None
    except Exception:  # invalid bytes: the generic path says why
        return None
    if type(value) is not dict or len(value) != 3 or value.get("t") != "input":
        return None
    seq = value.get("seq")
    if type(seq) is not int or not 1 <= seq <= MAX_SEQ or "data" not in value:
        return None
    data = value["data"]
    if not _plain(data):
        return None
    return InputMessage(seq, data)


def welcome_message(
    *,
    room: str,
    game: str,
    player_id: str,
    server: str,
    epoch: int,
    tick: int,
    tick_rate: int,
    ack: int,
    resumed: bool,
    token_exp: int,
    version: int = PROTOCOL_VERSION,
    options: Mapping[str, Any] | None = None,
    fallback: str = "",
) -> dict[str, Any]:
    """``fallback``: the URL of the live peer that would take the room over if its owner
    died (sent when there is one): where a client whose connection drops asks first."""
    extra: dict[str, Any] = {"options": dict(options or {})} if version >= PROTOCOL_V2 else {}
    if fallback:
        extra["fallback"] = fallback
    return {
        "t": "welcome",
        "v": version,
        "room": room,
        "game": game,
        "player_id": player_id,
        "server": server,
        "epoch": epoch,
        "tick": tick,
        "tick_rate": tick_rate,
        "ack": ack,
        "resumed": resumed,
        "token_exp": token_exp,
        **extra,
    }


def authed_message(token_exp: int) -> dict[str, Any]:
    """The fresh token of an ``auth`` message was accepted; the session now ends at
    ``token_exp`` (unix seconds) plus the server's leeway unless renewed again."""
    return {"t": "authed", "token_exp": token_exp}


def redirect_message(room: str, url: str, server: str) -> dict[str, Any]:
    return {"t": "redirect", "room": room, "url": url, "server": server}


def error_message(
    code: ErrorCode, message: str, seq: int | None = None, expected: int | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"t": "error", "code": str(code), "message": message}
    if seq is not None:
        out["seq"] = seq
    if expected is not None:
        out["expected"] = expected
    return out


def pong_message(ping_id: int, tick: int) -> dict[str, Any]:
    return {"t": "pong", "id": ping_id, "tick": tick}


class StateFrame:
    """One tick's ``state`` message, encoded once per encoding for every player.

    Only the trailing ``ack`` differs between players, so the frame is a
    shared prefix (type, tick, state) plus a few bytes of ack per player:
    the state itself is never encoded per player.
    """

    __slots__ = ("_json_prefix", "_msgpack_prefix", "_state", "tick")

    def __init__(self, tick: int, state: Any) -> None:
        self.tick = tick
        self._state = state
        self._msgpack_prefix: bytes | None = None
        self._json_prefix: bytes | None = None

    def _prefix(self, codec: Codec) -> bytes:
        if codec.text:
            if self._json_prefix is None:
                body = orjson.dumps(self._state)
                self._json_prefix = b'{"t":"state","tick":%d,"state":%b,"ack":' % (self.tick, body)
            return self._json_prefix
        if self._msgpack_prefix is None:
            # fixmap of 4 entries, then t, tick, state, and the key "ack"; the value follows.
            self._msgpack_prefix = b"".join(
                (
                    _V1_HEAD,
                    pack_uint(self.tick),
                    _STATE_KEY,
                    _pack(self._state),
                    _ACK_KEY,
                )
            )
        return self._msgpack_prefix

    def encode_for(self, codec: Codec, ack: int) -> bytes:
        """The frame for a player whose last applied input is ``ack``."""
        return self.prefix(codec) + self.tail(codec, ack)

    def prefix(self, codec: Codec) -> bytes:
        """What every player's frame of this tick starts with (encoded once)."""
        if codec.text:
            return self._json_prefix or self._prefix(codec)
        return self._msgpack_prefix or self._prefix(codec)

    @staticmethod
    def tail(codec: Codec, ack: int) -> bytes:
        """The end of the frame of a player whose last applied input is ``ack``."""
        return b"%d}" % ack if codec.text else pack_uint(ack)


# The constant parts of a state frame, packed once (msgpack.packb builds a Packer a call).
_V1_HEAD = b"\x84" + msgpack.packb("t") + msgpack.packb("state") + msgpack.packb("tick")
_V2_HEAD = (
    msgpack.packb("t") + msgpack.packb("state") + msgpack.packb("tick")
)  # map header: per player
_STATE_KEY = msgpack.packb("state")
_SHARED_KEY = msgpack.packb("shared")
_ACK_KEY = msgpack.packb("ack")
_PRIVATE_KEY = msgpack.packb("private")
_EVENTS_KEY = msgpack.packb("events")
_FIXMAPS = [bytes((0x80 | n,)) for n in range(16)]
# One Packer for the state frames (``msgpack.packb`` builds one per call: 1.4-3.6 us of a
# 3-12 us pack of a small state). Not thread-safe: frames are built on the room server's
# event-loop thread only.
_pack = msgpack.Packer(use_bin_type=True).pack
_FIXINTS = [bytes((n,)) for n in range(128)]
_U8, _U16, _U32 = struct.Struct(">BB"), struct.Struct(">BH"), struct.Struct(">BI")


def pack_uint(value: int) -> bytes:
    """A non-negative int as msgpack packs it (the smallest form), without building
    a Packer: once per player per tick for the ``ack``."""
    if value < 128:
        return _FIXINTS[value] if value >= 0 else msgpack.packb(value)
    if value < 0x100:
        return _U8.pack(0xCC, value)
    if value < 0x10000:
        return _U16.pack(0xCD, value)
    if value < 0x100000000:
        return _U32.pack(0xCE, value)
    return msgpack.packb(value)  # type: ignore[no-any-return]


class StateFrameV2:
    """One tick's v2 ``state``: the shared part's payload (this tick's delta, or its
    keyframe for a player that needs one) is encoded once per encoding and shared by
    every player; each player's ``ack``, ``private`` payload and ``events`` follow.

    Field order on the wire: ``t``, ``tick``, ``shared``, ``ack``, then ``private`` and
    ``events`` when present.
    """

    __slots__ = ("_delta", "_keyframe", "_parts", "tick")

    def __init__(
        self, tick: int, delta: dict[str, Any], keyframe: Callable[[], dict[str, Any]]
    ) -> None:
        self.tick = tick
        self._delta = delta
        self._keyframe = keyframe
        self._parts: dict[tuple[bool, bool], bytes] = {}

    def _shared(self, codec: Codec, keyframe: bool) -> bytes:
        key = (codec.text, keyframe)
        part = self._parts.get(key)
        if part is None:
            payload = self._keyframe() if keyframe else self._delta
            if codec.text:
                part = b'{"t":"state","tick":%d,"shared":%b' % (self.tick, orjson.dumps(payload))
            else:
                part = b"".join((_V2_HEAD, pack_uint(self.tick), _SHARED_KEY, _pack(payload)))
            self._parts[key] = part
        return part

    def encode_for(
        self,
        codec: Codec,
        ack: int,
        *,
        keyframe: bool = False,
        private: dict[str, Any] | None = None,
        events: list[Any] | None = None,
    ) -> bytes:
        shared = self._shared(codec, keyframe)
        if codec.text:
            tail = b',"ack":%d' % ack
            if private is not None:
                tail += b',"private":' + orjson.dumps(private)
            if events:
                tail += b',"events":' + orjson.dumps(events)
            return shared + tail + b"}"
        count = 4 + (private is not None) + bool(events)
        out = [_FIXMAPS[count], shared, _ACK_KEY, pack_uint(ack)]
        if private is not None:
            out += [_PRIVATE_KEY, _pack(private)]
        if events:
            out += [_EVENTS_KEY, _pack(events)]
        return b"".join(out)
