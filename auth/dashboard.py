"""The live dashboard's JSON API: the cluster, one room, and "kill owner" on the dev cluster.

    GET  /dashboard/api/cluster            servers and rooms (infra.cluster_view.collect)
    GET  /dashboard/api/rooms/{room}       one room in detail, with its last recovery
    POST /dashboard/api/rooms/{room}/kill  SIGKILL the room's owner, through the launcher

Access (setting ``dashboard``): ``off`` (no routes), ``admin`` (the admin credential of
/metrics: ``Authorization: Bearer <STATEROOM_ADMIN_TOKEN>``, or loopback clients when no
token is set), ``open`` (the dev cluster of ``stateroom up``). An open dashboard answers
only requests whose ``Host`` is ``localhost`` or an IP address, so a web page cannot
reach it through a DNS name rebound to 127.0.0.1; a ``POST`` from a browser must come
from the dashboard's own origin. The API sends no CORS headers, ever.

The dashboard never kills anything itself: the processes belong to the launcher of
``stateroom up``, which runs a control endpoint (``launcher_control``). The kill route
forwards ``{"room"}`` to ``POST <launcher_control>/kill-room`` with the launcher's token
(``STATEROOM_LAUNCHER_TOKEN``) and answers what the launcher answered, right after the
SIGKILL; the recovery is then read from the room's records in Redis like everything else.
Without ``launcher_control`` the route answers ``403 kill_unavailable``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from auth.app import JSONResponse, Services, check_admin
from auth.errors import ApiError, Forbidden, ValidationFailed
from infra import cluster_view
from infra.directory import ROOM_NAME

# Rooms one poll of /dashboard/api/cluster reads, the first by name (rooms_total says how
# many there are): about 40 ms of this process and 70 KiB of JSON per poll at 200.
MAX_ROOMS = 200
LAUNCHER_TIMEOUT_S = 5.0
PASSED_THROUGH = frozenset({404, 409, 503})  # launcher errors answered as they are

Endpoint = Callable[..., Callable[[Request], Awaitable[Response]]]


class NotFound(ApiError):
    status = 404
    code = "unknown_room"


class LauncherError(ApiError):
    """An answer of the launcher's control endpoint that is not a success."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str]) -> None:
        super().__init__(message, code=code, headers=headers)
        self.status = status


def _local_host(host_header: str) -> bool:
    """``Host`` is localhost or an IP literal: not a DNS name an attacker could rebind."""
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Dashboard:
    """The dashboard routes of one app."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.mode = svc.settings.dashboard

    @property
    def kill_available(self) -> bool:
        return bool(self.svc.settings.launcher_control)

    def routes(self, endpoint: Endpoint) -> list[Route]:
        if self.mode == "off":
            return []
        return [
            Route(
                "/dashboard/api/cluster",
                endpoint("/dashboard/api/cluster", self.cluster, limited=False),
                methods=["GET"],
            ),
            Route(
                "/dashboard/api/rooms/{room}",
                endpoint("/dashboard/api/rooms/{room}", self.room, limited=False),
                methods=["GET"],
            ),
            Route(
                "/dashboard/api/rooms/{room}/kill",
                endpoint("/dashboard/api/rooms/{room}/kill", self.kill, limited=False),
                methods=["POST"],
            ),
        ]

    # ------------------------------------------------------------ checks

    def check(self, request: Request) -> None:
        if self.mode == "open":
            if not _local_host(request.headers.get("host", "")):
                raise Forbidden(
                    "the open dashboard answers on localhost or an IP address only; "
                    "elsewhere run it with --dashboard admin and an admin token",
                    code="dashboard_host_refused",
                )
            return
        check_admin(request, self.svc, what="the dashboard API")

    @staticmethod
    def same_origin(request: Request) -> None:
        """A browser's POST must come from this page's origin (no cross-site kill)."""
        origin = request.headers.get("origin")
        if origin is None:
            return  # not a browser (curl, a test): nothing to forge
        host = request.headers.get("host", "")
        _, _, origin_host = origin.partition("://")
        if not host or origin_host.lower() != host.lower():
            raise Forbidden(
                "a browser may post to the dashboard only from the dashboard's own page",
                code="cross_origin",
            )

    @staticmethod
    def room_name(request: Request) -> str:
        room = str(request.path_params.get("room", ""))
        if not ROOM_NAME.fullmatch(room):
            raise ValidationFailed(
                "a room name is 1-64 characters of A-Z a-z 0-9 _ . -", code="invalid_room"
            )
        return room

    # ------------------------------------------------------------ handlers

    async def cluster(self, request: Request, svc: Services) -> Response:
        self.check(request)
        view = await cluster_view.collect(svc.redis, max_rooms=MAX_ROOMS, records=False)
        return JSONResponse({**view, "kill_available": self.kill_available, "mode": self.mode})

    async def room(self, request: Request, svc: Services) -> Response:
        self.check(request)
        room = self.room_name(request)
        detail = await cluster_view.room_detail(svc.redis, room)
        if detail is None:
            raise NotFound(f"no room {room!r} in this cluster (it never ran, or it closed)")
        return JSONResponse({**detail, "kill_available": self.kill_available})

    async def kill(self, request: Request, svc: Services) -> Response:
        self.check(request)
        self.same_origin(request)
        room = self.room_name(request)
        if not self.kill_available:
            raise Forbidden(
                "only the dev cluster of stateroom up can kill owners", code="kill_unavailable"
            )
        return JSONResponse(await self.ask_launcher(room))

    async def ask_launcher(self, room: str) -> dict[str, Any]:
        """``POST <launcher_control>/kill-room``; its 200 body, or a LauncherError."""
        settings = self.svc.settings
        url = settings.launcher_control.rstrip("/") + "/kill-room"
        try:
            # trust_env=False: no proxy from the environment ever sees the launcher token.
            async with httpx.AsyncClient(timeout=LAUNCHER_TIMEOUT_S, trust_env=False) as http:
                answer = await http.post(
                    url,
                    json={"room": room},
                    headers={"Authorization": f"Bearer {settings.launcher_token}"},
                )
        except httpx.HTTPError as exc:
            raise LauncherError(
                502,
                "launcher_unreachable",
                f"the launcher's control endpoint does not answer ({type(exc).__name__}); "
                "is stateroom up still running?",
                {},
            ) from None
        try:
            body = orjson.loads(answer.content)
        except orjson.JSONDecodeError:
            body = None
        status = answer.status_code
        if status == 200 and isinstance(body, dict) and body.get("room") == room:
            return body
        if status in (401, 403):
            raise LauncherError(
                502,
                "launcher_refused",
                "the launcher refused this service's token: STATEROOM_LAUNCHER_TOKEN is not "
                "the one stateroom up gave it",
                {},
            )
        error = body.get("error") if isinstance(body, dict) else None
        if (
            status in PASSED_THROUGH
            and isinstance(error, dict)
            and isinstance(error.get("code"), str)
            and isinstance(error.get("message"), str)
        ):
            retry = answer.headers.get("retry-after")
            headers = {"Retry-After": retry} if retry and retry.isdigit() else {}
            raise LauncherError(status, error["code"], error["message"], headers)
        raise LauncherError(
            502, "launcher_error", f"the launcher answered {status} without a usable body", {}
        )


def dashboard_routes(endpoint: Endpoint, svc: Services) -> list[Route]:
    """The routes of ``Dashboard`` for ``create_app`` (none when ``dashboard`` is off)."""
    return Dashboard(svc).routes(endpoint)
