"""One room-server process: WebSocket endpoint, room placement, failover watcher, HTTP probes.

A join is served here if this process owns the room; redirected (message +
close 4021) if a live peer owns it; claimed here if nobody does or its owner
is dead, rebuilding the room from its checkpoint and journal. A brand-new
room goes to the least-loaded live server. The watcher claims the rooms of
dead peers (liveness connection gone) and of expired leases (frozen or
partitioned peers) without waiting for a client to come back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, NegotiationError
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from auth.clientaddr import address_bucket
from auth.verify import MAX_TOKEN_BYTES, InvalidToken, TokenVerifier, VerifiedToken
from infra.errors import RedisUrlError
from infra.eventloop import run_loop
from infra.redis_health import check_redis_memory
from infra.redis_url import connect as connect_redis
from infra.redis_url import redact
from infra.redis_url import validate as parse_redis_url
from infra.revocation import revoked
from server import settings as settings_module
from server.admin import AdminEndpoint, http_response
from server.budgets import ConnectionBudget, ConnectionLimits, PlayerBudget, PlayerLimits
from server.engine import RoomEngine, RoomFull
from server.errors import ConfigError, OwnershipLost
from server.fastpath import FastConnection
from server.game import Game
from server.games import available_games
from server.metrics import ServerMetrics
from server.protocol import (
    SUBPROTOCOLS,
    AuthMessage,
    CloseCode,
    ErrorCode,
    InputMessage,
    JoinMessage,
    LeaveMessage,
    PingMessage,
    ProtocolError,
    authed_message,
    codec_for_subprotocol,
    parse_client_message,
    pong_message,
    redirect_message,
)
from server.quotas import REFRESH_EVERY_S, QuotaExceeded, QuotaLimits, Quotas
from server.room import Room, RoomState
from server.session import Session, SessionState
from server.settings import ServerSettings
from server.store import Lease, RoomStore, liveness_name

log = logging.getLogger("stateroom.server")

DEFAULT_GAME = "arena"
BROKEN_ROOM_RETRY_S = 10.0  # the watcher's pause before retrying a room it could not rebuild
# Longest a join waits for a stalled owner's lease to run out before it is told to retry.
# A stalled owner is one whose lease has less than half its time left, so with the default
# 3 s lease the wait always ends at the expiry; below the SDK's 2 s wait for a welcome.
STALE_OWNER_HOLD_MS = 1500
_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)

_PROTOCOL_CLOSE = {
    ErrorCode.UNSUPPORTED_VERSION: CloseCode.UNSUPPORTED_VERSION,
    ErrorCode.INVALID_ROOM: CloseCode.INVALID_ROOM,
    ErrorCode.UNKNOWN_GAME: CloseCode.INVALID_ROOM,
}


@dataclass(frozen=True)
class Redirect:
    url: str
    server: str


@dataclass(frozen=True)
class Unavailable:
    reason: str


def _select_subprotocol(
    connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    """msgpack when the client offers nothing; 400 when it offers only unknown ones."""
    if not offered:
        return None
    for name in offered:
        if name in SUBPROTOCOLS:
            return name
    raise NegotiationError("unsupported subprotocol; offer one of " + ", ".join(SUBPROTOCOLS))


def _address_bucket(connection: ServerConnection) -> str:
    """The budget key of a connection's peer: its IP (IPv6: the /64)."""
    peer = connection.remote_address
    return address_bucket(str(peer[0])) if peer else "unknown"


def _bearer(headers: Headers) -> str | None:
    value = headers.get("Authorization")
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip()
    return None


