"""The Python client SDK: log in, join a room, send inputs, iterate over states.

``RoomClient`` keeps one logical session to a room across any number of
WebSocket connections: it follows redirects to the owner (only into the
cluster), reconnects with exponential backoff and jitter when a server dies or
hands the room over, rejoins its seat, resends every input the server has not
acked yet (the server drops duplicates by sequence number), never hands the
application a state older than one it already delivered, and keeps its
session's token fresh on the open connection.

    auth = AuthClient("http://127.0.0.1:8000")
    tokens = await auth.guest("ann")
    async with RoomClient(urls, "lobby", auth.token_source(tokens)) as room:
        room.send_input({"dx": 1, "dy": 0})
        async for state in room.states():
            ...

Protocol v2 (the default; ``protocol=1`` for the old one). The client offers
``stateroom.v2.<encoding>`` then ``stateroom.v1.<encoding>`` and speaks whichever the
server picks (``RoomClient.version``; an old server picks v1, and the application then
gets full states as before, with ``private`` None and no events). On v2:

- Views: one ``DeltaDecoder`` for the room's shared stream and one for the player's
  private stream, new on every connection (the first state after ``welcome`` carries
  keyframes for both). ``State.state`` is the full public view rebuilt from them,
  ``State.private`` the player's own view (None when the game has none).
- Resync: a delta the decoder refuses (``DeltaBaseMismatch``: one was missed, or the
  stream restarted; or a malformed delta) makes the client send one ``{"t": "sync"}``,
  count it in ``ClientStats.resyncs`` and drop states until one whose shared payload is
  a keyframe (``ClientStats.dropped_states``). No keyframe within ``RESYNC_TIMEOUT``
  (2 s): the client reconnects, and the new connection starts with keyframes. A keyframe
  it cannot read is a protocol error (close 4000 semantics: final).
- Events, exactly once: a tick counts as applied only when its state is handed to the
  application (put in the states queue); the next ``join`` sends that tick as ``since``
  and the server resends the events of the later ticks with its first state. Events of a
  state dropped while resyncing are kept and delivered with the next state delivered
  (but dropped with the connection: the resume's ``since`` brings them again); a
  state older than one delivered is dropped with its events, which were delivered
  already (with their own state, or with a later one); when a slow reader lets the
  queue overflow, the events of the state dropped are carried into the next one.
- Room options: ``RoomClient(options=...)`` goes in every v2 ``join`` (the server uses
  it only when that join creates the room); ``RoomClient.options`` is what ``welcome``
  says the room's options are. A refusal is ``RoomError(4006, ..., "invalid_options")``;
  options asked of a server that speaks only v1 end the first join with
  ``RoomError(4004, ..., "unsupported_version")`` instead of creating a room without them.
- A ``welcome`` whose ``v`` is not the negotiated version is a protocol error.

Errors:
    ClientError
    ├── LoginError        the login service refused (carries its error code)
    ├── TokenUnavailable  the token callable failed (retried with backoff)
    └── RoomError         the room refused us for good (close code, reason, error code)

Redirect trust. A ``redirect`` names a URL that the client would send its bearer
token to, so it is followed only into the cluster: to a host of one of the URLs
the client was given (any port; ``cluster.json`` lists every server) or one
matching ``allowed_hosts`` (exact names, or ``*.example.com`` for any name
below example.com), with a ``ws``/``wss`` scheme, no credentials in it, and
never from ``wss`` down to ``ws``. Anything else is refused: not connected to,
counted in ``ClientStats.redirects_refused``, logged at WARNING with the URL
cut to scheme, host, port and path (``redact_url``), and the client reconnects
to one of its own URLs with backoff.

Fallback. A ``welcome`` may name a ``fallback``: the server that would take the
room over if its owner died. After a seated connection drops, the first reconnect
goes there (when the redirect rules trust it and it is not suspect;
``ClientStats.fallbacks``), so the join meets the room where it is being rebuilt
instead of a redirect; later attempts follow the rotation.

Token renewal. When the token source is a callable (``AuthClient.token_source``
makes one from a ``Tokens`` pair), the client presents a fresh token on the open
connection (``{"t": "auth", "token": ...}``) before ``welcome.token_exp``: at the
earlier of 80 % of the remaining lifetime and ``REAUTH_MARGIN`` (60 s) before
expiry (half the remaining lifetime when less than two minutes are left), never
twice within ``REAUTH_MIN_INTERVAL`` (5 s; 1 s for a token so short that waiting
5 s would leave it less than half its remaining life); a failed attempt is retried with
backoff (1 s, 2 s, 4 s, ... at most half the time left, at least 1 s) until the
server closes the session. ``authed`` moves the deadline. A close 4001
``token_expired`` is answered by one reconnect with a fresh token (a resume);
``session_revoked``, other 4001s and a refresh refused with 401/403 are final.
A plain string token is never renewed: the session ends with RoomError(4001).

Failover timing. The constants below are tuned to a 3 s room lease, so that a
frozen owner (SIGSTOP) costs a player at most lease + 0.5 s:

- ``STALL_TIMEOUT`` = 1.0 s without any frame ends a connection. States come
  every 50 ms at 20 Hz, so that is 20 missed ticks; after half of it without a
  frame the client sends a ``ping``, which a live server answers even when its
  room ticks slowly, so only a silent process is taken for dead.
- ``OPEN_TIMEOUT`` = 1.0 s for the TCP connect plus the WebSocket handshake. A
  frozen process still completes TCP connects (the kernel does that) but never
  the handshake; a live one completes it in a few round trips.
- ``JOIN_TIMEOUT`` = 2.0 s from the handshake to the ``welcome``: a live server
  may be loading a room it is taking over, or holding the join (up to 1.5 s) until
  a frozen owner's lease runs out so that it can claim the room at once. A frozen
  process never gets that far (it does not complete the handshake), so a join
  timeout does not make the URL suspect.
- A URL whose handshake failed or whose connection stalled is *suspect* for
  ``SUSPECT_S`` = 3.0 s (one lease): the rotation over the known servers skips
  it, and a redirect to it is not followed (it is retried like a 4020) while
  another server is there to ask. A peer holds the join (or answers
  ``unavailable`` + 4020) until the frozen owner's lease expires, then claims the
  room.
- Backoff: attempt n waits uniform ``[d/2, d]``, ``d = min(cap, 50 ms * 2^(n-1))``.
  ``cap`` is ``RETRY_BACKOFF_MAX`` = 0.25 s for the first ``FAST_RETRY_WINDOW`` =
  5 s of an outage (a takeover takes one lease at most, and a client retrying
  every 125-250 ms is there within ~100 ms of the claim), ``BACKOFF_MAX`` = 1 s
  after that (a room that stays unavailable is not hammered).

A frozen owner then costs: ~1 s to notice, then a join held by a peer (or its
4020s, every 125-250 ms) until the lease ends, 3 s after the last renewal, then the
claim: 3.04 s from the freeze to the first new state against real processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import ssl as ssl_module
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import TracebackType
from typing import Any

import httpx
import msgpack
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Subprotocol

from server.protocol import (
    JSON,
    JSON_V2,
    MSGPACK,
    MSGPACK_V2,
    PROTOCOL_V2,
    PROTOCOL_VERSION,
    CloseCode,
    Codec,
    ErrorCode,
    ProtocolError,
)
from server.protocol.delta import DeltaDecoder, DeltaError
from server.protocol.messages import shown

log = logging.getLogger("stateroom.client")

TokenSource = str | Callable[[], Awaitable[str]]

# -- timing (why: see the module docstring) --------------------------------------------
STALL_TIMEOUT = 1.0  # s without a frame before a connection is taken for dead
OPEN_TIMEOUT = 1.0  # s for TCP connect + WebSocket handshake
JOIN_TIMEOUT = 2.0  # s from the handshake to welcome (or redirect/error)
SUSPECT_S = 3.0  # s a URL that stalled or failed its handshake is skipped
BACKOFF_BASE = 0.05  # s: first retry within 50 ms
BACKOFF_MAX = 1.0  # s: cap once an outage lasts longer than FAST_RETRY_WINDOW
RETRY_BACKOFF_MAX = 0.25  # s: cap during the first FAST_RETRY_WINDOW of an outage
FAST_RETRY_WINDOW = 5.0  # s
REAUTH_MARGIN = 60.0  # s before token_exp (at most half the remaining lifetime)
REAUTH_FRACTION = 0.8  # of the remaining lifetime
REAUTH_MIN_INTERVAL = 5.0  # s between two auth messages (unless the token would expire)
REAUTH_HARD_MIN_INTERVAL = 1.0  # s between two auth messages, always
REAUTH_REPLY_TIMEOUT = 10.0  # s to wait for authed before trying again
RESYNC_TIMEOUT = 2.0  # s to wait for keyframes after a sync before reconnecting


class ClientError(Exception):
    """Root of the SDK's errors."""


