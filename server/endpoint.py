"""The WebSocket endpoint on the player port: the handshake, join, and a session's messages.

It refuses connections over budget at the handshake (429), answers the two probes,
authenticates and seats each client in the room placement names (or sends it the
redirect or the refusal), and feeds its frames to the room. Its two upkeep loops keep
the quota slots of its rooms and sessions alive and end the sessions that were logged out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from auth.clientaddr import address_bucket
from auth.verify import MAX_TOKEN_BYTES, InvalidToken, VerifiedToken
from infra.revocation import revoked
from server.engine import RoomFull
from server.errors import ConfigError, InvalidOptions, OwnershipLost
from server.games import DEFAULT_GAME
from server.placement import Redirect, Unavailable
from server.protocol import (
    PROTOCOL_V2,
    SUBPROTOCOLS,
    AuthMessage,
    ClientMessage,
    CloseCode,
    ErrorCode,
    InputMessage,
    JoinMessage,
    LeaveMessage,
    PingMessage,
    ProtocolError,
    SyncMessage,
    authed_message,
    codec_for_subprotocol,
    parse_client_message,
    parse_input,
    pong_message,
    redirect_message,
)
from server.quotas import REFRESH_EVERY_S, QuotaExceeded
from server.redis_errors import REDIS_DOWN
from server.room import Room, RoomState
from server.session import Session, SessionState
from server.transport import (
    Connection,
    ConnectionClosed,
    HandshakeRefused,
    HttpRequest,
    HttpResponse,
)
from server.turn_batch import TurnBatch

if TYPE_CHECKING:
    from server.app import RoomServer

log = logging.getLogger("stateroom.server")

_PROTOCOL_CLOSE = {
    ErrorCode.UNSUPPORTED_VERSION: CloseCode.UNSUPPORTED_VERSION,
    ErrorCode.INVALID_ROOM: CloseCode.INVALID_ROOM,
    ErrorCode.UNKNOWN_GAME: CloseCode.INVALID_ROOM,
}


# Largest message a seated player may send: an input of its game, or a fresh token.
MAX_REAUTH_BYTES = MAX_TOKEN_BYTES + 256


def select_subprotocol(offered: Sequence[str]) -> str | None:
    """msgpack when the client offers nothing; 400 when it offers only unknown ones."""
    if not offered:
        return None
    for name in offered:
        if name in SUBPROTOCOLS:
            return name
    raise HandshakeRefused("unsupported subprotocol; offer one of " + ", ".join(SUBPROTOCOLS))


def _address_bucket(request: HttpRequest) -> str:
    """The budget key of a connection's peer: its IP (IPv6: the /64)."""
    peer = request.remote_address
    return address_bucket(str(peer[0])) if peer else "unknown"


def _text(status: HTTPStatus, body: str) -> HttpResponse:
    return HttpResponse(status.value, body.encode())


def _bearer(request: HttpRequest) -> str | None:
    value = request.header("Authorization")
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip()
    return None


class RevocationChecks(TurnBatch[str, bool]):
    """The revocation checks of the joins of one event-loop turn, in one round trip.

    A dead server's players reconnect to the survivors all at once (hundreds in the same
    few hundred ms); each join's check was a pipeline of its own (a pooled connection,
    a round trip and redis-py's overhead per player). Checks made in the same turn now
    share one ``revoked`` call; an error goes to every check of that batch."""

    def __init__(self, redis: aioredis.Redis) -> None:
        super().__init__()
        self.redis = redis

    def check(self, session_id: str) -> asyncio.Future[bool]:
        """True when ``session_id`` was logged out."""
        return self._enqueue(session_id)

    async def _send(self, session_ids: list[str]) -> list[bool]:
        gone = await revoked(self.redis, session_ids)
        return [sid in gone for sid in session_ids]


class TokenCache:
    """Tokens this server verified lately: a player back within a minute with the same
    token (after a redirect, a refused join, a dropped connection; a mass failover's
    players come back two or three times) costs no signature check (~0.3 ms each).

    Only successes are kept, each until its token's ``exp`` (the verifier's leeway after
    it is left to the verifier) and at most ``MAX_AGE_S``, so a key withdrawn from the
    JWKS stops being honoured within that time; at most ``MAX_ENTRIES`` (oldest out).
    Revocation is checked at every join regardless."""

    MAX_AGE_S = 60.0
    MAX_ENTRIES = 20_000

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, VerifiedToken]] = {}  # token -> (until, it)

    def get(self, token: str, now: float) -> VerifiedToken | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        if now >= entry[0]:
            del self._entries[token]
            return None
        return entry[1]

    def put(self, token: str, verified: VerifiedToken, now: float) -> None:
        until = min(verified.expires_at, now + self.MAX_AGE_S)
        if until <= now:
            return
        entries = self._entries
        entries.pop(token, None)
        entries[token] = (until, verified)
        while len(entries) > self.MAX_ENTRIES:
            del entries[next(iter(entries))]

    def __len__(self) -> int:
        return len(self._entries)


