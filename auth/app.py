"""The login service's HTTP routes (Starlette + orjson), and the services they use.

Stateless by construction: accounts, refresh families and rate-limit counters
live in Redis; the only process state is the keyring (read from the key file)
and metrics. Any replica answers any request.

Every answer that is not a success is ``{"error": {"code", "message"}}``: bad
input is a 4xx, an unexpected failure a 500 ``internal_error`` with no trace.

At start (the lifespan) the service checks Redis's memory limit and eviction policy
(``infra.redis_health``) and refuses to start on an evicting policy. If Redis does not
answer yet, it starts anyway and runs the check in the background as soon as Redis
does; an evicting policy found then makes writes and ``/healthz`` answer 503 with the
reason, since the process is already serving.

The Redis client retries a command that failed on a dead connection (3 times, 50 ms
doubling backoff), so the first request after a Redis restart does not fail. Every
command the service sends is safe to run twice: counters, idempotent writes, and a
refresh script that recognises its own replay (``auth.refresh``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from auth.accounts import AccountStore
from auth.capacity import MemoryGuard
from auth.clientaddr import Network, address_bucket, client_address, is_loopback, parse_networks
from auth.cors import Cors, parse_origins
from auth.errors import (
    ApiError,
    BadRequest,
    ConfigError,
    Conflict,
    Forbidden,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    ValidationFailed,
)
from auth.keys import Keyring
from auth.metrics import Metrics
from auth.openapi import openapi_document
from auth.passwords import Hasher
from auth.ratelimit import RateLimiter
from auth.refresh import RefreshStore, family_of
from auth.settings import AuthSettings
from auth.tokens import TokenIssuer
from infra.process_metrics import LOOP_LAG
from infra.redis_health import check_redis_memory
from infra.redis_url import connect as connect_redis
from infra.revocation import revoke as write_revocation

log = logging.getLogger("stateroom.auth")

GUEST_PREFIX = "g_"
USERNAME = re.compile(r"[A-Za-z0-9_-]{3,32}")
PASSWORD_MIN, PASSWORD_MAX = 8, 128
NAME_MAX = 24
REDIS_RETRIES = 3
REVOCATION_MARGIN_S = 60  # beyond access_ttl: covers the verifiers' 30 s leeway
WRITE_ROUTES = frozenset({"/v1/guest", "/v1/accounts", "/v1/login", "/v1/refresh", "/v1/logout"})


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


@dataclass
class Services:
    """Everything a request handler needs, built once per process."""

    settings: AuthSettings
    redis: aioredis.Redis
    keyring: Keyring
    issuer: TokenIssuer
    hasher: Hasher
    accounts: AccountStore
    refresh: RefreshStore
    limiter: RateLimiter
    metrics: Metrics
    memory: MemoryGuard
    trusted_proxies: tuple[Network, ...] = ()
    # Set when Redis turns out to evict keys after the service started: every write and
    # /healthz answer 503 with this message.
    refusal: str | None = None
    # Why the service refused to start, for the ASGI server's log (no traceback).
    startup_refusal: str | None = None

    @classmethod
    def create(cls, settings: AuthSettings) -> Services:
        metrics = Metrics()
        redis = connect_redis(
            settings.redis_url,
            socket_timeout=5,
            socket_connect_timeout=5,
            max_connections=64,
            wait_for_connection=5,
            retries=REDIS_RETRIES,
        )
        keyring = Keyring(settings.key_file, settings.key_check_interval)
        return cls(
            settings=settings,
            redis=redis,
            keyring=keyring,
            issuer=TokenIssuer(
                keyring,
                issuer=settings.issuer,
                audience=settings.audience,
                ttl=settings.access_ttl,
            ),
            hasher=Hasher(
                memory_kib=settings.argon2_memory_kib,
                time_cost=settings.argon2_time_cost,
                parallelism=settings.argon2_parallelism,
                workers=settings.hash_workers,
                queue=settings.hash_queue,
                on_change=metrics.hash_in_flight.set,
            ),
            accounts=AccountStore(redis, prefix=settings.redis_prefix),
            refresh=RefreshStore(
                redis,
                prefix=settings.redis_prefix,
                ttl=settings.refresh_ttl,
                guest_ttl=settings.guest_refresh_ttl,
                guest_prefix=GUEST_PREFIX,
            ),
            limiter=RateLimiter(
                redis,
                prefix=settings.redis_prefix,
                per_minute=settings.rate_limit_per_minute,
                login_failures=settings.login_failures,
                login_window=settings.login_failure_window,
            ),
            metrics=metrics,
            memory=MemoryGuard(
                redis,
                watermark=settings.memory_watermark,
                interval=settings.memory_check_interval,
            ),
            trusted_proxies=parse_networks(settings.trusted_proxies),
        )

    def client_of(self, request: Request) -> str:
        """The client address the request counts against (``auth.clientaddr``)."""
        cached = request.scope.get("stateroom.client")
        if isinstance(cached, str):
            return cached
        peer = request.client.host if request.client else "unknown"
        address = client_address(
            peer, request.headers.getlist("x-forwarded-for"), self.trusted_proxies
        )
        request.scope["stateroom.client"] = address
        return address

    async def aclose(self) -> None:
        self.hasher.close()
        await self.redis.aclose()


# ---------------------------------------------------------------- input


async def read_json(request: Request, limit: int, *, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object, read with a size bound (never more than ``limit`` bytes)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(f"request body is over {limit} bytes")
        except ValueError:
            raise BadRequest("invalid Content-Length header") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if optional and not body.strip():
        return {}
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType("send the body as JSON with Content-Type: application/json")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ValidationFailed("the body must be a JSON object")
    return data


def _string(data: dict[str, Any], field: str) -> str:
    value = data.get(field)
    if not isinstance(value, str):
        raise ValidationFailed(f"{field} is required and must be a string")
    return value


def valid_username(data: dict[str, Any]) -> str:
    username = _string(data, "username")
    if not USERNAME.fullmatch(username):
        raise ValidationFailed("username must be 3-32 characters of A-Z a-z 0-9 _ -")
    return username


def valid_password(data: dict[str, Any]) -> str:
    password = _string(data, "password")
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise ValidationFailed(f"password must be {PASSWORD_MIN}-{PASSWORD_MAX} characters")
    return password


def valid_name(data: dict[str, Any]) -> str | None:
    if data.get("name") is None:
        return None
    name = data["name"]
    if not isinstance(name, str):
        raise ValidationFailed("name must be a string")
    name = name.strip()
    if not 1 <= len(name) <= NAME_MAX or not name.isprintable():
        raise ValidationFailed(f"name must be 1-{NAME_MAX} printable characters")
    return name


# ---------------------------------------------------------------- app

Handler = Callable[[Request, Services], Awaitable[Response]]


def create_app(settings: AuthSettings, services: Services | None = None) -> Starlette:
    """Build the ASGI app; with no ``services`` it builds them and closes them on shutdown."""
    owned = services is None
    svc = services if services is not None else Services.create(settings)

    def endpoint(
        route: str, handler: Handler, *, limited: bool = True
    ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            request.scope["stateroom.route"] = route
            try:
                if svc.refusal is not None and route in WRITE_ROUTES:
                    raise Unavailable(svc.refusal, headers={"Retry-After": "30"})
                if limited:
                    await svc.limiter.hit_address(address_bucket(svc.client_of(request)))
                return await handler(request, svc)
            except ApiError as exc:
                if isinstance(exc, RateLimited):
                    svc.metrics.rate_limited.labels(exc.limit).inc()
                elif exc.code == "overloaded":
                    svc.metrics.hash_rejected.inc()
                return error_response(exc.status, exc.code, exc.message, exc.headers)
            except RedisError as exc:
                log.warning("redis unavailable on %s: %s", route, exc)
                return error_response(
                    503,
                    "unavailable",
                    "the login store is unavailable; retry shortly",
                    {"Retry-After": "1"},
                )
            except Exception:
                log.exception("unexpected error on %s", route)
                return error_response(500, "internal_error", "unexpected server error; retry later")

        return run

    async def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        codes = {404: "not_found", 405: "method_not_allowed"}
        messages = {
            404: "no such endpoint; see /openapi.json",
            405: "method not allowed on this endpoint",
        }
        return error_response(
            exc.status_code,
            codes.get(exc.status_code, "http_error"),
            messages.get(exc.status_code, str(exc.detail)),
            dict(exc.headers) if exc.headers else None,
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        checker: asyncio.Task[None] | None = None
        LOOP_LAG.start()  # event-loop lag from boot, not from the first scrape
        try:
            if not await check_memory(svc, at_start=True):
                checker = asyncio.create_task(check_memory_later(svc), name="redis-memory-check")
            yield
        finally:
            if checker is not None:
                checker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await checker
            if owned:
                await svc.aclose()
            LOOP_LAG.stop()

    # These import this module: import them once it is loaded.
    from auth.dashboard import dashboard_routes
    from auth.rooms import room_routes
    from auth.web import Pages

    pages = (
        Pages(svc).routes(endpoint, dashboard=settings.dashboard != "off") if settings.web else []
    )
    routes = [
        Route("/v1/guest", endpoint("/v1/guest", guest), methods=["POST"]),
        Route("/v1/accounts", endpoint("/v1/accounts", create_account), methods=["POST"]),
        Route("/v1/login", endpoint("/v1/login", login), methods=["POST"]),
        Route("/v1/refresh", endpoint("/v1/refresh", refresh), methods=["POST"]),
        Route("/v1/logout", endpoint("/v1/logout", logout), methods=["POST"]),
        *room_routes(endpoint, svc),  # /v1/rooms…: listing and matchmaking (auth.rooms)
        Route("/.well-known/jwks.json", endpoint("/.well-known/jwks.json", jwks, limited=False)),
        Route("/healthz", endpoint("/healthz", healthz, limited=False)),
        Route("/metrics", endpoint("/metrics", metrics, limited=False)),
        Route("/openapi.json", endpoint("/openapi.json", openapi, limited=False)),
        *dashboard_routes(endpoint, svc),  # /dashboard/api/… (auth.dashboard)
        *pages,  # /, /dashboard, /web, /sdk, /vendor (auth.web)
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: not_found},
        lifespan=lifespan,
    )
    app.state.services = svc

    def route_of(scope: Scope) -> tuple[str, frozenset[str]] | None:
        for route in routes:
            if route.matches(scope)[0] is not Match.NONE:
                return route.path, frozenset(route.methods or ())
        return None

    app.add_middleware(Cors, origins=parse_origins(settings.cors_origins), route_of=route_of)
    app.add_middleware(RequestMetrics, metrics=svc.metrics)
    app.add_middleware(PlainStartupFailure, services=svc)
    return app


class PlainStartupFailure:
    """When the service refuses to start, the ASGI server logs the reason, not a traceback.

    Starlette reports a failed lifespan with the formatted traceback as the message;
    for a refusal we know about (``Services.startup_refusal``) the message is the reason.
    """

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            reason = self.services.startup_refusal
            if message["type"] == "lifespan.startup.failed" and reason is not None:
                message = {**message, "message": reason}
            await send(message)

        await self.app(scope, receive, send_wrapper)


class RequestMetrics:
    """Counts every response by route template and status (pure ASGI: sees 404s too)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("stateroom.route", "unmatched")
            self.metrics.requests.labels(route, scope.get("method", ""), str(status)).inc()


