"""RFC 6455 pieces both transports share, pure (no I/O): frame headers and close frames."""

from __future__ import annotations

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

# Room a caller of Connection.send_in_place leaves before the payload: the largest server
# frame header (10 bytes) rounded up to what picows asks for.
HEADER_ROOM = 14

_FIN_BINARY = 0x80 | OP_BINARY
_FIN_TEXT = 0x80 | OP_TEXT

# §7.4.1: the codes a close frame may carry; 1005, 1006 and 1015 are for APIs only.
_SENDABLE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


def frame_header(length: int, text: bool) -> bytes:
    """Header of an unmasked, final, uncompressed data frame (what a server sends)."""
    first = _FIN_TEXT if text else _FIN_BINARY
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return bytes((first, 126)) + length.to_bytes(2, "big")
    return bytes((first, 127)) + length.to_bytes(8, "big")


def valid_close_code(code: int) -> bool:
    """True for a code a peer may put in a close frame (registered ones and 3000-4999)."""
    return code in _SENDABLE or 3000 <= code <= 4999


def close_reason_bytes(reason: str) -> bytes:
    """A close reason as UTF-8, cut on a character boundary to fit a control frame
    (125 bytes, two of them the code)."""
    data = reason.encode()
    if len(data) <= 123:
        return data
    return data[:123].decode(errors="ignore").encode()
