"""``stateroom up``: the whole system on one machine, supervised like Kubernetes would.

Starts Redis (embedded, persistent under DIR, unless --redis), the login
service on BASE and N room servers on BASE+1…BASE+N, writes
DIR/cluster.json, restarts any child that dies, and on Ctrl-C/SIGTERM stops
the room servers first (they hand their rooms over and checkpoint), then the
login service, then Redis.

Secrets:

- The embedded Valkey requires a password, generated on the first start and
  kept (0600) in DIR/redis/valkey.password, so a restart on the same DIR
  reuses it (see ``infra.embedded_redis``).
- Children get the Redis URL (password included, also a ``--redis`` URL given
  by the user) in their environment, ``STATEROOM_REDIS_URL``, never in argv:
  ``/proc/PID/cmdline`` is readable by every local user, ``/proc/PID/environ``
  only by the same user.
- Whatever ``up`` logs or prints shows the URL redacted (``redact``).
- DIR/cluster.json keeps ``redis_url`` WITH the password, because
  ``stateroom status`` and ``stateroom kill-room`` read the cluster through
  Redis. So it is written 0600, and DIR, DIR/logs and DIR/redis are 0700; the
  logs are 0600 and the login service's key file DIR/auth-key.pem is 0600.
- The control endpoint (``server.control``: the dashboard's "kill owner") listens
  on 127.0.0.1 only, behind a random secret that only the login service gets, in
  its environment (``STATEROOM_LAUNCHER_TOKEN``); it kills only ``up``'s own
  room-server children.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from infra.cluster_file import write_cluster
from infra.embedded_redis import EmbeddedRedis, die_with_parent, private_dir, terminate
from infra.redis_url import redact
from server.control import ControlEndpoint

log = logging.getLogger("stateroom.up")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=".stateroom", help="data folder (default .stateroom)")
    parser.add_argument("--servers", type=int, default=2, help="room servers to run (default 2)")
    parser.add_argument(
        "--port",
        type=int,
        default=8000,
        help="auth on PORT, room servers on PORT+1… (default 8000)",
    )
    parser.add_argument(
        "--redis",
        default=None,
        help="use this Redis URL instead of the embedded one (given to the children in "
        "their environment, never in their argv)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our own URL
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class Child:
    """One supervised process and how to start it again."""

    name: str
    args: list[str]
    ready_url: str
    log_path: Path
    # Extra environment: secrets (the Redis URL) go here, never into ``args``.
    env: dict[str, str] = field(default_factory=dict)
    ws_url: str = ""
    admin_url: str = ""
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    backoff: float = 0.0
    retry_at: float = 0.0
    started_at: float = field(default_factory=time.monotonic)

    def start(self) -> None:
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.fchmod(fd, 0o600)  # also a log left 0644 by an older version
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server.cli", *self.args],
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                preexec_fn=die_with_parent,
            )
        finally:
            os.close(fd)
        self.started_at = time.monotonic()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited while starting; see {self.log_path}")
            if _healthy(self.ready_url):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {timeout}s; see {self.log_path}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10) -> None:
        if self.proc is not None:
            terminate(self.proc, timeout)


class Cluster:
    def __init__(self, args: argparse.Namespace) -> None:
        self.data = Path(args.data).resolve()
        self.count = args.servers
        self.base: int = args.port
        self.host = args.host
        self.external_redis = args.redis
        self.redis: EmbeddedRedis | None = None
        self.redis_url = args.redis or ""
        self.auth: Child | None = None
        self.servers: list[Child] = []
        self.control: ControlEndpoint | None = None
        self.stopping = False

    @property
    def auth_url(self) -> str:
        return f"http://{self.host}:{self.base}"

    def own_server_pids(self) -> set[int]:
        """Pids of the room servers this launcher runs now: the only ones it may kill."""
        return {c.proc.pid for c in self.servers if c.proc is not None and c.alive}

    def auth_env(self) -> dict[str, str]:
        """What the login service learns about this dev cluster, in its environment: the
        control endpoint and its secret, the open dashboard, our own pages' origins."""
        assert self.control is not None
        port = self.base
        origins = dict.fromkeys(
            [self.auth_url, f"http://127.0.0.1:{port}", f"http://localhost:{port}"]
        )
        return {
            "STATEROOM_AUTH_LAUNCHER_CONTROL": self.control.url,
            "STATEROOM_LAUNCHER_TOKEN": self.control.token,
            "STATEROOM_AUTH_DASHBOARD": "open",
            "STATEROOM_AUTH_CORS_ORIGINS": ",".join(origins),
        }

    def admin_port(self, index: int) -> int:
        """Room server ``index``'s admin listener (/status, /metrics): BASE+100+index."""
        return self.base + 100 + index

    def check_ports(self) -> None:
        """Fail fast, before starting anything, if a port is taken (another cluster?)."""
        ports = [*range(self.base, self.base + self.count + 1)]
        ports += [self.admin_port(i) for i in range(1, self.count + 1)]
        for port in ports:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((self.host, port))
                except OSError:
                    raise RuntimeError(
                        f"port {port} on {self.host} is in use (is another `stateroom up` "
                        "running?); stop it or pass --port BASE"
                    ) from None

    def secure_data_dir(self) -> None:
        """Create DIR 0700, or tighten an existing one, but only a folder that is new, empty
        or already ours: ``--data /tmp`` must not chmod /tmp."""
        if self.data.is_dir() and self.data.stat().st_mode & 0o077:
            ours = {"cluster.json", "redis", "logs", "auth-key.pem"}
            names = {p.name for p in self.data.iterdir()}
            if names and not names & ours:
                raise RuntimeError(
                    f"{self.data} is not a stateroom data folder and others may read it; "
                    "pass --data with a new or empty folder"
                )
            log.info("%s was readable by others; made it 0700", self.data)
        private_dir(self.data)

    def start(self) -> None:
        from auth.keys import ensure_key_file

        self.check_ports()
        self.secure_data_dir()
        logs = private_dir(self.data / "logs")
        if not self.external_redis:
            self.redis = EmbeddedRedis(self.data / "redis").start()
            self.redis_url = self.redis.url
            log.info(
                "redis   %s (pid %s, data %s)",
                redact(self.redis_url),
                self.redis.pid,
                self.redis.data_dir,
            )
        else:
            log.info("redis   %s (external)", redact(self.redis_url))
        # The only way the children learn the Redis URL (and its password).
        secret_env = {"STATEROOM_REDIS_URL": self.redis_url}
        self.control = ControlEndpoint(lambda: self.redis_url, self.own_server_pids).start()
        log.info("control %s (kill-room for the dashboard; bearer secret)", self.control.url)
        key = self.data / "auth-key.pem"
        ensure_key_file(key)
        if key.stat().st_mode & 0o077:
            log.warning("%s was readable by others; made it 0600", key)
            os.chmod(key, 0o600)
        self.auth = Child(
            "auth",
            [
                "auth",
                "--host",
                self.host,
                "--port",
                str(self.base),
                "--key",
                str(key),
            ],
            f"{self.auth_url}/healthz",
            logs / "auth.log",
            env={**secret_env, **self.auth_env()},
        )
        self.auth.start()
        for index in range(1, self.count + 1):
            port = self.base + index
            self.servers.append(
                Child(
                    f"s{index}",
                    [
                        "server",
                        "--host",
                        self.host,
                        "--port",
                        str(port),
                        "--admin-port",
                        str(self.admin_port(index)),
                        "--auth-url",
                        self.auth_url,
                        "--name",
                        f"s{index}",
                    ],
                    f"http://{self.host}:{port}/readyz",
                    logs / f"s{index}.log",
                    env=secret_env,
                    ws_url=f"ws://{self.host}:{port}/v1/ws",
                    admin_url=f"http://{self.host}:{self.admin_port(index)}",
                )
            )
        for child in self.servers:
            child.start()
        self.auth.wait_ready()
        log.info(
            "auth    %s (pid %s)", self.auth_url, self.auth.proc.pid if self.auth.proc else "-"
        )
        for child in self.servers:
            child.wait_ready()
            log.info(
                "%-7s %s (pid %s)", child.name, child.ws_url, child.proc.pid if child.proc else "-"
            )
        self.write_cluster_file()

    def write_cluster_file(self) -> None:
        body = {
            "redis_url": self.redis_url,
            "auth_url": self.auth_url,
            "servers": [
                {
                    "id": c.name,
                    "ws_url": c.ws_url,
                    "admin_url": c.admin_url,
                    "pid": c.proc.pid if c.proc else None,
                }
                for c in self.servers
            ],
        }
        write_cluster(self.data / "cluster.json", body)

    def supervise(self) -> None:
        """Restart whatever died, as a Deployment would; return when asked to stop."""
        while not self.stopping:
            time.sleep(0.1)
            changed = False
            for child in [*([self.auth] if self.auth else []), *self.servers]:
                if self.stopping or child.alive:
                    continue
                now = time.monotonic()
                if child.retry_at == 0.0:
                    # A child that keeps dying right after start is restarted with backoff.
                    quick = now - child.started_at < 5
                    child.backoff = min(10.0, max(0.5, child.backoff * 2)) if quick else 0.0
                    child.retry_at = now + child.backoff
                    code = child.proc.returncode if child.proc else None
                    log.warning(
                        "%s exited (%s); restarting in %.1fs", child.name, code, child.backoff
                    )
                if now < child.retry_at:
                    continue
                child.retry_at = 0.0
                child.restarts += 1
                child.start()
                changed = True
            if changed:
                self.write_cluster_file()

    def stop(self) -> None:
        self.stopping = True
        log.info("stopping: room servers hand their rooms over, then auth, then redis")
        for child in self.servers:
            if child.alive and child.proc:
                child.proc.send_signal(signal.SIGCONT)
                child.proc.terminate()
        for child in self.servers:
            child.stop()
        if self.auth:
            self.auth.stop()
        if self.control:
            self.control.stop()
        if self.redis:
            self.redis.stop()
        log.info("stopped")