class RoomServer:
    """Everything one process runs."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.server_id = settings.new_server_id()
        self.metrics = ServerMetrics()
        self.games: dict[str, type[Game]] = available_games(list(settings.games))
        self.rooms: dict[str, Room] = {}
        self.claiming: dict[str, asyncio.Future[Room | None]] = {}
        self.started_at = time.time()
        self.redis = connect_redis(
            settings.redis_url,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            max_connections=256,
            health_check_interval=0,
        )
        self.liveness = connect_redis(
            settings.redis_url,
            single_connection_client=True,
            client_name=liveness_name(self.server_id),
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
        )
        self.store = RoomStore(self.redis, lease_ms=settings.lease_ms)
        self.quotas = Quotas(
            self.redis,
            QuotaLimits(
                rooms_per_player=settings.rooms_per_player,
                rooms_per_minute=settings.rooms_per_minute,
                rooms_per_address_per_minute=settings.rooms_per_address_per_minute,
                sessions_per_player=settings.sessions_per_player,
            ),
        )
        self.connections = ConnectionBudget(
            ConnectionLimits(
                per_address=settings.connections_per_address,
                pending_per_address=settings.pending_per_address,
                total=settings.max_connections,
                pending_total=settings.max_pending_connections,
            )
        )
        self.player_budget = PlayerBudget(
            PlayerLimits(
                messages_per_s=settings.player_message_rate,
                message_burst=settings.player_message_rate,
                bytes_per_s=settings.player_byte_rate,
                byte_burst=2 * settings.player_byte_rate,
            )
        )
        self.liveness_id: int | None = None
        self.liveness_since = time.monotonic()
        self.liveness_reconnects = -1  # new liveness connections after the first
        self.redis_up_since = time.monotonic()  # when Redis last started, by its uptime
        self.redis_ok = False
        self.live: set[str] = set()
        self.registry: dict[str, dict[str, Any]] = {}  # the last read of sr:servers
        self.live_at = 0.0
        self._missing: dict[str, int] = {}
        self._gone_polls: dict[str, int] = {}
        self._broken_until: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._ws_server: Server | None = None
        self.admin = AdminEndpoint(self.status, self.metrics.render, self.ready)
        self.verifier = TokenVerifier(
            settings.jwks_url,
            issuer=settings.issuer,
            audience=settings.audience,
            leeway=settings.token_leeway_s,
        )

    # -- startup and shutdown ------------------------------------------------------

    async def start(self) -> None:
        """Check Redis, listen, and start the background loops. Raises ConfigError on a
        Redis that would evict keys (leases and journals must never vanish silently)."""
        memory = await check_redis_memory(self.redis)
        for warning in memory.warnings:
            log.warning("%s", warning)
        if memory.fatal is not None:
            raise ConfigError(memory.fatal)
        if self.settings.admin_port:
            await self.admin.start(self.settings.admin_host, self.settings.admin_port)
        await self._heartbeat_once()
        self._ws_server = await serve(
            self.handle,
            self.settings.host,
            self.settings.port,
            subprotocols=list(SUBPROTOCOLS),  # type: ignore[arg-type]
            select_subprotocol=_select_subprotocol,
            process_request=self.process_request,
            # A browser always sends Origin, so the allow-list stops cross-site pages; a
            # native client sends none and is authenticated by its token like any other.
            origins=[*self.settings.origins, None] if self.settings.origins else None,  # type: ignore[list-item]
            compression=None,
            max_size=self.settings.max_message_bytes,
            max_queue=64,
            write_limit=self.settings.outbox_bytes,
            ping_interval=self.settings.ping_interval_s,
            ping_timeout=self.settings.ping_timeout_s,
            open_timeout=self.settings.open_timeout_s,
            close_timeout=2,
            server_header="stateroom",
            create_connection=FastConnection,
        )
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._heartbeat_loop(), name="heartbeat"),
            loop.create_task(self._watch_loop(), name="failover-watch"),
            loop.create_task(self.verifier.warm(), name="jwks-warm"),
            loop.create_task(self._quota_refresh_loop(), name="quota-refresh"),
            loop.create_task(self._revocation_loop(), name="revocations"),
        ]
        log.info(
            "server %s listening on %s (pid %d, redis %s)",
            self.server_id,
            self.settings.ws_url,
            os.getpid(),
            redact(self.settings.redis_url),
        )

    async def stop(self) -> None:
        """Graceful handover: stop accepting, leave the registry, drain every room."""
        log.info("server %s draining %d rooms", self.server_id, len(self.rooms))
        if self._ws_server is not None:
            self._ws_server.server.close()
        for task in self._tasks:
            task.cancel()
        successors: list[tuple[str, str]] = []
        with contextlib.suppress(*_REDIS_DOWN, RedisError):
            await self.store.unregister_server(self.server_id)
            successors = await self._successors()
        rooms = list(self.rooms.values())
        await asyncio.gather(
            *(
                room.drain(successors[i % len(successors)] if successors else None)
                for i, room in enumerate(rooms)
            )
        )
        if self._ws_server is not None:
            self._ws_server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3):
                    await self._ws_server.wait_closed()
        await self.verifier.aclose()
        with contextlib.suppress(Exception):
            await self.admin.stop()
        with contextlib.suppress(Exception):
            await self.liveness.aclose()
        with contextlib.suppress(Exception):
            await self.redis.aclose()
        log.info("server %s stopped", self.server_id)

    # -- registry, liveness ------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {
            "id": self.server_id,
            "name": self.settings.name,
            "ws_url": self.settings.ws_url,
            "admin_url": self.admin.url,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "heartbeat_at": time.time(),
            "liveness_id": self.liveness_id,
            "rooms": len(self.rooms),
            "players": sum(len(r.sessions) for r in self.rooms.values()),
            "room_players": {name: len(r.sessions) for name, r in self.rooms.items()},
        }

    async def _heartbeat_once(self, register: bool = True) -> None:
        client_id = int(await self.liveness.client_id())
        if client_id != self.liveness_id:
            # A new liveness connection: publish its id at once, peers look for it by id.
            self.liveness_id = client_id
            self.liveness_since = time.monotonic()
            self.liveness_reconnects += 1
            uptime = (await self.liveness.info("server")).get("uptime_in_seconds", 0)
            self.redis_up_since = time.monotonic() - float(uptime)
            register = True
        if register:
            await self.store.register_server(self.server_id, self.info())
            await self.store.report_load(self.server_id, len(self.rooms) + len(self.claiming))
        self.redis_ok = True

    async def _heartbeat_loop(self) -> None:
        """Keep the liveness connection up (checked 4x/s, so a dropped one is back at once)
        and refresh this server's registry entry and load every heartbeat_s."""
        registered_at = time.monotonic()
        while True:
            register = time.monotonic() - registered_at >= self.settings.heartbeat_s
            try:
                await self._heartbeat_once(register)
                if register:
                    registered_at = time.monotonic()
            except (*_REDIS_DOWN, RedisError) as exc:
                if self.redis_ok:  # once per outage, not every retry
                    log.warning("heartbeat failed: %s", exc)
                self.redis_ok = False
            await asyncio.sleep(min(self.settings.heartbeat_s, 0.25))

    async def _quota_refresh_loop(self) -> None:
        """Keep the quota slots of our rooms (their creators') and sessions alive."""
        while True:
            await asyncio.sleep(REFRESH_EVERY_S)
            rooms = [(r.creator, r.name) for r in self.rooms.values() if r.creator]
            sessions = [(pid, r.name) for r in self.rooms.values() for pid in r.sessions]
            try:
                await self.quotas.refresh(rooms, sessions)
            except (*_REDIS_DOWN, RedisError) as exc:
                log.debug("quota refresh failed: %s", exc)

    async def _revocation_loop(self) -> None:
        """End the sessions whose login session was logged out (a revocation record):
        within ``revocation_check_s``, not only when their token expires."""
        while True:
            await asyncio.sleep(self.settings.revocation_check_s)
            sessions = [
                session
                for room in self.rooms.values()
                for session in room.sessions.values()
                if session.session_id
            ]
            if not sessions:
                continue
            try:
                gone = await revoked(self.redis, [s.session_id for s in sessions if s.session_id])
            except (*_REDIS_DOWN, RedisError) as exc:
                log.debug("revocation check failed: %s", exc)
                continue
            for session in sessions:
                if session.session_id in gone:
                    self.metrics.evicted.labels("session_revoked").inc()
                    session.send_error(
                        ErrorCode.SESSION_REVOKED, "this session was logged out; log in again"
                    )
                    session.close(CloseCode.UNAUTHORIZED, "session_revoked")

    def _settled(self) -> bool:
        """Whether a peer missing from CLIENT LIST can be judged dead: every live peer has
        had time to (re)connect its liveness connection. That wait is only needed after
        Redis itself restarted (or our own connection was re-made after an outage): a fresh
        server joining a Redis that has been up for a while judges at once."""
        if not self.redis_ok:
            return False
        grace = self.settings.liveness_grace_ms / 1000
        now = time.monotonic()
        fresh_process = self.liveness_reconnects == 0
        if fresh_process and now - self.redis_up_since >= grace:
            return True
        return now - self.liveness_since >= grace

    async def _refresh_live(self) -> dict[str, dict[str, Any]]:
        """Read the server registry and which of its servers are alive; returns the registry."""
        servers = await self.store.servers()
        self.live = await self.store.live_server_ids(servers)
        self.live_at = time.monotonic()
        self.registry = servers
        return servers

    async def is_live(self, server_id: str) -> bool:
        if time.monotonic() - self.live_at > 2 * self.settings.failover_poll_ms / 1000:
            await self._refresh_live()
        return server_id in self.live

    # -- failover watcher ----------------------------------------------------------------

    async def _watch_loop(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.settings.failover_poll_ms / 1000)
            try:
                await self._watch_once()
                failing = False
            except (*_REDIS_DOWN, RedisError) as exc:
                if not failing:  # once per outage, not every poll
                    log.warning("watcher: redis unavailable: %s", exc)
                failing = True
            except Exception:
                log.exception("watcher failed")

    async def _watch_once(self) -> None:
        servers = await self._refresh_live()
        live = self.live
        if not self._settled():
            return
        await self._forget_dead_servers(servers, live)
        index = await self.store.rooms_index()
        names = [name for name in index if name not in self.rooms and name not in self.claiming]
        leases = await self.redis.mget([f"sr:{{{name}}}:lease" for name in names]) if names else []
        missing_now: set[str] = set()
        for name, value in zip(names, leases, strict=True):
            if value is None:
                # Released by a draining owner, or expired (frozen/partitioned owner).
                self._spawn_claim(name, index[name].get("game", DEFAULT_GAME), None)
                continue
            lease = Lease.parse(name, value.decode() if isinstance(value, bytes) else value)
            if lease.server_id == self.server_id or lease.server_id in live:
                continue
            missing_now.add(lease.server_id)
            # Absent from two polls in a row: its process is gone.
            if self._missing.get(lease.server_id, 0) >= 1:
                log.info(
                    "room=%s owner %s is gone (no liveness connection): claiming",
                    name,
                    lease.server_id,
                )
                self._spawn_claim(name, index[name].get("game", DEFAULT_GAME), lease)
        self._missing = {sid: self._missing.get(sid, 0) + 1 for sid in missing_now}

    async def _forget_dead_servers(
        self, registered: dict[str, dict[str, Any]], live: set[str]
    ) -> None:
        """Drop registry entries of servers whose liveness connection stayed gone."""
        gone = {sid for sid in registered if sid not in live and sid != self.server_id}
        for server_id in gone:
            self._gone_polls[server_id] = self._gone_polls.get(server_id, 0) + 1
            if self._gone_polls[server_id] >= 3:
                await self.store.unregister_server(server_id)
                log.info("server %s is gone: removed from the registry", server_id)
        self._gone_polls = {sid: n for sid, n in self._gone_polls.items() if sid in gone and n < 3}

    def _spawn_claim(self, name: str, game: str, replacing: Lease | None) -> None:
        if time.monotonic() < self._broken_until.get(name, 0.0):
            return  # could not be rebuilt a moment ago: don't retry every poll

        async def claim() -> None:
            try:
                await self.take_room(name, game, replacing, for_client=False)
            except (*_REDIS_DOWN, RedisError, OwnershipLost):
                pass
            except Exception:  # logged by _claim_and_restore; retried later
                self._broken_until[name] = time.monotonic() + BROKEN_ROOM_RETRY_S

        task = asyncio.get_running_loop().create_task(claim())
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    # -- rooms ------------------------------------------------------------------------------

    async def take_room(
        self,
        name: str,
        game: str,
        replacing: Lease | None,
        *,
        for_client: bool = True,
        creator: str = "",
    ) -> Room | None:
        """Claim a room and rebuild it from Redis; None if someone else holds it.

        ``for_client=False`` (the watcher): only an existing room is taken over, and one
        that has no seats left is deleted instead of run (an empty room from before a
        restart is not resurrected)."""
        pending = self.claiming.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        existing = self.rooms.get(name)
        if existing is not None and existing.state is RoomState.RUNNING:
            return existing
        future: asyncio.Future[Room | None] = asyncio.get_running_loop().create_future()
        self.claiming[name] = future
        try:
            room = await self._claim_and_restore(name, game, replacing, for_client, creator)
            future.set_result(room)
            return room
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved for waiters that never come
            raise
        finally:
            del self.claiming[name]

    async def _claim_and_restore(
        self, name: str, game: str, replacing: Lease | None, for_client: bool, creator: str
    ) -> Room | None:
        started = time.perf_counter()
        claim = await self.store.claim(
            name,
            self.server_id,
            self.settings.ws_url,
            game,
            replacing,
            must_exist=not for_client,
            creator=creator,
        )
        if not claim.won:
            return None
        game_class = self.games.get(claim.game)
        if game_class is None:
            await self.store.release(claim.lease)
            raise ConfigError(f"room {name} runs game {claim.game!r}, which this server lacks")
        try:
            checkpoint, entries = await self.store.load(name)
            if checkpoint is not None:
                engine = RoomEngine.restore(game_class, checkpoint.snapshot)
            else:
                seed = int((await self.store.meta(name)).get("seed", "0"))
                engine = RoomEngine(game_class.create(seed))
            for entry in entries:
                engine.apply(entry.tick, entry.events)
        except Exception:
            # A room that cannot be rebuilt must not sit behind our lease: give it back
            # so the error shows up (and is retried) instead of a silent hang.
            log.exception("room=%s cannot be rebuilt from its checkpoint and journal", name)
            with contextlib.suppress(Exception):
                await self.store.release(claim.lease)
            raise
        if not for_client and not engine.seats:
            log.info("room=%s has no seats left: closing it instead of taking it over", name)
            await self.store.delete_room(claim.lease)
            if claim.creator:
                await self.quotas.release_room(claim.creator, name)
            return None
        if checkpoint is not None or entries:
            self.metrics.recoveries.inc()
        if replacing is not None:
            self.metrics.takeovers.inc()
        room = Room(
            name,
            game_class,
            engine,
            claim.lease,
            self.store,
            self.settings,
            self.metrics,
            self.server_id,
            self._room_closed,
        )
        room.creator = claim.creator
        self.rooms[name] = room
        self.metrics.rooms.set(len(self.rooms))
        room.start()
        log.info(
            "claimed room=%s epoch=%d game=%s tick=%d (checkpoint %s + %d journal ticks)"
            " in %.1f ms%s",
            name,
            claim.lease.epoch,
            claim.game,
            engine.tick,
            checkpoint.tick if checkpoint else "none",
            len(entries),
            (time.perf_counter() - started) * 1000,
            f", replacing {replacing.server_id} epoch {replacing.epoch}" if replacing else "",
        )
        return room

    def _room_closed(self, room: Room) -> None:
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            self.metrics.rooms.set(len(self.rooms))
        if room.deleted and room.creator:
            self._background(self.quotas.release_room(room.creator, room.name))

    def _background(self, coro: Any) -> None:
        """Run a best-effort Redis call off the caller's path (errors are logged)."""

        async def run() -> None:
            try:
                await coro
            except (*_REDIS_DOWN, RedisError) as exc:
                log.debug("background Redis call failed: %s", exc)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def _successors(self) -> list[tuple[str, str]]:
        """Live peers, least loaded first, to hand rooms to when this server stops."""
        servers = await self._refresh_live()
        peers = [
            (info.get("rooms", 0), sid, info["ws_url"])
            for sid, info in servers.items()
            if sid in self.live and sid != self.server_id and info.get("ws_url")
        ]
        return [(sid, url) for _, sid, url in sorted(peers)]

    async def _place_new_room(self, name: str) -> tuple[str, str] | None:
        """(server id, ws url) of the live server that should create room ``name``;
        None when it is this one."""
        servers = await self._refresh_live()
        peers = sorted(sid for sid in servers if sid in self.live and sid != self.server_id)
        chosen = await self.store.place(name, [self.server_id, *peers], self.settings.max_rooms)
        if not chosen:
            raise QuotaExceeded(
                ErrorCode.SERVER_FULL, "every room server runs as many rooms as it may; retry"
            )
        if chosen == self.server_id or chosen not in servers:
            return None
        return chosen, servers[chosen]["ws_url"]

    async def locate(
        self, name: str, game: str, placed_hint: bool, player_id: str = "", address: str = ""
    ) -> Room | Redirect | Unavailable:
        """Where a join for room ``name`` is served: here (claimed or rebuilt if needed),
        at a live peer (a redirect to its registered URL), or nowhere right now.

        ``placed_hint`` (``?placed=1`` on the URL) is only a hint: it is honoured when
        placement in Redis really chose this server, so a client cannot pick its server.
        A peer whose lease is not being renewed (a frozen or cut-off owner still
        connected to Redis) gets no more redirects: clients are told to retry until its
        lease expires and the room moves. Creating a room is charged to ``player_id`` and
        ``address`` (QuotaExceeded when their quota is used up).
        """
        room = self.rooms.get(name)
        if room is not None and room.state is RoomState.RUNNING:
            return room
        for _attempt in range(3):
            lease, ttl_ms = await self.store.owner_and_ttl(name)
            if lease is not None and lease.server_id != self.server_id:
                if await self.is_live(lease.server_id):
                    if 0 <= ttl_ms < self.settings.lease_ms // 2:
                        # Hold the join until the lease runs out (within what a client
                        # waits for its first frame), then claim: the client is served
                        # at the moment the room can move, not a retry backoff later.
                        hold_ms = min(ttl_ms + 10, STALE_OWNER_HOLD_MS)
                        await asyncio.sleep(hold_ms / 1000)
                        if hold_ms < ttl_ms + 10:
                            return Unavailable("the room's owner is not renewing its lease")
                        continue
                    url = self.registry.get(lease.server_id, {}).get("ws_url", "")
                    return Redirect(url, lease.server_id) if url else Unavailable("owner unknown")
                if not self._settled():
                    return Unavailable("this server just reconnected to Redis")
                log.info("room=%s owner %s is gone: claiming for a client", name, lease.server_id)
                taken = await self.take_room(name, game, lease)
            else:
                if lease is None and not await self.store.meta(name):
                    placed = placed_hint and await self.store.placed_on(name) == self.server_id
                    if not placed:
                        target = await self._place_new_room(name)
                        if target is not None:
                            return Redirect(target[1] + "?placed=1", target[0])
                    taken = await self._create_room(name, game, player_id, address)
                else:
                    taken = await self.take_room(name, game, lease)
            if taken is not None:
                return taken
        return Unavailable("room ownership is changing")

    async def _create_room(self, name: str, game: str, creator: str, address: str) -> Room | None:
        """Create a new room here, charged to its creator; None if another server won."""
        if len(self.rooms) + len(self.claiming) >= self.settings.max_rooms:
            raise QuotaExceeded(
                ErrorCode.SERVER_FULL, "this server runs as many rooms as it may; retry"
            )
        if creator:
            await self.quotas.reserve_room(creator, address, name)
        room = await self.take_room(name, game, None, creator=creator)
        if creator and (room is None or room.creator != creator):
            await self.quotas.release_room(creator, name)  # someone else created it
        return room

    # -- connections ---------------------------------------------------------------------------

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """The player port: WebSocket upgrades and the two health probes, nothing else
        (/status and /metrics are on the admin listener)."""
        path = request.path.split("?", 1)[0]
        if request.headers.get("Upgrade", "").lower() == "websocket":
            refusal = self.connections.refusal(_address_bucket(connection))
            if refusal is None:
                return None
            self.metrics.evicted.labels("connection_quota").inc()
            body = orjson.dumps({"error": {"code": "connection_quota", "message": refusal}})
            return http_response(HTTPStatus.TOO_MANY_REQUESTS, body, "application/json")
        if path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            ok = self.ready()
            return connection.respond(
                HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
                "ready\n" if ok else "not ready\n",
            )
        return connection.respond(HTTPStatus.NOT_FOUND, "not found: use a WebSocket on /v1/ws\n")

    def ready(self) -> bool:
        return self.redis_ok and self._ws_server is not None

    def status(self) -> dict[str, Any]:
        return {**self.info(), "room_list": [r.status() for r in self.rooms.values()]}

    async def handle(self, ws: ServerConnection) -> None:
        if self.settings.socket_sndbuf:
            sock = ws.transport.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.settings.socket_sndbuf)
        codec = codec_for_subprotocol(ws.subprotocol)
        session = Session(
            ws,
            codec,
            self.metrics,
            self.settings.outbox_bytes,
            self.settings.input_rate,
            self.settings.input_burst,
        )
        session.address = _address_bucket(ws)
        self.connections.opened(session.address)
        pending = True
        try:
            room = await self._join(ws, session)
            self.connections.joined(session.address)
            pending = False
            if room is None:
                return
            try:
                await self._serve(ws, session, room)
            finally:
                self._leave_room(session, room)
        finally:
            self.connections.closed(session.address, pending)
            session.close(1000, "connection ended")  # stops its expiry timer if still open
            await session.wait_closed()

    def _leave_room(self, session: Session, room: Room) -> None:
        """The connection of a seated session ended: free what it held."""
        current = room.sessions.get(session.player_id) is session
        room.detach(session)
        self.player_budget.detach(session.player_id)
        if current:  # not replaced by a newer connection, which keeps the quota slot
            self._background(self.quotas.release_session(session.player_id, room.name))

    async def _join(self, ws: ServerConnection, session: Session) -> Room | None:
        """Authenticate and seat the client; None when it was refused (and closed)."""
        assert ws.request is not None
        try:
            async with asyncio.timeout(self.settings.join_timeout_s):
                frame = await ws.recv()
        except TimeoutError:
            session.close(CloseCode.AUTH_TIMEOUT, "no join message in time")
            return None
        except ConnectionClosed:
            return None
        self.metrics.traffic.messages_in += 1
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
        token = _bearer(ws.request.headers) or message.token
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
        if game not in self.games:
            session.send_error(ErrorCode.UNKNOWN_GAME, f"no game named {game!r} on this server")
            session.close(CloseCode.INVALID_ROOM, "unknown game")
            return None
        placed = "placed=1" in ws.request.path
        try:
            located = await self.locate(
                message.room, game, placed, session.player_id, session.address
            )
            if isinstance(located, Room):
                await self.quotas.take_session(session.player_id, message.room)
        except QuotaExceeded as exc:
            self.metrics.evicted.labels(str(exc.code)).inc()
            session.send_error(exc.code, exc.message)
            session.close(CloseCode.QUOTA_EXCEEDED, str(exc.code))
            return None
        except (*_REDIS_DOWN, RedisError, OwnershipLost) as exc:
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
            self.metrics.redirects.inc()
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
        ws.protocol.max_message_size = max(
            located.game_class.max_input_bytes, MAX_TOKEN_BYTES + 256
        )
        self.player_budget.attach(session.player_id)
        session.expire_at(session.token_exp + self.verifier.leeway)
        return located

    async def _verify(self, session: Session, token: str) -> VerifiedToken | None:
        """Verify a token (at join or re-auth) and check it is not revoked; None when the
        session was refused (an error was sent and the close started)."""
        try:
            verified = await self.verifier.verify(token)
            if verified.session_id and await revoked(self.redis, [verified.session_id]):
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
        session.expire_at(session.token_exp + self.verifier.leeway)
        session.send(authed_message(session.token_exp))

    async def _serve(self, ws: ServerConnection, session: Session, room: Room) -> None:
        """Feed the joined client's messages to the room until it disconnects.

        Complete frames arrive synchronously through FastConnection.on_frame; this loop
        only sees fragmented messages (rare) and waits for the connection to end.
        """

        def on_frame(frame: bytes | str) -> None:
            try:
                self._on_frame(session, room, frame)
            except Exception:
                log.exception(
                    "room=%s player=%s message handling failed", room.name, session.player_id
                )
                session.close(CloseCode.INTERNAL_ERROR, "internal error")

        if isinstance(ws, FastConnection):
            ws.on_frame = on_frame
        try:
            async for frame in ws:
                on_frame(frame)
                if session.state is SessionState.CLOSING:
                    return
        except ConnectionClosed:
            return
        finally:
            if isinstance(ws, FastConnection):
                ws.on_frame = None

    def _on_frame(self, session: Session, room: Room, frame: bytes | str) -> None:
        """One message of a joined client: rate limit, decode, dispatch. Never awaits."""
        if session.state is SessionState.CLOSING:
            return
        traffic = self.metrics.traffic
        traffic.messages_in += 1
        traffic.bytes_in += len(frame)
        if not session.admit():
            return
        if not self.player_budget.admit(session.player_id, len(frame), time.monotonic()):
            session.refuse_rate("input dropped: over this player's message or byte budget")
            return
        try:
            message = parse_client_message(session.codec.decode(frame))
        except ProtocolError as exc:
            session.send_error(exc.code, exc.message)
            return
        if isinstance(message, InputMessage):
            limit = room.game_class.max_input_bytes
            if len(frame) > limit:
                session.send_error(
                    ErrorCode.ILLEGAL_INPUT,
                    f"input message over {limit} bytes; this seq is not consumed",
                    message.seq,
                )
            elif room.state is RoomState.RUNNING:
                room.on_input(session, message)
        elif isinstance(message, AuthMessage):
            self._background(self._reauth(session, message.token))
        elif isinstance(message, PingMessage):
            session.send(pong_message(message.id, room.engine.tick))
        elif isinstance(message, LeaveMessage):
            room.leave(session)
            session.close(1000, "left the room")
        else:
            session.send_error(ErrorCode.ALREADY_JOINED, "this connection already joined a room")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings_module.add_arguments(parser)


async def serve_forever(settings: ServerSettings) -> None:
    server = RoomServer(settings)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("STATEROOM_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


def run(args: argparse.Namespace) -> int:
    configure_logging()
    try:
        settings = settings_module.from_args(args)
        available_games(list(settings.games))  # fail fast on a bad --games reference
        parse_redis_url(settings.redis_url)  # fail fast on a malformed --redis-url
    except (ConfigError, RedisUrlError) as exc:
        log.error("%s", exc)
        return 2
    try:
        run_loop(serve_forever(settings))
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    return 0