# ---------------------------------------------------------------- start-up check


async def check_memory(svc: Services, *, at_start: bool) -> bool:
    """Check Redis's memory settings; False when Redis did not answer (try again later).

    An evicting policy raises ConfigError at start (the service refuses to start), and
    later sets ``svc.refusal`` (the service is already up: it stops writing instead).
    """
    try:
        result = await check_redis_memory(svc.redis)
    except (RedisError, OSError) as exc:
        if at_start:
            log.warning(
                "cannot check Redis memory settings yet (%s); checking again once Redis answers",
                exc,
            )
        return False
    for warning in result.warnings:
        log.warning("%s", warning)
    if result.fatal is not None:
        if at_start:
            # The ASGI server logs it (PlainStartupFailure), in-process callers get it.
            svc.startup_refusal = f"refusing to start: {result.fatal}"
            raise ConfigError(svc.startup_refusal)
        log.error("refusing writes: %s", result.fatal)
        svc.refusal = f"the login store is misconfigured: {result.fatal}"
    return True


async def check_memory_later(svc: Services, first_delay: float = 0.5) -> None:
    delay = first_delay
    while True:
        await asyncio.sleep(delay)
        if await check_memory(svc, at_start=False):
            return
        delay = min(delay * 2, 5.0)


# ---------------------------------------------------------------- handlers