def run(args: argparse.Namespace) -> int:
    from infra.logs import configure_logging

    # The children inherit STATEROOM_LOG_FORMAT/LEVEL: one setting covers the cluster.
    configure_logging("up")
    cluster = Cluster(args)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        cluster.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        cluster.start()
        cluster_file = cluster.data / "cluster.json"
        print(
            f"\nStateroom is up. Cluster file: {cluster_file}\n"
            f"  play in a browser:  {cluster.auth_url}/\n"
            f"  dashboard:          {cluster.auth_url}/dashboard\n"
            f"  guest login:        curl -s -X POST {cluster.auth_url}/v1/guest\n"
            f"  play:               .venv/bin/stateroom play --cluster {cluster_file}"
            " --room lobby\n"
            f"  bots:               .venv/bin/stateroom bots --cluster {cluster_file} --room lobby"
            " --count 50 --seconds 10\n"
            f"  kill a room:        .venv/bin/stateroom kill-room lobby --cluster {cluster_file}"
            " (or the dashboard's kill owner button)\n"
            f"  status:             .venv/bin/stateroom status --cluster {cluster_file}\n"
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        cluster.supervise()
    except RuntimeError as exc:
        log.error("%s", exc)
        cluster.stop()
        return 1
    cluster.stop()
    return 0
