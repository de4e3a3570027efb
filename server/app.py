"""One room-server process: the parts its components share, and the rooms it runs.

``RoomServer`` builds what the endpoint, placement and the watcher use (Redis
clients, the store, quotas, budgets, the token verifier), keeps this server's
registry entry and liveness connection up, and claims and rebuilds rooms. The
WebSocket endpoint (``server.endpoint``), placement (``server.placement``), the
failover watcher (``server.watcher``) and the admin listener (``server.admin``)
are their own modules, each given the ``RoomServer`` it belongs to.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import heapq
import logging
import os
import signal
import time
from collections.abc import Coroutine
from typing import Any

from redis.exceptions import RedisError

from auth.verify import TokenVerifier
from infra.errors import RedisUrlError
from infra.eventloop import run_loop, tune_gc_for_serving
from infra.liveness import LivenessLink, liveness_ids
from infra.redis_health import check_redis_memory
from infra.redis_url import connect as connect_redis
from infra.redis_url import is_cluster, redact
from infra.redis_url import validate as parse_redis_url
from server import settings as settings_module
from server.admin import AdminEndpoint
from server.budgets import ConnectionBudget, ConnectionLimits, PlayerBudget, PlayerLimits
from server.durability import Durability
from server.endpoint import MAX_REAUTH_BYTES, Endpoint, select_subprotocol
from server.engine import RoomEngine
from server.errors import ConfigError
from server.game import Game
from server.games import available_games
from server.listing import RoomListing, games_info
from server.metrics import ServerMetrics
from server.placement import Placement
from server.protocol import SUBPROTOCOLS, CloseCode
from server.quotas import QuotaLimits, Quotas
from server.redis_errors import REDIS_DOWN
from server.room import Room, RoomState
from server.settings import ServerSettings
from server.store import Lease, RoomStore, room_record
from server.succession import successor
from server.takeover import TakeoverTimeline
from server.transport import Listener, TransportOptions, listen
from server.watcher import FailoverWatcher

log = logging.getLogger("stateroom.server")

# Connections of the room server's main Redis pool, and how many are opened at start.
POOL_SIZE = 256
POOL_WARM = 64

# Rooms listed in the registry's room_stats (the busiest first): the entry is rewritten
# every heartbeat and read by every peer's watcher, so it stays ~20 KB at 1000 rooms.
ROOM_STATS_CAP = 200


def busiest_rooms(rooms: dict[str, Room], cap: int = ROOM_STATS_CAP) -> list[Room]:
    """The ``cap`` rooms with the most connected players (then by name): the ones the
    registry's ``room_stats`` lists, so a heartbeat samples and describes only those
    (1,000 idle rooms: 200 ``stats()``, not 1,000). Rooms with nobody connected are
    ranked by name alone (plain string comparisons: 0.35 ms for 1,000 rooms, not 1.1)."""
    if len(rooms) <= cap:
        return list(rooms.values())
    busy = [room for room in rooms.values() if room.sessions]
    if len(busy) >= cap:
        return heapq.nsmallest(cap, busy, key=lambda r: (-len(r.sessions), r.name))
    busy.sort(key=lambda r: (-len(r.sessions), r.name))
    idle = heapq.nsmallest(cap - len(busy), [n for n, r in rooms.items() if not r.sessions])
    return busy + [rooms[name] for name in idle]


def capped_room_stats(
    stats: dict[str, dict[str, Any]], cap: int = ROOM_STATS_CAP
) -> dict[str, dict[str, Any]]:
    """The ``cap`` rooms with the most players (then by name) of ``stats``."""
    if len(stats) <= cap:
        return stats
    ranked = sorted(stats.items(), key=lambda item: (-int(item[1]["players"]), item[0]))
    return dict(ranked[:cap])


class RoomServer:
    """One process: the parts its components share, its registry entry, and its rooms."""

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
            # Bounded, warmed at start (``_warm_pool``), and waited for: a crowd joining at
            # once (a whole server's players reconnecting after a failover) queues for a
            # connection for a few ms instead of failing with "Too many connections"
            # (1000 joins on one server failed ~1200 token checks) or opening hundreds of
            # new ones on the event loop (a connection costs ~1 ms of CPU to set up).
            max_connections=POOL_SIZE,
            wait_for_connection=1.0,
            health_check_interval=0,
        )
        # One named connection (on a cluster: to the primary of this server's own slot).
        self.liveness = LivenessLink(
            settings.redis_url, self.server_id, socket_timeout=1.0, socket_connect_timeout=1.0
        )
        # The ticks' journal appends on connections of their own (server/store.py).
        self.journal_redis = connect_redis(
            settings.redis_url,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            max_connections=8,
            health_check_interval=0,
        )
        self.store = RoomStore(
            self.redis,
            lease_ms=settings.lease_ms,
            durability=Durability(settings.durability, settings.replica_wait_ms),
            journal=self.journal_redis,
        )
        self.quotas = Quotas(
            self.redis,
            QuotaLimits(
                rooms_per_player=settings.rooms_per_player,
                rooms_per_minute=settings.rooms_per_minute,
                rooms_per_address_per_minute=settings.rooms_per_address_per_minute,
                sessions_per_player=settings.sessions_per_player,
            ),
            scripts=self.store.scripts,
            pipe=self.store.scripts.pipe,
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
        self._live_refresh: asyncio.Future[dict[str, dict[str, Any]]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ws_server: Listener | None = None
        self.admin = AdminEndpoint(self.status, self.metrics.render, self.ready)
        self.verifier = TokenVerifier(
            settings.jwks_url,
            issuer=settings.issuer,
            audience=settings.audience,
            leeway=settings.token_leeway_s,
        )
        self.endpoint = Endpoint(self)
        self.placement = Placement(self)
        self.watcher = FailoverWatcher(self)
        self.listing = RoomListing(self)

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
        await self._warm_pool()
        await self._heartbeat_once()
        options = self._options()
        self._ws_server = await listen(self.settings.transport, self.endpoint.handle, options)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._heartbeat_loop(), name="heartbeat"),
            loop.create_task(self.watcher.run(), name="failover-watch"),
            loop.create_task(self.verifier.warm(), name="jwks-warm"),
            loop.create_task(self.endpoint.quota_refresh_loop(), name="quota-refresh"),
            loop.create_task(self.endpoint.revocation_loop(), name="revocations"),
            loop.create_task(self.listing.run(), name="directory"),
        ]
        log.info(
            "server %s listening on %s (%s transport, pid %d, redis %s)",
            self.server_id,
            self.settings.ws_url,
            self.settings.transport,
            os.getpid(),
            redact(self.settings.redis_url),
        )

    def _options(self) -> TransportOptions:
        """The player port's transport: what every connection may do before it joins,
        and the largest frame a seated player's game lets it send."""
        settings = self.settings
        largest_input = max((g.max_input_bytes for g in self.games.values()), default=0)
        return TransportOptions(
            host=settings.host,
            port=settings.port,
            subprotocols=SUBPROTOCOLS,
            select_subprotocol=select_subprotocol,
            process_request=self.endpoint.process_request,
            # A browser always sends Origin, so the allow-list stops cross-site pages; a
            # native client sends none and is authenticated by its token like any other.
            origins=settings.origins,
            max_message_bytes=settings.max_message_bytes,
            max_frame_bytes=max(settings.max_message_bytes, largest_input, MAX_REAUTH_BYTES),
            outbox_bytes=settings.outbox_bytes,
            overflow_code=CloseCode.SLOW_CONSUMER,
            ping_interval_s=settings.ping_interval_s,
            ping_timeout_s=settings.ping_timeout_s,
            open_timeout_s=settings.open_timeout_s,
            close_timeout_s=2.0,
            socket_sndbuf=settings.socket_sndbuf,
            server_header="stateroom",
            max_queue=64,
        )

    async def stop(self) -> None:
        """Graceful handover: stop accepting, leave the registry, drain every room."""
        log.info("server %s draining %d rooms", self.server_id, len(self.rooms))
        if self._ws_server is not None:
            self._ws_server.stop_accepting()
        for task in self._tasks:
            task.cancel()
        successors: list[tuple[str, str]] = []
        with contextlib.suppress(*REDIS_DOWN, RedisError):
            await self.store.unregister_server(self.server_id)
            successors = await self.placement.successors()
        rooms = list(self.rooms.values())
        await asyncio.gather(
            *(
                room.drain(successors[i % len(successors)] if successors else None)
                for i, room in enumerate(rooms)
            )
        )
        if self._ws_server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3):
                    await self._ws_server.close()
        await self.verifier.aclose()
        with contextlib.suppress(Exception):
            await self.admin.stop()
        with contextlib.suppress(Exception):
            await self.liveness.aclose()
        with contextlib.suppress(Exception):
            await self.redis.aclose()
        with contextlib.suppress(Exception):
            await self.journal_redis.aclose()
        log.info("server %s stopped", self.server_id)

    # -- registry, liveness ------------------------------------------------------------

    def info(self, listed: list[Room] | None = None) -> dict[str, Any]:
        """This server's registry entry; ``listed``: the rooms of its ``room_stats``
        (``busiest_rooms``, when the caller has them already)."""
        if listed is None:
            listed = busiest_rooms(self.rooms)
        return {
            "id": self.server_id,
            "name": self.settings.name,
            "ws_url": self.settings.ws_url,
            "admin_url": self.admin.url,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "heartbeat_at": time.time(),
            "liveness_id": self.liveness_id,
            "liveness_node": self.liveness.node,  # the cluster node it is on ("" if one Redis)
            "rooms": len(self.rooms),
            "players": sum(len(r.sessions) for r in self.rooms.values()),
            "room_players": {name: len(r.sessions) for name, r in self.rooms.items()},
            "room_stats": capped_room_stats({r.name: r.stats() for r in listed}),
            "games": games_info(self.games),
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
            listed = busiest_rooms(self.rooms)
            for room in listed:  # the rooms whose stats are listed
                room.sample_stats()
            await self.store.register_server(self.server_id, self.info(listed))
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
            except (*REDIS_DOWN, RedisError) as exc:
                if self.redis_ok:  # once per outage, not every retry
                    log.warning("heartbeat failed: %s", exc)
                self.redis_ok = False
            self.metrics.fold()
            await asyncio.sleep(min(self.settings.heartbeat_s, 0.25))

    def settled(self) -> bool:
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

    async def _warm_pool(self) -> None:
        """Open the pool's connections now, off the players' path (one Redis: a cluster
        opens one pool per node as it goes)."""
        if is_cluster(self.redis):
            return
        with contextlib.suppress(RedisError, OSError):
            await asyncio.gather(*(self.redis.ping() for _ in range(POOL_WARM)))

    async def refresh_live(self) -> dict[str, dict[str, Any]]:
        """Read the server registry and which of its servers are alive; returns the registry.
        On one Redis both in one round trip: ``CLIENT LIST`` asks for the liveness ids of
        the last registry read, and is asked again only if the new read changed them."""
        asked = liveness_ids(self.registry)
        servers, clients = await self.store.servers_and_clients(asked)
        if clients is not None and set(liveness_ids(servers)) == set(asked):
            self.live = self.store.liveness.judge(clients)
        else:
            self.live = await self.store.live_server_ids(servers)
        self.live_at = time.monotonic()
        self.registry = servers
        return servers

    async def is_live(self, server_id: str, max_age_s: float | None = None) -> bool:
        """Whether ``server_id`` is live, as seen at most ``max_age_s`` ago (default: two
        watcher polls); an older view is read again first."""
        if max_age_s is None:
            max_age_s = 2 * self.settings.failover_poll_ms / 1000
        if time.monotonic() - self.live_at > max_age_s:
            # One refresh for every join that needs it at the same moment (a whole dead
            # server's players arrive at once), not one registry read and CLIENT LIST each.
            refresh = self._live_refresh
            if refresh is None or refresh.done():
                refresh = self._live_refresh = asyncio.ensure_future(self.refresh_live())
                refresh.add_done_callback(lambda done: done.cancelled() or done.exception())
            await asyncio.shield(refresh)
        return server_id in self.live

    def fallback_url(self, room: str) -> str:
        """The URL of the live peer whose watcher would claim ``room`` if this server died
        (server/succession.py, from this server's last view of who is live), or "".
        Sent in the welcome, so that a client whose connection drops goes straight to
        the server that takes its room over instead of to a random one (and a redirect)."""
        heir = successor(room, self.live - {self.server_id})
        return str(self.registry.get(heir, {}).get("ws_url", "")) if heir else ""

    # -- rooms ------------------------------------------------------------------------------

    async def take_room(
        self,
        name: str,
        game: str,
        replacing: Lease | None,
        *,
        for_client: bool = True,
        creator: str = "",
        options: dict[str, Any] | None = None,
        join_code: str = "",
        detected_ms: int = 0,
    ) -> Room | None:
        """Claim a room and rebuild it from Redis; None if someone else holds it.

        ``for_client=False`` (the watcher): only an existing room is taken over, and one
        that has no seats left is deleted instead of run (an empty room from before a
        restart is not resurrected). ``detected_ms``: Redis's clock when the caller
        decided to take the room (the takeover record's ``detected_ms``)."""
        pending = self.claiming.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        existing = self.rooms.get(name)
        if existing is not None and existing.state is RoomState.RUNNING:
            return existing
        if not for_client and self.placement.shedding():
            # Overloaded: leave the takeover to a peer (the watcher's fallback claims it
            # a few polls later) rather than make this loop later still.
            self.metrics.shed.labels("claim").inc()
            return None
        future: asyncio.Future[Room | None] = asyncio.get_running_loop().create_future()
        self.claiming[name] = future
        try:
            room = await self._claim_and_restore(
                name, game, replacing, for_client, creator, options, join_code, detected_ms
            )
            future.set_result(room)
            return room
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved for waiters that never come
            raise
        finally:
            del self.claiming[name]

    async def _claim_and_restore(
        self,
        name: str,
        game: str,
        replacing: Lease | None,
        for_client: bool,
        creator: str,
        options: dict[str, Any] | None,
        join_code: str,
        detected_ms: int,
    ) -> Room | None:
        started = time.perf_counter()
        claim_sent = time.monotonic()  # the lease runs from the claim, not the rebuild
        claim = await self.store.claim(
            name,
            self.server_id,
            self.settings.ws_url,
            game,
            replacing,
            must_exist=not for_client,
            creator=creator,
            options=options,
            join_code=join_code,
            detected_ms=detected_ms,
            index_later=True,
            with_record=True,
            # The claim tick (RoomEngine.catch_up), not under ``replica`` durability:
            # a tick it covers is published with no write of its own to confirm.
            implied=0 if self.store.durability.replicated else self.settings.implied_ticks,
        )
        if not claim.won:
            return None
        indexed, raw_record = claim.indexed, claim.raw_record
        assert indexed is not None and raw_record is not None
        game_class = self.games.get(claim.game)
        if game_class is None:
            await asyncio.gather(indexed, return_exceptions=True)
            await self.store.release(claim.lease)
            raise ConfigError(f"room {name} runs game {claim.game!r}, which this server lacks")
        # The room's record came with the claim (one round trip). The index write is
        # awaited for a new room (its peers find it only through the index); a room
        # taken over is listed already (under its old owner, which makes it a suspect
        # that the watchers look at), so its rebuild does not wait for the write.
        if claim.takeover:
            self.background(indexed)
            indexed = None
        try:
            record = room_record(*raw_record)
            checkpoint, entries, meta = record.checkpoint, record.entries, record.meta
            room_options, recent_events = record.options, record.events
            if indexed is not None:
                await indexed
            implied = 0  # the eventless ticks published after the state replay starts from
            if checkpoint is not None:
                engine = RoomEngine.restore(game_class, checkpoint.snapshot, options=room_options)
                implied = int(checkpoint.snapshot.get("implied", 0))
            else:
                # A room built from its seed (new, or never checkpointed): setup is part
                # of its first state, so a rebuild calls it again, the same way.
                game_instance = game_class.create(int(meta.get("seed", "0")))
                game_instance.setup(room_options)
                engine = RoomEngine(game_instance, options=room_options)
            last = entries[-1] if entries else None
            own_claim = last if last and last.claimed and last.epoch == claim.lease.epoch else None
            caught_up = engine.catch_up(
                ((entry.tick, entry.events, entry.implied) for entry in entries),
                implied,
                claims={entry.tick for entry in entries if entry.claimed},
                own_claim=own_claim.tick if own_claim else None,
            )
        except REDIS_DOWN as exc:
            # Redis went away between the claim and the reads (an outage): not a broken
            # room. Give the lease back; the watcher or the next join retries.
            log.warning("room=%s: Redis did not answer the rebuild reads (%s)", name, exc)
            with contextlib.suppress(Exception):
                await self.store.release(claim.lease)
            raise
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
        room.join_code = meta.get("code", "")
        room.fallback_url = functools.partial(self.fallback_url, name)
        room.event_log.load(recent_events)
        room.caught_up = caught_up
        room.lease_renewed_at = claim_sent
        if own_claim is not None:
            room.claimed(own_claim.tick, own_claim.implied)
        if claim.takeover:
            seated = [pid for pid, seat in engine.seats.items() if not seat.leaving]
            room.timeline = TakeoverTimeline(self.store, claim.lease, seated)
            room.timeline.restored()
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
        if room.deleted:
            self.listing.closed(room)
        if room.deleted and room.creator:
            self.background(self.quotas.release_room(room.creator, room.name))

    def background(self, coro: Any) -> None:
        """Run a best-effort Redis call off the caller's path (errors are logged)."""

        async def run() -> None:
            try:
                await coro
            except (*REDIS_DOWN, RedisError) as exc:
                log.debug("background Redis call failed: %s", exc)

        self.spawn(run())

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task of this server (cancelled by ``stop``)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    def ready(self) -> bool:
        return self.redis_ok and self._ws_server is not None

    def status(self) -> dict[str, Any]:
        return {**self.info(), "room_list": [r.status() for r in self.rooms.values()]}


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
    from infra.logs import configure_logging as configure

    configure("server")  # STATEROOM_LOG_FORMAT / STATEROOM_LOG_LEVEL (infra.logs)


def run(args: argparse.Namespace) -> int:
    configure_logging()
    try:
        settings = settings_module.from_args(args)
        available_games(list(settings.games))  # fail fast on a bad --games reference
        parse_redis_url(settings.redis_url)  # fail fast on a malformed --redis-url
    except (ConfigError, RedisUrlError) as exc:
        log.error("%s", exc)
        return 2
    tune_gc_for_serving()
    try:
        run_loop(serve_forever(settings))
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    return 0
