"""What the room server needs from a WebSocket transport, and nothing more.

The room server's hot path is one pre-encoded frame out per player per tick and
one small input in per player per tick. The interface below is cut to that
(Colyseus keeps its Transport behind a similar one), so that the same endpoint
runs on ``websockets`` (the reference) or on ``picows`` (compiled, faster):

- a listener on host:port with an HTTP hook before the upgrade (probes,
  refusals such as 429), an Origin allow-list and subprotocol negotiation;
- per connection: complete messages delivered synchronously to ``on_message``
  (or awaited with ``recv`` before one is set), ``send(payload, text)`` of an
  already encoded payload that never awaits, a bounded outbox with a named
  overflow policy, ``close(code, reason)`` with the close handshake and a
  timeout, the remote address, and a disconnect callback.

Exceptions::

    TransportError                 anything this package raises
    ├── ConnectionClosed           recv() on a connection that is closing or closed
    └── HandshakeRefused           select_subprotocol refuses the client's offer (HTTP 400)
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum

log = logging.getLogger("stateroom.transport")

# RFC 6455 close codes the transports send themselves.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011


class TransportError(Exception):
    """Base of this package's errors."""


class ConnectionClosed(TransportError):
    """The connection is closing or closed: no more messages will arrive."""


class HandshakeRefused(TransportError):
    """Raised by ``select_subprotocol``: the upgrade is answered 400 with this message."""


class Overflow(Enum):
    """What happens to a client whose outbox (bytes not yet taken by its socket) is over
    ``outbox_bytes`` when one more frame is sent to it.

    EVICT: the frame is dropped and the connection is closed with ``overflow_code``
    (4009, slow consumer); the tick never waits for a socket, and a client that resumes
    gets a keyframe. It is the only policy the room server uses: queueing more would
    grow memory without bound, dropping states silently would break delta streams.
    """

    EVICT = "evict"


@dataclass(frozen=True)
class HttpRequest:
    """The HTTP request of a connection (the upgrade, or a plain GET)."""

    path: str  # with the query string
    headers: tuple[tuple[str, str], ...]
    remote_address: tuple[str, int] | None

    def header(self, name: str) -> str | None:
        """The first value of a header (names are case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]


@dataclass(frozen=True)
class HttpResponse:
    """An answer to a request instead of the upgrade (a probe, a refusal)."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


ProcessRequest = Callable[[HttpRequest], HttpResponse | None]
SelectSubprotocol = Callable[[Sequence[str]], str | None]


