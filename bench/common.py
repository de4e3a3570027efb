"""Shared bench helpers: the stack (Valkey + auth + room servers), CPU pinning, /proc sampling,
Prometheus scraping, percentiles, and one measured arena point.

Every child is started with PDEATHSIG (``die_with_parent``) and stopped by PID in ``Stack.stop``;
nothing here ever signals a process it did not start.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from client.bots import percentile  # noqa: E402
from infra.embedded_redis import EmbeddedRedis, die_with_parent, terminate  # noqa: E402
from infra.ports import free_port  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
#: The arena bench's server runs the built-in arena rules with a larger seat cap (see worldgame).
BENCH_ARENA = "bench.worldgame:BenchArena"

REFERENCE = {
    "colyseus_0_18_node22_n200_one_room": {
        "server_cpu_cores": 0.16,
        "cpu_us_per_input": 41,
        "latency_p99_ms": 58,
    },
    "bare_python_websockets_msgpack_n200_one_room": {
        "server_cpu_cores": 0.18,
        "latency_p99_ms": 54,
        "note": "no validation, no durability",
    },
}


# -- small helpers -----------------------------------------------------------------------------


def emit(obj: dict[str, Any]) -> None:
    """One JSON object per line on stdout, flushed at once."""
    print(json.dumps(obj, allow_nan=False), flush=True)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def summary_ms(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 0.50), 3),
        "p99": round(percentile(values, 0.99), 3),
        "max": round(max(values, default=0.0), 3),
        "mean": round(sum(values) / len(values), 3) if values else 0.0,
        "n": len(values),
    }


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` (like ``taskset -a -p``); silently skipped on 1 core."""
    if cpu_count() < 2:
        return
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, cpus)


def _pinned_child(cpus: set[int] | None) -> Any:
    def preexec() -> None:
        die_with_parent()
        if cpus is not None and len(os.sched_getaffinity(0)) >= 2:
            os.sched_setaffinity(0, cpus)

    return preexec


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


class CpuWindow:
    """CPU cores used by some processes between ``start()`` and ``stop()``."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before: dict[str, float] = {}
        self.started = 0.0
        self.wall = 0.0
        self.used: dict[str, float] = {}

    def start(self) -> None:
        self.started = time.monotonic()
        self.before = {name: proc_cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> None:
        self.wall = time.monotonic() - self.started
        self.used = {
            name: proc_cpu_seconds(pid) - self.before[name] for name, pid in self.pids.items()
        }

    def cores(self, name: str) -> float:
        return self.used[name] / self.wall if self.wall else 0.0


def cpu_busy_seconds() -> dict[int, float]:
    """Busy time of each CPU (everything but idle and iowait) from /proc/stat, in seconds."""
    out: dict[int, float] = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if name.startswith("cpu") and name != "cpu":
                v = [int(x) for x in values]
                # user nice system idle iowait irq softirq steal (guest is inside user)
                out[int(name[3:])] = (sum(v[:8]) - v[3] - v[4]) / CLK_TCK
    return out


class MachineWindow:
    """CPU used on each core by processes other than ours, over a window."""

    def __init__(self, ours: CpuWindow, ours_by_cpu: dict[int, list[str]]) -> None:
        self.ours = ours
        self.ours_by_cpu = ours_by_cpu
        self.before: dict[int, float] = {}
        self.after: dict[int, float] = {}

    def start(self) -> None:
        self.before = cpu_busy_seconds()

    def stop(self) -> None:
        self.after = cpu_busy_seconds()

    def busy_cores(self) -> dict[str, float]:
        wall = self.ours.wall or 1.0
        return {
            f"cpu{cpu}": round((self.after.get(cpu, before) - before) / wall, 3)
            for cpu, before in self.before.items()
        }

    def others_cores(self) -> dict[str, float]:
        wall = self.ours.wall or 1.0
        out: dict[str, float] = {}
        for cpu, before in self.before.items():
            busy = self.after.get(cpu, before) - before
            mine = sum(self.ours.used.get(name, 0.0) for name in self.ours_by_cpu.get(cpu, []))
            out[f"cpu{cpu}"] = round(max(0.0, busy - mine) / wall, 3)
        return out


def scrape(url: str) -> dict[str, float]:
    """Prometheus text → {'name{labels}': value} (samples only)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[key] = float(value)
    return out