class LoginError(ClientError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code


class TokenUnavailable(ClientError):
    """The token callable failed; the session retries with backoff."""


class RoomError(ClientError):
    """The server closed the session with a code that retrying will not fix.

    ``code`` is the close code, ``reason`` its text, ``error_code`` the ``code`` of the
    last ``error`` message the server sent before closing (e.g. ``room_quota``,
    ``session_revoked``, ``invalid_options`` with 4006), or None. The SDK raises one
    itself in two cases: 4000 for a server that breaks the protocol, and 4004
    ``unsupported_version`` for room options asked of a server that speaks only v1.
    """

    def __init__(self, code: int, reason: str, error_code: str | None = None) -> None:
        detail = f" ({error_code})" if error_code else ""
        super().__init__(f"room closed the session: {code} {reason}{detail}")
        self.code = code
        self.reason = reason
        self.error_code = error_code


@dataclass(frozen=True)
class Tokens:
    access_token: str
    refresh_token: str
    player_id: str
    expires_at: float  # unix seconds
    expires_in: float = 0.0  # the access token's lifetime when issued, s (0: unknown)


def refresh_margin(lifetime: float) -> float:
    """How long before expiry ``RefreshingToken`` refreshes a token of this lifetime.

    A quarter of the lifetime, at least 90 s, at most 60 % of it: always more than what
    is left when ``RoomClient`` renews (``reauth_delay``), so a renewal gets a new token,
    and a reconnect early in a token's life does not refresh.
    """
    if lifetime <= 0:
        return REAUTH_MARGIN
    return min(max(90.0, lifetime / 4), 0.6 * lifetime)


class RefreshingToken:
    """A token source (for ``RoomClient``) that refreshes its ``Tokens`` when due.

    Returns the cached access token until it is within ``margin`` of expiry (default
    ``refresh_margin`` of its lifetime), then refreshes it (``POST /v1/refresh``,
    which rotates the refresh token; one refresh in flight at a time: concurrent
    callers wait for it, since a second use of a rotated refresh token is reuse).
    When a refresh fails, the cached token is returned while it is still valid;
    once it has expired the error is raised (``LoginError`` 401 is final for the
    ``RoomClient``; anything else is retried).
    """

    def __init__(
        self,
        auth: AuthClient,
        tokens: Tokens,
        margin: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.auth = auth
        self.tokens = tokens
        self._margin = margin
        self.clock = clock
        self.refreshes = 0
        self.last_error = ""
        self._lock = asyncio.Lock()
        self._rejected = ""

    @property
    def margin(self) -> float:
        if self._margin is not None:
            return self._margin
        return refresh_margin(self.tokens.expires_in)

    def due(self) -> bool:
        tokens = self.tokens
        return tokens.access_token == self._rejected or (
            self.clock() >= tokens.expires_at - self.margin
        )

    def invalidate(self, access_token: str) -> None:
        """A server refused this token as expired: refresh on the next call."""
        self._rejected = access_token

    async def __call__(self) -> str:
        async with self._lock:
            if self.due():
                error = await self._refresh()
                if error is not None and self.clock() >= self.tokens.expires_at:
                    raise error
            return self.tokens.access_token

    async def _refresh(self) -> Exception | None:
        try:
            self.tokens = await self.auth.refresh(self.tokens)
        except Exception as exc:  # the session goes on with the token it has, if valid
            self.last_error = f"token refresh failed: {exc}"
            log.warning("%s", self.last_error)
            return exc
        self.refreshes += 1
        self.last_error = ""
        return None

    async def keep_fresh(self, retry: float = 5.0) -> None:
        """Refresh ahead of time in the background (optional: ``RoomClient`` asks when due)."""
        while True:
            wait = self.tokens.expires_at - self.margin - self.clock()
            await asyncio.sleep(wait if wait > 0 else retry if self.last_error else 0)
            async with self._lock:
                if self.due():
                    await self._refresh()


@dataclass(frozen=True)
class RoomListing:
    """One public room of ``GET /v1/rooms`` (``AuthClient.list_rooms``)."""

    room: str
    game: str
    players: int
    max_players: int
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)
    joinable: bool = True

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> RoomListing:
        return cls(
            room=str(body["room"]),
            game=str(body["game"]),
            players=int(body["players"]),
            max_players=int(body["max_players"]),
            options=dict(body.get("options") or {}),
            metadata=dict(body.get("metadata") or {}),
            joinable=bool(body.get("joinable", True)),
        )


@dataclass(frozen=True)
class QuickJoinResult:
    """The answer of ``POST /v1/rooms/quick-join`` (``AuthClient.quick_join``).

    Join ``room`` with ``RoomClient(..., game=result.game, options=result.options)``
    before ``reserved_until`` (unix seconds): whichever player's join creates a new room
    creates it with these options. ``ws_url`` is the owner's URL when the room runs
    (``running``); any room server redirects to the owner anyway.
    """

    room: str
    game: str
    created: bool
    running: bool
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    players: int = 0
    max_players: int = 0
    reserved_until: float = 0.0
    ws_url: str | None = None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> QuickJoinResult:
        return cls(
            room=str(body["room"]),
            game=str(body["game"]),
            created=bool(body["created"]),
            running=bool(body["running"]),
            options=dict(body.get("options") or {}),
            players=int(body.get("players", 0)),
            max_players=int(body.get("max_players", 0)),
            reserved_until=float(body.get("reserved_until", 0.0)),
            ws_url=body.get("ws_url"),
        )


@dataclass(frozen=True)
class PrivateRoom:
    """A private room: what ``POST /v1/rooms/private`` answers (``create_private``:
    ``expires_in`` set, the room not running yet) or ``GET /v1/rooms/private/{code}``
    (``private_room``: ``players``, ``metadata``, ``joinable``, ``running``, ``ws_url``).

    Join ``room`` with ``options`` (the creator's join creates it, private)."""

    code: str
    room: str
    game: str
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    max_players: int = 0
    players: int = 0
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)
    joinable: bool = True
    running: bool = False
    ws_url: str | None = None
    expires_in: float | None = None  # s the code waits for the room to be created

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> PrivateRoom:
        expires_in = body.get("expires_in")
        return cls(
            code=str(body["code"]),
            room=str(body["room"]),
            game=str(body["game"]),
            options=dict(body.get("options") or {}),
            max_players=int(body.get("max_players", 0)),
            players=int(body.get("players", 0)),
            metadata=dict(body.get("metadata") or {}),
            joinable=bool(body.get("joinable", True)),
            running=bool(body.get("running", False)),
            ws_url=body.get("ws_url"),
            expires_in=None if expires_in is None else float(expires_in),
        )


#: What the rooms calls take as the player's access token: a ``Tokens`` pair, the access
#: token itself, or a token source such as ``AuthClient.token_source(tokens)`` (asked
#: for a fresh token on every call).
AccessToken = Tokens | TokenSource


