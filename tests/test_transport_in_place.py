"""``Connection.send_in_place`` on both transports, on the wire: one buffer reused for
several frames (as the room does for a tick's states) delivers each frame's payload
exactly, in order, binary and text, short and with 16- and 64-bit lengths, and a
closing connection sends nothing more."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from server.transport import Connection, listen
from server.transport.base import Listener, TransportOptions
from server.transport.frames import HEADER_ROOM
from tests.test_transport_rfc6455 import BINARY, CLOSE, TEXT, Frame, RawClient, frame

pytestmark = pytest.mark.timeout(20)

PAYLOADS = [b"a", b"\x00" * 125, b"b" * 126, b"c" * 7000, b"d" * 70000, b"e" * 3]


async def sender(conn: Connection) -> None:
    """On each message: send every payload from one reused buffer, then a text one."""
    first = await conn.recv()
    buffer = bytearray(HEADER_ROOM) + b"prefix:"
    end = len(buffer)
    for payload in PAYLOADS:
        del buffer[end:]
        buffer += payload
        assert conn.send_in_place(buffer, HEADER_ROOM, text=False)
    del buffer[end:]
    buffer += '{"t":"é"}'.encode()
    assert conn.send_in_place(buffer, HEADER_ROOM, text=True)
    assert first == b"go"
    conn.close(1000, "done")
    assert not conn.send_in_place(buffer, HEADER_ROOM, text=False)
    await conn.wait_closed()


@pytest.fixture(params=["websockets", "picows"])
async def listener(request: pytest.FixtureRequest) -> AsyncIterator[Listener]:
    started = await listen(str(request.param), sender, TransportOptions())
    try:
        yield started
    finally:
        await asyncio.wait_for(started.close(), 5)


async def test_one_buffer_many_frames(listener: Listener) -> None:
    client = await RawClient.connect(listener.port)
    client.send(frame(BINARY, b"go"))
    for payload in PAYLOADS:
        assert (await client.read_data()) == Frame(True, BINARY, b"prefix:" + payload)
    assert (await client.read_data()) == Frame(True, TEXT, 'prefix:{"t":"é"}'.encode())
    closing = await client.read_data()
    assert closing.opcode == CLOSE and closing.code == 1000
    client.close()
