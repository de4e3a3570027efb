"""The wire protocol, pure: message types, codecs, validation, error and close codes.

Imports no asyncio, websockets or redis, so the client SDK, the server and
tests share it, and a codec can be fuzzed without a socket. Every message and
code here is documented in ``docs/protocol.md``.

    ProtocolError(code, message)       a message that cannot be accepted
    ├── DecodeError                    bytes that are not one valid message
    └── (raised with ErrorCode.*)      a valid message in the wrong place
"""

from server.protocol.codec import (
    JSON,
    JSON_V2,
    MSGPACK,
    MSGPACK_V2,
    Codec,
    codec_for_subprotocol,
)
from server.protocol.codes import (
    DEFAULT_SUBPROTOCOL,
    PROTOCOL_V2,
    PROTOCOL_VERSION,
    SUBPROTOCOLS,
    CloseCode,
    ErrorCode,
)
from server.protocol.errors import DecodeError, ProtocolError
from server.protocol.messages import (
    AuthMessage,
    ClientMessage,
    InputMessage,
    JoinMessage,
    LeaveMessage,
    PingMessage,
    StateFrame,
    StateFrameV2,
    SyncMessage,
    authed_message,
    close_reason,
    error_message,
    parse_client_message,
    parse_input,
    pong_message,
    redirect_message,
    welcome_message,
)

__all__ = [
    "DEFAULT_SUBPROTOCOL",
    "JSON",
    "JSON_V2",
    "MSGPACK",
    "MSGPACK_V2",
    "PROTOCOL_V2",
    "PROTOCOL_VERSION",
    "SUBPROTOCOLS",
    "AuthMessage",
    "ClientMessage",
    "CloseCode",
    "Codec",
    "DecodeError",
    "ErrorCode",
    "InputMessage",
    "JoinMessage",
    "LeaveMessage",
    "PingMessage",
    "ProtocolError",
    "StateFrame",
    "StateFrameV2",
    "SyncMessage",
    "authed_message",
    "close_reason",
    "codec_for_subprotocol",
    "error_message",
    "parse_client_message",
    "parse_input",
    "pong_message",
    "redirect_message",
    "welcome_message",
]
