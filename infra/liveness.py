"""Which room servers are alive, from their liveness connections — on one Redis or a cluster.

Each room server keeps one connection to Redis named ``sr:SERVER`` (``CLIENT SETNAME``)
and publishes its client id in the registry (``liveness_id``). When the process dies
the kernel closes the socket and Redis drops the client at once, so a peer sees a
killed server in one ``CLIENT LIST ID …`` instead of waiting out its leases.

One Redis (plain or through Sentinel): one ``CLIENT LIST ID …`` answers for everyone.

Redis Cluster: client ids and ``CLIENT LIST`` are per node. So

- a server's liveness connection goes to the primary serving the slot of its own key
  (``room_keys.server_key``): servers spread over the primaries by the hash of their
  ids, and the registry records the node (``liveness_node``) with the id;
- a check asks each node named in the registry (the nodes in parallel): ``ROLE``, then
  ``CLIENT LIST ID …`` of the ids registered there.

A shard's primary failing over takes its liveness connections with it (killed), or
leaves them on a node that is now a replica (``CLUSTER FAILOVER``). The link notices
(the connection fails, or the node answers a command on the server's key with
``MOVED``) and reconnects to the slot's new primary; the server then re-registers its new
id at once. Meanwhile a server registered on a node that is unreachable or no longer a
primary is **unsure**, not dead: it counts as live for ``unsure_s`` (10 s by default);
so is a server missing from a node that could not answer until less than
``recovered_s`` (5 s) ago, or that restarted less than ``recovered_s`` ago (a primary
restarted in place, before it was replaced: every connection to it dropped, and its
servers are reconnecting). A node that lacks a registered server is asked its uptime
(``INFO server``), so a restart is seen even when the node was down and back between
two polls; a check where everyone is present asks nothing more.
A server that really died then is still replaced within its lease time (its leases are
not renewed, and the watcher claims every expired lease), so a failover never makes the
servers of a shard look dead, and never delays a takeover past the lease. A server missing
from a healthy primary is dead at once, as on a single Redis.

A live server's liveness connection sends a command 4 times a second (the heartbeat
loop), so Redis's ``idle`` for it stays 0. A connection idle ``QUIET_IDLE_S`` seconds or
more (``CLIENT LIST`` counts whole seconds) belongs to a server that is frozen, cut off,
or stalled: it is still live (its leases are the truth), but ``LivenessCheck.quiet``
names it, and the failover watcher then reads its rooms' leases every poll, so they are
claimed the moment they expire instead of at the next full scan.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterDownError, MovedError, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError

from infra.redis_url import connect, connect_cluster, is_cluster, is_cluster_url
from infra.room_keys import LIVENESS_PREFIX, liveness_name, server_key

UNSURE_S = 10.0  # longest a server on a troubled node counts as live
# A node that could not answer stays troubled this long after it answers again (restarted
# in place: its clients need a heartbeat or two to reconnect).
RECOVERED_S = 5.0
# Idle seconds of a liveness connection (whole seconds, as Redis reports them) that make
# its server quiet: 2, because a healthy one's last command can be up to 0.25 s old and
# the count can tick to 1 across a second boundary.
QUIET_IDLE_S = 2

__all__ = [
    "QUIET_IDLE_S",
    "RECOVERED_S",
    "UNSURE_S",
    "LivenessCheck",
    "LivenessLink",
    "live_server_ids",
    "liveness_ids",
]

_NODE_KWARGS = ("username", "password", "socket_timeout", "socket_connect_timeout")


def node_client(cluster: RedisCluster, address: str, client_name: str = "") -> aioredis.Redis:
    """A plain client of one cluster node (``host:port``), with the cluster's credentials,
    timeouts and TLS settings; with ``client_name``, one named connection."""
    host, _, port = address.rpartition(":")
    kwargs = cluster.get_connection_kwargs()
    options: dict[str, Any] = {k: kwargs[k] for k in _NODE_KWARGS if k in kwargs}
    options.update({k: v for k, v in kwargs.items() if k.startswith("ssl_")})
    pool = aioredis.ConnectionPool(
        connection_class=kwargs.get("connection_class") or aioredis.Connection,
        host=host.strip("[]"),
        port=int(port),
        max_connections=4,
        client_name=client_name or None,
        **options,
    )
    client = aioredis.Redis(connection_pool=pool, single_connection_client=bool(client_name))
    client.auto_close_connection_pool = True  # its own pool: aclose() closes the socket
    return client


class LivenessLink:
    """A server's liveness connection: ``client_id()``, ``info()``, ``aclose()``, and
    ``node`` (``host:port`` of the cluster node it is on; "" on one Redis)."""

    def __init__(self, url: str, server_id: str, **options: Any) -> None:
        self.name = liveness_name(server_id)
        self.key = server_key(server_id)
        self.node = ""
        self._options = options
        self._topology: RedisCluster | None = None
        self._client: aioredis.Redis | None = None
        if is_cluster_url(url):
            self._topology = connect_cluster(url, max_connections=2, **options)
        else:
            self._client = connect(
                url, single_connection_client=True, client_name=self.name, **options
            )

    async def client_id(self) -> int:
        """The connection's id (connecting or reconnecting first). On a cluster it also
        checks that its node still serves the server's key, and moves if not."""
        if self._topology is None:
            assert self._client is not None
            return int(await self._client.client_id())
        for _attempt in range(3):
            client = await self._connected()
            try:
                with contextlib.suppress(ClusterDownError, TryAgainError):
                    # CLUSTERDOWN: our node restarted and has not rejoined yet; it is
                    # still the right one, and peers look for us there.
                    await client.exists(self.key)
                return int(await client.client_id())
            except MovedError as exc:  # our node is a replica now, or lost the slot
                await self._move(f"{exc.host}:{exc.port}")
                continue
            except (RedisError, OSError):
                await self._move("")  # look the node up again next time
                raise
        raise RedisConnectionError(f"liveness: the slot of {self.key} keeps moving")

    async def info(self, section: str) -> dict[str, Any]:
        """``INFO section`` of the node the connection is on."""
        client = self._client if self._topology is None else await self._connected()
        assert client is not None
        return dict(await client.info(section))

    async def _connected(self) -> aioredis.Redis:
        if self._client is not None:
            return self._client
        assert self._topology is not None
        address = self.node
        if not address:
            await self._topology.initialize()
            node = self._topology.get_node_from_key(self.key)
            if node is None:
                raise RedisConnectionError(f"no cluster node serves {self.key} now")
            address = node.name
        self._client = node_client(self._topology, address, client_name=self.name)
        self.node = address
        return self._client

    async def _move(self, address: str) -> None:
        """Drop the connection; the next one goes to ``address`` ("" = look it up)."""
        client, self._client = self._client, None
        self.node = address
        if self._topology is not None and not address:
            with contextlib.suppress(RedisError, OSError):
                await self._topology.nodes_manager.initialize()
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    async def aclose(self) -> None:
        if self._client is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._client.aclose()
        if self._topology is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._topology.aclose()


