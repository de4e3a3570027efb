"""Every code a client can see: WebSocket close codes (4000-4999) and error codes.

One shared file of codes, imported by both the server and the client SDK, as
Colyseus does, so the two can never disagree.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

PROTOCOL_VERSION = 1  # what a connection that negotiated no subprotocol speaks
PROTOCOL_V2 = 2  # per-player views, events, delta sync, room options
MSGPACK_SUBPROTOCOL = "stateroom.v1.msgpack"
JSON_SUBPROTOCOL = "stateroom.v1.json"
MSGPACK_V2_SUBPROTOCOL = "stateroom.v2.msgpack"
JSON_V2_SUBPROTOCOL = "stateroom.v2.json"
SUBPROTOCOLS = (
    MSGPACK_V2_SUBPROTOCOL,
    JSON_V2_SUBPROTOCOL,
    MSGPACK_SUBPROTOCOL,
    JSON_SUBPROTOCOL,
)
DEFAULT_SUBPROTOCOL = MSGPACK_SUBPROTOCOL


class CloseCode(IntEnum):
    """WebSocket close codes. ``retry`` says whether a client should reconnect."""

    PROTOCOL_ERROR = 4000  # a malformed or unexpected message; do not retry as is
    UNAUTHORIZED = 4001  # missing, invalid or expired token; log in again
    AUTH_TIMEOUT = 4002  # no join message within the handshake timeout
    UNSUPPORTED_VERSION = 4004  # protocol version not spoken by this server
    ROOM_FULL = 4005  # the room has no free seat
    INVALID_ROOM = 4006  # bad room name or unknown game
    RATE_LIMITED = 4008  # far more messages than the input rate limit allows
    SLOW_CONSUMER = 4009  # the client did not read; its outbox overflowed (retry: resume)
    REPLACED = 4010  # another connection of the same player took the seat
    QUOTA_EXCEEDED = 4011  # a per-player, per-address or per-server budget is used up
    RECONNECT = 4020  # server draining or room moving: reconnect (any server)
    REDIRECT = 4021  # the room lives elsewhere: reconnect to the redirect url
    ROOM_CLOSED = 4030  # the room was closed
    INTERNAL_ERROR = 4500  # a bug on the server; retry with backoff

    @property
    def retry(self) -> bool:
        return self in _RETRYABLE


_RETRYABLE = frozenset(
    {CloseCode.SLOW_CONSUMER, CloseCode.RECONNECT, CloseCode.REDIRECT, CloseCode.INTERNAL_ERROR}
)


class ErrorCode(StrEnum):
    """``code`` of an ``error`` message. The connection stays open after these."""

    INVALID_MESSAGE = "invalid_message"  # not decodable, or fields of the wrong type
    UNKNOWN_TYPE = "unknown_type"  # "t" names no message
    NOT_JOINED = "not_joined"  # input or leave before join
    ALREADY_JOINED = "already_joined"  # a second join on one connection
    ILLEGAL_INPUT = "illegal_input"  # the game refused the input's data
    SEQUENCE_GAP = "sequence_gap"  # not the next seq; "expected" says which one to resend
    RATE_LIMITED = "rate_limited"  # input dropped: over the per-connection rate
    QUEUE_FULL = "queue_full"  # input dropped: too many pending inputs this tick
    # The following precede a close with the matching CloseCode:
    UNAUTHORIZED = "unauthorized"
    TOKEN_EXPIRED = "token_expired"  # also sent at exp + leeway on an open session
    SESSION_REVOKED = "session_revoked"  # the player logged out; log in again
    ROOM_QUOTA = "room_quota"  # too many rooms created by this player or address
    CONNECTION_QUOTA = "connection_quota"  # too many connections/sessions of one address/player
    SERVER_FULL = "server_full"  # this server hosts as many rooms as it may
    INVALID_OPTIONS = "invalid_options"  # the game refused the new room's options (4006)
    UNSUPPORTED_VERSION = "unsupported_version"
    INVALID_ROOM = "invalid_room"
    UNKNOWN_GAME = "unknown_game"
    ROOM_FULL = "room_full"
    UNAVAILABLE = "unavailable"  # room cannot be served right now; retry