async def _token_pair(svc: Services, player_id: str, name: str) -> dict[str, Any]:
    refresh_token = await svc.refresh.create(player_id, name)
    return {
        "access_token": svc.issuer.issue(player_id, name, session_id=family_of(refresh_token)),
        "refresh_token": refresh_token,
        "token_type": "Bearer",
        "expires_in": svc.settings.access_ttl,
        "player_id": player_id,
        "name": name,
    }


async def guest(request: Request, svc: Services) -> Response:
    data = await read_json(request, svc.settings.max_body_bytes, optional=True)
    name = valid_name(data) or f"guest-{secrets.randbelow(10_000):04d}"
    await svc.memory.check()
    player_id = GUEST_PREFIX + secrets.token_urlsafe(12)
    pair = await _token_pair(svc, player_id, name)
    svc.metrics.logins.labels("guest", "ok").inc()
    return JSONResponse(pair)


async def create_account(request: Request, svc: Services) -> Response:
    data = await read_json(request, svc.settings.max_body_bytes)
    username = valid_username(data)
    password = valid_password(data)
    await svc.memory.check()
    if await svc.accounts.get(username) is not None:
        raise Conflict(f"username {username!r} is taken; choose another", code="username_taken")
    account = await svc.accounts.create(username, await svc.hasher.hash(password))
    if account is None:
        raise Conflict(f"username {username!r} is taken; choose another", code="username_taken")
    return JSONResponse({"player_id": account.player_id, "username": account.username}, 201)


