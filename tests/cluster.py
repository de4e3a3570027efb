"""A real local cluster for integration tests: Valkey, the login service, N room servers.

Every process is a real child on a free port, tracked by ``Processes`` and
killed by PID at teardown. Room servers run with short leases and polls so
fault tests finish quickly; each can be started, killed, frozen and
restarted by name.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.cluster_file import ClusterInfo, ServerEntry
from infra.embedded_redis import EmbeddedRedis
from infra.ports import free_port
from tests.support import Processes

FAST_SERVER_FLAGS = (
    "--lease-ms", "1500",
    "--lease-margin-ms", "500",
    "--failover-poll-ms", "50",
    "--liveness-grace-ms", "500",
    "--checkpoint-every-s", "0.5",
    "--heartbeat-s", "0.25",
    # Every test player connects from 127.0.0.1: the per-address budgets would count the
    # whole suite as one client. Tests of those budgets pass the defaults back (later flags
    # win).
    "--rooms-per-address-per-minute", "100000",
    "--connections-per-address", "100000",
    "--pending-per-address", "100000",
)  # fmt: skip


@dataclass
class RoomServerProcess:
    name: str
    port: int
    args: list[str]
    admin_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        """The admin listener (/status, /metrics): not on the player port."""
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


@dataclass
class LocalCluster:
    processes: Processes
    redis: EmbeddedRedis
    auth_url: str
    key_file: Path
    servers: dict[str, RoomServerProcess] = field(default_factory=dict)
    # How components reach Redis, when not directly (e.g. a redis+sentinel:// URL).
    redis_url_override: str | None = None

    @property
    def redis_url(self) -> str:
        return self.redis_url_override or self.redis.url

    @property
    def info(self) -> ClusterInfo:
        return ClusterInfo(
            redis_url=self.redis_url,
            auth_url=self.auth_url,
            servers=tuple(
                ServerEntry(s.name, s.ws_url, s.proc.pid if s.proc else None)
                for s in self.servers.values()
            ),
        )

    def write_cluster_file(self, path: Path) -> Path:
        """A cluster.json for the command-line tools, as ``stateroom up`` writes it."""
        info = self.info
        servers = [{"id": s.id, "ws_url": s.ws_url, "pid": s.pid} for s in info.servers]
        body = {"redis_url": info.redis_url, "auth_url": info.auth_url, "servers": servers}
        path.write_text(json.dumps(body))
        return path

    def add_server(
        self, name: str, extra: tuple[str, ...] = (), redis_url: str | None = None
    ) -> RoomServerProcess:
        port = free_port()
        admin_port = free_port()
        args = [
            *("server", "--port", str(port), "--admin-port", str(admin_port), "--name", name),
            *("--redis-url", redis_url or self.redis_url, "--auth-url", self.auth_url),
            *FAST_SERVER_FLAGS,
            *extra,
        ]
        server = RoomServerProcess(name, port, args, admin_port)
        self.servers[name] = server
        self.start_server(name)
        return server

    def start_server(self, name: str) -> RoomServerProcess:
        server = self.servers[name]
        server.proc = self.processes.start_stateroom(
            server.args, name, ready_url=f"{server.http_url}/readyz"
        )
        return server

    def kill(self, name: str) -> None:
        server = self.servers[name]
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()

    def log(self, name: str) -> str:
        return self.processes.log(name)


def start_cluster(
    processes: Processes,
    tmp_path: Path,
    servers: int = 2,
    extra: tuple[str, ...] = (),
    redis: EmbeddedRedis | None = None,
    redis_url: str | None = None,
    auth_extra: tuple[str, ...] = (),
) -> LocalCluster:
    from auth.keys import ensure_key_file

    if redis is None:
        redis = EmbeddedRedis(tmp_path / "redis").start()
    key = tmp_path / "auth-key.pem"
    ensure_key_file(key)
    auth_port = free_port()
    processes.start_stateroom(
        [
            *("auth", "--port", str(auth_port), "--redis", redis_url or redis.url),
            *("--key", str(key), *auth_extra),
        ],
        "auth",
        ready_url=f"http://127.0.0.1:{auth_port}/healthz",
    )
    cluster = LocalCluster(processes, redis, f"http://127.0.0.1:{auth_port}", key, {}, redis_url)
    for index in range(1, servers + 1):
        cluster.add_server(f"s{index}", extra)
    return cluster


@contextlib.contextmanager
def cluster_for(tmp_path: Path, **options: Any) -> Iterator[LocalCluster]:
    """A cluster of its own processes (for a module-scoped fixture), stopped on exit
    whatever happens; ``options`` go to ``start_cluster``."""
    processes = Processes(tmp_path)
    local = None
    try:
        local = start_cluster(processes, tmp_path, **options)
        yield local
    finally:
        processes.stop_all()
        if local is not None:
            local.redis.stop()
