"""The compiled transport: the interface on ``picows`` (Cython, frame-level).

picows parses frames in C and writes with one ``send()`` syscall when the socket
takes it all; it is frame-level, so the RFC 6455 rules above frames live here:

- picows itself rejects (with a close frame, then disconnects): unmasked client
  frames, unknown opcodes, fragmented or over-125-byte control frames,
  non-minimal lengths, frames over ``max_frame_bytes`` (1009), invalid close
  codes below 3000 and invalid UTF-8 in a close reason; it answers pings;
- this module adds: reserved bits (1002), message reassembly with the size limit
  applied to the whole message (1009), continuation without a start and a new
  data frame inside a fragmented message (1002), invalid UTF-8 in text (1007),
  close codes 1005/1006/1015/0/5000+ in a close frame (1002), the close
  handshake (echo the peer's close, then disconnect; our close waits for the
  peer's up to ``close_timeout_s``), keepalive pings with a timeout (1011, as
  websockets), unsolicited pongs ignored.

The upgrade is ours too: the HTTP hook, the Origin allow-list and subprotocol
negotiation run in the listener factory, before picows validates the upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, cast

from multidict import CIMultiDict
from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)
from picows.picows import WSAutoPingStrategy, WSProtocol  # type: ignore[attr-defined]

from server.transport.base import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_INVALID_DATA,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    Connection,
    ConnectionClosed,
    Handler,
    HandshakeRefused,
    HttpRequest,
    HttpResponse,
    Listener,
    TransportOptions,
    log,
)
from server.transport.frames import close_reason_bytes, valid_close_code

try:
    import aiofastnet

    _create_server: Any = aiofastnet.create_server
except ImportError:  # pragma: no cover - aiofastnet is a dependency of picows
    _create_server = None

# Initial read buffer per connection (picows' default is 16 KiB; it doubles when a frame
# needs more). Inputs are tens of bytes: 4 KiB keeps 10,000 connections at 40 MB.
_READ_BUFFER_BYTES = 1024

_BINARY = WSMsgType.BINARY
_TEXT = WSMsgType.TEXT
_CONTINUATION = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE
_PONG = WSMsgType.PONG


# picows logs every accepted and lost connection at INFO and every client's protocol
# violation at ERROR: a client would decide how much we log. What matters is logged
# by this module; picows' own logger only speaks for failures of picows itself.
def _nothing_buffered() -> int:
    return 0


def _not_connected(msg_type: WSMsgType, payload: bytes) -> None:
    raise ConnectionClosed("not connected yet")


def _not_connected_in_place(msg_type: WSMsgType, buffer: bytearray, offset: int) -> None:
    raise ConnectionClosed("not connected yet")


def _code(code: int) -> WSCloseCode:
    """picows takes any int where its stubs say WSCloseCode (its enum is a C enum)."""
    return cast(WSCloseCode, code)


_wire_log = logging.getLogger("stateroom.transport.picows.wire")
_wire_log.setLevel(logging.CRITICAL)


class PicowsConnection(Connection, WSListener):
    """One client connection on picows; also its picows listener (frame callbacks)."""

    def __init__(
        self,
        request: HttpRequest,
        subprotocol: str | None,
        options: TransportOptions,
        handler: Handler,
        registry: set[PicowsConnection],
    ) -> None:
        Connection.__init__(self, request, subprotocol, options)
        self._loop = asyncio.get_running_loop()
        self._handler = handler
        self._registry = registry
        self._transport: WSTransport | None = None
        self._max = options.max_message_bytes
        # Delivery: True while open and no fragmented message is being reassembled.
        self._fast = False
        # A close frame was sent or received, or the socket is gone (or not there yet).
        self._closing = True
        self._buffered: Callable[[], int] = _nothing_buffered
        self._send: Callable[[WSMsgType, bytes], None] = _not_connected
        self._send_in_place: Callable[[WSMsgType, bytearray, int], None] = _not_connected_in_place
        self._close_sent = False
        self._gone = False
        self._parts: list[bytes] | None = None
        self._parts_text = False
        self._parts_size = 0
        self._queue: deque[bytes | str] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._ping_payload: bytes | None = None
        self._ping_count = 0
        self._ping_sent_at = 0.0
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._task: asyncio.Task[None] | None = None

    # -- the interface ------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return not self._closing

    @property
    def max_message_size(self) -> int:
        return self._max

    @max_message_size.setter
    def max_message_size(self, size: int) -> None:
        self._max = size

    def write_buffer_size(self) -> int:
        transport = self._transport
        if transport is None:
            return 0
        return int(transport.underlying_transport.get_write_buffer_size())

    def send(self, payload: bytes, text: bool) -> bool:
        """Connection.send inlined: this runs once per player per tick."""
        if self._closing:
            return False
        if self._buffered() > self.outbox_bytes:
            self._evict()
            return False
        try:
            self._send(_TEXT if text else _BINARY, payload)
        except Exception:  # the socket broke under us; on_ws_disconnected cleans up
            return False
        return True

    def send_in_place(self, buffer: bytearray, offset: int, text: bool) -> bool:
        """picows writes the header before ``offset`` and sends buffer and header in one
        ``send()`` (a part the socket does not take is copied): no copy into the
        connection's own write buffer, which would grow to the largest state."""
        if self._closing:
            return False
        if self._buffered() > self.outbox_bytes:
            self._evict()
            return False
        try:
            self._send_in_place(_TEXT if text else _BINARY, buffer, offset)
        except Exception:  # the socket broke under us; on_ws_disconnected cleans up
            return False
        return True

    def _write(self, payload: bytes, text: bool) -> bool:
        transport = self._transport
        if transport is None:
            return False
        try:
            transport.send(_TEXT if text else _BINARY, payload)
        except Exception:  # the socket broke under us; on_ws_disconnected cleans up
            return False
        return True

    def close(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._start_close(code, reason)

    async def recv(self) -> bytes | str:
        while not self._queue:
            if self._closing:
                raise ConnectionClosed("connection is closing")
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        message = self._queue.popleft()
        self._maybe_resume()
        return message

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def _message_callback_set(self, callback: Callable[[bytes | str], None] | None) -> None:
        # Messages that arrived before the callback go first, in order.
        while callback is not None and self._queue and not self._closing:
            self._dispatch(callback, self._queue.popleft())
        self._maybe_resume()

    # -- picows callbacks ---------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._transport = transport
        self._buffered = transport.underlying_transport.get_write_buffer_size
        self._send = transport.send
        self._send_in_place = transport.send_reuse_external_bytearray
        self._closing = False
        self._fast = True
        sndbuf = self.options.socket_sndbuf
        if sndbuf:
            sock = transport.underlying_transport.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self._registry.add(self)
        log.debug("connection open from %s", self.remote_address)
        if self.options.ping_interval_s:
            self._ping_timer = self._loop.call_later(self.options.ping_interval_s, self._ping)
        self._task = self._loop.create_task(self._run())

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        # The hot path: one complete data frame of an open connection, no reserved bit.
        if self._fast and frame.fin and not (frame.rsv1 or frame.rsv2 or frame.rsv3):
            msg_type = frame.msg_type
            if msg_type == _BINARY:
                if frame.payload_size > self._max:
                    self._fail(CLOSE_MESSAGE_TOO_BIG, f"message over {self._max} bytes")
                    return
                callback = self._on_message
                if callback is None:
                    self._deliver(frame.get_payload_as_bytes())
                    return
                try:  # _dispatch inlined: one call less per input
                    callback(frame.get_payload_as_bytes())
                except Exception:
                    log.exception("message callback failed; closing the connection")
                    self.close(CLOSE_INTERNAL_ERROR, "internal error")
                return
            if msg_type == _TEXT:
                if frame.payload_size > self._max:
                    self._fail(CLOSE_MESSAGE_TOO_BIG, f"message over {self._max} bytes")
                    return
                try:
                    text = frame.get_payload_as_utf8_text()
                except UnicodeDecodeError:
                    self._fail(CLOSE_INVALID_DATA, "invalid UTF-8 in a text message")
                    return
                self._deliver(text)
                return
        self._other_frame(frame)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._gone = self._closing = True
        self._fast = False
        for timer in (self._close_timer, self._ping_timer):
            if timer is not None:
                timer.cancel()
        self._close_timer = self._ping_timer = None
        self._wake()
        self._registry.discard(self)
        log.debug("connection closed from %s", self.remote_address)
        if not self._closed.done():
            self._closed.set_result(None)
        callback = self.on_disconnect
        if callback is not None:
            try:
                callback()
            except Exception:
                log.exception("disconnect callback failed")

    def pause_writing(self) -> None:
        """The socket's buffer is over its high-water mark: the outbox policy handles it."""

    def resume_writing(self) -> None:
        """Nothing waits for the socket, so nothing to resume."""

    # -- frames off the hot path -----------------------------------------------------

    def _other_frame(self, frame: WSFrame) -> None:
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            self._fail(CLOSE_PROTOCOL_ERROR, "reserved bits set without an extension")
            return
        msg_type = frame.msg_type
        if msg_type == _CLOSE:
            self._close_frame(frame)
            return
        if msg_type == _PONG:
            if self._ping_payload is not None and frame.get_payload_as_bytes() == (
                self._ping_payload
            ):
                self._pong()
            return  # unsolicited pongs are ignored (§5.5.3)
        if msg_type not in (_BINARY, _TEXT, _CONTINUATION):
            return  # a ping: picows has answered it
        if self._closing:
            return  # data after a close frame is discarded (§1.4)
        if msg_type != _CONTINUATION:
            if self._parts is not None:
                self._fail(CLOSE_PROTOCOL_ERROR, "new data frame inside a fragmented message")
                return
            # Only a first fragment gets here (a complete frame took the hot path).
            self._parts = []
            self._parts_text = msg_type == _TEXT
            self._parts_size = 0
            self._fast = False
        elif self._parts is None:
            self._fail(CLOSE_PROTOCOL_ERROR, "continuation frame without a message to continue")
            return
        self._parts_size += frame.payload_size
        if self._parts_size > self._max:
            self._fail(CLOSE_MESSAGE_TOO_BIG, f"message over {self._max} bytes")
            return
        self._parts.append(frame.get_payload_as_bytes())
        if not frame.fin:
            return
        data = b"".join(self._parts)
        self._parts = None
        self._fast = True
        if self._parts_text:
            try:
                self._deliver(data.decode())
            except UnicodeDecodeError:
                self._fail(CLOSE_INVALID_DATA, "invalid UTF-8 in a text message")
            return
        self._deliver(data)

    def _close_frame(self, frame: WSFrame) -> None:
        """The peer's close: end our handshake, or echo it (§5.5.1) and disconnect."""
        transport = self._transport
        assert transport is not None
        code = int(frame.get_close_code().value) if frame.payload_size >= 2 else None
        if code is not None and not valid_close_code(code):
            if not self._close_sent:
                self._close_sent = True
                transport.send_close(_code(CLOSE_PROTOCOL_ERROR), b"invalid close code")
        elif not self._close_sent:
            self._close_sent = True
            if code is None:
                transport.send(_CLOSE, b"")  # an empty close is echoed empty
            else:
                transport.send_close(_code(code))
        self._closing = True
        self._fast = False
        self._wake()
        transport.disconnect()

    def _deliver(self, message: bytes | str) -> None:
        callback = self._on_message
        if callback is None:
            self._queue.append(message)
            self._wake()
            if len(self._queue) >= self.options.max_queue and not self._paused:
                self._paused = True
                assert self._transport is not None
                self._transport.underlying_transport.pause_reading()
            return
        self._dispatch(callback, message)

    def _dispatch(self, callback: Callable[[bytes | str], None], message: bytes | str) -> None:
        try:
            callback(message)
        except Exception:
            log.exception("message callback failed; closing the connection")
            self.close(CLOSE_INTERNAL_ERROR, "internal error")

    # -- closing ------------------------------------------------------------------------

    def _start_close(self, code: int, reason: str) -> None:
        """Send our close frame; the peer's close (or the timeout) ends the connection."""
        self._closing = True
        self._fast = False
        self._wake()
        transport = self._transport
        if transport is None or self._gone:
            return
        if not self._close_sent:
            self._close_sent = True
            transport.send_close(_code(code), close_reason_bytes(reason))
        if self._close_timer is None:
            self._close_timer = self._loop.call_later(
                self.options.close_timeout_s, self._close_timed_out
            )

    def _fail(self, code: int, reason: str) -> None:
        """A protocol violation (§7.1.7): close with ``code``, read nothing more, and
        half-close so the peer sees our close frame and ends the TCP connection."""
        log.debug("failing connection from %s: %d %s", self.remote_address, code, reason)
        self._parts = None
        self._start_close(code, reason)
        transport = self._transport
        if transport is not None and not self._gone:
            underlying = transport.underlying_transport
            with contextlib.suppress(Exception):
                if underlying.can_write_eof():
                    underlying.write_eof()

    def _close_timed_out(self) -> None:
        self._close_timer = None
        if self._transport is not None and not self._gone:
            self._transport.disconnect(graceful=False)

    # -- keepalive ----------------------------------------------------------------------

    def _ping(self) -> None:
        self._ping_timer = None
        transport = self._transport
        if self._closing or transport is None:
            return
        self._ping_count += 1
        self._ping_payload = self._ping_count.to_bytes(4, "big")
        self._ping_sent_at = self._loop.time()
        transport.send_ping(self._ping_payload)
        timeout = self.options.ping_timeout_s
        if timeout:
            self._ping_timer = self._loop.call_later(timeout, self._ping_timed_out)
        else:
            self._ping_payload = None
            self._schedule_ping(0.0)

    def _pong(self) -> None:
        self._ping_payload = None
        if self._ping_timer is not None:
            self._ping_timer.cancel()
        self._schedule_ping(self._loop.time() - self._ping_sent_at)

    def _schedule_ping(self, elapsed: float) -> None:
        interval = self.options.ping_interval_s
        assert interval
        self._ping_timer = self._loop.call_later(max(0.0, interval - elapsed), self._ping)

    def _ping_timed_out(self) -> None:
        self._ping_timer = None
        self._ping_payload = None
        self._fail(CLOSE_INTERNAL_ERROR, "keepalive ping timeout")

    # -- helpers ------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _maybe_resume(self) -> None:
        if self._paused and len(self._queue) <= self.options.max_queue // 4:
            self._paused = False
            if self._transport is not None and not self._gone:
                self._transport.underlying_transport.resume_reading()

    async def _run(self) -> None:
        try:
            await self._handler(self)
        except Exception:
            log.exception("connection handler failed")
            self.close(CLOSE_INTERNAL_ERROR, "internal error")
        else:
            self.close(CLOSE_NORMAL, "")
        await self.wait_closed()


def _upgrade_answer(answer: HttpResponse, server_header: str) -> WSUpgradeResponseWithListener:
    response = WSUpgradeResponse()
    response.version = b"HTTP/1.1"
    response.status = HTTPStatus(answer.status)
    headers: CIMultiDict[str] = CIMultiDict()
    headers["Content-Type"] = answer.content_type
    if server_header:
        headers["Server"] = server_header
    headers["Cache-Control"] = "no-store"
    for name, value in answer.headers:
        headers[name] = value
    response.headers = headers
    response.body = answer.body
    if not answer.body:
        headers["Content-Length"] = "0"
    return WSUpgradeResponseWithListener(response, None)


def _refusal(status: HTTPStatus, message: str, server_header: str) -> WSUpgradeResponseWithListener:
    body = f"Failed to open a WebSocket connection: {message}.\n".encode()
    return _upgrade_answer(HttpResponse(status.value, body), server_header)


def _offered(request: HttpRequest) -> list[str]:
    return [
        name.strip()
        for value in request.header_values("Sec-WebSocket-Protocol")
        for name in value.split(",")
        if name.strip()
    ]


class PicowsListener(Listener):
    def __init__(self, server: asyncio.AbstractServer, connections: set[PicowsConnection]):
        self._server = server
        self._connections = connections

    @property
    def port(self) -> int:
        sockets = self._server.sockets  # type: ignore[attr-defined]
        return int(sockets[0].getsockname()[1])

    def stop_accepting(self) -> None:
        self._server.close()

    async def close(self, code: int = 1001, reason: str = "server shutting down") -> None:
        self.stop_accepting()
        connections = list(self._connections)
        for connection in connections:
            connection.close(code, reason)
        tasks = [c._task for c in connections if c._task is not None]
        if tasks:
            timeout = connections[0].options.close_timeout_s + 1.0
            _, late = await asyncio.wait(tasks, timeout=timeout)
            for connection in connections:  # handlers that did not end: drop their sockets
                if connection._task in late and connection._transport is not None:
                    connection._transport.disconnect(graceful=False)


async def listen(handler: Handler, options: TransportOptions) -> PicowsListener:
    """Listen on options.host:options.port with picows."""
    connections: set[PicowsConnection] = set()
    server_header = options.server_header

    def negotiate(protocol: Any, upgrade: WSUpgradeRequest) -> WSUpgradeResponseWithListener:
        peer = protocol.transport.underlying_transport.get_extra_info("peername")
        request = HttpRequest(
            upgrade.path.decode("latin-1"),
            tuple(upgrade.headers.items()),
            (str(peer[0]), int(peer[1])) if peer else None,
        )
        if options.process_request is not None:
            answer = options.process_request(request)
            if answer is not None:
                return _upgrade_answer(answer, server_header)
        upgrade_header = request.header("Upgrade") or ""
        if upgrade_header.lower() != "websocket":
            return _refusal(
                HTTPStatus.UPGRADE_REQUIRED, f"invalid Upgrade header: {upgrade_header}", ""
            )
        origin = request.header("Origin")
        if options.origins and origin is not None and origin not in options.origins:
            return _refusal(HTTPStatus.FORBIDDEN, f"invalid Origin header: {origin}", "")
        offered = _offered(request)
        try:
            if options.select_subprotocol is not None:
                chosen = options.select_subprotocol(offered)
            else:
                chosen = next((p for p in offered if p in options.subprotocols), None)
        except HandshakeRefused as exc:
            return _refusal(HTTPStatus.BAD_REQUEST, str(exc), "")
        connection = PicowsConnection(request, chosen, options, handler, connections)
        extra: list[tuple[str, str]] = []
        if chosen is not None:
            extra.append(("Sec-WebSocket-Protocol", chosen))
        if server_header:
            extra.append(("Server", server_header))
        return WSUpgradeResponseWithListener(
            WSUpgradeResponse.create_101_response(extra), connection
        )

    def protocol_factory() -> Any:
        protocol: Any = None

        def listener_factory(upgrade: WSUpgradeRequest) -> WSUpgradeResponseWithListener:
            return negotiate(protocol, upgrade)

        protocol = WSProtocol(
            None,  # host:port (client side only)
            None,  # path (client side only)
            False,  # server side
            listener_factory,
            _wire_log,
            True,  # disconnect on a callback's exception
            options.open_timeout_s,
            False,  # keepalive pings are ours (PicowsConnection._ping)
            20.0,
            20.0,
            WSAutoPingStrategy.PING_WHEN_IDLE,
            True,  # answer pings
            options.frame_ceiling,
            None,
            _READ_BUFFER_BYTES,
        )
        return protocol

    loop = asyncio.get_running_loop()
    if _create_server is not None:
        server = await _create_server(loop, protocol_factory, options.host, options.port)
    else:  # pragma: no cover
        server = await loop.create_server(protocol_factory, options.host, options.port)
    return PicowsListener(server, connections)