def _query_value(value: Any) -> str:
    """An option filter as ``GET /v1/rooms`` compares it (``true``, ``4``, ``ffa``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return str(value)
    raise TypeError(
        f"an option filter is a string, an integer or a boolean, not {type(value).__name__}"
    )


class AuthClient:
    """The login service's HTTP API: logins, and finding a room (listing, quick-join,
    private rooms by code; see docs/api.md "Rooms and matchmaking").

    The rooms calls need the player's access token (``AccessToken``) and raise
    ``LoginError`` with the service's error code: ``unknown_game`` (404, no room server
    runs the game), ``unknown_code`` (404), ``invalid_options`` (422, ill-typed, unknown
    or reserved options or filters), ``validation_failed`` (422), ``rate_limited``
    (429), ``unauthorized``/``token_expired``/``session_revoked``... (401).
    """

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout)

    async def _post(self, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        response = await self._http.post(path, json=body if body is not None else {})
        return self._answer(response)

    @staticmethod
    def _answer(response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                raise LoginError(response.status_code, error["code"], error["message"])
            except (ValueError, KeyError, TypeError):
                raise LoginError(response.status_code, "http_error", response.text[:200]) from None
        if response.status_code == 204:
            return {}
        result: dict[str, Any] = response.json()
        return result

    @staticmethod
    def _tokens(body: dict[str, Any]) -> Tokens:
        expires_in = float(body["expires_in"])
        return Tokens(
            access_token=body["access_token"],
            refresh_token=body["refresh_token"],
            player_id=body["player_id"],
            expires_at=time.time() + expires_in,
            expires_in=expires_in,
        )

    async def guest(self, name: str | None = None) -> Tokens:
        return self._tokens(await self._post("/v1/guest", {"name": name} if name else None))

    async def register(self, username: str, password: str) -> None:
        await self._post("/v1/accounts", {"username": username, "password": password})

    async def login(self, username: str, password: str) -> Tokens:
        return self._tokens(
            await self._post("/v1/login", {"username": username, "password": password})
        )

    async def refresh(self, tokens: Tokens) -> Tokens:
        return self._tokens(
            await self._post("/v1/refresh", {"refresh_token": tokens.refresh_token})
        )

    async def logout(self, tokens: Tokens) -> None:
        await self._post("/v1/logout", {"refresh_token": tokens.refresh_token})

    def token_source(self, tokens: Tokens, margin: float | None = None) -> RefreshingToken:
        """A ``RoomClient`` token source that refreshes ``tokens`` through this client."""
        return RefreshingToken(self, tokens, margin)

    # -- rooms and matchmaking (docs/api.md) ---------------------------------------------

    @staticmethod
    async def _bearer(token: AccessToken) -> dict[str, str]:
        if isinstance(token, Tokens):
            value = token.access_token
        elif isinstance(token, str):
            value = token
        else:
            value = await token()
        value = value.strip()
        # No token, no header: the service answers 401 unauthorized, with its hint.
        return {"Authorization": f"Bearer {value}"} if value else {}

    async def _rooms_call(
        self,
        method: str,
        path: str,
        token: AccessToken,
        *,
        params: list[tuple[str, str]] | None = None,
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        response = await self._http.request(
            method,
            path,
            headers=await self._bearer(token),
            params=tuple(params or ()),
            json=body,
        )
        return self._answer(response)

    async def list_rooms(
        self, token: AccessToken, game: str, /, *, limit: int | None = None, **option_filters: Any
    ) -> list[RoomListing]:
        """The public rooms of ``game`` (``GET /v1/rooms``): joinable ones with a free seat
        first, busiest first. ``option_filters`` keep the rooms whose options have these
        values (``mode="ffa"``, ``hand=3``, ``ranked=True``; an option name that is not a
        Python identifier goes in as ``**{"map.size": 2}``); ``limit`` 1-100 (default 50).
        """
        params = [("game", game)]
        if limit is not None:
            params.append(("limit", str(limit)))
        params += [(key, _query_value(value)) for key, value in option_filters.items()]
        body = await self._rooms_call("GET", "/v1/rooms", token, params=params)
        return [RoomListing.from_json(room) for room in body.get("rooms", [])]

    async def quick_join(
        self, token: AccessToken, game: str, options: Mapping[str, Any] | None = None
    ) -> QuickJoinResult:
        """A seat (reserved for 10 s) in the least-full joinable public room of ``game``
        whose options include ``options``, or a new room's name with those options
        (``POST /v1/rooms/quick-join``)."""
        body: dict[str, Any] = {"game": game}
        if options is not None:
            body["options"] = dict(options)
        answer = await self._rooms_call("POST", "/v1/rooms/quick-join", token, body=body)
        return QuickJoinResult.from_json(answer)

    async def create_private(
        self, token: AccessToken, game: str, options: Mapping[str, Any] | None = None
    ) -> PrivateRoom:
        """Name a private room of ``game`` and get its join code (``POST
        /v1/rooms/private``); join ``room`` with ``options`` to create it, and give
        friends the ``code``."""
        body: dict[str, Any] = {"game": game}
        if options is not None:
            body["options"] = dict(options)
        answer = await self._rooms_call("POST", "/v1/rooms/private", token, body=body)
        return PrivateRoom.from_json(answer)

    async def private_room(self, token: AccessToken, code: str) -> PrivateRoom:
        """The private room a join code names (``GET /v1/rooms/private/{code}``, any
        case); ``LoginError`` 404 ``unknown_code`` when there is none."""
        quoted = urllib.parse.quote(code.strip(), safe="")
        if not quoted:
            raise LoginError(404, "unknown_code", "a join code is 6 letters and digits")
        answer = await self._rooms_call("GET", f"/v1/rooms/private/{quoted}", token)
        return PrivateRoom.from_json(answer)

    async def aclose(self) -> None:
        await self._http.aclose()


# -- pure policies: backoff, renewal time, redirect trust, server rotation ---------------


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """The wait before retry ``attempt`` (1, 2, ...): uniform in ``[d/2, d]``,
    ``d = min(cap, base * 2^(attempt-1))``."""
    d = min(cap, base * 2 ** min(max(attempt, 1) - 1, 30))
    return (rng or random).uniform(d / 2, d)


def reauth_delay(token_exp: float, now: float, since_last_send: float | None = None) -> float:
    """Seconds from ``now`` until the client should present a fresh token.

    The earlier of ``REAUTH_FRACTION`` of the remaining lifetime and ``REAUTH_MARGIN``
    before ``token_exp`` (half the remaining lifetime when that is shorter), but not
    within ``REAUTH_MIN_INTERVAL`` of the previous auth message (``since_last_send``
    seconds ago, None if none was sent), unless waiting that long would leave less
    than half the remaining lifetime (tokens of a few seconds, as in tests): then down
    to ``REAUTH_HARD_MIN_INTERVAL``. 0 when the token has expired and nothing was sent.
    """
    remaining = token_exp - now
    if remaining <= 0:
        delay = 0.0
        floor = 0.0 if since_last_send is None else REAUTH_MIN_INTERVAL - since_last_send
    else:
        delay = min(remaining - min(REAUTH_MARGIN, remaining / 2), REAUTH_FRACTION * remaining)
        floor = 0.0
        if since_last_send is not None:
            floor = max(
                REAUTH_HARD_MIN_INTERVAL - since_last_send,
                min(REAUTH_MIN_INTERVAL - since_last_send, remaining / 2),
            )
    return max(0.0, delay, floor)


def reauth_retry_delay(failures: int, token_exp: float, now: float) -> float:
    """Wait after ``failures`` failed renewals in a row: 1, 2, 4, ... s, at most half the
    time left before ``token_exp`` (at least 1 s)."""
    return max(1.0, min(2.0 ** max(failures - 1, 0), (token_exp - now) / 2, 60.0))


def redact_url(url: str) -> str:
    """A URL fit for a log: scheme, host, port and path only (no credentials, query or
    fragment, which may carry a token), at most 200 characters."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return f"<unparseable URL of {len(url)} characters>"
    if ":" in host:
        host = f"[{host}]"
    text = f"{parts.scheme}://{host}{f':{port}' if port is not None else ''}{parts.path}"
    if parts.query or parts.fragment:
        text += "?…"
    return text if len(text) <= 200 else text[:199] + "…"


def _host(url: str) -> str | None:
    try:
        host = urllib.parse.urlsplit(url).hostname
    except ValueError:
        return None
    return host.rstrip(".").lower() if host else None


def _endpoint(url: str) -> str:
    """A URL's (host, port) as one key: the same server however its URL is spelt."""
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return url
    if not host:
        return url
    default = 443 if parts.scheme in ("wss", "https") else 80
    return f"{host.rstrip('.').lower()}:{port if port is not None else default}"


