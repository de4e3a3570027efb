"""One way to reach Redis from a URL, for every component: plain, TLS, Sentinel or Cluster.

    redis://[:password@]host:port/db            one server (or a managed endpoint)
    rediss://…                                  the same over TLS
    redis+sentinel://[:password@]h1:p1[,h2:p2…]/service[/db]
                                                the current primary of ``service``,
                                                found through Sentinel and followed
                                                across failovers
    redis+cluster://[[user]:password@]h1:p1[,h2:p2…][/][?option=value&…]
                                                a Redis Cluster (or Valkey cluster): the
                                                seed nodes (any reachable one is enough;
                                                the client learns the rest and follows
                                                slot moves and failovers); options:
                                                ``ssl=true``, ``ssl_ca_certs=PATH``,
                                                ``ssl_cert_reqs=required|optional|none``

The password in a Sentinel URL is the data nodes' password; the sentinels
themselves are assumed open on the internal network. A cluster has no databases:
there is no ``/db`` (a path other than ``/`` is refused).

``connect`` returns ``redis.asyncio.Redis`` for the first three forms and
``redis.asyncio.cluster.RedisCluster`` for the last; the two share the command
methods every component uses, and ``is_cluster`` tells them apart where a command works
differently on a cluster (``CLIENT LIST`` is per node, multi-key commands must stay in
one slot).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from infra.errors import RedisUrlError

# What CLIENT SETINFO reports (redis-py's name and version), looked up once.
_DRIVER_INFO = DriverInfo()

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
CLUSTER_OPTIONS = ("ssl", "ssl_ca_certs", "ssl_cert_reqs")
_CERT_REQS = ("required", "optional", "none")


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    password: str | None


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse ``redis+sentinel://…``; raise RedisUrlError with the expected shape."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise RedisUrlError(f"not a {SENTINEL_SCHEME}:// URL: {redact(url)!r}")
    netloc = parts.netloc
    password = None
    if "@" in netloc:
        credentials, netloc = netloc.rsplit("@", 1)
        password = unquote(credentials.split(":", 1)[-1]) or None
    sentinels = []
    for item in netloc.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise RedisUrlError(
                f"bad sentinel address {item!r} in {redact(url)!r}; expected "
                f"{SENTINEL_SCHEME}://host:port[,host:port…]/service[/db]"
            )
        sentinels.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise RedisUrlError(f"{redact(url)!r} must name the monitored service: …/service[/db]")
    return SentinelTarget(
        tuple(sentinels), path[0], int(path[1]) if len(path) == 2 else 0, password
    )


@dataclass(frozen=True)
class ClusterTarget:
    seeds: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    options: tuple[tuple[str, str], ...] = ()

    def connection_options(self) -> dict[str, Any]:
        """The URL's options as RedisCluster keyword arguments."""
        out: dict[str, Any] = {}
        for name, value in self.options:
            out[name] = value == "true" if name == "ssl" else value
        return out


def _split_hosts(
    netloc: str, url: str, shape: str
) -> tuple[list[tuple[str, int]], str | None, str | None]:
    """``[user:password@]h1:p1,h2:p2`` as ([(host, port)…], username, password)."""
    username = password = None
    if "@" in netloc:
        credentials, netloc = netloc.rsplit("@", 1)
        user, colon, secret = credentials.partition(":")
        if colon:
            username, password = unquote(user) or None, unquote(secret) or None
        else:
            password = unquote(user) or None  # "secret@host": a password alone
    hosts = []
    for item in netloc.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise RedisUrlError(f"bad address {item!r} in {redact(url)!r}; expected {shape}")
        hosts.append((host.strip("[]"), int(port)))
    return hosts, username, password


