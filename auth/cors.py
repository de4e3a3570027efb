"""CORS for the login and matchmaking APIs (``/v1/*``, the JWKS): an allow-list of origins.

A browser page served from another origin (a game's own site) may call the API only if
its origin is listed in ``cors_origins``. Closed by default: with no list, no response
carries a CORS header and every preflight is refused, so a production service is open
to other origins only once configured.

- Origins are exact (``https://game.example.com``: scheme, host, port when not the
  default). ``*`` lets any origin read the API; it must be alone, and it is safe here
  only because the API uses no cookies: credentials are never allowed
  (no ``Access-Control-Allow-Credentials``), tokens travel in ``Authorization``.
- A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) from an
  allowed origin is ``204`` with the route's methods, the headers ``authorization,
  content-type`` and a max age; from any other origin ``403 cors_origin_refused``.
  ``OPTIONS`` never answers 405 on an API path: without a preflight's headers it is
  ``204`` with ``Allow``.
- Every answer to an allowed origin, errors (4xx, 5xx, 429) included, carries
  ``Access-Control-Allow-Origin`` and exposes ``Retry-After`` and ``WWW-Authenticate``,
  so a page can read why it was refused and when to retry.

The pages the login service serves itself (``auth.web``) are same-origin and need none
of this; the dashboard's API deliberately has no CORS at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from auth.errors import ConfigError

ALLOW_HEADERS = "authorization, content-type"
EXPOSE_HEADERS = "Retry-After, WWW-Authenticate"
MAX_AGE_S = 600
DEFAULT_PORTS = {"http": 80, "https": 443}

# (route template, methods) of the route a path belongs to, or None for no route.
RouteOf = Callable[[Scope], tuple[str, frozenset[str]] | None]


@dataclass(frozen=True)
class Origins:
    """The parsed allow-list: ``any`` for ``*``, else exact normalized origins."""

    allowed: frozenset[str] = frozenset()
    any: bool = False

    @property
    def enabled(self) -> bool:
        return self.any or bool(self.allowed)

    def allows(self, origin: str) -> bool:
        return self.any or normalize(origin) in self.allowed

    def allow_origin(self, origin: str) -> str:
        """The ``Access-Control-Allow-Origin`` value for an allowed ``origin``."""
        return "*" if self.any else origin


def normalize(origin: str) -> str | None:
    """``scheme://host[:port]`` in lower case without a default port, or None if ``origin``
    is not an http(s) origin (a path, a query, user info, ``null``)."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if (
        scheme not in DEFAULT_PORTS
        or not parts.hostname
        or parts.path
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
    ):
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" + (f":{port}" if port and port != DEFAULT_PORTS[scheme] else "")


def parse_origins(text: str) -> Origins:
    """Parse ``cors_origins`` (comma-separated); ConfigError names an entry that is wrong."""
    entries = [e.strip() for e in text.split(",") if e.strip()]
    if "*" in entries:
        if len(entries) > 1:
            raise ConfigError(
                "cors_origins: '*' (any origin) must be alone; list exact origins instead "
                "(--cors-origins / STATEROOM_AUTH_CORS_ORIGINS)"
            )
        return Origins(any=True)
    allowed = set()
    for entry in entries:
        origin = normalize(entry)
        if origin is None:
            raise ConfigError(
                f"cors_origins: {entry[:80]!r} is not an origin; write scheme://host[:port] "
                "with no path, such as https://game.example.com "
                "(--cors-origins / STATEROOM_AUTH_CORS_ORIGINS)"
            )
        allowed.add(origin)
    return Origins(frozenset(allowed))


def is_api_path(path: str) -> bool:
    """The paths CORS applies to: the login and matchmaking APIs and the public keys."""
    return path.startswith("/v1/") or path == "/.well-known/jwks.json"


def _error(status: int, code: str, message: str, headers: dict[str, str]) -> Response:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return Response(body, status, headers=headers, media_type="application/json")


class Cors:
    """Pure ASGI middleware: answers ``OPTIONS`` on API paths, adds CORS headers to the rest."""

    def __init__(self, app: ASGIApp, origins: Origins, route_of: RouteOf) -> None:
        self.app = app
        self.origins = origins
        self.route_of = route_of

    def _cors_headers(self, origin: str | None) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.origins.enabled and not self.origins.any:
            headers["Vary"] = "Origin"
        if origin is not None and self.origins.enabled and self.origins.allows(origin):
            headers["Access-Control-Allow-Origin"] = self.origins.allow_origin(origin)
        return headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_api_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        origin = Headers(scope=scope).get("origin")
        if scope["method"] == "OPTIONS":
            await self._options(scope, origin)(scope, receive, send)
            return
        extra = self._cors_headers(origin)
        if not extra:
            await self.app(scope, receive, send)
            return
        if "Access-Control-Allow-Origin" in extra:
            extra["Access-Control-Expose-Headers"] = EXPOSE_HEADERS

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in extra.items():
                    if name == "Vary":
                        headers.add_vary_header(value)
                    else:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _options(self, scope: Scope, origin: str | None) -> Response:
        headers = self._cors_headers(origin)
        route = self.route_of(scope)
        if route is None:
            return _error(404, "not_found", "no such endpoint; see /openapi.json", headers)
        template, methods = route
        scope["stateroom.route"] = template  # counted under its route (auth.app metrics)
        allow = ", ".join(sorted(methods | {"OPTIONS"}))
        requested = Headers(scope=scope).get("access-control-request-method")
        if origin is None or requested is None:  # not a preflight: say what the path takes
            return Response(status_code=204, headers={**headers, "Allow": allow})
        if "Access-Control-Allow-Origin" not in headers:
            return _error(
                403,
                "cors_origin_refused",
                f"the origin {origin[:100]!r} may not call this API from a browser; the "
                "operator lists allowed origins in STATEROOM_AUTH_CORS_ORIGINS",
                headers,
            )
        return Response(
            status_code=204,
            headers={
                **headers,
                "Access-Control-Allow-Methods": allow,
                "Access-Control-Allow-Headers": ALLOW_HEADERS,
                "Access-Control-Max-Age": str(MAX_AGE_S),
            },
        )