class RedirectPolicy:
    """Which redirect URLs a client may follow (and so send its bearer token to).

    Trusted: the hosts of the client's own URLs (any port), plus ``allowed_hosts``:
    exact host names or addresses, or ``*.example.com`` for any name below
    ``example.com``. Only ``ws``/``wss`` URLs without credentials, never ``wss`` → ``ws``.
    """

    def __init__(self, urls: Sequence[str], allowed_hosts: Sequence[str] = ()) -> None:
        self.hosts: set[str] = {h for h in map(_host, urls) if h}
        self.suffixes: list[str] = []
        for pattern in allowed_hosts:
            pattern = pattern.strip().rstrip(".").lower()
            if pattern.startswith("*."):
                self.suffixes.append(pattern[1:])  # ".example.com"
            elif pattern:
                self.hosts.add(pattern.strip("[]"))

    def host_allowed(self, host: str) -> bool:
        host = host.rstrip(".").lower()
        return host in self.hosts or any(
            host.endswith(suffix) and len(host) > len(suffix) for suffix in self.suffixes
        )

    def refusal(self, url: str, current: str) -> str | None:
        """Why ``url`` (a redirect received on a connection to ``current``) must not be
        followed, or None if it may be."""
        try:
            parts = urllib.parse.urlsplit(url)
            host = parts.hostname
            _ = parts.port  # raises on a bad port
        except ValueError:
            return "unparseable URL"
        if parts.scheme not in ("ws", "wss"):
            return f"scheme {parts.scheme!r} is not ws or wss"
        if not host:
            return "no host"
        if parts.username is not None or parts.password is not None:
            return "credentials in the URL"
        if parts.scheme == "ws" and urllib.parse.urlsplit(current).scheme == "wss":
            return "downgrade from wss to ws"
        if not self.host_allowed(host):
            return f"host {host!r} is not a known server or an allowed host"
        return None


class ServerRotation:
    """Round-robin over the client's URLs that skips suspect ones.

    A URL whose handshake failed, or whose connection stalled, is suspect for
    ``suspect_s`` seconds (by host and port, so a redirect URL of the same server
    counts). ``next`` returns the next URL that is not suspect; when all are, the
    one whose suspicion ends first.
    """

    def __init__(self, urls: Sequence[str], start: int = 0, suspect_s: float = SUSPECT_S) -> None:
        if not urls:
            raise ValueError("no server URL")
        self.urls = list(urls)
        self.index = start % len(self.urls)
        self.suspect_s = suspect_s
        self._suspect_until: dict[str, float] = {}

    def suspect(self, url: str, now: float) -> None:
        self._suspect_until[_endpoint(url)] = now + self.suspect_s

    def clear(self, url: str) -> None:
        self._suspect_until.pop(_endpoint(url), None)

    def is_suspect(self, url: str, now: float) -> bool:
        return self._suspect_until.get(_endpoint(url), 0.0) > now

    def all_suspect(self, now: float) -> bool:
        return all(self.is_suspect(url, now) for url in self.urls)

    def next(self, now: float) -> str:
        count = len(self.urls)
        for step in range(count):
            url = self.urls[(self.index + step) % count]
            if not self.is_suspect(url, now):
                self.index = (self.index + step + 1) % count
                return url
        best = min(range(count), key=lambda i: self._suspect_until.get(_endpoint(self.urls[i]), 0))
        self.index = (best + 1) % count
        return self.urls[best]


class ConnectionState(Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


class State:
    """One tick of the room as this player sees it.

    ``State(tick, ack, state, server, epoch, private=None, events=None)``, immutable:

    - ``state``: the room's full public state at ``tick``;
    - ``private``: this player's private view at ``tick`` (protocol v2, for a game that has
      one; None otherwise);
    - ``events``: the data of the game events addressed to this player that the SDK
      delivers with this state, oldest first (protocol v2; a list, usually empty). They
      belong to ``tick`` or, after a resume or when the SDK skipped states (a resync, a
      slow reader), to the ticks in between: every event reaches the application exactly
      once, with the first state delivered at or after its tick.

    On protocol v2 ``state`` and ``private`` are rebuilt from the delta stream (keyframe,
    then deltas; see ``docs/protocol.md``): treat them as read-only, since parts that did
    not change are shared between successive states.

    On a protocol v1 msgpack connection the ``state`` is decoded on first access (then
    cached): a reader that looks only at ``tick`` and ``ack``, or at one state in N, does
    not pay for decoding the world every tick. The SDK checks the state's msgpack structure
    on receipt; content that only a full decode can reject (invalid UTF-8, an unhashable
    map key) raises ``ProtocolError`` on that first access instead.
    """

    __slots__ = ("_raw", "_state", "ack", "epoch", "events", "private", "server", "tick")

    tick: int
    ack: int
    server: str
    epoch: int
    private: Any
    events: list[Any]
    _state: Any
    _raw: memoryview | None  # the state's msgpack bytes while not decoded yet

    def __init__(
        self,
        tick: int,
        ack: int,
        state: Any,
        server: str,
        epoch: int,
        private: Any = None,
        events: list[Any] | None = None,
    ) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "tick", tick)
        setattr_(self, "ack", ack)
        setattr_(self, "_state", state)
        setattr_(self, "_raw", None)
        setattr_(self, "server", server)
        setattr_(self, "epoch", epoch)
        setattr_(self, "private", private)
        setattr_(self, "events", [] if events is None else events)

    @classmethod
    def lazy(cls, tick: int, ack: int, raw: memoryview, server: str, epoch: int) -> State:
        """A state whose ``state`` is the msgpack value in ``raw``, decoded when first read."""
        self = cls(tick, ack, None, server, epoch)
        object.__setattr__(self, "_raw", raw)
        return self

    def _with_events(self, events: list[Any]) -> State:
        """This state with other events (the SDK carries skipped states' events over)."""
        copy = State(self.tick, self.ack, None, self.server, self.epoch, self.private, events)
        object.__setattr__(copy, "_state", self._state)
        object.__setattr__(copy, "_raw", self._raw)
        return copy

    @property
    def state(self) -> Any:
        raw = self._raw
        if raw is not None:
            object.__setattr__(self, "_state", _unpack_value(raw))
            object.__setattr__(self, "_raw", None)
        return self._state

    @property
    def decoded(self) -> bool:
        """Whether ``state`` has been decoded already (always, for JSON and v2)."""
        return self._raw is None

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, State):
            return NotImplemented
        return (
            self.tick == other.tick
            and self.ack == other.ack
            and self.server == other.server
            and self.epoch == other.epoch
            and self.state == other.state
            and self.private == other.private
            and self.events == other.events
        )

    def __hash__(self) -> int:
        return hash((self.tick, self.ack, self.server, self.epoch))

    def __reduce__(
        self,
    ) -> tuple[type[State], tuple[int, int, Any, str, int, Any, list[Any]]]:
        return State, (
            self.tick,
            self.ack,
            self.state,
            self.server,
            self.epoch,
            self.private,
            self.events,
        )

    def __repr__(self) -> str:
        raw = self._raw
        state = f"<{len(raw)} msgpack bytes, not decoded>" if raw is not None else repr(self._state)
        extra = ""
        if self.private is not None:
            extra += f", private={self.private!r}"
        if self.events:
            extra += f", events={self.events!r}"
        return (
            f"State(tick={self.tick!r}, ack={self.ack!r}, state={state}, "
            f"server={self.server!r}, epoch={self.epoch!r}{extra})"
        )


@dataclass
class ClientStats:
    """What a client observed; the bots aggregate these."""

    inputs_sent: int = 0
    inputs_acked: int = 0
    inputs_refused: int = 0  # refused by the game (illegal_input): dropped, never acked
    latencies_ms: list[float] = field(default_factory=list)
    reconnects: int = 0
    redirects: int = 0
    redirects_refused: int = 0  # redirects outside the cluster or downgrading wss: not followed
    redirects_deferred: int = 0  # redirects to a suspect server: retried elsewhere first
    fallbacks: int = 0  # reconnects that went first to the welcome's fallback server
    reauths: int = 0  # fresh tokens accepted on an open connection (authed)
    reauth_failures: int = 0  # renewals that failed (token source, refusal or no reply)
    token_resumes: int = 0  # reconnects after a 4001 token_expired, with a fresh token
    rollbacks: int = 0  # states older than (or as old as) one already delivered
    ack_regressions: int = 0  # acked inputs the server later forgot (lost)
    seat_resets: int = 0  # rejoined on a fresh seat (the old one had expired)
    resyncs: int = 0  # v2: deltas the decoder refused (a ``sync`` sent, states dropped)
    dropped_states: int = 0  # v2: states skipped while waiting for a keyframe
    conflated_states: int = 0  # states dropped because the application read too slowly
    events: int = 0  # v2: game events delivered to the application
    max_ack: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    last_tick: int = 0