async def login(request: Request, svc: Services) -> Response:
    data = await read_json(request, svc.settings.max_body_bytes)
    username = valid_username(data)
    password = valid_password(data)
    # The attempt slot is taken before any hashing (auth.ratelimit): a wrong password
    # keeps it, a success or an attempt that was never evaluated gives it back.
    await svc.limiter.reserve_login(username)
    try:
        account = await svc.accounts.get(username)
        ok = await svc.hasher.verify(account.password_hash if account else None, password)
    except (Unavailable, RedisError):  # not evaluated (hashing at capacity, Redis down)
        with contextlib.suppress(RedisError):
            await svc.limiter.release_login(username)
        raise
    if not ok or account is None:
        svc.metrics.logins.labels("password", "failed").inc()
        raise Unauthorized("wrong username or password", code="invalid_credentials")
    await svc.limiter.release_login(username)
    svc.metrics.logins.labels("password", "ok").inc()
    return JSONResponse(await _token_pair(svc, account.player_id, account.username))


_GRANT_MESSAGES = {
    "unknown": "unknown refresh token; log in again",
    "revoked": "this session was revoked; log in again",
    "reuse": "refresh token already used; the session is revoked, log in again",
    "expired": "refresh token expired; log in again",
}


async def refresh(request: Request, svc: Services) -> Response:
    data = await read_json(request, svc.settings.max_body_bytes)
    token = _string(data, "refresh_token")
    outcome = await svc.refresh.rotate(token)
    svc.metrics.refreshes.labels(outcome.status).inc()
    if outcome.status == "reuse":
        svc.metrics.reuse.inc()
        log.warning("refresh token reuse detected; family revoked")
    if outcome.status in ("reuse", "revoked") and outcome.family is not None:
        # End the live sessions too. Also on "revoked": it makes the record certain
        # even if writing it failed the first time (the write is idempotent).
        await _revoke_session(svc, outcome.family)
    if outcome.status != "ok" or outcome.player_id is None or outcome.name is None:
        raise Unauthorized(
            _GRANT_MESSAGES.get(outcome.status, "invalid grant"), code="invalid_grant"
        )
    return JSONResponse(
        {
            "access_token": svc.issuer.issue(
                outcome.player_id, outcome.name, session_id=outcome.family
            ),
            "refresh_token": outcome.refresh_token,
            "token_type": "Bearer",
            "expires_in": svc.settings.access_ttl,
            "player_id": outcome.player_id,
            "name": outcome.name,
        }
    )


async def logout(request: Request, svc: Services) -> Response:
    data = await read_json(request, svc.settings.max_body_bytes)
    family = await svc.refresh.revoke(_string(data, "refresh_token"))
    if family is not None:
        await _revoke_session(svc, family)
    return Response(status_code=204)


async def _revoke_session(svc: Services, family: str) -> None:
    """Write the revocation record room servers check (``infra.revocation``)."""
    await write_revocation(svc.redis, family, svc.settings.access_ttl + REVOCATION_MARGIN_S)


async def jwks(request: Request, svc: Services) -> Response:
    svc.keyring.maybe_reload()
    return JSONResponse(svc.keyring.jwks(), headers={"Cache-Control": "public, max-age=60"})


async def healthz(request: Request, svc: Services) -> Response:
    if svc.refusal is not None:
        raise Unavailable(svc.refusal)
    try:
        await svc.redis.ping()
    except (RedisError, OSError) as exc:
        raise Unavailable(f"redis does not answer: {exc}") from None
    return JSONResponse({"status": "ok"})


def check_admin(request: Request, svc: Services, what: str = "/metrics") -> None:
    """``admin_token`` set: a matching bearer token; unset: loopback clients only."""
    expected = svc.settings.admin_token
    if expected:
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode("utf-8", "replace"), expected.encode("utf-8")
        ):
            raise Unauthorized(
                "send Authorization: Bearer <admin token> (STATEROOM_ADMIN_TOKEN)",
                headers={"WWW-Authenticate": 'Bearer realm="stateroom-admin"'},
            )
        return
    if not is_loopback(svc.client_of(request)):
        raise Forbidden(
            f"{what} answers loopback clients only; set STATEROOM_ADMIN_TOKEN to reach "
            "it from elsewhere with Authorization: Bearer <token>"
        )


async def metrics(request: Request, svc: Services) -> Response:
    check_admin(request, svc)
    return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def openapi(request: Request, svc: Services) -> Response:
    return JSONResponse(openapi_document())
