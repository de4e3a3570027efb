"""A real local Redis Cluster (Valkey 8, ``cluster-enabled yes``) from the embedded binary:
N primaries with R replicas each, on free ports, with a password.

For tests and for trying ``--redis redis+cluster://…`` on one machine: every node is an
``EmbeddedRedis`` (same password handling, 0600 config, AOF, ``PR_SET_PDEATHSIG``) with
the cluster settings below added, and the cluster is formed from Python with the
commands ``valkey-cli --cluster create`` sends (``ADDSLOTSRANGE``, ``SET-CONFIG-EPOCH``,
``MEET``, ``REPLICATE``), without its fixed sleeps, so 3 + 3 nodes are up and
``cluster_state:ok`` in well under a second. Nodes are stopped by PID.

Settings a room server wants from a cluster (also what docs/operations.md recommends):

- ``cluster-require-full-coverage no``: while one shard has no primary (between its
  primary's death and a replica's promotion) the other shards keep serving; with the
  default ``yes`` every room of every shard would stall for that time;
- ``cluster-node-timeout`` small (``node_timeout_ms``, 1000 here): a dead primary is
  replaced by its replica about two timeouts after it died;
- ``cluster-replica-validity-factor 0``: a replica may always take over (it has every
  write acknowledged under ``replica`` durability, and the most recent one anyway).

The cluster is named once, when every node starts from an empty data dir: a later
``start`` on the same dir reuses each node's ``nodes.conf`` (same ids, slots, roles).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import redis

from infra.embedded_redis import EmbeddedRedis, config_string, private_dir, stored_password
from infra.errors import EmbeddedRedisError
from infra.ports import free_port

SLOTS = 16384
CLUSTER_SCHEME = "redis+cluster"


@dataclass
class ClusterNode:
    """One node: its server, the bus port, and the node id once known."""

    server: EmbeddedRedis
    bus_port: int
    node_id: str = ""

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> str:
        return f"{self.server.host}:{self.server.port}"

    @property
    def pid(self) -> int | None:
        return self.server.pid

    @property
    def running(self) -> bool:
        proc = self.server.process
        return proc is not None and proc.poll() is None

    def client(self, timeout: float = 1.0) -> redis.Redis:
        """A plain (non-cluster) client of this node alone."""
        return redis.Redis(
            host=self.server.host,
            port=self.server.port,
            password=self.server.password or None,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
        )


def slot_ranges(primaries: int) -> list[tuple[int, int]]:
    """The 16384 slots in ``primaries`` contiguous ranges, as even as they can be."""
    if primaries < 1:
        raise EmbeddedRedisError("a cluster needs at least one primary")
    bounds = [SLOTS * i // primaries for i in range(primaries + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(primaries)]


class EmbeddedCluster:
    """``primaries`` primaries and ``replicas`` replicas of each, under ``data_dir``.

    ``password`` as for ``EmbeddedRedis`` (None: generated once, kept in the data dir);
    every node uses it as ``requirepass`` and as ``masterauth``.
    """

    def __init__(
        self,
        data_dir: str | Path,
        primaries: int = 3,
        replicas: int = 1,
        host: str = "127.0.0.1",
        password: str | None = None,
        node_timeout_ms: int = 1000,
        appendfsync: str = "everysec",
        maxmemory: str = "256mb",
    ) -> None:
        self.data_dir = private_dir(Path(data_dir))
        self.host = host
        self.primaries = primaries
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.password = stored_password(self.data_dir) if password is None else password
        self.ranges = slot_ranges(primaries)
        self.nodes: list[ClusterNode] = []
        self.started_in_s = 0.0  # how long the last start took, until cluster_state:ok
        for index in range(primaries * (1 + replicas)):
            port, bus_port = free_port(host), free_port(host)
            lines: tuple[str, ...] = (
                "cluster-enabled yes",
                "cluster-config-file nodes.conf",
                f"cluster-port {bus_port}",
                f"cluster-node-timeout {node_timeout_ms}",
                "cluster-require-full-coverage no",
                "cluster-replica-validity-factor 0",
                "cluster-allow-replica-migration no",
                # A new replica syncs at once (the default waits 5 s for more replicas).
                "repl-diskless-sync-delay 0",
            )
            if self.password:
                lines += (f"masterauth {config_string(self.password)}",)
            server = EmbeddedRedis(
                self.data_dir / f"node{index}",
                port=port,
                host=host,
                appendfsync=appendfsync,
                password=self.password,
                maxmemory=maxmemory,
                extra_config=lines,
            )
            self.nodes.append(ClusterNode(server, bus_port))

    # -- addresses ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis+cluster://:PASSWORD@h:p1,h:p2,…``: a secret; log ``url_without_password``."""
        seeds = ",".join(node.address for node in self.nodes)
        if not self.password:
            return f"{CLUSTER_SCHEME}://{seeds}"
        return f"{CLUSTER_SCHEME}://:{quote(self.password, safe='')}@{seeds}"

    @property
    def url_without_password(self) -> str:
        return f"{CLUSTER_SCHEME}://" + ",".join(node.address for node in self.nodes)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> EmbeddedCluster:
        """Start every node, form the cluster if it is new, wait for ``cluster_state:ok``."""
        began = time.monotonic()
        fresh = not any((n.server.data_dir / "nodes.conf").exists() for n in self.nodes)
        try:
            for node in self.nodes:  # all load at once, then each is waited for
                node.server.spawn()
            for node in self.nodes:
                node.server.wait_started(timeout)
            for node in self.nodes:
                node.node_id = self._myid(node)
            if fresh:
                self._create(timeout)
            self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        self.started_in_s = time.monotonic() - began
        return self

    def _myid(self, node: ClusterNode) -> str:
        with node.client() as client:
            return str(client.execute_command("CLUSTER", "MYID"))

    def _create(self, timeout: float) -> None:
        primaries = self.nodes[: self.primaries]
        for epoch, (node, (first, last)) in enumerate(zip(primaries, self.ranges, strict=True)):
            with node.client() as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch + 1)
        # Every node meets every other: no waiting for gossip to spread the news.
        for index, node in enumerate(self.nodes):
            with node.client() as client:
                for other in self.nodes[index + 1 :]:
                    client.execute_command("CLUSTER", "MEET", self.host, other.port, other.bus_port)
        self._wait(lambda: all(self._known(n) == len(self.nodes) for n in self.nodes), timeout)
        for index, node in enumerate(self.nodes[self.primaries :]):
            primary = primaries[index % self.primaries]
            with node.client() as client:
                client.execute_command("CLUSTER", "REPLICATE", primary.node_id)

    def _known(self, node: ClusterNode) -> int:
        """How many nodes ``node`` knows, handshakes done."""
        with node.client() as client:
            lines = str(client.execute_command("CLUSTER", "NODES")).splitlines()
        return sum(1 for line in lines if line and "handshake" not in line and "noaddr" not in line)

    def wait_ok(self, timeout: float = 15.0) -> None:
        """Until every running node says ``cluster_state:ok``, every slot is served by a
        running primary, and every running replica's link to its primary is up."""
        self._wait(self._healthy, timeout)

    def _healthy(self) -> bool:
        served = 0
        for node in self.running_nodes():
            with node.client() as client:
                info = client.execute_command("CLUSTER", "INFO")
                if "cluster_state:ok" not in str(info):
                    return False
                replication = client.info("replication")
            if replication.get("role") == "master":
                with node.client() as client:
                    served += sum(
                        last - first + 1 for first, last in _own_slots(client, node.node_id)
                    )
            elif replication.get("master_link_status") != "up":
                return False
        return served == SLOTS

    def _wait(self, predicate: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.01
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except (redis.RedisError, OSError) as exc:
                last = exc
            time.sleep(delay)
            delay = min(delay * 1.5, 0.1)
        raise EmbeddedRedisError(
            f"the Valkey cluster under {self.data_dir} did not become healthy in {timeout} s"
            + (f" ({last})" if last else "")
            + "; see the nodes' valkey.log"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every node (SIGKILL one that hangs)."""
        for node in self.nodes:
            node.server.stop(timeout)

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL one node, as a crash would."""
        node.server.kill()

    def restart(self, node: ClusterNode, timeout: float = 10.0) -> None:
        """Start a stopped node again on its port (it rejoins from its nodes.conf). From
        a worker thread too: such a child gets no PDEATHSIG (see EmbeddedRedis.spawn)."""
        node.server.spawn()
        node.server.wait_started(timeout)

    def flush(self) -> None:
        """Empty every primary (``FLUSHALL``; the replicas follow)."""
        for node in self.running_nodes():
            if self.role(node) == "master":
                with node.client() as client:
                    client.flushall()

    # -- topology ----------------------------------------------------------------------

    def running_nodes(self) -> Iterator[ClusterNode]:
        return (node for node in self.nodes if node.running)

    def role(self, node: ClusterNode) -> str:
        """``master`` or ``slave``, as the node itself says."""
        with node.client() as client:
            return str(client.info("replication").get("role"))

    def primary_of_slot(self, slot: int) -> ClusterNode:
        """The running primary that serves ``slot`` now."""
        for node in self.running_nodes():
            with node.client() as client:
                if client.info("replication").get("role") != "master":
                    continue
                if any(first <= slot <= last for first, last in _own_slots(client, node.node_id)):
                    return node
        raise EmbeddedRedisError(f"no running primary serves slot {slot}")

    def primary_of(self, key: str) -> ClusterNode:
        """The running primary that holds ``key``."""
        from redis.crc import key_slot

        return self.primary_of_slot(key_slot(key.encode()))

    def replicas_of(self, primary: ClusterNode) -> list[ClusterNode]:
        """The running replicas of ``primary``."""
        found = []
        for node in self.running_nodes():
            if node is primary:
                continue
            with node.client() as client:
                info = client.info("replication")
            if info.get("role") == "slave" and int(info.get("master_port", 0)) == primary.port:
                found.append(node)
        return found

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _own_slots(client: redis.Redis, node_id: str) -> list[tuple[int, int]]:
    """The slot ranges ``CLUSTER NODES`` (as ``client``'s node sees it) gives ``node_id``."""
    nodes = client.execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]
    for line in str(nodes).splitlines():
        fields = line.split()
        if fields and fields[0] == node_id:
            ranges = []
            for item in fields[8:]:
                if item.startswith("["):
                    continue  # a slot being migrated
                first, _, last = item.partition("-")
                ranges.append((int(first), int(last or first)))
            return ranges
    return []
