"""Typed room-server settings: each has a flag, a STATEROOM_* variable and a default.

The table in docs/operations.md is generated from ``SETTINGS_HELP`` by hand;
keep them in step.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
from dataclasses import dataclass, field, fields
from typing import Any

from server.durability import LEVELS as DURABILITY_LEVELS
from server.errors import ConfigError
from server.transport import TRANSPORTS

# The most implied ticks allowed: a takeover runs the world on by up to this many ticks
# at once (a second at 20 Hz).
MAX_IMPLIED_TICKS = 20


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8001
    # URL clients are redirected to; default ws://HOST:PORT/v1/ws.
    public_url: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Base URL of the login service; the JWKS is read from AUTH_URL/.well-known/jwks.json.
    auth_url: str = "http://127.0.0.1:8000"
    issuer: str = "stateroom"
    audience: str = "stateroom"
    # Display name of this server; the runtime id adds a random suffix per process.
    name: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    # Extra games, as module:Class references.
    games: tuple[str, ...] = ()
    # Ownership lease; an owner that could not renew for lease_ms - lease_margin_ms stops.
    lease_ms: int = 3000
    lease_margin_ms: int = 1000
    # How often peers look for dead owners and expired leases.
    failover_poll_ms: int = 50
    # Our own liveness connection must be this old before we judge peers dead: after a Redis
    # restart every server needs a moment to reconnect. A peer is dead when its connection is
    # missing from two reads in a row (a poll's, and a second one made at once).
    liveness_grace_ms: int = 1500
    # Journal every tick before publishing it (off only for measuring durability's cost).
    durable: bool = True
    # How far a tick must reach before it is published (server/durability.py): "local" (the
    # primary acknowledged it) or "replica" (a replica has it too: WAIT 1 after the append).
    durability: str = "local"
    # Under "replica": how long one attempt waits for a replica's acknowledgement (below
    # the 1 s socket timeout of the room server's Redis connections).
    replica_wait_ms: int = 500
    checkpoint_every_s: float = 1.0
    # Slots of a tick period the rooms are spread over (server/ticker.py). 1: every room
    # ticks at the same instant, all journal appends in one pipeline (the fastest mass
    # failover measured). 4: a 200-room server's tick is four small bursts instead of one,
    # which cut p99 input latency at 600-800 players in rooms of 4 (docs/operations.md).
    tick_phases: int = 1
    # Ticks with no event (no input, join or leave, no game event) published after a
    # journaled one without an entry of their own: the game is deterministic, so the
    # entry before them implies them, and a successor replays them (docs/operations.md,
    # "Implied ticks"). 0: every tick is journaled. A quiet room then writes every
    # ``implied_ticks + 1`` ticks, not every tick; a takeover's world runs on at most
    # this many ticks at once.
    implied_ticks: int = 4
    # Seconds a disconnected player who has played (sent an input) keeps its seat.
    grace_s: float = 30.0
    # Seconds a disconnected player who never sent an input keeps its seat.
    unplayed_grace_s: float = 2.0
    # Seconds a room with no seats lives before it closes (a room nobody played in: none).
    empty_room_s: float = 60.0
    join_timeout_s: float = 5.0
    # WebSocket library of the player port (docs/transport.md): picows (compiled, the
    # hot path at a fraction of the CPU) or websockets (the reference).
    transport: str = "picows"
    max_message_bytes: int = 16 * 1024
    # Per-client outbox bound (bytes waiting to be written); over it the client is closed 4009.
    outbox_bytes: int = 256 * 1024
    # Kernel send buffer per client socket (0: OS autotuning). Bounded so that a client that
    # stops reading shows up in the outbox within seconds instead of after megabytes.
    socket_sndbuf: int = 64 * 1024
    # Per-connection message rate (token bucket): sustained rate and burst.
    input_rate: float = 60.0
    input_burst: float = 60.0
    # Seconds past a token's exp before its session is closed (clock skew allowance).
    token_leeway_s: float = 30.0
    # How often open sessions are checked against logout (revocation) records.
    revocation_check_s: float = 5.0
    # Quotas (cluster-wide, in Redis): see server/quotas.py and docs/security.md.
    rooms_per_player: int = 3
    rooms_per_minute: int = 10
    rooms_per_address_per_minute: int = 60
    sessions_per_player: int = 4
    # Rooms this process may run; new rooms go to servers below it (takeovers still land).
    max_rooms: int = 1000
    # Event-loop lateness over which this process sheds new work (server/overload.py): it
    # refuses claims and new rooms ("unavailable") and keeps the rooms it has. 0: never.
    overload_lag_ms: int = 250
    # Connection budgets of this process (IPv6 addresses counted by /64).
    connections_per_address: int = 256
    pending_per_address: int = 16
    max_connections: int = 10_000
    max_pending_connections: int = 1_000
    # Messages and bytes per second per player, across its connections to this process.
    player_message_rate: float = 120.0
    player_byte_rate: float = 32 * 1024
    # Allowed Origin headers for browsers (empty: any).
    origins: tuple[str, ...] = ()
    ping_interval_s: float = 10.0
    ping_timeout_s: float = 10.0
    open_timeout_s: float = 5.0
    heartbeat_s: float = 1.0
    # Admin HTTP listener (/status, /metrics, /healthz, /readyz); 0: none. Keep it off the
    # player network: the player port serves only WebSocket and the health probes.
    admin_host: str = "127.0.0.1"
    admin_port: int = 0

    @property
    def ws_url(self) -> str:
        return self.public_url or f"ws://{self.host}:{self.port}/v1/ws"

    @property
    def jwks_url(self) -> str:
        return self.auth_url.rstrip("/") + "/.well-known/jwks.json"

    def new_server_id(self) -> str:
        return f"{self.name}-{secrets.token_hex(3)}"


SETTINGS_HELP: dict[str, str] = {
    "host": "interface to listen on",
    "port": "TCP port for players: WebSocket, plus the /healthz and /readyz probes",
    "public_url": "WebSocket URL peers redirect clients to (default ws://HOST:PORT/v1/ws)",
    "redis_url": "Redis URL (redis://, rediss://)",
    "auth_url": "base URL of the login service (for its JWKS)",
    "issuer": "required token issuer",
    "audience": "required token audience",
    "name": "server name shown in status (a random suffix is added per process)",
    "games": "extra games as module:Class (repeatable)",
    "lease_ms": "room ownership lease",
    "lease_margin_ms": "stop serving this long before an unrenewed lease would expire",
    "failover_poll_ms": "how often to look for dead owners and expired leases",
    "liveness_grace_ms": "age our own Redis liveness connection must reach before we judge peers"
    " dead (covers Redis restarts)",
    "durable": "journal each tick before publishing it",
    "durability": "how far a tick must reach before it is published: local (the Redis"
    " primary) or replica (a replica too, so a primary failover loses nothing acknowledged)",
    "replica_wait_ms": "under replica durability, how long one write waits for a replica's"
    " acknowledgement before it is retried (1-900)",
    "checkpoint_every_s": "seconds between checkpoints of a room",
    "tick_phases": "slots of the tick period the rooms are spread over (1-16; 1: all at once)",
    "implied_ticks": "eventless ticks published after a journaled one without their own"
    " journal entry (0-20; 0: journal every tick)",
    "grace_s": "seconds a disconnected player who has played keeps its seat",
    "unplayed_grace_s": "seconds a disconnected player who never sent an input keeps its seat",
    "empty_room_s": "seconds an empty room lives before closing (0 if nobody ever played in it)",
    "join_timeout_s": "seconds a new connection has to send join",
    "transport": "WebSocket transport of the player port: picows (compiled) or websockets"
    " (the reference); see docs/transport.md",
    "max_message_bytes": "largest accepted WebSocket message",
    "outbox_bytes": "bytes queued for one client before it is closed as a slow consumer",
    "socket_sndbuf": "kernel send buffer per client socket in bytes (0 lets the OS autotune)",
    "input_rate": "messages per second per connection (sustained)",
    "input_burst": "messages per connection allowed in a burst",
    "token_leeway_s": "seconds past a token's expiry before it is refused or its session ends",
    "revocation_check_s": "seconds between checks of open sessions against logouts",
    "rooms_per_player": "live rooms one player may have created at a time",
    "rooms_per_minute": "rooms one player may create per minute",
    "rooms_per_address_per_minute": "rooms one client address (IPv6: /64) may create per minute",
    "sessions_per_player": "rooms one player may be connected to at a time",
    "max_rooms": "rooms this server runs at most (new rooms are placed elsewhere beyond it)",
    "overload_lag_ms": "event-loop lateness in ms over which this server sheds new work: joins"
    " that would claim or create a room get 'unavailable', its watcher claims nothing, and"
    " its rooms wait for their journal answers instead of stopping at the lease margin (0: never)",
    "connections_per_address": "open connections per client address (IPv6: /64)",
    "pending_per_address": "connections per client address that have not joined yet",
    "max_connections": "open connections of this server in total",
    "max_pending_connections": "connections of this server that have not joined yet",
    "player_message_rate": "messages per second per player across its connections",
    "player_byte_rate": "bytes per second per player across its connections",
    "origins": "allowed Origin values (repeatable; empty allows any; a client sending no"
    " Origin is always allowed)",
    "ping_interval_s": "WebSocket ping interval",
    "ping_timeout_s": "close a connection whose pong is this late",
    "open_timeout_s": "WebSocket opening handshake timeout",
    "heartbeat_s": "seconds between server registry heartbeats",
    "admin_host": "interface of the admin HTTP listener (/status, /metrics)",
    "admin_port": "TCP port of the admin HTTP listener (0: no admin listener)",
}


# Extra spellings of some flags (``--redis`` as in ``stateroom auth`` and the issue texts).
_ALIASES: dict[str, tuple[str, ...]] = {"redis_url": ("--redis",), "games": ("--game",)}


def _env_name(name: str) -> str:
    return "STATEROOM_" + name.upper()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; defaults come from the environment, then the dataclass."""
    defaults = ServerSettings()
    for f in fields(ServerSettings):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = f"{SETTINGS_HELP[f.name]} (env {_env_name(f.name)}; default {default!r})"
        names = [flag, *_ALIASES.get(f.name, ())]
        if isinstance(default, bool):
            parser.add_argument(
                *names,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        elif isinstance(default, tuple):
            parser.add_argument(*names, dest=f.name, action="append", default=None, help=help_text)
        else:
            parser.add_argument(*names, dest=f.name, default=None, help=help_text)


def _convert(name: str, raw: Any, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if isinstance(raw, bool):
                return raw
            return str(raw).lower() in {"1", "true", "yes", "on"}
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            if isinstance(raw, str):
                return tuple(x for x in raw.split(",") if x)
            return tuple(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"invalid value {raw!r} for --{name.replace('_', '-')}") from None


def from_args(args: argparse.Namespace) -> ServerSettings:
    """Flags win over STATEROOM_* variables, which win over defaults."""
    defaults = ServerSettings()
    values: dict[str, Any] = {}
    for f in fields(ServerSettings):
        raw = getattr(args, f.name, None)
        if raw is None:
            raw = os.environ.get(_env_name(f.name))
        if raw is not None:
            values[f.name] = _convert(f.name, raw, getattr(defaults, f.name))
    settings = ServerSettings(**values)
    validate(settings)
    return settings


def validate(settings: ServerSettings) -> None:
    if settings.lease_margin_ms >= settings.lease_ms:
        raise ConfigError("--lease-margin-ms must be smaller than --lease-ms")
    if settings.outbox_bytes < 1024:
        raise ConfigError("--outbox-bytes must be at least 1024")
    if settings.input_rate <= 0 or settings.input_burst < 1:
        raise ConfigError("--input-rate must be > 0 and --input-burst >= 1")
    if not 0 < settings.port < 65536:
        raise ConfigError("--port must be in 1-65535")
    for name in (
        "rooms_per_player",
        "rooms_per_minute",
        "rooms_per_address_per_minute",
        "sessions_per_player",
        "max_rooms",
        "connections_per_address",
        "pending_per_address",
        "max_connections",
        "max_pending_connections",
    ):
        if getattr(settings, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if settings.overload_lag_ms < 0:
        raise ConfigError("--overload-lag-ms must be >= 0 (0: never shed load)")
    if settings.token_leeway_s < 0 or settings.revocation_check_s <= 0:
        raise ConfigError("--token-leeway-s must be >= 0 and --revocation-check-s > 0")
    if settings.player_message_rate <= 0 or settings.player_byte_rate < 1024:
        raise ConfigError("--player-message-rate must be > 0 and --player-byte-rate >= 1024")
    if not 1 <= settings.tick_phases <= 16:
        raise ConfigError("--tick-phases must be in 1-16")
    if not 0 <= settings.implied_ticks <= MAX_IMPLIED_TICKS:
        raise ConfigError(f"--implied-ticks must be in 0-{MAX_IMPLIED_TICKS}")
    if settings.transport not in TRANSPORTS:
        raise ConfigError(f"--transport must be one of: {', '.join(TRANSPORTS)}")
    if settings.durability not in DURABILITY_LEVELS:
        raise ConfigError(
            f"--durability must be one of: {', '.join(DURABILITY_LEVELS)}"
            f" (got {settings.durability!r})"
        )
    if not 1 <= settings.replica_wait_ms <= 900:
        raise ConfigError(
            "--replica-wait-ms must be in 1-900 (below the 1 s socket timeout to Redis)"
        )
    if not 0 <= settings.admin_port < 65536:
        raise ConfigError("--admin-port must be in 0-65535 (0: no admin listener)")
