"""The browser pages on the login service's port: the arena, the dashboard, the JS SDK.

``GET /`` is the arena (``client/web/index.html``), ``GET /dashboard`` the dashboard
page, ``/web/<file>`` the pages' own files, ``/sdk/<file>`` the JavaScript SDK
(``client/js/src``) and ``/vendor/<path>`` its vendored npm packages
(``client/js/vendor``). Serving them here keeps pages and API on one origin, so the
pages need no CORS, and ``stateroom up`` has one URL to print.

The folders are found next to this package: ``auth/`` and ``client/`` are sibling
packages both in a checkout and in the installed wheel (``pyproject.toml`` ships
``client/web`` and ``client/js/{src,vendor}`` as package data). auth/ never imports
client code (the walls); it reads files.

Every file is read fresh (no restart to see an edit) and answered with ``Cache-Control:
no-cache`` and a content ETag (a revalidation is a 304), ``X-Content-Type-Options:
nosniff`` and a type from the extension. A path resolves inside its folder or is a 404:
no ``..``, no hidden files, no absolute paths, no symlink that leads out.

Pages (``.html``) get a strict Content-Security-Policy: scripts, styles and everything
else from this origin only, plus the hashes of the page's own inline ``<script>`` and
``<style>`` blocks (an import map, say), and WebSocket connections to the room servers
registered in Redis. So a page can run no script it did not ship with, and talk to no
host but this one and the cluster's servers.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from auth.errors import ApiError
from infra.cluster_view import read_servers

log = logging.getLogger("stateroom.auth.web")

CLIENT_DIR = Path(__file__).resolve().parent.parent / "client"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".ts": "text/plain; charset=utf-8",  # TypeScript declarations, shown as text
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".webp": "image/webp",
    ".wasm": "application/wasm",
    ".woff2": "font/woff2",
}
DEFAULT_TYPE = "application/octet-stream"
MAX_PATH = 512

_INLINE_SCRIPT = re.compile(rb"<script\b([^>]*)>(.*?)</script\s*>", re.I | re.S)
_INLINE_STYLE = re.compile(rb"<style\b[^>]*>(.*?)</style\s*>", re.I | re.S)
_SRC_ATTR = re.compile(rb"\bsrc\s*=", re.I)

Endpoint = Callable[..., Callable[[Request], Awaitable[Response]]]


class NotFound(ApiError):
    status = 404
    code = "not_found"


@dataclass(frozen=True)
class Roots:
    """The folders the routes serve from (tests point them elsewhere)."""

    web: Path = field(default_factory=lambda: CLIENT_DIR / "web")
    sdk: Path = field(default_factory=lambda: CLIENT_DIR / "js" / "src")
    vendor: Path = field(default_factory=lambda: CLIENT_DIR / "js" / "vendor")


def resolve(root: Path, relative: str) -> Path | None:
    """The file ``relative`` names inside ``root``, or None if there is none or it would
    leave ``root`` (``..``, an absolute path, a symlink out) or is hidden (``.name``)."""
    if not relative or len(relative) > MAX_PATH or "\x00" in relative or "\\" in relative:
        return None
    if relative.startswith("/"):
        return None
    parts = relative.split("/")
    if any(not part or part.startswith(".") for part in parts):  # "", ".", "..", ".git"
        return None
    try:
        base = root.resolve(strict=True)
        found = (base / relative).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, unreadable, a symlink loop
        return None
    if not found.is_relative_to(base) or not found.is_file():
        return None
    return found


def content_type(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix.lower(), DEFAULT_TYPE)


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _matches(if_none_match: str, etag: str) -> bool:
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


def _hash_source(content: bytes) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(content).digest()).decode() + "'"


def inline_hashes(page: bytes) -> tuple[list[str], list[str]]:
    """CSP hash sources of the page's inline scripts and inline styles."""
    scripts = [
        _hash_source(body)
        for attrs, body in _INLINE_SCRIPT.findall(page)
        if not _SRC_ATTR.search(attrs) and body
    ]
    styles = [_hash_source(body) for body in _INLINE_STYLE.findall(page) if body]
    return scripts, styles


def ws_origins(servers: dict[str, dict[str, Any]]) -> list[str]:
    """``ws://host:port`` of every registered room server (for ``connect-src``)."""
    found = set()
    for info in servers.values():
        url = info.get("ws_url")
        if not isinstance(url, str):
            continue
        parts = urlsplit(url)
        if parts.scheme in ("ws", "wss") and parts.netloc and not any(c in url for c in " ;'"):
            found.add(f"{parts.scheme}://{parts.netloc}")
    return sorted(found)


def page_policy(page: bytes, connect: list[str]) -> str:
    scripts, styles = inline_hashes(page)
    return "; ".join(
        [
            "default-src 'self'",
            " ".join(["script-src 'self'", *scripts]),
            " ".join(["style-src 'self'", *styles]),
            "img-src 'self' data:",
            " ".join(["connect-src 'self'", *connect]),
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


class Pages:
    """The static routes of one app."""

    def __init__(self, svc: Any, roots: Roots | None = None) -> None:
        self.svc = svc  # auth.app.Services (not imported: auth.app imports this module)
        self.roots = roots or Roots()

    def routes(self, endpoint: Endpoint, *, dashboard: bool) -> list[Route]:
        def serve(root: Path, fixed: str | None = None) -> Callable[..., Awaitable[Response]]:
            async def handler(request: Request, svc: Any) -> Response:
                relative = fixed or str(request.path_params.get("path", ""))
                return await self.file(request, root, relative)

            return handler

        web, sdk, vendor = self.roots.web, self.roots.sdk, self.roots.vendor
        routes = [
            Route("/", endpoint("/", serve(web, "index.html"), limited=False)),
            Route("/web/{path:path}", endpoint("/web/{path}", serve(web), limited=False)),
            Route("/sdk/{path:path}", endpoint("/sdk/{path}", serve(sdk), limited=False)),
            Route("/vendor/{path:path}", endpoint("/vendor/{path}", serve(vendor), limited=False)),
        ]
        if dashboard:
            routes.append(
                Route(
                    "/dashboard",
                    endpoint("/dashboard", serve(web, "dashboard.html"), limited=False),
                )
            )
        return routes

    async def connect_sources(self) -> list[str]:
        try:
            return ws_origins(await read_servers(self.svc.redis))
        except (RedisError, OSError) as exc:
            log.warning("page served without the room servers' origins (Redis: %s)", exc)
            return []

    async def file(self, request: Request, root: Path, relative: str) -> Response:
        path = resolve(root, relative)
        if path is None:
            raise NotFound(f"no file {relative[:100]!r} here; the pages are / and /dashboard")
        body = path.read_bytes()
        etag = etag_of(body)
        headers = {
            "Cache-Control": "no-cache",
            "ETag": etag,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
        }
        if path.suffix.lower() == ".html":
            headers["Content-Security-Policy"] = page_policy(body, await self.connect_sources())
        if _matches(request.headers.get("if-none-match", ""), etag):
            return Response(status_code=304, headers=headers)
        return Response(body, headers=headers, media_type=content_type(path))
