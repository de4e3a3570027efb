"""RFC 6455 on the wire, against both transports: a raw TCP client speaks the
handshake and hand-built frames (masked or not, fragmented, with pings between
fragments, bad opcodes...) and checks the exact close code and behaviour."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

import pytest

from server.transport import Connection, ConnectionClosed, HttpRequest, HttpResponse, listen
from server.transport.base import HandshakeRefused, Listener, TransportOptions

pytestmark = pytest.mark.timeout(20)

KINDS = ["websockets", "picows"]
BINARY, TEXT, CONT, CLOSE, PING, PONG = 0x2, 0x1, 0x0, 0x8, 0x9, 0xA
SUBPROTOCOLS = ("stateroom.v2.msgpack", "stateroom.v1.json")
READ_S = 3.0  # a read that times out fails the test instead of hanging it


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    masked: bool = True,
    rsv: int = 0,
    length: int | None = None,
) -> bytes:
    """A client frame built by hand (``length`` can lie about the payload)."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


@dataclass
class Frame:
    fin: bool
    opcode: int
    payload: bytes

    @property
    def code(self) -> int | None:
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None


class RawClient:
    """A WebSocket client with no library: bytes in, bytes out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""

    @classmethod
    async def connect(
        cls, port: int, *, path: str = "/v1/ws", headers: tuple[tuple[str, str], ...] = ()
    ) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in headers),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await client._read_response()
        return client

    @classmethod
    async def get(cls, port: int, path: str) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await client._read_response()
        return client

    async def _read_response(self) -> None:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), READ_S)
        lines = head.decode().split("\r\n")
        self.status = int(lines[0].split()[1])
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                self.headers[k.strip().lower()] = v.strip()
        length = int(self.headers.get("content-length", "0"))
        if self.status != 101 and length:
            self.body = await asyncio.wait_for(self.reader.readexactly(length), READ_S)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read(self) -> Frame:
        async def one() -> Frame:
            b0, b1 = await self.reader.readexactly(2)
            assert not b1 & 0x80, "a server frame must not be masked"
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return Frame(bool(b0 & 0x80), b0 & 0x0F, await self.reader.readexactly(n))

        return await asyncio.wait_for(one(), READ_S)

    async def read_data(self) -> Frame:
        """The next frame that is not a keepalive ping."""
        while True:
            got = await self.read()
            if got.opcode != PING:
                return got

    async def expect_close(self, code: int | None) -> Frame:
        """Read until the server's close frame; check its code; then the TCP end."""
        while True:
            got = await self.read()
            if got.opcode == CLOSE:
                break
        assert got.code == code, f"close {got.code} {got.payload[2:]!r}, expected {code}"
        return got

    async def expect_eof(self, within: float = READ_S) -> None:
        data = await asyncio.wait_for(self.reader.read(), within)
        assert data == b"", f"expected the server to close the TCP connection, got {data!r}"

    def close(self) -> None:
        self.writer.close()


async def echo(conn: Connection) -> None:
    """Echo every message; the first one through recv(), the rest through on_message."""
    try:
        first = await conn.recv()
    except ConnectionClosed:
        return
    conn.send(first if isinstance(first, bytes) else first.encode(), isinstance(first, str))
    conn.on_message = lambda m: conn.send(
        m if isinstance(m, bytes) else m.encode(), isinstance(m, str)
    )
    await conn.wait_closed()


def probes(request: HttpRequest) -> HttpResponse | None:
    path = request.path.split("?", 1)[0]
    if path == "/healthz":
        return HttpResponse(200, b"ok\n")
    if request.header("Upgrade") is None:
        return HttpResponse(404, b"not found: use a WebSocket on /v1/ws\n")
    return None


def select(offered: list[str]) -> str | None:
    if not offered:
        return None
    for name in offered:
        if name in SUBPROTOCOLS:
            return name
    raise HandshakeRefused("unsupported subprotocol; offer one of " + ", ".join(SUBPROTOCOLS))


OPTIONS = TransportOptions(
    port=0,
    subprotocols=SUBPROTOCOLS,
    select_subprotocol=select,
    process_request=probes,
    max_message_bytes=1024,
    ping_interval_s=None,
    ping_timeout_s=None,
    close_timeout_s=0.5,
)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