class Endpoint:
    """The player port of the server it belongs to: one ``handle`` per connection."""

    def __init__(self, server: RoomServer) -> None:
        self.server = server
        self.revocations = RevocationChecks(server.redis)
        self.tokens = TokenCache()

    # -- the handshake -----------------------------------------------------------------

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        """The player port: WebSocket upgrades and the two health probes, nothing else
        (/status and /metrics are on the admin listener)."""
        server = self.server
        path = request.path.split("?", 1)[0]
        if (request.header("Upgrade") or "").lower() == "websocket":
            refusal = server.connections.refusal(_address_bucket(request))
            if refusal is None:
                return None
            server.metrics.evicted.labels("connection_quota").inc()
            body = orjson.dumps({"error": {"code": "connection_quota", "message": refusal}})
            return HttpResponse(HTTPStatus.TOO_MANY_REQUESTS.value, body, "application/json")
        if path == "/healthz":
            return _text(HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            ok = server.ready()
            return _text(
                HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
                "ready\n" if ok else "not ready\n",
            )
        return _text(HTTPStatus.NOT_FOUND, "not found: use a WebSocket on /v1/ws\n")

    # -- a connection ------------------------------------------------------------------

    async def handle(self, ws: Connection) -> None:
        server = self.server
        settings = server.settings
        codec = codec_for_subprotocol(ws.subprotocol)
        session = Session(
            ws,
            codec,
            server.metrics,
            settings.outbox_bytes,
            settings.input_rate,
            settings.input_burst,
        )
        session.address = _address_bucket(ws.request)
        server.connections.opened(session.address)
        pending = True
        try:
            room = await self._join(ws, session)
            server.connections.joined(session.address)
            pending = False
            if room is None:
                return
            try:
                await self._serve(ws, session, room)
            finally:
                self._leave_room(session, room)
        finally:
            server.connections.closed(session.address, pending)
            session.ended()
            await session.wait_closed()

    def _leave_room(self, session: Session, room: Room) -> None:
        """The connection of a seated session ended: free what it held."""
        server = self.server
        current = room.sessions.get(session.player_id) is session
        room.detach(session)
        server.player_budget.detach(session.player_id)
        if current:  # not replaced by a newer connection, which keeps the quota slot
            server.background(server.quotas.release_session(session.player_id, room.name))

    async def _join(self, ws: Connection, session: Session) -> Room | None:
        """Authenticate and seat the client; None when it was refused (and closed)."""
        server = self.server
        try:
            async with asyncio.timeout(server.settings.join_timeout_s):
                frame = await ws.recv()
        except TimeoutError:
            session.close(CloseCode.AUTH_TIMEOUT, "no join message in time")
            return None
        except ConnectionClosed:
            return None
        server.metrics.traffic.messages_in += 1
        try:
            message = parse_client_message(session.codec.decode(frame))
        except ProtocolError as exc:
            session.send_error(exc.code, exc.message)
            session.close(_PROTOCOL_CLOSE.get(exc.code, CloseCode.PROTOCOL_ERROR), str(exc.code))
            return None
        if not isinstance(message, JoinMessage):
            session.send_error(ErrorCode.NOT_JOINED, "the first message must be join")
            session.close(CloseCode.PROTOCOL_ERROR, "the first message must be join")
            return None
        if message.version != session.codec.version:
            text = (
                f"this connection speaks protocol {session.codec.version}"
                f" ({session.codec.subprotocol}); send join with v={session.codec.version}"
            )
            session.send_error(ErrorCode.UNSUPPORTED_VERSION, text)
            session.close(CloseCode.UNSUPPORTED_VERSION, "version does not match subprotocol")
            return None
        session.since = message.since
        token = _bearer(ws.request) or message.token
        if not token:
            session.send_error(ErrorCode.UNAUTHORIZED, "an access token is required")
            session.close(CloseCode.UNAUTHORIZED, "missing token")
            return None
        verified = await self._verify(session, token)
        if verified is None:
            return None
        session.player_id = verified.player_id
        session.name = verified.name
        session.session_id = verified.session_id
        session.token_exp = int(verified.expires_at)
        session.room_name = message.room
        game = message.game or DEFAULT_GAME
        if game not in server.games:
            session.send_error(ErrorCode.UNKNOWN_GAME, f"no game named {game!r} on this server")
            session.close(CloseCode.INVALID_ROOM, "unknown game")
            return None
        placed = "placed=1" in ws.request.path
        try:
            located = await server.placement.locate(
                message.room, game, placed, session.player_id, session.address, message.options
            )
            if isinstance(located, Room):
                located.joining += 1  # a new room's first tick must not close it meanwhile
                try:
                    await server.quotas.take_session(session.player_id, message.room)
                finally:
                    located.joining -= 1
        except InvalidOptions as exc:
            session.send_error(ErrorCode.INVALID_OPTIONS, str(exc))
            session.close(CloseCode.INVALID_ROOM, "invalid_options")
            return None
        except QuotaExceeded as exc:
            server.metrics.evicted.labels(str(exc.code)).inc()
            session.send_error(exc.code, exc.message)
            session.close(CloseCode.QUOTA_EXCEEDED, str(exc.code))
            return None
        except (*REDIS_DOWN, RedisError, OwnershipLost) as exc:
            located = Unavailable(str(exc))
        except ConfigError as exc:
            session.send_error(ErrorCode.UNKNOWN_GAME, str(exc))
            session.close(CloseCode.INVALID_ROOM, "game not available")
            return None
        except Exception:
            log.exception("room=%s could not be located or rebuilt", message.room)
            session.send_error(ErrorCode.UNAVAILABLE, "room unavailable; retry later")
            session.close(CloseCode.INTERNAL_ERROR, "room unavailable")
            return None
        if isinstance(located, Redirect):
            server.metrics.redirects.inc()
            session.send(redirect_message(message.room, located.url, located.server))
            session.close(CloseCode.REDIRECT, "room is on another server")
            return None
        if isinstance(located, Unavailable):
            session.send_error(ErrorCode.UNAVAILABLE, f"room unavailable: {located.reason}; retry")
            session.close(CloseCode.RECONNECT, "room unavailable; retry")
            return None
        if message.game is not None and message.game != located.game_class.name:
            session.send_error(
                ErrorCode.UNKNOWN_GAME,
                f"room {message.room} runs game {located.game_class.name!r}, not {game!r};"
                " join without 'game' or choose another room name",
            )
            session.close(CloseCode.INVALID_ROOM, "room runs another game")
            return None
        try:
            located.attach(session)
        except RoomFull as exc:
            session.send_error(ErrorCode.ROOM_FULL, str(exc))
            session.close(CloseCode.ROOM_FULL, "room full")
            return None
        # Seated: from now on a frame only needs to hold an input of this game (or a
        # fresh token), and the player's messages draw on its shared budget.
        ws.max_message_size = max(located.game_class.max_input_bytes, MAX_REAUTH_BYTES)
        server.player_budget.attach(session.player_id)
        session.expire_at(session.token_exp + server.verifier.leeway)
        return located

    async def _verify(self, session: Session, token: str) -> VerifiedToken | None:
        """Verify a token (at join or re-auth) and check it is not revoked; None when the
        session was refused (an error was sent and the close started)."""
        try:
            now = time.time()
            verified = self.tokens.get(token, now)
            if verified is None:
                verified = await self.server.verifier.verify(token)
                self.tokens.put(token, verified, now)
            if verified.session_id and await self.revocations.check(verified.session_id):
                session.send_error(
                    ErrorCode.SESSION_REVOKED, "this session was logged out; log in again"
                )
                session.close(CloseCode.UNAUTHORIZED, "session_revoked")
                return None
        except InvalidToken as exc:
            if exc.code == "keys_unavailable":  # the login service is not answering yet
                session.send_error(ErrorCode.UNAVAILABLE, "cannot verify tokens yet; retry")
                session.close(CloseCode.RECONNECT, "token keys unavailable")
                return None
            code = (
                ErrorCode.TOKEN_EXPIRED if exc.code == "token_expired" else ErrorCode.UNAUTHORIZED
            )
            session.send_error(code, exc.message)
            session.close(CloseCode.UNAUTHORIZED, exc.code)
            return None
        except Exception as exc:
            log.warning("token verification unavailable: %s", exc)
            session.send_error(ErrorCode.UNAVAILABLE, "cannot verify tokens right now; retry")
            session.close(CloseCode.RECONNECT, "token verification unavailable")
            return None
        return verified

    async def _reauth(self, session: Session, token: str) -> None:
        """A fresh token on an open session: same player, not revoked; moves its end."""
        verified = await self._verify(session, token)
        if verified is None or session.state is SessionState.CLOSING:
            return
        if verified.player_id != session.player_id:
            session.send_error(ErrorCode.UNAUTHORIZED, "the new token is for another player")
            session.close(CloseCode.UNAUTHORIZED, "token for another player")
            return
        session.session_id = verified.session_id
        session.token_exp = int(verified.expires_at)
        session.expire_at(session.token_exp + self.server.verifier.leeway)
        session.send(authed_message(session.token_exp))

    async def _serve(self, ws: Connection, session: Session, room: Room) -> None:
        """Feed the joined client's messages to the room until it disconnects.

        Complete messages arrive synchronously from the transport's read path
        (``on_message``); this coroutine only waits for the connection to end.
        """

        handle = self._on_frame

        def on_frame(frame: bytes | str) -> None:
            try:
                handle(session, room, frame)
            except Exception:
                log.exception(
                    "room=%s player=%s message handling failed", room.name, session.player_id
                )
                session.close(CloseCode.INTERNAL_ERROR, "internal error")

        ws.on_message = on_frame
        try:
            await ws.wait_closed()
        finally:
            ws.on_message = None

    def _on_frame(self, session: Session, room: Room, frame: bytes | str) -> None:
        """One message of a joined client: rate limit, decode, dispatch. Never awaits.

        An input (nearly every message) takes ``parse_input``: one decode, a few type
        checks; anything it does not recognise goes through the generic parser, which
        gives the documented errors."""
        if session.state is SessionState.CLOSING:
            return
        server = self.server
        traffic = server.metrics.traffic
        size = len(frame)
        traffic.messages_in += 1
        traffic.bytes_in += size
        now = time.monotonic()
        if not session.admit(now):
            return
        if not server.player_budget.admit(session.player_id, size, now):
            session.refuse_rate("input dropped: over this player's message or byte budget")
            return
        message: ClientMessage | None = parse_input(session.codec, frame)
        if message is None:
            try:
                message = parse_client_message(session.codec.decode(frame))
            except ProtocolError as exc:
                session.send_error(exc.code, exc.message)
                return
        if type(message) is InputMessage:
            limit = room.game_class.max_input_bytes
            if size > limit:
                session.send_error(
                    ErrorCode.ILLEGAL_INPUT,
                    f"input message over {limit} bytes; this seq is not consumed",
                    message.seq,
                )
            elif room.state is RoomState.RUNNING:
                room.on_input(session, message)
        elif isinstance(message, AuthMessage):
            server.background(self._reauth(session, message.token))
        elif isinstance(message, SyncMessage) and session.codec.version >= PROTOCOL_V2:
            session.needs_keyframe = True
        elif isinstance(message, PingMessage):
            session.send(pong_message(message.id, room.engine.tick))
        elif isinstance(message, LeaveMessage):
            room.leave(session)
            session.close(1000, "left the room")
        else:
            session.send_error(ErrorCode.ALREADY_JOINED, "this connection already joined a room")

    # -- session upkeep ----------------------------------------------------------------

    async def quota_refresh_loop(self) -> None:
        """Keep the quota slots of our rooms (their creators') and sessions alive."""
        server = self.server
        while True:
            await asyncio.sleep(REFRESH_EVERY_S)
            rooms = [(r.creator, r.name) for r in server.rooms.values() if r.creator]
            sessions = [(pid, r.name) for r in server.rooms.values() for pid in r.sessions]
            try:
                await server.quotas.refresh(rooms, sessions)
            except (*REDIS_DOWN, RedisError) as exc:
                log.debug("quota refresh failed: %s", exc)

    async def revocation_loop(self) -> None:
        """End the sessions whose login session was logged out (a revocation record):
        within ``revocation_check_s``, not only when their token expires."""
        server = self.server
        while True:
            await asyncio.sleep(server.settings.revocation_check_s)
            sessions = [
                session
                for room in server.rooms.values()
                for session in room.sessions.values()
                if session.session_id
            ]
            if not sessions:
                continue
            try:
                gone = await revoked(
                    server.redis,
                    [s.session_id for s in sessions if s.session_id],
                    server.store.scripts.pipe,
                )
            except (*REDIS_DOWN, RedisError) as exc:
                log.debug("revocation check failed: %s", exc)
                continue
            for session in sessions:
                if session.session_id in gone:
                    server.metrics.evicted.labels("session_revoked").inc()
                    session.send_error(
                        ErrorCode.SESSION_REVOKED, "this session was logged out; log in again"
                    )
                    session.close(CloseCode.UNAUTHORIZED, "session_revoked")
