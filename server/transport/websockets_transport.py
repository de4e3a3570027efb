"""The reference transport: the interface on ``websockets`` (the new asyncio API).

websockets does the RFC 6455 work (masking, fragments, control frames, UTF-8,
close handshake, keepalive); this module adds the two shortcuts of the room
server's hot path that ``server/fastpath.py`` introduced:

- a data frame goes out as one ``transport.write`` of a prebuilt header plus the
  payload, instead of a websockets ``Frame`` per player per tick (valid because
  the server never compresses nor fragments, and only while websockets itself has
  nothing queued for the connection; otherwise it goes through websockets);
- once ``on_message`` is set, each complete unfragmented data frame is handed to
  it from ``data_received``, without waking a coroutine. Fragmented messages are
  reassembled by websockets and delivered by a small pump task.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed as WsConnectionClosed
from websockets.exceptions import NegotiationError
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Event, State
from websockets.typing import Origin, Subprotocol

from server.transport.base import (
    CLOSE_INVALID_DATA,
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
from server.transport.frames import close_reason_bytes, frame_header


class _FastServerConnection(ServerConnection):
    """A websockets connection that hands complete data frames to its adapter."""

    adapter: WebsocketsConnection | None = None

    def process_event(self, event: Event) -> None:
        adapter = self.adapter
        if (
            adapter is not None
            and adapter._on_message is not None
            and isinstance(event, Frame)
            and event.opcode in (Opcode.BINARY, Opcode.TEXT)
        ):
            if not event.fin or adapter._assembling or len(self.recv_messages.frames):
                # Fragments, or messages queued ahead of this one: websockets
                # reassembles them and the pump delivers them, in order.
                adapter._assembling = True
                super().process_event(event)
                return
            if adapter._closing:
                return
            data = bytes(event.data)
            if event.opcode is Opcode.TEXT:
                try:
                    message: bytes | str = data.decode()
                except UnicodeDecodeError:
                    # §8.1: invalid UTF-8 fails the connection with 1007 (websockets
                    # checks it only on its own recv() path, which this one skips).
                    self.protocol.fail(CLOSE_INVALID_DATA, "invalid UTF-8 in a text frame")
                    self.send_data()
                    return
            else:
                message = data
            adapter._deliver(message)
            return
        super().process_event(event)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        adapter = self.adapter
        if adapter is not None:
            adapter._disconnected()


class WebsocketsConnection(Connection):
    def __init__(self, ws: _FastServerConnection, options: TransportOptions) -> None:
        request = ws.request
        assert request is not None
        super().__init__(_http_request(ws, request), ws.subprotocol, options)
        self._ws = ws
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._gone = False
        self._assembling = False  # a message is on websockets' path: keep order behind it
        ws.adapter = self

    @property
    def open(self) -> bool:
        return not self._closing and self._ws.protocol.state is State.OPEN

    @property
    def max_message_size(self) -> int:
        return self._ws.protocol.max_message_size or 0

    @max_message_size.setter
    def max_message_size(self, size: int) -> None:
        self._ws.protocol.max_message_size = size

    def write_buffer_size(self) -> int:
        return self._ws.transport.get_write_buffer_size()

    def send(self, payload: bytes, text: bool) -> bool:
        """Connection.send inlined: this runs once per player per tick."""
        ws = self._ws
        if self._closing or ws.protocol.state is not State.OPEN:
            return False
        transport = ws.transport
        if transport.get_write_buffer_size() > self.outbox_bytes:
            self._evict()
            return False
        if ws.protocol.writes:
            return self._write(payload, text)
        try:
            transport.write(frame_header(len(payload), text) + payload)
        except Exception:  # the connection broke under us; connection_lost cleans up
            return False
        return True

    def _write(self, payload: bytes, text: bool) -> bool:
        ws = self._ws
        try:
            if ws.protocol.writes:  # websockets has bytes of its own queued: keep order
                if text:
                    ws.protocol.send_text(payload)
                else:
                    ws.protocol.send_binary(payload)
                ws.send_data()
            else:
                ws.transport.write(frame_header(len(payload), text) + payload)
        except Exception:  # the connection broke under us; connection_lost cleans up
            return False
        return True

    def close(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        text = close_reason_bytes(reason).decode()
        self._close_task = asyncio.get_running_loop().create_task(self._ws.close(code, text))

    async def recv(self) -> bytes | str:
        if self._closing:
            raise ConnectionClosed("connection is closing")
        try:
            return await self._ws.recv()
        except WsConnectionClosed as exc:
            raise ConnectionClosed(str(exc)) from None

    async def wait_closed(self) -> None:
        if self._close_task is not None:
            await asyncio.shield(self._close_task)
        await self._ws.wait_closed()

    def _message_callback_set(self, callback: Callable[[bytes | str], None] | None) -> None:
        if callback is not None and self._pump is None and not self._gone:
            self._pump = asyncio.get_running_loop().create_task(self._pump_fragmented())

    async def _pump_fragmented(self) -> None:
        """Deliver what websockets reassembled (fragmented messages, and any message
        queued before on_message was set)."""
        with contextlib.suppress(WsConnectionClosed):
            async for message in self._ws:
                if self._closing:
                    return
                if not len(self._ws.recv_messages.frames):
                    self._assembling = False
                self._deliver(message)

    def _deliver(self, message: bytes | str) -> None:
        callback = self._on_message
        if callback is None:
            return
        try:
            callback(message)
        except Exception:
            log.exception("message callback failed; closing the connection")
            self.close(1011, "internal error")

    def _disconnected(self) -> None:
        if self._gone:
            return
        self._gone = True
        self._closing = True
        callback = self.on_disconnect
        if callback is not None:
            try:
                callback()
            except Exception:
                log.exception("disconnect callback failed")


def _http_request(ws: ServerConnection, request: Request) -> HttpRequest:
    peer = ws.remote_address
    remote = (str(peer[0]), int(peer[1])) if peer else None
    return HttpRequest(request.path, tuple(request.headers.raw_items()), remote)


def _response(answer: HttpResponse, server_header: str) -> Response:
    headers = Headers(
        [
            ("Content-Type", answer.content_type),
            ("Content-Length", str(len(answer.body))),
            ("Connection", "close"),
            *answer.headers,
        ]
    )
    if server_header:
        headers["Server"] = server_header
    try:
        phrase = HTTPStatus(answer.status).phrase
    except ValueError:
        phrase = ""
    return Response(answer.status, phrase, headers, answer.body)


class WebsocketsListener(Listener):
    def __init__(self, server: Server, connections: set[WebsocketsConnection]) -> None:
        self._server = server
        self._connections = connections

    @property
    def port(self) -> int:
        return int(next(iter(self._server.sockets)).getsockname()[1])

    def stop_accepting(self) -> None:
        self._server.server.close()

    async def close(self, code: int = 1001, reason: str = "server shutting down") -> None:
        self.stop_accepting()
        for connection in list(self._connections):
            connection.close(code, reason)
        self._server.close(close_connections=True, code=code, reason=reason)
        await self._server.wait_closed()


async def listen(handler: Handler, options: TransportOptions) -> WebsocketsListener:
    """Listen on options.host:options.port with websockets."""
    connections: set[WebsocketsConnection] = set()

    def process_request(ws: ServerConnection, request: Request) -> Response | None:
        if options.process_request is None:
            return None
        answer = options.process_request(_http_request(ws, request))
        return None if answer is None else _response(answer, options.server_header)

    def select(ws: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        chooser = options.select_subprotocol
        try:
            if chooser is not None:
                chosen = chooser(list(offered))
            else:
                chosen = next((p for p in offered if p in options.subprotocols), None)
        except HandshakeRefused as exc:
            raise NegotiationError(str(exc)) from None
        return Subprotocol(chosen) if chosen is not None else None

    async def handle(ws: ServerConnection) -> None:
        assert isinstance(ws, _FastServerConnection)
        if options.socket_sndbuf:
            sock = ws.transport.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, options.socket_sndbuf)
        connection = WebsocketsConnection(ws, options)
        connections.add(connection)
        try:
            await handler(connection)
            connection.close(1000, "")
            await connection.wait_closed()
        finally:
            connections.discard(connection)
            if connection._pump is not None:
                connection._pump.cancel()

    origins: list[Any] | None = [*options.origins, None] if options.origins else None
    server = await serve(
        handle,
        options.host,
        options.port,
        subprotocols=[Subprotocol(p) for p in options.subprotocols],
        select_subprotocol=select,
        process_request=process_request,
        origins=[Origin(o) if o is not None else None for o in origins] if origins else None,
        compression=None,
        max_size=options.max_message_bytes,
        max_queue=options.max_queue,
        write_limit=options.outbox_bytes,
        ping_interval=options.ping_interval_s,
        ping_timeout=options.ping_timeout_s,
        open_timeout=options.open_timeout_s,
        close_timeout=options.close_timeout_s,
        server_header=options.server_header or None,
        create_connection=_FastServerConnection,
    )
    return WebsocketsListener(server, connections)