Serve = Callable[..., Awaitable[Listener]]


@pytest.fixture
async def serve(kind: str) -> AsyncIterator[Serve]:
    """Start a listener of this test's transport; all are closed at the end."""
    started: list[Listener] = []

    async def start(
        handler: Callable[[Connection], Awaitable[None]] = echo, **changes: object
    ) -> Listener:
        listener = await listen(kind, handler, replace(OPTIONS, **changes))  # type: ignore[arg-type]
        started.append(listener)
        return listener

    yield start
    for listener in started:
        await asyncio.wait_for(listener.close(), 5)


# -- the opening handshake --------------------------------------------------------------


async def test_subprotocol_negotiated_and_server_header(serve: Serve) -> None:
    listener = await serve()
    client = await RawClient.connect(
        listener.port, headers=(("Sec-WebSocket-Protocol", "chat, stateroom.v1.json"),)
    )
    assert client.status == 101
    assert client.headers["sec-websocket-protocol"] == "stateroom.v1.json"
    assert client.headers["server"] == "stateroom"
    client.close()


async def test_no_subprotocol_offered_means_none_chosen(serve: Serve) -> None:
    listener = await serve()
    client = await RawClient.connect(listener.port)
    assert client.status == 101
    assert "sec-websocket-protocol" not in client.headers
    client.close()


async def test_unknown_subprotocols_only_get_400(serve: Serve) -> None:
    listener = await serve()
    client = await RawClient.connect(listener.port, headers=(("Sec-WebSocket-Protocol", "chat"),))
    assert client.status == 400
    assert b"unsupported subprotocol" in client.body
    client.close()


async def test_origin_allow_list(serve: Serve) -> None:
    listener = await serve(origins=("https://game.example",))
    refused = await RawClient.connect(listener.port, headers=(("Origin", "https://evil"),))
    assert refused.status == 403
    allowed = await RawClient.connect(listener.port, headers=(("Origin", "https://game.example"),))
    native = await RawClient.connect(listener.port)  # no Origin: a native client
    assert (allowed.status, native.status) == (101, 101)
    for client in (refused, allowed, native):
        client.close()


async def test_process_request_answers_plain_http(serve: Serve) -> None:
    listener = await serve()
    health = await RawClient.get(listener.port, "/healthz")
    assert (health.status, health.body) == (200, b"ok\n")
    other = await RawClient.get(listener.port, "/nope")
    assert other.status == 404 and b"/v1/ws" in other.body
    for client in (health, other):
        client.close()


async def test_plain_http_not_answered_by_the_hook_gets_426(serve: Serve) -> None:
    listener = await serve(process_request=None)
    client = await RawClient.get(listener.port, "/v1/ws")
    assert client.status == 426
    client.close()


async def test_process_request_sees_headers_and_address(serve: Serve) -> None:
    seen: list[HttpRequest] = []

    def refuse(request: HttpRequest) -> HttpResponse:
        seen.append(request)
        return HttpResponse(429, b'{"error": {}}', "application/json")

    listener = await serve(process_request=refuse)
    client = await RawClient.connect(
        listener.port, path="/v1/ws?placed=1", headers=(("Authorization", "Bearer abc"),)
    )
    assert client.status == 429 and client.headers["content-type"] == "application/json"
    (request,) = seen
    assert request.path == "/v1/ws?placed=1"
    assert request.header("authorization") == "Bearer abc"
    assert request.remote_address is not None and request.remote_address[0] == "127.0.0.1"
    client.close()


# -- data frames ----------------------------------------------------------------------


async def test_echo_binary_and_text(serve: Serve) -> None:
    listener = await serve()
    client = await RawClient.connect(listener.port)
    client.send(frame(BINARY, b"\x00\x01first"))
    client.send(frame(TEXT, "héllo".encode()))
    client.send(frame(BINARY, b"x" * 300))  # 16-bit length
    assert (await client.read_data()) == Frame(True, BINARY, b"\x00\x01first")
    assert (await client.read_data()) == Frame(True, TEXT, "héllo".encode())
    assert (await client.read_data()) == Frame(True, BINARY, b"x" * 300)
    client.close()