def parse_cluster_url(url: str) -> ClusterTarget:
    """Parse ``redis+cluster://…``; raise RedisUrlError with the expected shape."""
    shape = f"{CLUSTER_SCHEME}://[:password@]host:port[,host:port…][/?option=value…]"
    parts = urlsplit(url)
    if parts.scheme != CLUSTER_SCHEME:
        raise RedisUrlError(f"not a {CLUSTER_SCHEME}:// URL: {redact(url)!r}")
    if not parts.netloc:
        raise RedisUrlError(f"{redact(url)!r} names no seed node; expected {shape}")
    seeds, username, password = _split_hosts(parts.netloc, url, shape)
    if parts.path not in ("", "/"):
        raise RedisUrlError(
            f"{redact(url)!r}: a Redis Cluster has no databases, so the URL takes no path "
            f"(got {parts.path!r}); expected {shape}"
        )
    options = []
    for pair in filter(None, parts.query.split("&")):
        name, eq, value = pair.partition("=")
        value = unquote(value)
        if name not in CLUSTER_OPTIONS or not eq:
            raise RedisUrlError(
                f"unknown option {name!r} in {redact(url)!r}; a {CLUSTER_SCHEME}:// URL takes "
                + ", ".join(f"{o}=…" for o in CLUSTER_OPTIONS)
            )
        if name == "ssl" and value not in ("true", "false"):
            raise RedisUrlError(f"ssl={value!r} in {redact(url)!r}: use ssl=true or ssl=false")
        if name == "ssl_cert_reqs" and value not in _CERT_REQS:
            raise RedisUrlError(
                f"ssl_cert_reqs={value!r} in {redact(url)!r}: use one of {', '.join(_CERT_REQS)}"
            )
        options.append((name, value))
    return ClusterTarget(tuple(seeds), username, password, tuple(options))


def is_cluster(client: Any) -> bool:
    """Whether ``client`` (from ``connect``) talks to a Redis Cluster."""
    return isinstance(client, RedisCluster)


def is_cluster_url(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEME + "://")


# RedisCluster takes these connection options; the plain pool options it has no use for
# (a cluster has one pool per node, sized by max_connections) are dropped.
_CLUSTER_KWARGS = frozenset(
    {
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "max_connections",
        "health_check_interval",
        "client_name",
        "decode_responses",
        "retry",
        "retry_on_error",
    }
)


class ClusterConnection(aioredis.Connection):
    """A node connection that reports a write to a connection the node closed as a
    ConnectionError. On uvloop that write raises RuntimeError ("the handler is closed"),
    or AttributeError once redis-py dropped the writer, which nobody handles as a
    connection error: after a node restarted in place, each pooled connection to it
    would fail one request with an unexpected error (a login answered 500, a room's tick
    failing) instead of being retried."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except (RuntimeError, AttributeError) as exc:
            if isinstance(exc, AttributeError) and self._writer is not None:
                raise
            await self.disconnect(nowait=True)
            raise RedisConnectionError(
                f"connection to {self.host}:{self.port} was closed by the server ({exc})"
            ) from exc


class ClusterSSLConnection(aioredis.SSLConnection):
    """``ClusterConnection`` over TLS."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except (RuntimeError, AttributeError) as exc:
            if isinstance(exc, AttributeError) and self._writer is not None:
                raise
            await self.disconnect(nowait=True)
            raise RedisConnectionError(
                f"connection to {self.host}:{self.port} was closed by the server ({exc})"
            ) from exc


def connect_cluster(url: str, retries: int = 0, **options: Any) -> RedisCluster:
    """A RedisCluster for a ``redis+cluster://`` URL (see ``connect``)."""
    target = parse_cluster_url(url)
    unknown = set(options) - _CLUSTER_KWARGS - {"single_connection_client"}
    if unknown:
        raise RedisUrlError(f"option(s) {sorted(unknown)} are not supported on a Redis Cluster")
    options.pop("single_connection_client", None)  # per node anyway; see infra.liveness
    options.pop("retry_on_error", None)  # RedisCluster retries connection errors itself
    # A MOVED (a slot served elsewhere after a failover) is always followed. A command
    # that met a connection error or a timeout marks the slot map for a refresh, and is
    # retried ``retries`` times, as in the other forms (0: the caller's next command goes
    # to the refreshed map; only callers whose commands are safe to run twice retry).
    retry = options.pop("retry", None) or Retry(ExponentialBackoff(cap=0.5, base=0.05), retries)
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.seeds],
        username=target.username,
        password=target.password,
        retry=retry,
        # Serve the slots that have a primary while another shard fails over.
        require_full_coverage=False,
        **target.connection_options(),
        **options,
    )
    # RedisCluster picks Connection or SSLConnection itself; its node kwargs are one dict
    # shared with its nodes manager, so every node it learns of later gets ours too.
    safe = (
        ClusterSSLConnection
        if client.connection_kwargs.get("connection_class") is aioredis.SSLConnection
        else ClusterConnection
    )
    client.connection_kwargs["connection_class"] = safe
    for node in client.nodes_manager.startup_nodes.values():
        node.connection_class = safe
    return client