def _names(clients: Any, quiet: set[str] | None = None) -> set[str]:
    """The servers of the liveness connections among ``clients``; those idle
    ``QUIET_IDLE_S`` or more are also added to ``quiet``."""
    names: set[str] = set()
    for c in clients:
        name = c.get("name", "")
        if not name.startswith(LIVENESS_PREFIX):
            continue
        server = name[len(LIVENESS_PREFIX) :]
        names.add(server)
        if quiet is not None and _idle(c) >= QUIET_IDLE_S:
            quiet.add(server)
    return names


def _idle(client: Mapping[str, Any]) -> int:
    try:
        return int(client.get("idle", 0))
    except (TypeError, ValueError):
        return 0


def liveness_ids(servers: Mapping[str, Mapping[str, Any]]) -> list[Any]:
    """The registered liveness connection ids (what ``CLIENT LIST ID`` is asked for)."""
    return _ids(servers)


def _ids(servers: Mapping[str, Mapping[str, Any]]) -> list[Any]:
    return [
        str(info["liveness_id"])
        for info in servers.values()
        if isinstance(info.get("liveness_id"), int)
    ]


class LivenessCheck:
    """Who is live, for one process: on a cluster it remembers since when each server
    has been *unsure* (see the module doc)."""

    def __init__(self, unsure_s: float = UNSURE_S, recovered_s: float = RECOVERED_S) -> None:
        self.unsure_s = unsure_s
        self.recovered_s = recovered_s
        self._unsure_since: dict[str, float] = {}
        self._node_back_at: dict[str, float] = {}  # node -> until when it counts as troubled
        self.quiet: set[str] = set()  # live at the last check, connection idle (module doc)

    async def live(
        self, redis: aioredis.Redis, servers: Mapping[str, Mapping[str, Any]] | None = None
    ) -> set[str]:
        """Servers whose liveness connection is open right now (plus, on a cluster, the
        unsure ones still within ``unsure_s``). With the registry at hand only the
        registered connections are listed, so the cost does not grow with every other
        client of Redis."""
        quiet: set[str] = set()
        if not is_cluster(redis):
            ids = _ids(servers or {})
            clients = await (redis.client_list(client_id=ids) if ids else redis.client_list())
            live = _names(clients, quiet)
        else:
            live = await self._live_on_cluster(redis, servers or {}, quiet)  # type: ignore[arg-type]
        self.quiet = quiet
        return live

    def judge(self, clients: Any) -> set[str]:
        """``live`` on one Redis from a ``CLIENT LIST ID …`` answer the caller already has
        (read in the same round trip as the registry): the servers whose liveness
        connection is listed, and ``quiet`` updated."""
        quiet: set[str] = set()
        live = _names(clients, quiet)
        self.quiet = quiet
        return live

    async def _live_on_cluster(
        self, cluster: RedisCluster, servers: Mapping[str, Mapping[str, Any]], quiet: set[str]
    ) -> set[str]:
        # A client that has sent nothing yet knows no node: every node would look troubled.
        await cluster.initialize()
        by_node: dict[str, dict[str, Mapping[str, Any]]] = {}
        for sid, info in servers.items():
            node = info.get("liveness_node")
            by_node.setdefault(node if isinstance(node, str) else "", {})[sid] = info
        answers = await asyncio.gather(
            *(self._ask(cluster, node, group, quiet) for node, group in by_node.items() if node)
        )
        live: set[str] = set()
        troubled: set[str] = set(by_node.get("", {}))  # entries that name no node
        now = time.monotonic()
        named = [(node, group) for node, group in by_node.items() if node]
        for (node, group), (answer, uptime) in zip(named, answers, strict=True):
            if answer is None:
                self._node_back_at[node] = now + self.recovered_s
            elif uptime is not None and uptime < self.recovered_s:  # (re)started just now
                back_at = now - uptime + self.recovered_s
                self._node_back_at[node] = max(self._node_back_at.get(node, 0.0), back_at)
            if answer is None or now < self._node_back_at.get(node, 0.0):
                # Cannot answer, or answers again only since a moment (restarted in place:
                # its clients are reconnecting): a server missing there is unsure.
                troubled.update(sid for sid in group if answer is None or sid not in answer)
            if answer is not None:
                live.update(answer & set(group))
        for sid in servers:
            if sid in live:
                self._unsure_since.pop(sid, None)
            elif sid in troubled:
                since = self._unsure_since.setdefault(sid, now)
                if now - since < self.unsure_s:
                    live.add(sid)
            else:
                self._unsure_since.pop(sid, None)
        for sid in list(self._unsure_since):
            if sid not in servers:
                del self._unsure_since[sid]
        return live

    async def _ask(
        self,
        cluster: RedisCluster,
        node: str,
        group: Mapping[str, Mapping[str, Any]],
        quiet: set[str],
    ) -> tuple[set[str] | None, float | None]:
        """The liveness names on ``node`` among ``group``'s ids (None when the node cannot
        answer for them: unreachable, unknown to the cluster, or not a primary any more),
        and, when one of them is missing there, the node's uptime in seconds (None if not
        asked or not told). Through the cluster client's own connections to that node
        (closed with it)."""
        target = cluster.get_node(node_name=node)
        if target is None:
            return None, None
        ids = _ids(group)
        try:
            role = await cluster.execute_command("ROLE", target_nodes=target)
            if _text(role[0] if role else b"") != "master":
                return None, None
            if not ids:
                return set(), None
            names = _names(await cluster.client_list(client_id=ids, target_nodes=target), quiet)
            if names >= set(group):
                return names, None
            return names, _uptime(await cluster.info("server", target_nodes=target))
        except (RedisError, OSError):
            return None, None


def _uptime(about: Any) -> float | None:
    """``uptime_in_seconds`` of an ``INFO server`` answer (None if it has none)."""
    try:
        return float(about["uptime_in_seconds"])
    except (KeyError, TypeError, ValueError):
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def live_server_ids(
    redis: aioredis.Redis, servers: Mapping[str, Mapping[str, Any]] | None = None
) -> set[str]:
    """A one-off check (the tools): ``LivenessCheck().live`` with no memory, so an unsure
    server counts as live."""
    return await LivenessCheck().live(redis, servers)
