"""Several hosts on one machine: network namespaces joined by a bridge, for multi-host tests.

Why namespaces: a room server on another machine fails in ways a process on loopback
cannot — its whole host dies at once, or the network between it and Redis goes silent
without closing a socket. Each namespace has its own interfaces, addresses, routes and
ports, so its processes only reach the others over a (virtual) wire that a test can cut.

Topology (N: a free third octet, 10.77.N.0/24, so parallel runs do not clash)::

    root namespace: bridge srn<pid>-<k>br = 10.77.N.254 (the test, its SDK clients)
      ├── veth srn<pid>-<k>v1 ── eth0 10.77.N.1  namespace srn<pid>-<k>-h1 (room servers)
      ├── veth srn<pid>-<k>v2 ── eth0 10.77.N.2  namespace srn<pid>-<k>-h2
      ├── ...
      └── veth srn<pid>-<k>vM ── eth0 10.77.N.M  namespace srn<pid>-<k>-db (Valkey, auth)

``Host.cut()`` sets the host's bridge-side veth down: its packets are dropped in both
directions and no socket sees an error (a partition, not a reset); ``heal()`` sets it up.

Processes run inside with ``ip netns exec NS CMD`` (which execs CMD: the child's PID is the
command's). ``HostCluster`` starts Valkey and the login service on the last host and room
servers on the others, each bound to and advertising its namespace address. Teardown
kills every process by PID (then whatever ``ip netns pids`` still lists in our
namespaces), deletes the namespaces, the veths and the bridge, even when the test failed.
Names carry the pytest process's PID; ``cleanup_stale`` removes what a dead run of this
harness left behind (only names of this harness, only of PIDs no longer running).

Needs root and iproute2. ``netns_problem()`` says why not; ``require_netns()`` skips the
test with that reason, or fails it when ``CI`` is set (CI has namespaces).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from infra.cluster_file import ClusterInfo, ServerEntry
from infra.embedded_redis import EmbeddedRedis
from tests.cluster import FAST_SERVER_FLAGS
from tests.support import STATEROOM, Processes, http_ok, wait_until

PREFIX = "srn"  # every namespace and link this harness creates starts with it
SUBNET = "10.77"
GATEWAY_OCTET = 254  # the root namespace's address on the bridge
REDIS_PORT = 6379
AUTH_PORT = 8000
SERVER_PORT = 8001  # + index on the host; each namespace has its own ports
ADMIN_PORT = 9001
_STALE_NETNS = re.compile(rf"^{PREFIX}(\d+)-\d+-")
_STALE_LINK = re.compile(rf"^{PREFIX}(\d+)-\d+")
_LOCK = Path(tempfile.gettempdir()) / "stateroom-netns.lock"
_counter = 0


class NetnsError(RuntimeError):
    """An ``ip`` command of the harness failed (its stderr says why)."""


def ip(*args: str, check: bool = True) -> str:
    """Run ``ip ARGS``; its stdout, or NetnsError with its stderr when it fails."""
    try:
        done = subprocess.run(
            ["ip", *args], capture_output=True, text=True, timeout=15, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"ip {' '.join(args)}: {exc}") from None
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def netns_problem() -> str | None:
    """Why this machine cannot run the multi-host tests, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add); run the tests as root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing: apt-get install iproute2"
    probe = f"{PREFIX}{os.getpid()}-0-probe"
    try:
        ip("netns", "add", probe)
    except NetnsError as exc:
        return f"`ip netns add` failed: {exc}"
    try:
        ip("netns", "exec", probe, "ip", "link", "set", "lo", "up")
    except NetnsError as exc:
        return f"`ip netns exec` failed: {exc}"
    finally:
        ip("netns", "del", probe, check=False)
    return None


def require_netns() -> None:
    """Skip the calling test when namespaces are unavailable; fail it on CI, which has them."""
    problem = netns_problem()
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the multi-host tests: {problem}")
    pytest.skip(problem)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _netns_names() -> list[str]:
    # `ip netns list` prints "NAME" or "NAME (id: N)".
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def _link_names() -> list[str]:
    names = []
    for line in ip("-o", "link", "show").splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


def _kill_netns_pids(netns: str) -> None:
    """SIGKILL what still runs in one of our namespaces (children of this harness)."""
    pids = [int(p) for p in ip("netns", "pids", netns, check=False).split() if p.isdigit()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _alive(p) and not _zombie(p)]
        time.sleep(0.02)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def cleanup_stale() -> list[str]:
    """Remove namespaces and links of this harness whose creating process is gone.

    Only names that match this harness's pattern (``srn<pid>-…``) and whose PID no longer
    runs; what a live run (another pytest worker) owns is left alone. Returns the names
    removed.
    """
    removed: list[str] = []
    for name in _netns_names():
        match = _STALE_NETNS.match(name)
        if match and not _alive(int(match.group(1))):
            _kill_netns_pids(name)
            ip("netns", "del", name, check=False)
            removed.append(name)
    for name in _link_names():
        match = _STALE_LINK.match(name)
        if match and not _alive(int(match.group(1))):
            ip("link", "del", name, check=False)
            removed.append(name)
    return removed