@dataclass
class _Pending:
    seq: int
    data: Any
    sent_at: float


class _Mailbox:
    """The states waiting for the application, oldest first, then maybe the session's end.

    Bounded: when a slow reader lets it fill up, the oldest state is dropped (the reader
    gets the latest states) and its events are carried into the next one, so conflation
    never loses an event. The final error (``fail``) comes after the states queued before
    it, and then on every later read.
    """

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self.states: deque[State] = deque()
        self.error: BaseException | None = None
        self._ready = asyncio.Event()

    def put(self, state: State) -> bool:
        """Queue ``state``; True when the oldest state had to be dropped for it."""
        states = self.states
        conflated = len(states) >= self.size
        if conflated:
            dropped = states.popleft()
            if dropped.events:
                if states:
                    states[0] = states[0]._with_events(dropped.events + states[0].events)
                else:
                    state = state._with_events(dropped.events + state.events)
        states.append(state)
        self._ready.set()
        return conflated

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self._ready.set()

    async def get(self) -> State:
        while True:
            if self.states:
                return self.states.popleft()
            if self.error is not None:
                raise self.error
            self._ready.clear()
            await self._ready.wait()


# Flow control. The server applies inputs strictly in seq order: one it drops (over 32 pending
# in a tick: queue_full; over its message rate: rate_limited) makes it drop every later seq
# with sequence_gap until the missing one is resent. The SDK resends from the seq the server
# names, and paces itself so that this stays rare even when resending a backlog after a
# failover: at most _WINDOW unacked inputs on the wire, at most _SEND_RATE messages a second.
_WINDOW = 24
_SEND_RATE = 40.0
_SEND_BURST = 40.0

_RETRYABLE_CLOSES = {
    *(int(code) for code in CloseCode if code.retry),  # 4009, 4020, 4021, 4500
    1001,  # going away
    1006,  # abnormal closure (process killed)
    1011,  # internal error / keepalive timeout
    1012,  # service restart
    1013,  # try again later
}
_AUTH_ERRORS = {
    str(ErrorCode.UNAUTHORIZED),
    str(ErrorCode.TOKEN_EXPIRED),
    str(ErrorCode.SESSION_REVOKED),
}
_TOKEN_EXPIRED = str(ErrorCode.TOKEN_EXPIRED)
_ILLEGAL_INPUT = str(ErrorCode.ILLEGAL_INPUT)