def connect(
    url: str,
    *,
    wait_for_connection: float | None = None,
    retries: int = 0,
    **options: Any,
) -> aioredis.Redis:
    """A redis.asyncio client for ``url``; ``options`` go to every connection.

    ``wait_for_connection`` (seconds) makes a full pool queue callers for up to that long
    instead of failing at once with "Too many connections" (a burst of logins must wait,
    not fail).

    ``retries`` > 0 retries a command that fails with a connection error or a timeout up
    to that many times, reconnecting, with exponential backoff (50 ms doubling, capped
    at 500 ms): a pooled connection that died with a Redis restart is replaced
    transparently instead of failing the first request. Only for callers whose commands
    are safe to run twice (a timeout may hide a command that did run). An explicit
    ``retry=`` option wins. The default (0) keeps redis-py's pool behaviour: no retry.
    """
    if is_cluster_url(url):
        # A cluster's per-node pools make callers wait for a connection anyway.
        return connect_cluster(url, retries, **options)  # type: ignore[return-value]
    if retries > 0 and "retry" not in options:
        options["retry"] = Retry(ExponentialBackoff(cap=0.5, base=0.05), retries)
        options.setdefault("retry_on_error", [RedisConnectionError, RedisTimeoutError])
    # A pool built from a URL makes each new connection look redis-py's version up in
    # its package metadata (~0.5 ms of CPU per connection, 30x the rest of it): a server
    # whose pool grows by a few hundred connections under a crowd of joins paid that on
    # its event loop. One lookup for the process instead.
    options.setdefault("driver_info", _DRIVER_INFO)
    if url.startswith(SENTINEL_SCHEME + "://"):
        target = parse_sentinel_url(url)
        timeouts = {k: v for k, v in options.items() if k.startswith("socket_")}
        sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=timeouts)  # type: ignore[no-untyped-call]
        single = bool(options.pop("single_connection_client", False))
        pool = SentinelConnectionPool(  # type: ignore[no-untyped-call]
            target.service, sentinel, db=target.db, password=target.password, **options
        )
        client = aioredis.Redis(connection_pool=pool, single_connection_client=single)
        client.auto_close_connection_pool = True  # aclose() also closes the pool
        return client
    try:
        if wait_for_connection is not None:
            blocking = aioredis.BlockingConnectionPool.from_url(
                url, timeout=wait_for_connection, **options
            )
            return aioredis.Redis.from_pool(blocking)
        return aioredis.Redis.from_url(url, **options)
    except ValueError as exc:
        raise RedisUrlError(f"bad Redis URL {redact(url)!r}: {exc}") from None


def validate(url: str) -> None:
    """Raise RedisUrlError if ``url`` is not a Redis URL we can connect to."""
    if url.startswith(SENTINEL_SCHEME + "://"):
        parse_sentinel_url(url)
        return
    if is_cluster_url(url):
        parse_cluster_url(url)
        return
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise RedisUrlError(
            f"bad Redis URL {redact(url)!r}: use redis://, rediss://, unix://, "
            f"{SENTINEL_SCHEME}:// or {CLUSTER_SCHEME}://"
        )


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``: the only form of a Redis URL that
    may be logged, printed or written to a world-readable file."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    credentials, _, hosts = parts.netloc.rpartition("@")
    user = credentials.split(":", 1)[0] if ":" in credentials else ""
    masked = f"{user}:***@{hosts}" if user or ":" in credentials else f"***@{hosts}"
    return parts._replace(netloc=masked).geturl()