@contextlib.contextmanager
def _subnet_lock() -> Iterator[None]:
    """Choosing a subnet and taking it (the bridge's address) is one step across runs."""
    with open(_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _free_octet() -> int:
    used = {
        int(m) for m in re.findall(rf"inet {re.escape(SUBNET)}\.(\d+)\.", ip("-4", "-o", "addr"))
    }
    free = [n for n in range(1, 255) if n not in used]
    if not free:
        raise NetnsError(f"no free {SUBNET}.N.0/24 subnet left on this machine")
    return random.choice(free)


@dataclass
class Host:
    """One namespace: a machine with one interface (eth0) on the shared bridge."""

    name: str
    netns: str
    address: str
    veth: str  # the bridge-side end, in the root namespace

    def command(self, args: Sequence[str]) -> list[str]:
        """``args`` run inside this host."""
        return ["ip", "netns", "exec", self.netns, *args]

    def cut(self) -> None:
        """Partition the host: every packet to or from it is dropped, no socket is reset."""
        ip("link", "set", self.veth, "down")

    def heal(self) -> None:
        ip("link", "set", self.veth, "up")

    def is_cut(self) -> bool:
        return "state DOWN" in ip("link", "show", self.veth)


@dataclass
class Network:
    """Namespaces ``names`` on one bridge; the root namespace is on it as ``gateway``."""

    names: Sequence[str]
    hosts: dict[str, Host] = field(default_factory=dict)
    bridge: str = ""
    gateway: str = ""

    def create(self) -> Network:
        global _counter
        _counter += 1
        tag = f"{PREFIX}{os.getpid()}-{_counter % 10}"
        self.bridge = f"{tag}br"
        with _subnet_lock():
            cleanup_stale()
            self._remove_leftovers(tag)
            octet = _free_octet()
            base = f"{SUBNET}.{octet}"
            self.gateway = f"{base}.{GATEWAY_OCTET}"
            ip("link", "add", self.bridge, "type", "bridge")
            ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for index, name in enumerate(self.names, start=1):
            host = Host(name, f"{tag}-{name}", f"{base}.{index}", f"{tag}v{index}")
            self.hosts[name] = host
            peer = f"{tag}p{index}"
            ip("netns", "add", host.netns)
            ip("link", "add", host.veth, "type", "veth", "peer", "name", peer)
            ip("link", "set", peer, "netns", host.netns)
            ip("link", "set", host.veth, "master", self.bridge)
            ip("link", "set", host.veth, "up")
            ip("-n", host.netns, "link", "set", peer, "name", "eth0")
            ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            ip("-n", host.netns, "link", "set", "eth0", "up")
            ip("-n", host.netns, "link", "set", "lo", "up")
        return self

    def _remove_leftovers(self, tag: str) -> None:
        """This process's own names from an earlier network that failed to tear down."""
        for name in _netns_names():
            if name.startswith(f"{tag}-"):
                _kill_netns_pids(name)
                ip("netns", "del", name, check=False)
        for name in _link_names():
            if name.startswith(tag):
                ip("link", "del", name, check=False)

    def destroy(self) -> None:
        """Kill what still runs inside, delete namespaces, veths and the bridge. Every step
        is tried; NetnsError lists those that failed."""
        errors: list[str] = []
        existing = set(_netns_names())
        for host in self.hosts.values():
            if host.netns not in existing:
                continue
            try:
                _kill_netns_pids(host.netns)
                ip("netns", "del", host.netns)
            except NetnsError as exc:
                errors.append(str(exc))
        # A namespace's deletion takes its eth0 and so the veth pair with it, a moment later.
        for name in [h.veth for h in self.hosts.values()] + [self.bridge]:
            try:
                ip("link", "del", name)
            except NetnsError as exc:
                if "Cannot find device" not in str(exc):
                    errors.append(str(exc))
        self.hosts.clear()
        if errors:
            raise NetnsError("teardown incomplete: " + "; ".join(errors))

    def __enter__(self) -> Network:
        try:
            return self.create()
        except BaseException:
            self.destroy()
            raise

    def __exit__(self, *exc: object) -> None:
        self.destroy()


# -- a cluster over the hosts --------------------------------------------------------------


class NamespacedRedis(EmbeddedRedis):
    """The embedded Valkey, run inside a host and bound to its address."""

    def __init__(self, host: Host, data_dir: Path, port: int = REDIS_PORT) -> None:
        super().__init__(data_dir, port=port, host=host.address)
        self.on_host = host

    def _command(self) -> list[str]:
        return self.on_host.command(super()._command())


@dataclass
class HostServer:
    """A room server on a host, listening on (and advertising) the host's address."""

    name: str
    host: Host
    port: int
    admin_port: int
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host.address}:{self.port}/v1/ws"

    @property
    def http_url(self) -> str:
        return f"http://{self.host.address}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host.address}:{self.admin_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class HostCluster:
    """Valkey and the login service on the last host, room servers on the others."""

    network: Network
    processes: Processes
    redis: NamespacedRedis
    auth_url: str
    servers: dict[str, HostServer] = field(default_factory=dict)

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def room_hosts(self) -> list[Host]:
        return [h for h in self.network.hosts.values() if h is not self.redis.on_host]

    @property
    def info(self) -> ClusterInfo:
        return ClusterInfo(
            redis_url=self.redis_url,
            auth_url=self.auth_url,
            servers=tuple(
                ServerEntry(s.name, s.ws_url, s.proc.pid if s.proc else None, s.admin_url)
                for s in self.servers.values()
            ),
        )

    def on(self, host: Host) -> list[HostServer]:
        return [s for s in self.servers.values() if s.host is host]

    def host_of(self, server_name: str) -> Host:
        return self.servers[server_name].host

    def add_servers(self, per_host: int, extra: Sequence[str] = ()) -> None:
        """``per_host`` room servers on every room host, started together, then awaited."""
        started: list[HostServer] = []
        for host in self.room_hosts:
            for index in range(per_host):
                name = f"{host.name}s{index + 1}"
                port, admin = SERVER_PORT + index, ADMIN_PORT + index
                args = [
                    *("server", "--host", host.address, "--port", str(port)),
                    *("--public-url", f"ws://{host.address}:{port}/v1/ws"),
                    *("--admin-host", host.address, "--admin-port", str(admin)),
                    *("--name", name, "--redis-url", self.redis_url, "--auth-url", self.auth_url),
                    *FAST_SERVER_FLAGS,
                    *extra,
                ]
                server = HostServer(name, host, port, admin, args)
                self.servers[name] = server
                self._launch(server)
                started.append(server)
        for server in started:
            self.wait_ready(server)

    def _launch(self, server: HostServer) -> None:
        server.proc = self.processes.start(
            server.host.command([*STATEROOM, *server.args]), server.name
        )

    def wait_ready(self, server: HostServer, timeout: float = 40) -> None:
        url = f"{server.http_url}/readyz"
        proc = server.proc
        assert proc is not None
        try:
            wait_until(lambda: proc.poll() is not None or http_ok(url), timeout, url)
        except TimeoutError:
            raise TimeoutError(f"{server.name} not ready:\n{self.log(server.name)}") from None
        if proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited {proc.returncode}:\n{self.log(server.name)}")

    def kill_host(self, host: Host) -> list[int]:
        """SIGKILL every process of ``host`` at once (the host died); their PIDs."""
        victims = [s.proc for s in self.on(host) if s.proc is not None and s.proc.poll() is None]
        if self.redis.on_host is host and self.redis.process is not None:
            victims.append(self.redis.process)
        for proc in victims:
            proc.kill()
        for proc in victims:
            proc.wait()
        return [p.pid for p in victims]

    def log(self, name: str) -> str:
        return self.processes.log(name)

    def stop(self) -> None:
        """Every process by PID: room servers SIGKILLed (nothing to hand over at teardown),
        the rest terminated, Valkey last."""
        for server in self.servers.values():
            if server.proc is not None and server.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    server.proc.send_signal(signal.SIGCONT)
                    server.proc.kill()
                server.proc.wait()
        self.processes.stop_all()
        self.redis.stop()


