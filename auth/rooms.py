"""Listing and matchmaking: the login service's HTTP routes over the room directory.

    GET  /v1/rooms?game=G[&limit=N][&OPTION=VALUE…]   public rooms of a game
    POST /v1/rooms/quick-join   {"game", "options"}   a seat in the least-full matching room
    POST /v1/rooms/private      {"game", "options"}   a private room's name and join code
    GET  /v1/rooms/private/{code}                     the room a join code names

Stateless like the rest of the service: every answer is read from (or written to) the
directory in Redis (``infra.directory``), so any replica answers any request. The only
process state is derived and public: the token verifier built from this service's own
keyring (rebuilt when the key file changes), and the list of games the room servers
run, read from their registry (``sr:servers``) at most once per ``CATALOGUE_TTL_S``.

Every route requires an access token (``Authorization: Bearer``), verified in process
exactly as room servers verify it (``auth.verify.TokenVerifier``, EdDSA pinned, claims
required), plus the session revocation record; so the per-player budgets below apply,
on top of the per-address rate limit every ``/v1`` route has:

- ``QUICK_JOINS_PER_MINUTE`` (60) quick-joins per player a minute; a player holds at
  most one seat reservation per game anyway (``infra.directory``);
- ``PRIVATE_ROOMS_PER_MINUTE`` (10) private rooms per player a minute (each holds a code
  and an entry for 10 minutes);
- ``CODE_MISSES_PER_MINUTE`` (10) lookups of codes that do not exist, per player a
  minute: with 30-bit codes, guessing one is hopeless at that rate.

Bad input changes nothing: everything is validated before the first write.

``GET /v1/servers`` (same token) lists the live room servers' WebSocket URLs, so a
browser client that was given only the login service's URL can find a server.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from auth.app import JSONResponse, Services, read_json
from auth.errors import ApiError, RateLimited, Unauthorized, Unavailable, ValidationFailed
from auth.metrics import Metrics
from auth.verify import InvalidToken, TokenVerifier, VerifiedToken
from infra import cluster_view, directory
from infra.directory import Entry, GameInfo, InvalidOptions, OptionValue
from infra.revocation import revoked

QUICK_JOINS_PER_MINUTE = 60
PRIVATE_ROOMS_PER_MINUTE = 10
CODE_MISSES_PER_MINUTE = 10
CATALOGUE_TTL_S = 1.0
DEFAULT_MAX_PLAYERS = 64  # a game whose servers state no max_players (the Game default)
LIST_LIMIT_DEFAULT = 50
MAX_PLAYERS_OPTION = "max_players"  # when given, the new room's seat limit
RESERVED_OPTIONS = frozenset({"private", "game", "limit"})  # set by the route, or query
WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="stateroom"'}

Endpoint = Callable[..., Callable[[Request], Awaitable[Response]]]


class NotFound(ApiError):
    status = 404
    code = "not_found"


class _Counters:
    def __init__(self, metrics: Metrics) -> None:
        self.quick_joins = Counter(
            "stateroom_auth_quick_joins",
            "Quick-joins by result (existing: a seat in a room of the directory; created: "
            "a new room name)",
            ["result"],
            registry=metrics.registry,
        )
        self.private_rooms = Counter(
            "stateroom_auth_private_rooms",
            "Private rooms named (a join code each)",
            registry=metrics.registry,
        )


_counters: weakref.WeakKeyDictionary[Metrics, _Counters] = weakref.WeakKeyDictionary()


def _counters_of(metrics: Metrics) -> _Counters:
    found = _counters.get(metrics)
    if found is None:
        found = _counters[metrics] = _Counters(metrics)
    return found


def room_json(entry: Entry) -> dict[str, Any]:
    """A room as the API shows it."""
    return {
        "room": entry.room,
        "game": entry.game,
        "players": entry.players,
        "max_players": entry.max_players,
        "options": dict(entry.options),
        "metadata": dict(entry.metadata),
        "joinable": entry.joinable,
    }


class RoomsApi:
    """The room routes of one app; ``routes()`` goes into the app's route list."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.counters = _counters_of(svc.metrics)
        self._jwks: object = None
        self._verifier: TokenVerifier | None = None
        self._catalogue: tuple[float, dict[str, GameInfo]] | None = None

    def routes(self, endpoint: Endpoint) -> list[Route]:
        return [
            Route("/v1/rooms", endpoint("/v1/rooms", self.list_rooms), methods=["GET"]),
            Route(
                "/v1/rooms/quick-join",
                endpoint("/v1/rooms/quick-join", self.quick_join),
                methods=["POST"],
            ),
            Route(
                "/v1/rooms/private",
                endpoint("/v1/rooms/private", self.create_private),
                methods=["POST"],
            ),
            Route(
                "/v1/rooms/private/{code}",
                endpoint("/v1/rooms/private/{code}", self.private_room),
                methods=["GET"],
            ),
            Route("/v1/servers", endpoint("/v1/servers", self.list_servers), methods=["GET"]),
        ]

    # ------------------------------------------------------------ checks

    def verifier(self) -> TokenVerifier:
        """A verifier over this service's own published keys (rebuilt after a reload)."""
        self.svc.keyring.maybe_reload()
        jwks = self.svc.keyring.jwks()
        if self._verifier is None or jwks is not self._jwks:
            self._verifier = TokenVerifier.from_jwks(
                jwks, issuer=self.svc.settings.issuer, audience=self.svc.settings.audience
            )
            self._jwks = jwks
        return self._verifier

    async def player(self, request: Request) -> VerifiedToken:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized(
                "send Authorization: Bearer <access token>; get one from POST /v1/guest "
                "or /v1/login",
                headers=WWW_AUTHENTICATE,
            )
        try:
            who = self.verifier().verify_static(token)
        except InvalidToken as exc:
            raise Unauthorized(exc.message, code=exc.code, headers=WWW_AUTHENTICATE) from None
        if who.session_id and await revoked(self.svc.redis, [who.session_id]):
            raise Unauthorized(
                "this session was ended (logout); log in again",
                code="session_revoked",
                headers=WWW_AUTHENTICATE,
            )
        return who

    async def per_player(self, kind: str, player: str, per_minute: int) -> None:
        """Count one ``kind`` request of ``player`` in this minute; 429 over the budget."""
        now = time.time()
        window = int(now // 60)
        key = f"{self.svc.settings.redis_prefix}rl:{kind}:{player}:{window}"
        async with self.svc.redis.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, 61, nx=True)
            count, _ = await pipe.execute()
        if int(count) > per_minute:
            retry = int((window + 1) * 60 - now) + 1
            raise RateLimited(
                f"more than {per_minute} {kind.replace('_', ' ')} a minute for this player; "
                f"retry in {retry} s",
                retry_after=retry,
                limit="player",
            )

    async def games(self) -> dict[str, GameInfo]:
        now = time.monotonic()
        if self._catalogue is not None and now - self._catalogue[0] < CATALOGUE_TTL_S:
            return self._catalogue[1]
        found = await directory.games(self.svc.redis)
        self._catalogue = (now, found)
        return found

    async def game(self, name: Any) -> GameInfo:
        if not isinstance(name, str) or not name:
            raise ValidationFailed('game is required: the name of a game, such as "arena"')
        known = await self.games()
        game = known.get(name)
        if game is None:
            hint = (
                f"the room servers run: {', '.join(sorted(known))}"
                if known
                else "no room server has published its games yet; retry shortly"
            )
            raise NotFound(
                f"no room server runs the game {name[:40]!r}; {hint}", code="unknown_game"
            )
        return game

    @staticmethod
    def options(game: GameInfo, value: Any, *, what: str = "options") -> dict[str, OptionValue]:
        """Well-typed options the game takes (422 ``invalid_options`` otherwise)."""
        try:
            options = directory.check_options(value, what=what)
        except InvalidOptions as exc:
            raise ValidationFailed(str(exc), code="invalid_options") from None
        reserved = sorted(RESERVED_OPTIONS & set(options))
        if reserved:
            raise ValidationFailed(
                f"{what}: {', '.join(reserved)} cannot be an option (private rooms are made "
                "with POST /v1/rooms/private)",
                code="invalid_options",
            )
        if game.options is not None:
            unknown = sorted(set(options) - game.options)
            if unknown:
                takes = ", ".join(sorted(game.options)) or "no options"
                raise ValidationFailed(
                    f"{what}: {game.name} has no option {', '.join(unknown)}; it takes {takes}",
                    code="invalid_options",
                )
        return options

    @staticmethod
    def max_players(game: GameInfo, options: dict[str, OptionValue]) -> int:
        top = game.max_players or DEFAULT_MAX_PLAYERS
        if MAX_PLAYERS_OPTION not in options:
            return top
        wanted = options[MAX_PLAYERS_OPTION]
        if isinstance(wanted, bool) or not isinstance(wanted, int) or not 1 <= wanted <= top:
            raise ValidationFailed(
                f"options.{MAX_PLAYERS_OPTION} must be an integer from 1 to {top}",
                code="invalid_options",
            )
        return wanted

    def writable(self) -> None:
        if self.svc.refusal is not None:
            raise Unavailable(self.svc.refusal, headers={"Retry-After": "30"})

    async def ws_url(self, entry: Entry) -> str | None:
        if entry.pending or not entry.owner:
            return None
        return await directory.server_ws_url(self.svc.redis, entry.owner)

    # ------------------------------------------------------------ handlers

    async def list_rooms(self, request: Request, svc: Services) -> Response:
        await self.player(request)
        params = request.query_params.multi_items()
        seen: set[str] = set()
        for key, _ in params:
            if key in seen:
                raise ValidationFailed(f"query parameter {key[:40]!r} is given twice")
            seen.add(key)
        query = dict(params)
        game = await self.game(query.pop("game", None))
        limit = LIST_LIMIT_DEFAULT
        if "limit" in query:
            raw = query.pop("limit")
            if not raw.isdigit() or not 1 <= int(raw) <= directory.LIST_LIMIT_MAX:
                raise ValidationFailed(
                    f"limit must be an integer from 1 to {directory.LIST_LIMIT_MAX}"
                )
            limit = int(raw)
        wanted = self.options(game, query, what="filter")
        entries = await directory.list_public(
            svc.redis, game.name, options_filter=wanted, limit=limit
        )
        return JSONResponse({"game": game.name, "rooms": [room_json(e) for e in entries]})

    async def quick_join(self, request: Request, svc: Services) -> Response:
        who = await self.player(request)
        data = await read_json(request, svc.settings.max_body_bytes)
        game = await self.game(data.get("game"))
        options = self.options(game, data.get("options"))
        seats = self.max_players(game, options)
        self.writable()
        await self.per_player("quick_joins", who.player_id, QUICK_JOINS_PER_MINUTE)
        joined = await directory.quick_join(
            svc.redis, game.name, options, player=who.player_id, max_players_default=seats
        )
        self.counters.quick_joins.labels("created" if joined.created else "existing").inc()
        entry = joined.entry
        return JSONResponse(
            {
                "room": joined.room,
                "game": game.name,
                "created": joined.created,
                "running": not entry.pending,
                "options": dict(entry.options),
                "players": entry.players,
                "max_players": entry.max_players,
                "reserved_until": joined.reservation.expires_at,
                "ws_url": await self.ws_url(entry),
            }
        )

    async def create_private(self, request: Request, svc: Services) -> Response:
        who = await self.player(request)
        data = await read_json(request, svc.settings.max_body_bytes)
        game = await self.game(data.get("game"))
        options = self.options(game, data.get("options"))
        seats = self.max_players(game, options)
        self.writable()
        await svc.memory.check()
        await self.per_player("private_rooms", who.player_id, PRIVATE_ROOMS_PER_MINUTE)
        made = await directory.create_private(svc.redis, game.name, options, max_players=seats)
        self.counters.private_rooms.inc()
        return JSONResponse(
            {
                "code": made.code,
                "room": made.room,
                "game": game.name,
                "options": dict(made.entry.options),
                "max_players": made.entry.max_players,
                "expires_in": directory.PRIVATE_PENDING_TTL_MS // 1000,
            },
            201,
        )

    async def private_room(self, request: Request, svc: Services) -> Response:
        who = await self.player(request)
        window = int(time.time() // 60)
        misses_key = f"{svc.settings.redis_prefix}rl:code_misses:{who.player_id}:{window}"
        misses = await svc.redis.get(misses_key)
        if misses is not None and int(misses) >= CODE_MISSES_PER_MINUTE:
            retry = int((window + 1) * 60 - time.time()) + 1
            raise RateLimited(
                f"more than {CODE_MISSES_PER_MINUTE} unknown codes a minute for this player; "
                f"retry in {retry} s",
                retry_after=retry,
                limit="player",
            )
        code = str(request.path_params.get("code", ""))
        entry = await directory.private_room(svc.redis, code)
        if entry is None:
            async with svc.redis.pipeline(transaction=False) as pipe:
                pipe.incr(misses_key)
                pipe.expire(misses_key, 61, nx=True)
                await pipe.execute()
            raise NotFound(
                "no private room has this code (codes are 6 letters and digits, and end "
                "when their room closes); check it with the room's creator",
                code="unknown_code",
            )
        return JSONResponse(
            {
                "code": entry.join_code,
                **room_json(entry),
                "running": not entry.pending,
                "ws_url": await self.ws_url(entry),
            }
        )

    async def list_servers(self, request: Request, svc: Services) -> Response:
        """The live room servers, for a client that joins a room by name (any server
        accepts any room and redirects to its owner)."""
        await self.player(request)
        return JSONResponse({"servers": await cluster_view.live_servers(svc.redis)})


def room_routes(endpoint: Endpoint, svc: Services) -> list[Route]:
    """The routes of ``RoomsApi`` for ``create_app``."""
    return RoomsApi(svc).routes(endpoint)