def metric_delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def histogram_mean_ms(after: dict[str, float], before: dict[str, float], name: str) -> float | None:
    count = metric_delta(after, before, f"{name}_count")
    total = metric_delta(after, before, f"{name}_sum")
    return round(total / count * 1000, 3) if count else None


def histogram_quantile_ms(
    after: dict[str, float], before: dict[str, float], name: str, q: float
) -> float | str | None:
    """Upper bound of the bucket holding quantile ``q`` of the observations in the window.

    Past the last finite bucket it is the string ">LAST" (JSON has no infinity).
    """
    buckets: list[tuple[float, float]] = []
    for key in after:
        if key.startswith(f"{name}_bucket{{le="):
            le = key.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets.append((bound, metric_delta(after, before, key)))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return None
    target = q * buckets[-1][1]
    finite = [b for b, _ in buckets if b != float("inf")]
    for bound, count in buckets:
        if count >= target:
            if bound == float("inf"):
                return f">{max(finite, default=0.0) * 1000:g}"
            return round(bound * 1000, 3)
    return None


# -- the stack -------------------------------------------------------------------------------


SERVER_CLI = ("-m", "server.cli")


@dataclass
class Child:
    name: str
    args: list[str]
    ready_url: str
    log_path: Path
    cpus: set[int] | None = None
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    #: The source tree it runs from (``python -m`` puts it first on sys.path): another
    #: checkout (a ``git worktree``) runs that checkout's code with the same venv.
    root: Path = REPO
    #: What runs ``server.cli``'s arguments: ``-m server.cli``, or a wrapper script
    #: (bench/cpu_split.py) given as its arguments before ours.
    launcher: tuple[str, ...] = SERVER_CLI

    def start(self) -> None:
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                [sys.executable, *self.launcher, *self.args],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                preexec_fn=_pinned_child(self.cpus),
            )
        finally:
            log_file.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited while starting; see {self.log_path}")
            if http_ok(self.ready_url, timeout=0.5):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {timeout}s; see {self.log_path}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                terminate(self.proc, timeout)


