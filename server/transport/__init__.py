"""The room server's WebSocket transport behind one interface, on two libraries.

``websockets`` is the reference (and what the SDK and the tests speak);
``picows`` is compiled and carries the hot path at about half the CPU
(docs/transport.md has the design and the figures). Both run the same
``Handler`` with the same ``TransportOptions``::

    listener = await listen("picows", handler, TransportOptions(port=8001, ...))
"""

from __future__ import annotations

from server.transport.base import (
    Connection,
    ConnectionClosed,
    Handler,
    HandshakeRefused,
    HttpRequest,
    HttpResponse,
    Listener,
    Overflow,
    TransportError,
    TransportOptions,
)

TRANSPORTS = ("websockets", "picows")


async def listen(kind: str, handler: Handler, options: TransportOptions) -> Listener:
    """Start listening with the named transport; ValueError names the valid ones."""
    if kind == "websockets":
        from server.transport import websockets_transport

        return await websockets_transport.listen(handler, options)
    if kind == "picows":
        from server.transport import picows_transport

        return await picows_transport.listen(handler, options)
    raise ValueError(f"unknown transport {kind!r}; use one of: {', '.join(TRANSPORTS)}")


__all__ = [
    "TRANSPORTS",
    "Connection",
    "ConnectionClosed",
    "Handler",
    "HandshakeRefused",
    "HttpRequest",
    "HttpResponse",
    "Listener",
    "Overflow",
    "TransportError",
    "TransportOptions",
    "listen",
]
