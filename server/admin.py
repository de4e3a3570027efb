"""The room server's admin HTTP listener: /status, /metrics and the probes.

Kept off the player port: building /status or /metrics costs 1-2 ms of CPU per
request, which anyone who can reach the player port could otherwise repeat at
will. Bind it to loopback or a cluster-internal interface (``--admin-host``)
and let only the metrics scraper reach it.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from infra.process_metrics import LOOP_LAG


def http_response(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
            ("Cache-Control", "no-store"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


class AdminEndpoint:
    """Answers plain HTTP GETs; never upgrades to WebSocket."""

    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        metrics: Callable[[], bytes],
        ready: Callable[[], bool],
    ) -> None:
        self._status = status
        self._metrics = metrics
        self._ready = ready
        self.server: Server | None = None

    async def start(self, host: str, port: int) -> Server:
        LOOP_LAG.start()  # the event-loop lag of /metrics (infra.process_metrics)
        self.server = await serve(
            self._refuse_websocket,
            host,
            port,
            process_request=self.process_request,
            server_header="stateroom-admin",
            open_timeout=5,
        )
        return self.server

    @property
    def url(self) -> str:
        if self.server is None:
            return ""
        host, port = next(iter(self.server.sockets)).getsockname()[:2]
        return f"http://{host}:{port}"

    async def _refuse_websocket(self, ws: ServerConnection) -> None:
        await ws.close(1008, "the admin port serves HTTP only")

    def process_request(self, connection: ServerConnection, request: Request) -> Response:
        path = request.path.split("?", 1)[0]
        if path == "/metrics":
            return http_response(HTTPStatus.OK, self._metrics(), "text/plain; version=0.0.4")
        if path == "/status":
            return http_response(HTTPStatus.OK, orjson.dumps(self._status()), "application/json")
        if path == "/healthz":
            return http_response(HTTPStatus.OK, b"ok\n", "text/plain")
        if path == "/readyz":
            ok = self._ready()
            return http_response(
                HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
                b"ready\n" if ok else b"not ready\n",
                "text/plain",
            )
        return http_response(
            HTTPStatus.NOT_FOUND, b"not found: /status, /metrics, /healthz, /readyz\n", "text/plain"
        )

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
