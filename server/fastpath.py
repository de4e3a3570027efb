"""The two hot paths of a room server, trimmed below the generic websockets API.

Outgoing: a state frame goes to a player's socket as one ``transport.write`` of
a WebSocket frame header plus the shared payload, instead of building a
websockets ``Frame`` object per player per tick. This is only valid because
the server never compresses (``compression=None``) and never fragments, and
only while websockets itself has nothing queued for that connection.

Incoming: once a player has joined, each complete data frame is handed to the
room synchronously from ``data_received`` (``FastConnection.on_frame``),
instead of waking the connection's handler coroutine once per input.
Fragmented messages still take the ordinary path.
"""

from __future__ import annotations

from collections.abc import Callable

from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import Event, State

_FIN_BINARY = 0x80 | Opcode.BINARY.value
_FIN_TEXT = 0x80 | Opcode.TEXT.value


def frame_header(length: int, text: bool) -> bytes:
    """RFC 6455 header of an unmasked, final, uncompressed data frame."""
    first = _FIN_TEXT if text else _FIN_BINARY
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return bytes((first, 126)) + length.to_bytes(2, "big")
    return bytes((first, 127)) + length.to_bytes(8, "big")


def write_data_frame(ws: ServerConnection, payload: bytes, text: bool) -> bool:
    """Write one data frame straight to the transport; False if the fast path can't be
    used right now (the caller then goes through websockets)."""
    if ws.protocol.state is not State.OPEN or ws.protocol.writes:
        return False
    ws.transport.write(frame_header(len(payload), text) + payload)
    return True


class FastConnection(ServerConnection):
    """A ServerConnection that can deliver complete data frames synchronously."""

    on_frame: Callable[[bytes | str], None] | None = None

    def process_event(self, event: Event) -> None:
        on_frame = self.on_frame
        if (
            on_frame is not None
            and isinstance(event, Frame)
            and event.fin
            and event.opcode in (Opcode.BINARY, Opcode.TEXT)
        ):
            data = bytes(event.data)
            if event.opcode is Opcode.TEXT:
                try:
                    text = data.decode()
                except UnicodeDecodeError:
                    # RFC 6455 §8.1: invalid UTF-8 in a text frame fails the connection
                    # with 1007. (websockets checks this only on its own recv() path.)
                    self.protocol.fail(CloseCode.INVALID_DATA, "invalid UTF-8 in a text frame")
                    self.send_data()
                    return
                on_frame(text)
            else:
                on_frame(data)
            return
        super().process_event(event)