async def test_fragmented_message_with_ping_between_fragments(serve: Serve) -> None:
    listener = await serve()
    client = await RawClient.connect(listener.port)
    client.send(frame(BINARY, b"join"))
    assert (await client.read_data()).payload == b"join"
    client.send(frame(BINARY, b"one-", fin=False))
    client.send(frame(PING, b"p1"))
    client.send(frame(CONT, b"two-", fin=False))
    client.send(frame(PONG, b"unsolicited"))  # ignored
    client.send(frame(CONT, b"three"))
    client.send(frame(TEXT, "é".encode()[:1], fin=False))  # UTF-8 split across fragments
    client.send(frame(CONT, "é".encode()[1:]))
    assert (await client.read()) == Frame(True, PONG, b"p1")
    assert (await client.read()) == Frame(True, BINARY, b"one-two-three")
    assert (await client.read()) == Frame(True, TEXT, "é".encode())
    client.close()


async def test_fragments_before_on_message_reach_recv(serve: Serve) -> None:
    listener = await serve()
    client = await RawClient.connect(listener.port)
    client.send(frame(TEXT, b"jo", fin=False))
    client.send(frame(CONT, b"in"))
    assert (await client.read_data()) == Frame(True, TEXT, b"join")
    client.close()


async def test_whole_message_size_limit_applies_across_fragments(serve: Serve) -> None:
    listener = await serve()
    client = await RawClient.connect(listener.port)
    client.send(frame(BINARY, b"a" * 600, fin=False))
    client.send(frame(CONT, b"b" * 600))  # each under 1024, together over it
    await client.expect_close(1009)
    await client.expect_eof()
    client.close()


async def test_single_frame_over_the_limit_is_1009(serve: Serve) -> None:
    listener = await serve()
    client = await RawClient.connect(listener.port)
    client.send(frame(BINARY, b"z" * 1025))
    await client.expect_close(1009)
    client.close()


async def test_per_connection_limit_can_be_raised(serve: Serve) -> None:
    async def handler(conn: Connection) -> None:
        conn.max_message_size = 4096
        await echo(conn)

    listener = await serve(handler, max_frame_bytes=8192)
    client = await RawClient.connect(listener.port)
    client.send(frame(BINARY, b"y" * 3000))
    assert (await client.read_data()).payload == b"y" * 3000
    client.send(frame(BINARY, b"y" * 4097))
    await client.expect_close(1009)
    client.close()


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (frame(BINARY, b"plain", masked=False), 1002),  # §5.1: clients must mask
        (frame(BINARY, b"x", rsv=0x40), 1002),  # RSV1 without an extension
        (frame(BINARY, b"x", rsv=0x10), 1002),  # RSV3
        (frame(0x3, b"x"), 1002),  # reserved data opcode
        (frame(0xB, b"x"), 1002),  # reserved control opcode
        (frame(PING, b"p" * 126), 1002),  # control frame over 125 bytes
        (frame(PING, b"p", fin=False), 1002),  # fragmented control frame
        (frame(CONT, b"orphan"), 1002),  # continuation without a start
        (frame(TEXT, b"\xff\xfe"), 1007),  # invalid UTF-8
        (frame(TEXT, b"\xc3", fin=False) + frame(CONT, b"\x28"), 1007),  # ... across fragments
        (frame(BINARY, b"a", fin=False) + frame(BINARY, b"b"), 1002),  # new message inside one
        (frame(CLOSE, close_payload(1005)), 1002),  # a code no frame may carry
        (frame(CLOSE, close_payload(1006)), 1002),
        (frame(CLOSE, close_payload(999)), 1002),
        (frame(CLOSE, close_payload(5000)), 1002),
        (frame(CLOSE, b"\x03"), 1002),  # one-byte close payload
        (frame(CLOSE, close_payload(1000, b"\xff")), 1007),  # invalid UTF-8 reason
    ],
    ids=[
        "unmasked",
        "rsv1",
        "rsv3",
        "opcode-3",
        "opcode-B",
        "big-ping",
        "fragmented-ping",
        "orphan-continuation",
        "bad-utf8",
        "bad-utf8-fragmented",
        "data-inside-fragments",
        "close-1005",
        "close-1006",
        "close-999",
        "close-5000",
        "close-1-byte",
        "close-bad-reason",
    ],
)
async def test_protocol_violations_close_with_the_rfc_code(
    serve: Serve, bad: bytes, code: int
) -> None:
    listener = await serve()
    client = await RawClient.connect(listener.port)
    client.send(frame(BINARY, b"join"))
    assert (await client.read_data()).payload == b"join"
    client.send(bad)
    await client.expect_close(code)
    await client.expect_eof()
    client.close()