class RoomClient:
    """One player's session in one room, surviving server deaths and handovers.

    ``urls``: the room servers to try (e.g. ``cluster.json``'s ``ws_url``s); their hosts
    are trusted as redirect targets, with ``allowed_hosts`` (see ``RedirectPolicy``).
    ``token``: an access token, or an async callable returning a fresh one (renewed on the
    open connection before it expires; ``AuthClient.token_source``). ``ssl``: the TLS
    context for ``wss`` URLs (default: the system's). Timeouts and backoff: see the
    module docstring.

    ``protocol``: 2 (default) offers ``stateroom.v2.<encoding>`` first, then
    ``stateroom.v1.<encoding>``, and speaks whichever the server picks (``version``);
    1 offers v1 only. ``options``: room options sent in every v2 ``join``, used by the
    server only when that join creates the room; ``self.options`` is what the server's
    v2 ``welcome`` says the room's options are (None until then, and on v1). Asking for
    options from a server that speaks only v1 fails the first join with
    ``RoomError(4004, ..., "unsupported_version")`` rather than create a room without
    them. See "Protocol v2" in the module docstring.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        room: str,
        token: TokenSource,
        *,
        game: str | None = None,
        encoding: str = "msgpack",
        protocol: int = PROTOCOL_V2,
        options: Mapping[str, Any] | None = None,
        allowed_hosts: Sequence[str] = (),
        ssl: ssl_module.SSLContext | None = None,
        stall_timeout: float = STALL_TIMEOUT,
        open_timeout: float = OPEN_TIMEOUT,
        join_timeout: float = JOIN_TIMEOUT,
        suspect_s: float = SUSPECT_S,
        backoff_base: float = BACKOFF_BASE,
        backoff_max: float = BACKOFF_MAX,
        retry_backoff_max: float = RETRY_BACKOFF_MAX,
        fast_retry_window: float = FAST_RETRY_WINDOW,
        max_pending: int = 4096,
        queue_size: int = 64,
    ) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("RoomClient needs at least one server URL")
        self.room = room
        self._token_source = token
        self.game = game
        if encoding not in ("msgpack", "json"):
            raise ValueError(f"encoding must be 'msgpack' or 'json', not {encoding!r}")
        if protocol not in (PROTOCOL_VERSION, PROTOCOL_V2):
            raise ValueError(f"protocol must be {PROTOCOL_VERSION} or {PROTOCOL_V2}")
        self.protocol = protocol
        v1, v2 = (JSON, JSON_V2) if encoding == "json" else (MSGPACK, MSGPACK_V2)
        self._offered: list[Codec] = [v2, v1] if protocol >= PROTOCOL_V2 else [v1]
        #: The codec of the current (or last) connection; its ``version`` is ``version``.
        self.codec: Codec = self._offered[0]
        self.requested_options: dict[str, Any] | None = (
            dict(options) if options is not None else None
        )
        self.options: dict[str, Any] | None = None  # the room's options, from welcome (v2)
        self.redirect_policy = RedirectPolicy(self.urls, allowed_hosts)
        self.ssl = ssl
        self.stall_timeout = stall_timeout
        self.open_timeout = open_timeout
        self.join_timeout = join_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.retry_backoff_max = retry_backoff_max
        self.fast_retry_window = fast_retry_window
        self.max_pending = max_pending
        self.stats = ClientStats()
        self.connection_state = ConnectionState.CONNECTING
        self.player_id = ""
        self.server = ""
        self.epoch = 0
        self.tick_rate = 20
        self.token_exp: int | None = None  # unix s: the server ends the session then (+ leeway)
        self.latency_ms: float | None = None
        self._seq = 0
        self._pending: deque[_Pending] = deque()
        self._sent_upto = 0  # highest seq written on the current connection
        # Inputs the game refused (illegal_input), oldest first: dropped, never resent.
        self.refused: list[Any] = []
        self._tokens = _SEND_BURST
        self._tokens_at = time.monotonic()
        self._ws: ClientConnection | None = None
        self._mailbox = _Mailbox(queue_size)
        # v2: one decoder per stream, fresh on every connection (welcome → keyframes).
        self._shared = DeltaDecoder()
        self._private = DeltaDecoder()
        self._resync_at: float | None = None  # monotonic: when we sent sync (None: in step)
        self._carry: list[Any] = []  # events of states dropped while resyncing
        self._runner: asyncio.Task[None] | None = None
        self._joined = asyncio.Event()
        self._closing = False
        self._welcomed_this_session = False
        self._opened = False  # the current connection completed its handshake
        self._stalled = False  # ... and then went silent
        self._last_error: str | None = None  # code of the last error message on it
        self._next_url: str | None = None
        # The welcome's ``fallback``: the server that takes the room over if its owner
        # dies, asked first after a dropped connection (None: the rotation decides).
        self._fallback_url: str | None = None
        self._rotation = ServerRotation(self.urls, random.randrange(len(self.urls)), suspect_s)
        self._presented_token = ""  # the token the server holds for this connection
        self._auth_in_flight = ""
        self._auth_reply = asyncio.Event()
        self._auth_sent_at: float | None = None  # monotonic
        self._reauth_task: asyncio.Task[None] | None = None
        self._expired_resume_used = False
        self._ping_id = 0
        self.on_latency: Callable[[float], None] | None = None

    # -- public API ------------------------------------------------------------------

    async def __aenter__(self) -> RoomClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self, timeout: float = 15.0) -> None:
        """Start the session and wait for the first welcome."""
        self._runner = asyncio.get_running_loop().create_task(self._run(), name=f"room:{self.room}")
        joined = asyncio.ensure_future(self._joined.wait())
        try:
            done, _ = await asyncio.wait(
                {joined, self._runner}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            joined.cancel()
        if self._runner in done:
            self._runner.result()
            if self._mailbox.error is not None:
                raise self._mailbox.error
            raise ClientError("session ended before joining")
        if not self._joined.is_set():
            await self.close()
            raise ClientError(f"could not join room {self.room!r} within {timeout}s")

    def send_input(self, data: Any) -> int:
        """Queue an input; it is (re)sent until a state acks it. Returns its sequence."""
        if len(self._pending) >= self.max_pending:
            raise ClientError("too many unacknowledged inputs; is the connection down?")
        self._seq += 1
        pending = _Pending(self._seq, data, time.monotonic())
        self._pending.append(pending)
        self.stats.inputs_sent += 1
        self._flush()
        return pending.seq

    async def states(self) -> AsyncIterator[State]:
        """Every state in tick order (old or repeated ticks are never yielded). A reader
        slower than the tick rate gets the latest ``queue_size`` states (the events of the
        ones skipped come with the next). Raises the session's final error."""
        while True:
            yield await self._mailbox.get()

    async def next_state(self, timeout: float | None = None) -> State:
        async with asyncio.timeout(timeout):
            return await self._mailbox.get()

    @property
    def version(self) -> int:
        """The protocol version of the current (or last) connection."""
        return self.codec.version

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def unacked(self) -> int:
        return len(self._pending)

    async def leave(self) -> None:
        """Give up the seat for good (no grace period) and close."""
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(self.codec.encode({"t": "leave"}), text=self.codec.text)
        await self.close()

    async def close(self) -> None:
        self._closing = True
        self.connection_state = ConnectionState.CLOSED
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner

    # -- connection management ---------------------------------------------------------

    async def _token(self) -> str:
        if isinstance(self._token_source, str):
            return self._token_source
        try:
            return await self._token_source()
        except LoginError as exc:
            if exc.status in (401, 403):
                raise  # the refresh token is dead: final (see _run)
            raise TokenUnavailable(f"token source failed: {exc}") from exc
        except Exception as exc:  # the callable is the application's; retry later
            raise TokenUnavailable(f"token source failed: {exc}") from exc

    def _pick_url(self) -> str:
        if self._next_url:
            url, self._next_url = self._next_url, None
            return url
        return self._rotation.next(time.monotonic())

    async def _fail(self, code: int, reason: str, error_code: str | None) -> None:
        self.connection_state = ConnectionState.CLOSED
        self._mailbox.fail(RoomError(code, reason, error_code))

    async def _run(self) -> None:
        attempt = 0
        outage_since: float | None = None  # monotonic start of the current run of failures
        while not self._closing:
            url = self._pick_url()
            self._welcomed_this_session = False
            self._opened = self._stalled = False
            self._last_error = None
            try:
                code, reason = await self._session(url)
            except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed) as exc:
                code, reason = 1006, str(exc) or type(exc).__name__
            except ProtocolError as exc:
                code, reason = int(CloseCode.PROTOCOL_ERROR), exc.message
            except TokenUnavailable as exc:
                code, reason = 1013, str(exc)
            except LoginError as exc:  # 401/403 from the refresh: the login is gone
                await self._fail(
                    int(CloseCode.UNAUTHORIZED), f"token refresh refused: {exc}", exc.code
                )
                return
            if self.closing:
                return
            now = time.monotonic()
            error_code = self._last_error
            if self._welcomed_this_session:
                attempt, outage_since = 0, None  # it worked: the next drop starts afresh
                self._expired_resume_used = False
                self._rotation.clear(url)
            if code != 1013 and (not self._opened or self._stalled):
                self._rotation.suspect(url, now)  # frozen or cut off: ask another server
            if code == CloseCode.REDIRECT and self._next_url:
                target = self._next_url
                refusal = self.redirect_policy.refusal(target, url)
                if refusal is not None:
                    self._next_url = None
                    self.stats.redirects_refused += 1
                    log.warning(
                        "room %s: refused a redirect to %s (%s); reconnecting to a known server",
                        self.room,
                        redact_url(target),
                        refusal,
                    )
                elif self._rotation.is_suspect(target, now) and not self._rotation.all_suspect(now):
                    self._next_url = None  # it just failed us: ask another server first
                    self.stats.redirects_deferred += 1
                else:
                    self.stats.redirects += 1
                    continue
            if (
                code == CloseCode.UNAUTHORIZED
                and (error_code == _TOKEN_EXPIRED or reason == _TOKEN_EXPIRED)
                and not isinstance(self._token_source, str)
                and not self._expired_resume_used
            ):
                # Our token ran out (a renewal failed or came too late): resume once with a
                # fresh one, on the same server.
                self._expired_resume_used = True
                self.stats.token_resumes += 1
                if isinstance(self._token_source, RefreshingToken) and self._presented_token:
                    self._token_source.invalidate(self._presented_token)
                self._next_url = url
                continue
            if code not in _RETRYABLE_CLOSES:
                await self._fail(code, reason, error_code)
                return
            if self._welcomed_this_session and self._next_url is None:
                self._next_url = self._fallback_target(url, now)
            self.connection_state = ConnectionState.RECONNECTING
            attempt += 1
            if outage_since is None:
                outage_since = now
            fast = now - outage_since < self.fast_retry_window
            cap = min(self.backoff_max, self.retry_backoff_max) if fast else self.backoff_max
            await asyncio.sleep(backoff_delay(attempt, self.backoff_base, cap))

    def _fallback_target(self, url: str, now: float) -> str | None:
        """Where to reconnect first after the seated connection to ``url`` dropped: the
        welcome's fallback, when it is another server this client trusts (the redirect
        rules) and not suspect; else None (the rotation's next server)."""
        target = self._fallback_url
        if not target or _endpoint(target) == _endpoint(url):
            return None
        if self.redirect_policy.refusal(target, url) is not None:
            return None
        if self._rotation.is_suspect(target, now):
            return None
        self.stats.fallbacks += 1
        return target

    async def _session(self, url: str) -> tuple[int, str]:
        """One WebSocket connection; returns its close code and reason."""
        token = await self._token()
        self._presented_token = token
        extra: dict[str, Any] = {}
        if self.ssl is not None and url.startswith("wss:"):
            extra["ssl"] = self.ssl
        async with asyncio.timeout(self.open_timeout):
            ws = await connect(
                url,
                subprotocols=[Subprotocol(c.subprotocol) for c in self._offered],
                additional_headers={"Authorization": f"Bearer {token}"},
                open_timeout=self.open_timeout,
                compression=None,
                max_size=8 * 1024 * 1024,
                ping_interval=5,
                ping_timeout=5,
                close_timeout=1,
                **extra,
            )
        self._opened = True
        self._ws = ws
        # The version the server picked (websockets refuses one we did not offer); a server
        # that negotiates no subprotocol at all speaks v1.
        chosen = [c for c in self._offered if c.subprotocol == ws.subprotocol]
        self.codec = chosen[0] if chosen else self._offered[-1]
        self._shared = DeltaDecoder()
        self._private = DeltaDecoder()
        self._resync_at = None
        self._carry = []  # the server resends them: they are after ``since``
        try:
            version = self.codec.version
            if (
                version < PROTOCOL_V2
                and self.requested_options is not None
                and not self._joined.is_set()
            ):
                # Creating the room without its options would be worse than not joining.
                self._last_error = str(ErrorCode.UNSUPPORTED_VERSION)
                await ws.close(1000, "room options need protocol v2")
                return int(CloseCode.UNSUPPORTED_VERSION), (
                    "room options need protocol v2; this server speaks only v1"
                )
            join: dict[str, Any] = {"t": "join", "v": version, "room": self.room}
            if self.game:
                join["game"] = self.game
            if version >= PROTOCOL_V2:
                if self.requested_options is not None:
                    join["options"] = self.requested_options
                # The last tick delivered to the application: the server resends the
                # events of the later ones with the first state.
                join["since"] = self.stats.last_tick
            await ws.send(self.codec.encode(join), text=self.codec.text)
            pinged = False
            while True:
                joined = self._welcomed_this_session
                # Half the stall timeout without a frame: ping (a live server answers).
                wait = self.stall_timeout / 2 if joined else self.join_timeout
                try:
                    async with asyncio.timeout(wait):
                        frame = await ws.recv()
                except TimeoutError:
                    if joined and not pinged:
                        pinged = True
                        self._ping_id += 1
                        self._send_now(ws, {"t": "ping", "id": self._ping_id})
                        continue
                    # A joined connection gone silent is a frozen or cut-off process: suspect.
                    # A join left unanswered is not (the process completed the handshake,
                    # and a peer may hold a join up to 1.5 s while a lease runs out).
                    self._stalled = joined
                    # No closing handshake: a frozen peer would hold it for close_timeout.
                    ws.transport.abort()
                    what = "frame" if joined else "answer to join"
                    return 1006, f"no {what} within the timeout"
                pinged = False
                message = _decode_server_frame(frame, self.codec.text, version)
                self._handle(ws, message)
                if self._resync_overdue():
                    # The server did not answer our sync with keyframes: a new connection
                    # starts with them.
                    await ws.close(1000, "no keyframe after sync")
                    return 1013, "no keyframe after sync"
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            return (rcvd.code, rcvd.reason) if rcvd else (1006, "connection lost")
        finally:
            self._ws = None
            if self._reauth_task is not None:
                self._reauth_task.cancel()
                self._reauth_task = None
            self._auth_in_flight = ""
            if self.connection_state is ConnectionState.CONNECTED:
                self.connection_state = ConnectionState.RECONNECTING
            with contextlib.suppress(Exception):
                await ws.close()

    def _resync_overdue(self) -> bool:
        resync_at = self._resync_at
        return resync_at is not None and time.monotonic() - resync_at > RESYNC_TIMEOUT

    # -- token renewal on the open connection ----------------------------------------------

    async def _reauth_loop(self, ws: ClientConnection) -> None:
        """Present a fresh token before ``token_exp``, again after each ``authed``."""
        failures = 0
        while True:
            token_exp = self.token_exp
            if token_exp is None:
                return
            now = time.time()
            sent = self._auth_sent_at
            since = None if sent is None else time.monotonic() - sent
            if failures:
                delay = reauth_retry_delay(failures, token_exp, now)
                if since is not None:
                    delay = max(delay, REAUTH_HARD_MIN_INTERVAL - since)
            else:
                delay = reauth_delay(token_exp, now, since)
            await asyncio.sleep(delay)
            if await self._reauth_once(ws):
                failures = 0
            else:
                failures += 1
                self.stats.reauth_failures += 1

    async def _reauth_once(self, ws: ClientConnection) -> bool:
        try:
            token = await self._token()
        except (TokenUnavailable, LoginError) as exc:
            log.warning("room %s: cannot renew the session's token: %s", self.room, exc)
            return False
        if token == self._presented_token:
            log.debug("room %s: the token source returned the same token; later", self.room)
            return False
        self._auth_in_flight = token
        self._auth_reply.clear()
        self._auth_sent_at = time.monotonic()
        try:
            await ws.send(self.codec.encode({"t": "auth", "token": token}), text=self.codec.text)
        except ConnectionClosed:
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REAUTH_REPLY_TIMEOUT):
                await self._auth_reply.wait()
        accepted = self._presented_token == token
        self._auth_in_flight = ""
        if not accepted:
            log.warning("room %s: the server did not accept the renewed token", self.room)
        return accepted

    def _on_authed(self, message: dict[str, Any]) -> None:
        token_exp = message.get("token_exp")
        if isinstance(token_exp, int) and not isinstance(token_exp, bool):
            self.token_exp = token_exp
        if self._auth_in_flight:
            self._presented_token = self._auth_in_flight
        self.stats.reauths += 1
        self._auth_reply.set()

    # -- inputs and messages -----------------------------------------------------------

    def _flush(self) -> None:
        """Send the pending inputs not yet sent on this connection, within the flow limits."""
        ws = self._ws
        if ws is None or self.connection_state is not ConnectionState.CONNECTED:
            return
        now = time.monotonic()
        self._tokens = min(_SEND_BURST, self._tokens + (now - self._tokens_at) * _SEND_RATE)
        self._tokens_at = now
        for pending in self._pending:
            if pending.seq <= self._sent_upto:
                continue
            if pending.seq - self.stats.max_ack > _WINDOW or self._tokens < 1:
                break
            self._tokens -= 1
            self._sent_upto = pending.seq
            self._send_now(ws, {"t": "input", "seq": pending.seq, "data": pending.data})

    def _send_now(self, ws: ClientConnection, message: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._send(ws, message))
        task.add_done_callback(_ignore_result)

    async def _send(self, ws: ClientConnection, message: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(self.codec.encode(message), text=self.codec.text)

    def _handle(self, ws: ClientConnection, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "state":
            self._on_state(message)
        elif kind == "welcome":
            self._on_welcome(ws, message)
        elif kind == "redirect":
            url = message.get("url")
            self._next_url = url if isinstance(url, str) else None
        elif kind == "authed":
            self._on_authed(message)
        elif kind == "error":
            code = str(message.get("code"))
            self._last_error = code
            self.stats.errors[code] = self.stats.errors.get(code, 0) + 1
            log.debug("server error %s: %s", code, message.get("message"))
            if code in _AUTH_ERRORS and self._auth_in_flight:
                self._auth_reply.set()  # the renewal was refused (a close may follow)
            expected = message.get("expected")
            if isinstance(expected, int) and expected - 1 < self._sent_upto:
                self._sent_upto = expected - 1  # resend from there, paced by _flush
            seq = message.get("seq")
            if code == _ILLEGAL_INPUT and isinstance(seq, int) and not isinstance(seq, bool):
                self._drop_refused(seq)

    def _drop_refused(self, seq: int) -> None:
        """The game refused input ``seq``: drop it, or it would be resent for ever (the
        server does not consume a refused seq, so every later input waits behind it).
        The later inputs move down one seq, the way the server expects them."""
        index = next((i for i, p in enumerate(self._pending) if p.seq == seq), None)
        if index is None:
            return
        refused = self._pending[index]
        del self._pending[index]
        for later in list(self._pending)[index:]:
            later.seq -= 1
        self._seq -= 1
        self.stats.inputs_refused += 1
        self.refused.append(refused.data)
        if self._sent_upto >= seq:
            self._sent_upto = seq - 1  # the later ones were refused as a gap: resend them

    def _on_welcome(self, ws: ClientConnection, message: dict[str, Any]) -> None:
        version = self.codec.version
        if message.get("v", PROTOCOL_VERSION) != version:
            raise _protocol_error(
                f"the server's welcome says protocol {shown(message.get('v'))}, but the"
                f" connection negotiated {self.codec.subprotocol}"
            )
        if version >= PROTOCOL_V2:
            options = message.get("options")
            if not isinstance(options, dict):
                raise _protocol_error("a v2 welcome needs the room's 'options' (a map)")
            self.options = options
        if self._joined.is_set():
            self.stats.reconnects += 1  # a resumed session, not a failed attempt
        self._welcomed_this_session = True
        fallback = message.get("fallback")
        self._fallback_url = fallback if isinstance(fallback, str) and fallback else None
        self.player_id = message["player_id"]
        self.server = message["server"]
        self.epoch = int(message["epoch"])
        self.tick_rate = int(message["tick_rate"])
        token_exp = message.get("token_exp")
        valid_exp = isinstance(token_exp, int) and not isinstance(token_exp, bool)
        self.token_exp = token_exp if valid_exp else None
        self.connection_state = ConnectionState.CONNECTED
        ack = int(message["ack"])
        if not message.get("resumed") and self._joined.is_set():
            self._new_seat()
        self._joined.set()
        self._apply_ack(ack)
        if valid_exp and not isinstance(self._token_source, str) and self._reauth_task is None:
            self._reauth_task = asyncio.get_running_loop().create_task(
                self._reauth_loop(ws), name=f"reauth:{self.room}"
            )
            self._reauth_task.add_done_callback(_ignore_result)
        # A new connection: resend every input the server has not applied, in order.
        self._sent_upto = 0
        self._tokens, self._tokens_at = _SEND_BURST, time.monotonic()
        self._flush()

    def _new_seat(self) -> None:
        """The room gave us a fresh seat (ours expired): sequences start again at 1."""
        self.stats.seat_resets += 1
        self.stats.max_ack = 0
        self._seq = 0
        for pending in self._pending:
            self._seq += 1
            pending.seq = self._seq

    def _on_state(self, message: dict[str, Any]) -> None:
        tick: int = message["tick"]  # ints: checked by _decode_server_frame
        ack: int = message["ack"]
        if tick <= self.stats.last_tick:
            # Older than (or as old as) a state delivered. Its events, if any, were
            # delivered too: with their tick's state, or in the first state after a resume
            # (whose ``since`` covered them), or carried into a later state.
            self.stats.rollbacks += 1
            return
        self._apply_ack(ack)
        self._flush()
        if self.codec.version >= PROTOCOL_V2:
            state = self._state_v2(message)
            if state is None:
                return
        else:
            state = _make_state(message, self.server, self.epoch)
        # Only now is the tick applied: the next join's ``since``.
        self.stats.last_tick = tick
        self.stats.events += len(state.events)
        if self._mailbox.put(state):
            self.stats.conflated_states += 1

    def _state_v2(self, message: dict[str, Any]) -> State | None:
        """Apply a v2 state's payloads to this connection's decoders: its ``State``, or
        None when it is dropped while the client waits for keyframes (its events are kept
        for the next state delivered)."""
        shared = message["shared"]
        private = message.get("private")
        events: list[Any] = message.get("events", [])
        if self._resync_at is not None and not _is_keyframe(shared):
            self.stats.dropped_states += 1
            self._carry.extend(events)
            return None
        try:
            view = self._shared.apply(shared)
            mine = None if private is None else self._private.apply(private)
        except DeltaError as exc:
            if _is_keyframe(shared) and (private is None or _is_keyframe(private)):
                raise  # a keyframe we cannot read: a bad server, not a missed frame
            # A delta we cannot apply (one was missed, or the stream restarted): ask for
            # keyframes once, and skip states until they come.
            log.info("room %s: %s; asking for a keyframe", self.room, exc.message)
            self.stats.resyncs += 1
            self.stats.dropped_states += 1
            self._carry.extend(events)
            if self._resync_at is None:
                self._resync_at = time.monotonic()
                ws = self._ws
                if ws is not None:
                    self._send_now(ws, {"t": "sync"})
            return None
        self._resync_at = None
        if self._carry:
            events = self._carry + events
            self._carry = []
        return State(message["tick"], message["ack"], view, self.server, self.epoch, mine, events)

    def _apply_ack(self, ack: int) -> None:
        if ack < self.stats.max_ack:
            self.stats.ack_regressions += self.stats.max_ack - ack
            log.warning("ack went back from %d to %d", self.stats.max_ack, ack)
        now = time.monotonic()
        while self._pending and self._pending[0].seq <= ack:
            pending = self._pending.popleft()
            if pending.seq > self.stats.max_ack:
                latency = (now - pending.sent_at) * 1000
                self.stats.latencies_ms.append(latency)
                self.latency_ms = latency
                self.stats.inputs_acked += 1
        self.stats.max_ack = max(self.stats.max_ack, ack)


class _RawState:
    """A state message's ``state`` field, still msgpack: the bytes it spans in the frame."""

    __slots__ = ("raw",)

    def __init__(self, raw: memoryview) -> None:
        self.raw = raw


def _protocol_error(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_MESSAGE, message)


def _unpack_value(raw: bytes | memoryview) -> Any:
    """Decode one msgpack value of a server frame (the client's decoding options)."""
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise _protocol_error(
            f"undecodable server frame: {str(exc) or type(exc).__name__}"
        ) from None


def _parse_msgpack_frame(frame: bytes) -> dict[str, Any]:
    """Parse a msgpack server frame without decoding a state message's ``state``.

    Walks the top-level map with an ``Unpacker``: every field but ``state`` is decoded
    (they are a few bytes); ``state`` is skipped (``skip()`` checks its structure but
    builds no objects) and kept as the byte range it spans, a ``_RawState``. Keys may come
    in any order. A message other than ``state`` gets its ``state`` field (if any) decoded.
    """
    if frame and not (0x80 <= frame[0] <= 0x8F or frame[0] in (0xDE, 0xDF)):
        # Not a fixmap, map 16 or map 32 header; an empty frame is "undecodable" below.
        raise _protocol_error("server sent a non-map message")
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(frame) or 1)
    message: dict[Any, Any] = {}
    span: tuple[int, int] | None = None  # where the "state" value is (the last one, if repeated)
    try:
        unpacker.feed(frame)
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            if key == "state":
                begin = unpacker.tell()
                unpacker.skip()
                span = (begin, unpacker.tell())
            else:
                message[key] = unpacker.unpack()
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        detail = str(exc) or type(exc).__name__
        raise _protocol_error(f"undecodable server frame: {detail}") from None
    if unpacker.tell() != len(frame):
        raise _protocol_error("undecodable server frame: extra data after the message")
    if span is not None:
        raw = memoryview(frame)[span[0] : span[1]]
        message["state"] = _RawState(raw) if message.get("t") == "state" else _unpack_value(raw)
    return message


def _decode_server_frame(
    frame: bytes | str, text: bool, version: int = PROTOCOL_VERSION
) -> dict[str, Any]:
    """Decode a server frame. States can be far larger than the 16 KiB limit on client
    messages, so only the shape is checked here, not the client-side size limits.

    On a v1 msgpack connection a state message's ``state`` is left undecoded (a
    ``_RawState``, see ``_parse_msgpack_frame``); ``_make_state`` wraps it in a lazy
    ``State``. A state message's ``tick`` and ``ack`` are checked to be ints; on v2 it
    needs ``shared``, and ``events``, if present, must be a list.
    """
    if text:
        try:
            value: Any = orjson.loads(frame)
        except ValueError as exc:
            raise _protocol_error(f"undecodable server frame: {exc}") from None
        if not isinstance(value, dict):
            raise _protocol_error("server sent a non-map message")
        message: dict[str, Any] = value
    else:
        if not isinstance(frame, bytes | bytearray | memoryview):
            raise _protocol_error("server sent a text frame on a msgpack connection")
        message = _parse_msgpack_frame(bytes(frame))
    if message.get("t") == "state":
        for name in ("tick", "ack"):
            number = message.get(name)
            if not isinstance(number, int) or isinstance(number, bool):
                raise _protocol_error(f"state message without an integer {name!r}")
        if version >= PROTOCOL_V2:
            if "shared" not in message:
                raise _protocol_error("v2 state message without a 'shared'")
            if not isinstance(message.get("events", []), list):
                raise _protocol_error("a state's 'events' must be a list")
        elif "state" not in message:
            raise _protocol_error("state message without a 'state'")
    return message


def _is_keyframe(payload: Any) -> bool:
    """A delta-sync payload that does not build on a previous one (it has no ``base``)."""
    return not (isinstance(payload, dict) and "base" in payload)


def _make_state(message: dict[str, Any], server: str, epoch: int) -> State:
    """The ``State`` of a state message from ``_decode_server_frame``."""
    value = message["state"]
    if isinstance(value, _RawState):
        return State.lazy(message["tick"], message["ack"], value.raw, server, epoch)
    return State(message["tick"], message["ack"], value, server, epoch)


def _ignore_result(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


__all__ = [
    "AuthClient",
    "ClientError",
    "ClientStats",
    "ConnectionState",
    "LoginError",
    "RedirectPolicy",
    "RefreshingToken",
    "RoomClient",
    "RoomError",
    "ServerRotation",
    "State",
    "TokenUnavailable",
    "Tokens",
    "backoff_delay",
    "reauth_delay",
    "redact_url",
    "refresh_margin",
]