@dataclass
class Stack:
    """Valkey + auth + room servers in a temp dir, on free ports; ``stop()`` ends them all.

    ``server_cpus`` / ``aux_cpus``: where the room servers and Valkey (server side) and auth
    (load-generator side) run when there are 2+ cores; None leaves them unpinned.
    """

    servers: int = 1
    server_args: list[str] = field(default_factory=list)
    server_cpus: set[int] | None = None
    redis_cpus: set[int] | None = None
    auth_cpus: set[int] | None = None
    supervise: bool = False
    #: Source tree of the room servers (see ``Child.root``); auth and Valkey run from ours.
    server_root: Path = REPO
    #: Run the room servers through bench/cpu_split.py, each writing ``cpu-split-sN.json``.
    cpu_split: bool = False
    tmp: str | None = None
    redis: EmbeddedRedis | None = None
    auth: Child | None = None
    children: list[Child] = field(default_factory=list)
    admin_ports: dict[str, int] = field(default_factory=dict)
    cluster_file: Path = Path()
    _stop_supervisor: threading.Event = field(default_factory=threading.Event)
    _supervisor: threading.Thread | None = None

    @property
    def dir(self) -> Path:
        assert self.tmp is not None
        return Path(self.tmp)

    def cpu_split_file(self, index: int) -> Path:
        return self.dir / f"cpu-split-s{index}.json"

    @property
    def redis_url(self) -> str:
        assert self.redis is not None
        return self.redis.url

    def start(self) -> Stack:
        from auth.keys import ensure_key_file

        self.tmp = tempfile.mkdtemp(prefix="stateroom-bench-")
        logs = self.dir / "logs"
        logs.mkdir()
        self.redis = EmbeddedRedis(self.dir / "redis").start()
        if self.redis_cpus is not None and self.redis.pid:
            pin(self.redis.pid, self.redis_cpus)
        key = self.dir / "auth-key.pem"
        ensure_key_file(key)
        auth_port = free_port()
        auth_url = f"http://127.0.0.1:{auth_port}"
        self.auth = Child(
            "auth",
            [
                "auth",
                "--host", "127.0.0.1",
                "--port", str(auth_port),
                "--redis", self.redis.url,
                "--key", str(key),
                # Hundreds of bots log in from one address; the default limit is 600/min.
                "--rate-limit-per-minute", "1000000",
                "--no-access-log",
            ],
            f"{auth_url}/healthz",
            logs / "auth.log",
            cpus=self.auth_cpus,
        )  # fmt: skip
        self.auth.start()
        for index in range(1, self.servers + 1):
            port = free_port()
            self.admin_ports[f"s{index}"] = free_port()
            args = [
                "server",
                "--host", "127.0.0.1",
                "--port", str(port),
                "--admin-port", str(self.admin_ports[f"s{index}"]),
                "--redis-url", self.redis.url,
                "--auth-url", auth_url,
                "--name", f"s{index}",
                # The load generator is one address with hundreds of players: lift the
                # per-address budgets (the per-player ones still apply).
                "--rooms-per-address-per-minute", "1000000",
                "--connections-per-address", "1000000",
                "--pending-per-address", "1000000",
                *self.server_args,
            ]  # fmt: skip
            self.children.append(
                Child(
                    f"s{index}",
                    args,
                    f"http://127.0.0.1:{port}/readyz",
                    logs / f"s{index}.log",
                    cpus=self.server_cpus,
                    root=self.server_root,
                    launcher=(
                        (str(REPO / "bench" / "cpu_split.py"), str(self.cpu_split_file(index)))
                        if self.cpu_split
                        else SERVER_CLI
                    ),
                )
            )
        for child in self.children:
            child.start()
        self.auth.wait_ready()
        for child in self.children:
            child.wait_ready()
        self.cluster_file = self.dir / "cluster.json"
        self.cluster_file.write_text(
            json.dumps(
                {
                    "redis_url": self.redis.url,
                    "auth_url": auth_url,
                    "servers": [
                        {"id": c.name, "ws_url": self.ws_url(c), "pid": c.pid}
                        for c in self.children
                    ],
                }
            )
        )
        if self.supervise:
            self._supervisor = threading.Thread(target=self._supervise, daemon=True)
            self._supervisor.start()
        return self

    @staticmethod
    def ws_url(child: Child) -> str:
        port = child.ready_url.split(":")[2].split("/")[0]
        return f"ws://127.0.0.1:{port}/v1/ws"

    def metrics_url(self, child: Child) -> str:
        """Metrics are served on the server's admin listener, not its player port."""
        return f"http://127.0.0.1:{self.admin_ports[child.name]}/metrics"

    def _supervise(self) -> None:
        """Restart a room server that died, as ``stateroom up`` does."""
        while not self._stop_supervisor.wait(0.1):
            for child in self.children:
                if not child.alive and not self._stop_supervisor.is_set():
                    child.restarts += 1
                    child.start()

    def all_ready(self) -> bool:
        return all(c.alive and http_ok(c.ready_url, timeout=0.5) for c in self.children)

    def stop(self) -> None:
        self._stop_supervisor.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=2)
        for child in self.children:
            if child.alive and child.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGCONT)
                    child.proc.terminate()
        for child in self.children:
            child.stop()
        if self.auth is not None:
            self.auth.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.tmp is not None:
            if os.environ.get("BENCH_KEEP"):
                log(f"BENCH_KEEP: logs kept in {self.dir / 'logs'}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


class BotsProcess:
    """The load generator in a child process (``loadgen_main`` below), pinned if asked."""

    def __init__(
        self,
        cluster_file: Path,
        room: str,
        count: int,
        seconds: float,
        rooms_of: int = 0,
        cpus: set[int] | None = None,
        log_path: Path | None = None,
        rate: float = 0.0,
    ) -> None:
        args = [
            sys.executable, str(Path(__file__).resolve()), "loadgen",
            "--cluster", str(cluster_file),
            "--room", room,
            "--count", str(count),
            "--seconds", str(seconds),
            "--json",
        ]  # fmt: skip
        if rooms_of:
            args += ["--rooms-of", str(rooms_of)]
        if rate:
            args += ["--rate", str(rate)]  # inputs per second per bot (default 20)
        self.seconds = seconds
        self.count = count
        self.stderr_path = log_path or cluster_file.parent / "bots.log"
        err = open(self.stderr_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                args,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                preexec_fn=_pinned_child(cpus),
            )
        finally:
            err.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"bots did not finish within {timeout:.0f}s") from None
        lines = [line for line in out.decode().splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError(
                f"bots exited {self.proc.returncode} without a summary; see {self.stderr_path}"
            )
        summary: dict[str, Any] = json.loads(lines[-1])
        return summary

    def log_tail(self, chars: int = 600) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_for(predicate: Any, timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


# -- one arena point ---------------------------------------------------------------------------

WARMUP_S = 2.0
IDLE_S = 2.0


def placement() -> dict[str, Any]:
    """Which CPU runs what (only when there are 2+ cores)."""
    if cpu_count() < 2:
        return {"pinned": False, "cpus": cpu_count()}
    return {
        "pinned": True,
        "room_server_cpu": 0,
        "valkey_cpu": 0,
        "auth_cpu": 1,
        "load_generator_cpu": 1,
        "bench_driver_cpu": 1,
    }


def arena_stack(durable: bool, extra: list[str] | None = None) -> Stack:
    two = cpu_count() >= 2
    args = ["--games", BENCH_ARENA]
    if not durable:
        args.append("--no-durable")
    return Stack(
        servers=1,
        server_args=[*args, *(extra or [])],
        server_cpus={0} if two else None,
        redis_cpus={0} if two else None,
        auth_cpus={1} if two else None,
    )


_BOT_KEYS = (
    "players",
    "login_retries",
    "failed_players",
    "inputs_sent",
    "inputs_acked",
    "lost_acked_inputs",
    "duplicate_inputs",
    "rollbacks",
    "reconnects",
    "errors",
    "failures",
)


def _evicted(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key in after:
        if key.startswith("stateroom_evicted_clients_total{"):
            delta = int(metric_delta(after, before, key))
            if delta:
                out[key.split('reason="', 1)[1].split('"', 1)[0]] = delta
    return out


def measure_arena_point(
    stack: Stack, scenario: str, n: int, seconds: float, durable: bool, room: str
) -> dict[str, Any]:
    """Bots join, warm up ``WARMUP_S``, then ``seconds`` of measured play."""
    two = cpu_count() >= 2
    server = stack.children[0]
    metrics_url = stack.metrics_url(server)
    rooms_of = 4 if scenario == "rooms_of_4" else 0
    # The server's own background work (registry heartbeat, failover watcher) with no player.
    idle = CpuWindow({"server": server.pid})
    idle.start()
    time.sleep(IDLE_S)
    idle.stop()
    base = scrape(metrics_url)
    base_players = base.get("stateroom_players", 0.0)
    bots = BotsProcess(
        stack.cluster_file,
        room,
        n,
        WARMUP_S + seconds + 1.0,
        rooms_of=rooms_of,
        cpus={1} if two else None,
        log_path=stack.dir / "logs" / f"bots-{room}.log",
    )
    try:
        join_started = time.monotonic()
        wait_for(
            lambda: (
                scrape(metrics_url).get("stateroom_players", 0.0) - base_players >= n
                or bots.proc.poll() is not None
            ),
            timeout=60 + n * 0.2,
            what=f"{n} bots to join",
            step=0.1,
        )
        join_s = time.monotonic() - join_started
        time.sleep(WARMUP_S)
        if bots.proc.poll() is not None:
            # Not every bot stayed connected long enough to be counted (refused, evicted...).
            summary = bots.result(timeout=10)
            now = scrape(metrics_url)
            return {
                "scenario": scenario,
                "n": n,
                "durable": durable,
                "error": "the bots ended before all N were connected at once: no measured window",
                "peak_note": "see players/failed_players/failures/evicted_clients",
                "evicted_clients": _evicted(now, base),
                **{k: summary.get(k) for k in _BOT_KEYS},
                "latency_ms": summary.get("latency_ms"),
            }
        assert stack.redis is not None and stack.redis.pid is not None
        assert stack.auth is not None
        window = CpuWindow(
            {
                "server": server.pid,
                "loadgen": bots.pid,
                "redis": stack.redis.pid,
                "auth": stack.auth.pid,
                "driver": os.getpid(),
            }
        )
        machine = MachineWindow(
            window, {0: ["server", "redis"], 1: ["loadgen", "auth", "driver"]} if two else {}
        )
        before = scrape(metrics_url)
        machine.start()
        window.start()
        time.sleep(seconds)
        window.stop()
        machine.stop()
        after = scrape(metrics_url)
        rss = proc_rss_mb(server.pid)
        summary = bots.result(timeout=seconds + 60)
    finally:
        bots.kill()
    applied = metric_delta(after, before, 'stateroom_inputs_total{verdict="accepted"}')
    server_cores = window.cores("server")
    loadgen_cores = window.cores("loadgen")
    evicted = _evicted(after, base)
    point: dict[str, Any] = {
        "scenario": scenario,
        "n": n,
        "rooms": n // 4 if rooms_of else 1,
        "durable": durable,
        "window_s": round(window.wall, 2),
        "server_cpu_cores": round(server_cores, 4),
        "server_idle_cpu_cores": round(idle.cores("server"), 4),
        # Meaningless when the load generator could not offer the load (clients evicted...).
        "cpu_us_per_input": (
            round(window.used["server"] / applied * 1e6, 1)
            if applied >= 0.5 * n * 20.0 * window.wall
            else None
        ),
        "inputs_applied_in_window": int(applied),
        "inputs_applied_per_s": round(applied / window.wall, 1) if window.wall else 0.0,
        "redis_cpu_cores": round(window.cores("redis"), 4),
        "loadgen_cpu_cores": round(loadgen_cores, 4),
        # The load generator's core was full (by itself, or with other processes on it).
        "loadgen_saturated": loadgen_cores >= 0.9
        or (two and machine.busy_cores().get("cpu1", 0.0) >= 0.95),
        # Inputs applied / inputs the scenario asks for (N x 20/s): under ~0.95 the load
        # generator could not keep its rate (saturated, or starved of CPU by other processes).
        "offered_rate_ratio": round(applied / window.wall / (n * 20.0), 3) if window.wall else 0,
        "other_processes_cpu_cores": machine.others_cores() if two else None,
        "busy_cores": machine.busy_cores() if two else None,
        "latency_ms": summary.get("latency_ms"),
        "rss_mb": rss,
        "tick_ms": {
            "mean": histogram_mean_ms(after, before, "stateroom_tick_seconds"),
            "p99_bucket_upper": histogram_quantile_ms(
                after, before, "stateroom_tick_seconds", 0.99
            ),
        },
        "tick_overruns": int(metric_delta(after, before, "stateroom_tick_overruns_total")),
        "journal_write_ms_mean": histogram_mean_ms(
            after, before, "stateroom_journal_write_seconds"
        ),
        "bytes_out_per_s": round(
            metric_delta(after, before, "stateroom_bytes_out_total") / window.wall
        ),
        # What the server wrote per player per tick (states and the rest, without the
        # WebSocket frame headers): the issue-8 measure, with v2 clients' deltas.
        "bytes_per_player_per_tick": round(
            metric_delta(after, before, "stateroom_bytes_out_total") / window.wall / (n * 20.0),
            2,
        ),
        "evicted_clients": evicted,
        "join_s": round(join_s, 2),
    }
    for key in _BOT_KEYS:
        point[key] = summary.get(key)
    point["bots_seconds"] = round(bots.seconds, 1)
    notes = []
    if point["loadgen_saturated"]:
        notes.append(
            "the load generator used >= 0.9 cores, or its core was >= 95% busy with other "
            "processes: latency is inflated by the load generator, not only the server"
        )
    if point["offered_rate_ratio"] < 0.95:
        notes.append(
            "the server applied fewer inputs than N x 20/s: the load generator fell behind "
            "(see loadgen_cpu_cores and other_processes_cpu_cores), so latency is not the "
            "server's alone"
        )
    others = point["other_processes_cpu_cores"] or {}
    if any(v >= 0.2 for v in others.values()):
        notes.append(
            "other processes on this machine used >= 0.2 of a core we pinned to: the figures "
            "are contaminated by them"
        )
    if notes:
        point["notes"] = notes
    return point


# -- the load generator ------------------------------------------------------------------------


def loadgen_main(argv: list[str]) -> int:
    """``client.bots.run_bots`` (what ``stateroom bots --json`` runs) and print its summary.

    One difference, counted in ``login_retries``: a guest login refused with 503 (the login
    service's Redis pool is capped at redis-py's default 100 connections, so a burst of more
    than ~100 concurrent logins gets "Too many connections") is retried after a short pause,
    as a real client honouring Retry-After would, instead of failing the bot.
    """
    import argparse
    import asyncio
    import random

    from client import sdk
    from client.bots import run_bots
    from infra.cluster_file import load_cluster
    from infra.eventloop import run_loop

    parser = argparse.ArgumentParser(prog="bench loadgen")
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--room", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--rooms-of", type=int, default=0)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    retries = {"login_retries": 0}
    original = sdk.AuthClient.guest

    async def guest_with_retry(self: sdk.AuthClient, name: str | None = None) -> sdk.Tokens:
        for _attempt in range(30):
            try:
                return await original(self, name)
            except sdk.LoginError as exc:
                if exc.status != 503:
                    raise
                retries["login_retries"] += 1
                await asyncio.sleep(random.uniform(0.1, 0.5))
        return await original(self, name)

    sdk.AuthClient.guest = guest_with_retry  # type: ignore[method-assign]
    summary: dict[str, Any] = {}

    # The reference scenario's clients speak protocol 1 (full states: what earlier figures
    # were measured with, and light to decode); STATEROOM_BENCH_PROTOCOL=2 measures v2
    # (deltas), whose Python decoding costs the load generator ~0.2 ms per state at N=200.
    protocol = int(os.environ.get("STATEROOM_BENCH_PROTOCOL", "1"))
    from client.bots import BotOptions

    async def main() -> None:
        summary.update(
            await run_bots(
                load_cluster(Path(args.cluster)),
                args.room,
                args.count,
                args.seconds,
                rooms_of=args.rooms_of,
                rate=args.rate,
                setup=BotOptions(protocol=protocol),
            )
        )

    run_loop(main())
    summary.update(retries)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["loadgen"]:
        sys.exit(loadgen_main(sys.argv[2:]))
    sys.exit("usage: common.py loadgen --cluster F --room R --count N --seconds S [--rooms-of K]")