async def test_ping_answered_with_its_payload(serve: Serve) -> None:
    listener = await serve()
    client = await RawClient.connect(listener.port)
    client.send(frame(PING, b"are you there"))
    assert (await client.read()) == Frame(True, PONG, b"are you there")
    client.close()


# -- the closing handshake ----------------------------------------------------------------


async def test_client_close_is_echoed_then_disconnected(serve: Serve) -> None:
    listener = await serve()
    client = await RawClient.connect(listener.port)
    client.send(frame(CLOSE, close_payload(4321, b"bye")))
    await client.expect_close(4321)
    await client.expect_eof()
    client.close()


async def test_empty_close_is_echoed_empty(serve: Serve) -> None:
    listener = await serve()
    client = await RawClient.connect(listener.port)
    client.send(frame(CLOSE))
    got = await client.expect_close(None)
    assert got.payload == b""
    await client.expect_eof()
    client.close()


def closing_with(code: int, reason: str) -> Callable[[Connection], Awaitable[None]]:
    async def handler(conn: Connection) -> None:
        await conn.recv()
        conn.close(code, reason)
        assert not conn.open
        assert not conn.send(b"late", False)  # nothing goes out after our close
        await conn.wait_closed()

    return handler


async def test_server_close_waits_for_the_peer_close(serve: Serve) -> None:
    listener = await serve(closing_with(4009, "outbox overflow"))
    client = await RawClient.connect(listener.port)
    client.send(frame(BINARY, b"go"))
    got = await client.expect_close(4009)
    assert got.payload[2:] == b"outbox overflow"
    client.send(frame(CLOSE, close_payload(4009)))
    await client.expect_eof(within=0.4)  # well before close_timeout_s (0.5) would end it
    client.close()


async def test_server_close_gives_up_after_the_timeout(serve: Serve) -> None:
    listener = await serve(closing_with(4001, "token_expired"), close_timeout_s=0.3)
    client = await RawClient.connect(listener.port)
    client.send(frame(BINARY, b"go"))
    await client.expect_close(4001)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await client.expect_eof(within=2.0)  # we never answer; the server drops us
        raise ConnectionResetError  # a clean EOF counts too
    assert loop.time() - started < 1.5
    client.close()


async def test_handler_return_closes_1000_and_failure_1011(serve: Serve) -> None:
    async def returns(conn: Connection) -> None:
        await conn.recv()

    async def raises(conn: Connection) -> None:
        await conn.recv()
        raise RuntimeError("a bug")

    fine, broken = await serve(returns), await serve(raises)
    for listener, code in ((fine, 1000), (broken, 1011)):
        client = await RawClient.connect(listener.port)
        client.send(frame(BINARY, b"x"))
        await client.expect_close(code)
        client.send(frame(CLOSE, close_payload(code)))
        await client.expect_eof()
        client.close()


async def test_listener_close_sends_1001_to_everyone(kind: str) -> None:
    listener = await listen(kind, echo, OPTIONS)
    clients = [await RawClient.connect(listener.port) for _ in range(3)]
    closing = asyncio.create_task(listener.close())
    for client in clients:
        await client.expect_close(1001)
        client.send(frame(CLOSE, close_payload(1001)))
    await asyncio.wait_for(closing, 5)
    for client in clients:
        client.close()


# -- keepalive ------------------------------------------------------------------------