@dataclass(frozen=True)
class TransportOptions:
    """Everything a listener needs; each maps to a room-server setting."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port (read it back from Listener.port)
    # Our subprotocols, most preferred first; select_subprotocol picks among an offer.
    subprotocols: tuple[str, ...] = ()
    select_subprotocol: SelectSubprotocol | None = None
    # Called for every request before the upgrade; a response answers it instead.
    process_request: ProcessRequest | None = None
    # Allowed Origin values (empty: any). A request without Origin is always allowed:
    # browsers always send one, native clients are authenticated by their token.
    origins: tuple[str, ...] = ()
    # Largest message a new connection may send (Connection.max_message_size changes it).
    max_message_bytes: int = 16 * 1024
    # Largest single frame any connection may ever send, whatever its message limit:
    # a frame is buffered whole before it is checked (0: max_message_bytes).
    max_frame_bytes: int = 0
    outbox_bytes: int = 256 * 1024
    overflow: Overflow = Overflow.EVICT
    overflow_code: int = 4009
    overflow_reason: str = "outbox overflow: the client is not reading"
    ping_interval_s: float | None = 10.0  # None: no keepalive pings
    ping_timeout_s: float | None = 10.0  # a pong later than this closes the connection 1011
    open_timeout_s: float = 5.0  # the HTTP request must arrive within this
    close_timeout_s: float = 2.0  # how long our close waits for the peer's close frame
    socket_sndbuf: int = 0  # SO_SNDBUF of each client socket (0: the OS default)
    server_header: str = "stateroom"
    # Messages buffered for recv() before reading pauses (only before on_message is set).
    max_queue: int = 64

    @property
    def frame_ceiling(self) -> int:
        return self.max_frame_bytes or self.max_message_bytes


class Connection(ABC):
    """One client connection, whichever library carries it.

    Sends never await; the outbox is the socket transport's write buffer, bounded by
    ``outbox_bytes`` with the ``Overflow`` policy of the options.
    """

    request: HttpRequest
    subprotocol: str | None
    on_overflow: Callable[[], None] | None
    on_disconnect: Callable[[], None] | None

    def __init__(self, request: HttpRequest, subprotocol: str | None, options: TransportOptions):
        self.request = request
        self.subprotocol = subprotocol
        self.options = options
        self.outbox_bytes = options.outbox_bytes
        self.on_overflow = None  # called once when the policy evicts this client
        self.on_disconnect = None  # called once when the TCP connection is gone
        self._on_message: Callable[[bytes | str], None] | None = None

    @property
    def remote_address(self) -> tuple[str, int] | None:
        return self.request.remote_address

    @property
    def on_message(self) -> Callable[[bytes | str], None] | None:
        return self._on_message

    @on_message.setter
    def on_message(self, callback: Callable[[bytes | str], None] | None) -> None:
        """From now on every complete message goes to ``callback``, synchronously from
        the socket's read path (never through ``recv``)."""
        self._on_message = callback
        self._message_callback_set(callback)

    def send(self, payload: bytes, text: bool) -> bool:
        """Queue one data frame (payload already encoded); False when it was not sent
        (the connection is closing, or its outbox overflowed and it is being evicted)."""
        if not self.open:
            return False
        if self.write_buffer_size() > self.outbox_bytes:
            self._evict()
            return False
        return self._write(payload, text)

    def send_in_place(self, buffer: bytearray, offset: int, text: bool) -> bool:
        """Send ``buffer[offset:]`` as one data frame, like ``send``. ``offset`` is at
        least ``frames.HEADER_ROOM``: a transport may write the frame's header into the
        bytes before the payload and hand the whole to the socket without copying it
        (the room reuses one buffer for every player's state of a tick); the buffer is
        the caller's again when this returns. By default: a copy, then ``send``."""
        return self.send(bytes(buffer[offset:]), text)

    def _evict(self) -> None:
        """The Overflow.EVICT policy: close with the overflow code, tell the owner."""
        self.close(self.options.overflow_code, self.options.overflow_reason)
        if self.on_overflow is not None:
            self.on_overflow()

    @property
    @abstractmethod
    def open(self) -> bool:
        """True until a close frame was sent or received, or the socket went away."""

    @property
    @abstractmethod
    def max_message_size(self) -> int: ...

    @max_message_size.setter
    @abstractmethod
    def max_message_size(self, size: int) -> None: ...

    @abstractmethod
    def write_buffer_size(self) -> int:
        """Bytes written but not yet taken by the kernel: the outbox."""

    @abstractmethod
    def close(self, code: int, reason: str) -> None:
        """Start the close handshake; never awaits (callable from the tick). The TCP
        connection ends when the peer's close frame arrives or close_timeout_s passes."""

    @abstractmethod
    async def recv(self) -> bytes | str:
        """The next complete message; raises ConnectionClosed. Only while on_message
        is None (the endpoint reads the join with it)."""

    @abstractmethod
    async def wait_closed(self) -> None:
        """Until the TCP connection is gone."""

    @abstractmethod
    def _write(self, payload: bytes, text: bool) -> bool: ...

    @abstractmethod
    def _message_callback_set(self, callback: Callable[[bytes | str], None] | None) -> None: ...


Handler = Callable[[Connection], Awaitable[None]]


class Listener(ABC):
    """A listening socket and its connections. A connection's handler runs as a task;
    when it returns the connection is closed with 1000 (1011 if it raised)."""

    @property
    @abstractmethod
    def port(self) -> int: ...

    @abstractmethod
    def stop_accepting(self) -> None:
        """Close the listening socket; open connections stay."""

    @abstractmethod
    async def close(
        self, code: int = CLOSE_GOING_AWAY, reason: str = "server shutting down"
    ) -> None:
        """Stop accepting, close every connection with ``code`` and wait until they
        are gone (each at most close_timeout_s)."""