@contextlib.contextmanager
def host_cluster(
    tmp_path: Path,
    hosts: int = 3,
    servers_per_host: int = 2,
    extra: Sequence[str] = (),
) -> Iterator[HostCluster]:
    """``hosts`` hosts of room servers and one more with Valkey and the login service, all
    in namespaces of their own; everything is torn down on exit, pass or fail."""
    from auth.keys import ensure_key_file

    names = [f"h{i}" for i in range(1, hosts + 1)] + ["db"]
    network = Network(names)
    processes = Processes(tmp_path)
    cluster: HostCluster | None = None
    try:
        network.create()
        db = network.hosts["db"]
        redis = NamespacedRedis(db, tmp_path / "redis")
        key = tmp_path / "auth-key.pem"
        ensure_key_file(key)
        auth_url = f"http://{db.address}:{AUTH_PORT}"
        cluster = HostCluster(network, processes, redis, auth_url)
        redis.start()
        auth_args = [
            *("auth", "--host", db.address, "--port", str(AUTH_PORT)),
            *("--redis", redis.url, "--key", str(key)),
            *("--rate-limit-per-minute", "100000"),  # every test player logs in from one address
        ]
        # The login service and the room servers load at the same time (a room server
        # fetches the JWKS in the background): on two cores that halves the start.
        auth = processes.start(db.command([*STATEROOM, *auth_args]), "auth")
        cluster.add_servers(servers_per_host, extra)
        healthz = f"{auth_url}/healthz"
        wait_until(lambda: auth.poll() is not None or http_ok(healthz), 20, healthz)
        if auth.poll() is not None:
            raise RuntimeError(f"auth exited {auth.returncode}:\n{processes.log('auth')}")
        yield cluster
    finally:
        try:
            if cluster is not None:
                cluster.stop()
            else:
                processes.stop_all()
        finally:
            network.destroy()
