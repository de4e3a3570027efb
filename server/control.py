"""The launcher's control endpoint: the dashboard's "kill owner" goes through ``stateroom up``.

``stateroom up`` owns the room-server processes, so it is the one that may SIGKILL
one (and restarts it, as it restarts any child that dies). It serves, on
127.0.0.1 and a free port, a tiny HTTP API for the login service's dashboard:

    POST /kill-room   {"room": "<name>"}   Authorization: Bearer <secret>
    200 {"room", "killed_pid", "old_server", "old_epoch", "killed_ms"}

Errors are ``{"error": {"code", "message"}}``: 401 ``unauthorized`` (missing or
wrong secret), 400 ``bad_request`` (not a JSON object with a room name), 404
``no_owner``, 409 ``foreign_process`` (the owner's pid is not one of the
launcher's own children: never kill a foreign process), 503
``redis_unavailable``, 404 ``not_found`` / 405 ``method_not_allowed`` otherwise.

The secret is random per launcher and reaches the login service only in its
environment (``STATEROOM_LAUNCHER_TOKEN``), never argv. Requests run on their
own threads (``ThreadingHTTPServer`` in a daemon thread), each with its own
short-lived event loop for the kill (``server.killroom.kill_owner``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from redis.exceptions import RedisError

from infra.errors import InfraError
from infra.redis_url import redact
from server.killroom import ForeignOwner, KillRoomError, NoOwner, kill_owner

log = logging.getLogger("stateroom.up")

MAX_BODY_BYTES = 4096
MAX_ROOM_CHARS = 256


class ControlEndpoint:
    """The launcher's HTTP control listener (start, ``url``, ``token``, stop)."""

    def __init__(
        self,
        redis_url: Callable[[], str],
        own_pids: Callable[[], set[int]],
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.redis_url = redis_url
        self.own_pids = own_pids
        self.token = secrets.token_urlsafe(32)
        self._address = (host, port)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> ControlEndpoint:
        handler = type("Handler", (_Handler,), {"endpoint": self})
        self._server = ThreadingHTTPServer(self._address, handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="launcher-control", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def kill_room(self, room: str) -> tuple[HTTPStatus, dict[str, Any]]:
        """Carry out one kill; the status and JSON body of the answer."""
        url = self.redis_url()
        try:
            report = asyncio.run(kill_owner(url, room, lambda pid: pid in self.own_pids()))
        except NoOwner as exc:
            return _error(HTTPStatus.NOT_FOUND, "no_owner", str(exc))
        except ForeignOwner as exc:
            return _error(HTTPStatus.CONFLICT, "foreign_process", str(exc))
        except KillRoomError as exc:
            return _error(HTTPStatus.CONFLICT, "kill_failed", str(exc))
        except (RedisError, InfraError, OSError) as exc:
            log.warning("control: kill-room %s: Redis at %s: %s", room, redact(url), exc)
            return _error(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "redis_unavailable",
                f"cannot reach Redis at {redact(url)}; retry when it is back",
            )
        log.info(
            "control: killed %s (pid %s, epoch %s), owner of room %s",
            report["old_server"],
            report["killed_pid"],
            report["old_epoch"],
            room,
        )
        return HTTPStatus.OK, report


def _error(status: HTTPStatus, code: str, message: str) -> tuple[HTTPStatus, dict[str, Any]]:
    return status, {"error": {"code": code, "message": message}}


class _Handler(BaseHTTPRequestHandler):
    endpoint: ControlEndpoint
    server_version = "stateroom-launcher"
    sys_version = ""
    timeout = 5  # seconds per socket read: a body shorter than its Content-Length ends

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/kill-room":
            self._send(*_error(HTTPStatus.NOT_FOUND, "not_found", "POST /kill-room only"))
            return
        if not self._authorized():
            self._send(
                *_error(
                    HTTPStatus.UNAUTHORIZED,
                    "unauthorized",
                    "send Authorization: Bearer <the launcher's token>",
                )
            )
            return
        room = self._room()
        if isinstance(room, tuple):
            self._send(*room)
            return
        self._send(*self.endpoint.kill_room(room))

    def do_GET(self) -> None:
        self._not_allowed()

    do_PUT = do_DELETE = do_PATCH = do_GET

    def _not_allowed(self) -> None:
        if self.path.split("?", 1)[0] != "/kill-room":
            self._send(*_error(HTTPStatus.NOT_FOUND, "not_found", "POST /kill-room only"))
            return
        status, body = _error(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", "use POST")
        self._send(status, body, {"Allow": "POST"})

    def _authorized(self) -> bool:
        value = self.headers.get("Authorization", "")
        if value[:7].lower() != "bearer ":
            return False
        given = value[7:].strip().encode()
        return hmac.compare_digest(given, self.endpoint.token.encode())

    def _room(self) -> str | tuple[HTTPStatus, dict[str, Any]]:
        """The room name of the body, or the 400 answer."""
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return _error(HTTPStatus.BAD_REQUEST, "bad_request", "Content-Length is required")
        if not 0 < length <= MAX_BODY_BYTES:
            return _error(
                HTTPStatus.BAD_REQUEST,
                "bad_request",
                f"the body must be 1 to {MAX_BODY_BYTES} bytes of JSON",
            )
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(
                HTTPStatus.BAD_REQUEST, "bad_request", 'the body must be JSON: {"room": "<name>"}'
            )
        room = body.get("room") if isinstance(body, dict) else None
        if not isinstance(room, str) or not 0 < len(room) <= MAX_ROOM_CHARS:
            return _error(
                HTTPStatus.BAD_REQUEST,
                "bad_request",
                f'"room" must be a room name of 1 to {MAX_ROOM_CHARS} characters',
            )
        return room

    def _send(
        self, status: HTTPStatus, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("control: %s %s", self.address_string(), format % args)