async def test_keepalive_ping_unanswered_closes_1011(serve: Serve) -> None:
    listener = await serve(ping_interval_s=0.2, ping_timeout_s=0.2)
    client = await RawClient.connect(listener.port)
    ping = await client.read()
    assert ping.opcode == PING
    await client.expect_close(1011)  # we never answered
    client.close()


async def test_keepalive_answered_keeps_the_connection(serve: Serve) -> None:
    listener = await serve(ping_interval_s=0.15, ping_timeout_s=0.15)
    client = await RawClient.connect(listener.port)
    for _ in range(4):  # four rounds: 0.6 s, longer than interval + timeout
        ping = await client.read()
        assert ping.opcode == PING
        client.send(frame(PONG, ping.payload))
    client.send(frame(BINARY, b"still here"))
    assert (await client.read_data()).payload == b"still here"
    client.close()


# -- delivery, outbox, lifecycle --------------------------------------------------------


async def test_messages_queued_before_on_message_keep_their_order(serve: Serve) -> None:
    got: list[bytes | str] = []
    ready = asyncio.Event()

    async def handler(conn: Connection) -> None:
        got.append(await conn.recv())
        await ready.wait()  # the client's next messages are queued meanwhile
        conn.on_message = got.append
        await conn.wait_closed()

    listener = await serve(handler)
    client = await RawClient.connect(listener.port)
    client.send(frame(BINARY, b"1"))
    client.send(frame(BINARY, b"2"))
    client.send(frame(BINARY, b"3", fin=False) + frame(CONT, b"3"))
    client.send(frame(TEXT, b"4"))
    await asyncio.sleep(0.1)
    ready.set()
    await asyncio.sleep(0)
    client.send(frame(BINARY, b"5"))
    for _ in range(100):
        if len(got) == 5:
            break
        await asyncio.sleep(0.01)
    assert got == [b"1", b"2", b"33", "4", b"5"]
    client.close()


async def test_overflowing_outbox_evicts_the_client(serve: Serve) -> None:
    overflowed = asyncio.Event()
    sent = 0

    async def flood(conn: Connection) -> None:
        nonlocal sent
        conn.on_overflow = overflowed.set
        await conn.recv()
        chunk = b"s" * 16_000
        while conn.send(chunk, False):  # the client reads nothing meanwhile
            sent += 1
            await asyncio.sleep(0)
        await conn.wait_closed()

    listener = await serve(flood, outbox_bytes=64 * 1024, socket_sndbuf=16 * 1024)
    client = await RawClient.connect(listener.port)
    client.send(frame(BINARY, b"go"))
    await asyncio.wait_for(overflowed.wait(), 5)
    assert sent > 4  # the outbox bound, not the first write, stopped it
    received = 0
    while True:
        got = await client.read()
        if got.opcode == CLOSE:
            break
        received += 1
    assert got.code == 4009
    assert received == sent
    client.close()


async def test_remote_address_and_disconnect_callback(serve: Serve) -> None:
    gone = asyncio.Event()
    seen: list[tuple[str, int] | None] = []

    async def handler(conn: Connection) -> None:
        conn.on_disconnect = gone.set
        seen.append(conn.remote_address)
        await conn.wait_closed()

    listener = await serve(handler)
    client = await RawClient.connect(listener.port)
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0.01)
    local = client.writer.get_extra_info("sockname")
    assert seen == [("127.0.0.1", local[1])]
    client.writer.transport.abort()  # no close frame: the TCP connection just ends
    await asyncio.wait_for(gone.wait(), 3)


async def test_recv_raises_once_closed(serve: Serve) -> None:
    outcome: list[str] = []

    async def handler(conn: Connection) -> None:
        try:
            await conn.recv()
        except ConnectionClosed:
            outcome.append("closed")

    listener = await serve(handler)
    client = await RawClient.connect(listener.port)
    client.send(frame(CLOSE, close_payload(1000)))
    await client.expect_close(1000)
    await client.expect_eof()
    client.close()
    for _ in range(100):
        if outcome:
            break
        await asyncio.sleep(0.01)
    assert outcome == ["closed"]
