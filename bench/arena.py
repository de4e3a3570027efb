"""The reference arena scenario (DESIGN.md "Performance: how it is measured"), driven by a load
generator that does not saturate before the server.

N players each send an input every 50 ms; the room ticks at 20 Hz and sends the full state to
every player every tick (protocol 1; ``--protocol 2``: deltas). Points: N in one room, and N/4
rooms of 4 in increasing N until the room server's core is full. For each point a fresh
Valkey + auth + ONE room server (``python -m server.cli server``, what ``stateroom server``
runs: durable by default, journal before publish and checkpoints) on free ports; the room
server and Valkey are pinned to CPU 0, the load generator, auth and this driver to CPU 1.

The load generator (bench/loadgen/) is one Node process by default: a few probe players time
input -> ack, the others drain their sockets. A point where it is the limit (its CPU, its
event-loop delay, its input schedule or its core) is marked ``loadgen_saturated`` and its
latency is not reported as the server's (null, with the reason).

``--compare REF`` runs every point also against a ``git worktree`` of REF (its own server
code, this venv), interleaved with the current tree in the same run, and prints the ratios
(current / REF). Prints ONE JSON object on stdout; progress goes to stderr.

Run: .venv/bin/python bench/arena.py [--quick] [--compare HEAD~1] [--loadgen node|python]
     [--one-room 100,200,400,800] [--rooms-of-4 400,800,1200,...] [--seconds 10]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import cpu_split
from bench.common import (
    REPO,
    CpuWindow,
    MachineWindow,
    Stack,
    cpu_busy_seconds,
    cpu_count,
    emit,
    histogram_mean_ms,
    histogram_quantile_ms,
    log,
    metric_delta,
    placement,
    proc_rss_mb,
    scrape,
)
from infra.embedded_redis import die_with_parent

LOADGEN_DIR = REPO / "bench" / "loadgen"
SCENARIOS = ("one_room", "rooms_of_4")
BENCH_GAME = "bench.worldgame:BenchArena"
ONE_ROOM = (100, 200, 400, 800)
ROOMS_OF_4 = (200, 400, 800, 1200, 1600, 2000, 2400, 2800, 3200)
QUICK_ONE_ROOM = (100, 200)
QUICK_ROOMS_OF_4 = (200, 800)
#: The issue-10 outside measurement (Node load generator, same machine), for scale.
REFERENCE = {
    "source": "issue 10 (outside Node load generator, server pinned to one core)",
    "colyseus_0_18_cpu_us_per_input": {"one_room_200": 33, "rooms_of_4_800": 31.5},
    "stateroom_before_cpu_us_per_input": {"one_room_200": 58, "rooms_of_4_800": 60},
    "stateroom_before_p99_ms": {"one_room_200": 55.5, "rooms_of_4_400": 108, "rooms_of_4_800": 316},
}


# -- the trees under test ----------------------------------------------------------------------


@dataclass
class Tree:
    """A checkout whose room server is measured: this one ("current") or a worktree of REF."""

    name: str
    root: Path
    commit: str
    dirty: bool
    ref: str | None = None


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def current_tree() -> Tree:
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return Tree("current", REPO, git("rev-parse", "HEAD"), dirty)


def ref_tree(ref: str, parent: Path) -> Tree:
    """A detached ``git worktree`` of ``ref`` (removed by ``drop_ref_tree``)."""
    try:
        commit = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    except subprocess.CalledProcessError:
        raise SystemExit(
            f"bench/arena.py: --compare {ref!r} is not a commit of this repo"
        ) from None
    root = parent / f"ref-{commit[:10]}"
    git("worktree", "add", "--detach", str(root), commit)
    if not (root / "bench" / "worldgame.py").exists():
        # An old ref without the bench's game: give it ours (the same arena rules).
        shutil.copy(REPO / "bench" / "worldgame.py", root / "bench" / "worldgame.py")
    return Tree("ref", root, commit, False, ref)


def drop_ref_tree(tree: Tree) -> None:
    with contextlib.suppress(subprocess.CalledProcessError):
        git("worktree", "remove", "--force", str(tree.root))
    with contextlib.suppress(subprocess.CalledProcessError):
        git("worktree", "prune")


# -- the load generator ------------------------------------------------------------------------


def node_modules(npm: str) -> dict[str, Any]:
    """Make sure the Node load generator finds @msgpack/msgpack; say where from.

    ``npm=auto`` runs ``npm ci`` in bench/loadgen when its node_modules is missing or older
    than its package-lock.json; ``never`` uses what is there: bench/loadgen's, else
    client/js's (``make js-deps`` installs the same package there), as the smoke test does.
    The directory is handed to the Node processes in STATEROOM_LOADGEN_MODULES.
    """
    lock = LOADGEN_DIR / "package-lock.json"
    stamp = LOADGEN_DIR / "node_modules" / ".package-lock.json"
    fresh = stamp.exists() and stamp.stat().st_mtime >= lock.stat().st_mtime
    if not fresh and npm == "auto":
        if shutil.which("npm") is None:
            raise SystemExit(
                "bench/arena.py: npm not found; install Node >= 20 or --loadgen python"
            )
        log("npm ci in bench/loadgen")
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=LOADGEN_DIR, check=True
        )
        fresh = True
    if shutil.which("node") is None:
        raise SystemExit("bench/arena.py: node not found; install Node >= 20 or --loadgen python")
    for base in (LOADGEN_DIR, REPO / "client" / "js"):
        if (base / "node_modules" / "@msgpack" / "msgpack" / "package.json").exists():
            os.environ["STATEROOM_LOADGEN_MODULES"] = str(base)
            return {"node_modules": str(base / "node_modules")}
    raise SystemExit(
        "bench/arena.py: no @msgpack/msgpack for the Node load generator: run `npm ci` in "
        "bench/loadgen (or leave out --npm never), or `make js-deps`"
    )


def _on_cpu(cpus: set[int] | None) -> Any:
    def preexec() -> None:
        die_with_parent()
        if cpus is not None:
            os.sched_setaffinity(0, cpus)  # what `taskset -c` does

    return preexec


class LoadGen:
    """The load generator in a child process, driven over stdin, read over stdout (JSON lines)."""

    def __init__(self, kind: str, argv: list[str], cpus: set[int] | None, log_path: Path) -> None:
        if kind == "node":
            cmd = ["node", str(LOADGEN_DIR / "loadgen.mjs"), *argv]
        elif kind == "standin":
            cmd = ["node", str(LOADGEN_DIR / "standin.mjs"), *argv]
        else:
            cmd = [sys.executable, str(LOADGEN_DIR / "loadgen.py"), *argv]
        self.log_path = log_path
        err = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                preexec_fn=_on_cpu(cpus),
            )
        finally:
            err.close()
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def event(self, name: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {name!r} from the load generator in {timeout:.0f}s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(
                    f"the load generator exited ({self.proc.wait()}) before {name!r}: "
                    f"{self.log_tail()}"
                )
            with contextlib.suppress(ValueError):
                obj: dict[str, Any] = json.loads(line)
                if obj.get("event") == name:
                    return obj

    def command(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def log_tail(self, chars: int = 400) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.command("quit")
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- one point ---------------------------------------------------------------------------------


@dataclass
class Options:
    loadgen: str
    seconds: float
    warmup: float
    idle: float
    durable: bool
    protocol: int
    probes: int
    max_loadgen_cpu: float
    max_loop_delay_ms: float
    core_full: float
    server_args: tuple[str, ...] = ()
    ref_server_args: tuple[str, ...] = ()
    quiet_wait: float = 0.0
    cpu_split: bool = False


def wait_quiet(limit_s: float, busy_below: float = 0.15) -> float:
    """Wait (up to ``limit_s``) for 2 s in which every CPU is less than ``busy_below`` busy
    (other processes: ours are all stopped between points). Returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        before = cpu_busy_seconds()
        time.sleep(2.0)
        after = cpu_busy_seconds()
        if all((after[c] - before[c]) / 2.0 < busy_below for c in before):
            break
    return round(time.monotonic() - started, 1)


def read_split(stack: Stack) -> dict[str, Any]:
    """The room server's latest cpu_split snapshot (written every second)."""
    return json.loads(stack.cpu_split_file(1).read_text())


def stack_for(tree: Tree, opts: Options) -> Stack:
    two = cpu_count() >= 2
    args = ["--games", BENCH_GAME]
    if not opts.durable:
        args.append("--no-durable")
    args += opts.ref_server_args if tree.name == "ref" else opts.server_args
    return Stack(
        servers=1,
        server_args=args,
        server_cpus={0} if two else None,
        redis_cpus={0} if two else None,
        auth_cpus={1} if two else None,
        server_root=tree.root,
        cpu_split=opts.cpu_split,
    )


def _evicted(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key in after:
        if key.startswith("stateroom_evicted_clients_total{"):
            delta = int(metric_delta(after, before, key))
            if delta:
                out[key.split('reason="', 1)[1].split('"', 1)[0]] = delta
    return out


def per_message(cpu_s: float, report: dict[str, Any]) -> float | None:
    """The load generator's CPU per message it handled (inputs sent + states received): its
    cost, whatever share of its core other processes left it."""
    messages = report["inputs_sent"] + report["states_received"]
    return round(cpu_s / messages * 1e6, 2) if messages else None


def schedule_ratio(report: dict[str, Any]) -> float | None:
    """Inputs sent / inputs due (None when nothing was due: nobody seated)."""
    due = report["inputs_sent"] + report["inputs_skipped"]
    return round(report["inputs_sent"] / due, 3) if due else None


def saturation(point: dict[str, Any], report: dict[str, Any], opts: Options) -> list[str]:
    """Why the load generator, not the server, may be the limit at this point (empty: it isn't)."""
    reasons = []
    if point["loadgen_cpu_cores"] > opts.max_loadgen_cpu:
        reasons.append(f"its CPU {point['loadgen_cpu_cores']:.2f} > {opts.max_loadgen_cpu} cores")
    lag = (report.get("event_loop_delay_ms") or {}).get("p99")
    if lag is not None and lag > opts.max_loop_delay_ms:
        reasons.append(f"its event-loop delay p99 {lag:.1f} > {opts.max_loop_delay_ms} ms")
    if point["loadgen_schedule_ratio"] is not None and point["loadgen_schedule_ratio"] < 0.95:
        reasons.append(
            f"it sent {point['loadgen_schedule_ratio']:.0%} of its scheduled inputs (behind)"
        )
    # Not a reason by itself: its core being busy with other processes (that shows in the
    # event-loop delay and the schedule if it hurts; it is a note below).
    return reasons


def measure(tree: Tree, scenario: str, n: int, opts: Options) -> dict[str, Any]:
    """One point: a fresh stack from ``tree``, N players, warm-up, one measured window."""
    two = cpu_count() >= 2
    rooms_of = 4 if scenario == "rooms_of_4" else 0
    point: dict[str, Any] = {
        "scenario": scenario,
        "n": n,
        "rooms": n // 4 if rooms_of else 1,
        "tree": tree.name,
        "commit": tree.commit[:12],
        "durable": opts.durable,
        "protocol": opts.protocol,
        "loadgen": opts.loadgen,
    }
    stack = stack_for(tree, opts)
    gen: LoadGen | None = None
    if opts.quiet_wait:
        point["waited_for_quiet_s"] = wait_quiet(opts.quiet_wait)
    stage = "starting Valkey, auth and the room server"
    try:
        stack.start()
        server = stack.children[0]
        metrics_url = stack.metrics_url(server)
        idle = CpuWindow({"server": server.pid})
        idle.start()
        time.sleep(opts.idle)
        idle.stop()
        stage = "reading the server's /metrics"
        base = scrape(metrics_url)
        cluster = json.loads(stack.cluster_file.read_text())
        argv = [
            "--auth-url", cluster["auth_url"],
            "--ws-url", cluster["servers"][0]["ws_url"],
            "--room", f"bench-{scenario}-{n}",
            "--count", str(n),
            "--rooms-of", str(rooms_of),
            "--probes", str(opts.probes),
            "--protocol", str(opts.protocol),
        ]  # fmt: skip
        gen = LoadGen(
            opts.loadgen, argv, {1} if two else None, stack.dir / "logs" / f"loadgen-{n}.log"
        )
        stage = "logging in and seating the players"
        joined = gen.event("joined", timeout=60 + n * 0.05)
        point.update(
            join_s=joined["join_s"],
            login_s=joined["login_s"],
            seated=joined["seated"],
            failed_players=joined["failed"],
            login_retries=joined["login_retries"],
            probes=joined["probes"],
        )
        if joined["failed"]:
            point["join_failures"] = joined["failures"]
        if joined["seated"] == 0:
            point["error"] = f"no player could join: {joined['failures']}"
            return point
        time.sleep(opts.warmup)
        assert stack.redis is not None and stack.redis.pid is not None
        assert stack.auth is not None
        window = CpuWindow(
            {
                "server": server.pid,
                "loadgen": gen.pid,
                "redis": stack.redis.pid,
                "auth": stack.auth.pid,
                "driver": os.getpid(),
            }
        )
        machine = MachineWindow(
            window, {0: ["server", "redis"], 1: ["loadgen", "auth", "driver"]} if two else {}
        )
        stage = "the measured window"
        before = scrape(metrics_url)
        split_before = read_split(stack) if opts.cpu_split else None
        gen.command("window")
        machine.start()
        window.start()
        time.sleep(opts.seconds)
        window.stop()
        machine.stop()
        if split_before is not None:
            point["cpu_split"] = cpu_split.split(split_before, read_split(stack))
        gen.command("report")
        after = scrape(metrics_url)
        point["rss_mb"] = proc_rss_mb(server.pid)
        report = gen.event("report", timeout=30)
    except (RuntimeError, TimeoutError, OSError) as exc:
        point["error"] = f"{stage}: {exc}"
        return point
    finally:
        if gen is not None:
            gen.stop()
        stack.stop()
    return point | analyse(point, report, window, machine, before, after, base, idle, opts)


def analyse(
    point: dict[str, Any],
    report: dict[str, Any],
    window: CpuWindow,
    machine: MachineWindow,
    before: dict[str, float],
    after: dict[str, float],
    base: dict[str, float],
    idle: CpuWindow,
    opts: Options,
) -> dict[str, Any]:
    n = point["n"]
    wall = window.wall
    wanted = n * 20.0 * wall
    applied = metric_delta(after, before, 'stateroom_inputs_total{verdict="accepted"}')
    out_bytes = metric_delta(after, before, "stateroom_bytes_out_total")
    two = cpu_count() >= 2
    res: dict[str, Any] = {
        "window_s": round(wall, 2),
        "server_cpu_cores": round(window.cores("server"), 4),
        "server_idle_cpu_cores": round(idle.cores("server"), 4),
        # Meaningless when the load was not offered (players missing, evicted...).
        "cpu_us_per_input": (
            round(window.used["server"] / applied * 1e6, 1) if applied >= 0.5 * wanted else None
        ),
        "inputs_applied_per_s": round(applied / wall, 1),
        "offered_rate_ratio": round(applied / wanted, 3),
        "redis_cpu_cores": round(window.cores("redis"), 4),
        "bytes_out_per_s": round(out_bytes / wall),
        "bytes_per_player_per_tick": round(out_bytes / wall / (n * 20.0), 2),
        # What a player received per state, as the load generator counted it (WebSocket
        # header included): unlike per tick, it holds when an overloaded server skips ticks.
        "bytes_per_player_per_update": (
            round(report["bytes_received"] / report["states_received"], 1)
            if report["states_received"]
            else None
        ),
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
        "evicted_clients": _evicted(after, base),
        "loadgen_cpu_cores": round(window.cores("loadgen"), 4),
        "loadgen_self_cpu_cores": report.get("cpu_cores"),
        "loadgen_event_loop_delay_ms": report.get("event_loop_delay_ms"),
        "loadgen_inputs_per_s": round(report["inputs_sent"] / report["window_s"], 1),
        # Inputs sent / inputs its schedule asked of the players seated (skipped: the
        # process was so late that it dropped whole slots of its schedule).
        "loadgen_schedule_ratio": schedule_ratio(report),
        "loadgen_states_per_s": round(report["states_received"] / report["window_s"], 1),
        "loadgen_bytes_in_per_s": round(report["bytes_received"] / report["window_s"]),
        "loadgen_cpu_us_per_message": per_message(window.used["loadgen"], report),
        "probe_states": report["probe_states_decoded"],
        "probe_inputs_seen": report["probe_inputs_seen"],
        "latency_ms_raw": report.get("latency_ms"),
        "lost_acked_inputs": report["lost_acked_inputs"],
        "duplicate_inputs": report["duplicate_inputs"],
        "rollbacks": report["rollbacks"],
        "seq_resets": report["seq_resets"],
        "errors": report["errors"],
        "closes": report["closes"],
        "closes_since_join": report["closes_total"],
        "seated_at_end": report["seated"],
        "auth_cpu_cores": round(window.cores("auth"), 4),
        "driver_cpu_cores": round(window.cores("driver"), 4),
        "other_processes_cpu_cores": machine.others_cores() if two else None,
        "busy_cores": machine.busy_cores() if two else None,
    }
    # Its core is full: by the server itself, or with Valkey and whatever else runs there.
    res["server_core_full"] = res["server_cpu_cores"] >= opts.core_full or (
        two and (res["busy_cores"] or {}).get("cpu0", 0.0) >= 0.97
    )
    reasons = saturation({**point, **res}, report, opts)
    res["loadgen_saturated"] = bool(reasons)
    if reasons:
        res["loadgen_saturated_reasons"] = reasons
        res["latency_ms"] = None
        res["latency_null_reason"] = (
            "the load generator was the limit here (" + "; ".join(reasons) + "): its latency "
            "is not the server's (latency_ms_raw has what the probes saw)"
        )
    else:
        res["latency_ms"] = report.get("latency_ms")
    notes = []
    if report["seated"] < n:
        notes.append(
            f"{n - report['seated']} of {n} players were closed by the server before the end of "
            "the window (closes_since_join, evicted_clients)"
        )
    if report["seated"] == 0:
        res["error"] = (
            f"every player was closed before the end of the window: {res['closes_since_join']}"
        )
    if res["offered_rate_ratio"] < 0.95:
        notes.append(
            "the server applied fewer than 95% of N x 20 inputs/s (players missing, evicted, "
            "or inputs refused: see closes, errors, evicted_clients)"
        )
    if any(v >= 0.2 for v in (res["other_processes_cpu_cores"] or {}).values()):
        notes.append(
            "other processes used >= 0.2 of a core we pinned to: the figures are contaminated"
        )
    if notes:
        res["notes"] = notes
    return res


def measure_standin(scenario: str, n: int, opts: Options) -> dict[str, Any]:
    """The load generator's own ceiling: N players against bench/loadgen/standin.mjs (a
    stand-in server that costs little) on CPU 0, instead of a room server."""
    two = cpu_count() >= 2
    rooms_of = 4 if scenario == "rooms_of_4" else 0
    point: dict[str, Any] = {
        "scenario": scenario,
        "n": n,
        "rooms": n // 4 if rooms_of else 1,
        "tree": "standin",
        "loadgen": opts.loadgen,
    }
    if opts.quiet_wait:
        point["waited_for_quiet_s"] = wait_quiet(opts.quiet_wait)
    stack = Stack(servers=0, redis_cpus={0} if two else None, auth_cpus={1} if two else None)
    standin: LoadGen | None = None
    gen: LoadGen | None = None
    try:
        stack.start()
        logs = stack.dir / "logs"
        standin = LoadGen("standin", [], {0} if two else None, logs / "standin.log")
        port = standin.event("listening", timeout=20)["port"]
        argv = [
            "--auth-url", json.loads(stack.cluster_file.read_text())["auth_url"],
            "--ws-url", f"ws://127.0.0.1:{port}/v1/ws",
            "--room", f"standin-{scenario}-{n}",
            "--count", str(n),
            "--rooms-of", str(rooms_of),
            "--probes", str(opts.probes),
        ]  # fmt: skip
        gen = LoadGen(opts.loadgen, argv, {1} if two else None, logs / f"loadgen-{n}.log")
        joined = gen.event("joined", timeout=60 + n * 0.05)
        point.update(join_s=joined["join_s"], seated=joined["seated"], failed=joined["failed"])
        time.sleep(opts.warmup)
        window = CpuWindow({"standin": standin.pid, "loadgen": gen.pid, "driver": os.getpid()})
        machine = MachineWindow(window, {0: ["standin"], 1: ["loadgen", "driver"]} if two else {})
        gen.command("window")
        machine.start()
        window.start()
        time.sleep(opts.seconds)
        window.stop()
        machine.stop()
        gen.command("report")
        report = gen.event("report", timeout=30)
    except (RuntimeError, TimeoutError, OSError) as exc:
        point["error"] = str(exc)
        return point
    finally:
        for child in (gen, standin):
            if child is not None:
                child.stop()
        stack.stop()
    res: dict[str, Any] = {
        "window_s": round(window.wall, 2),
        "standin_cpu_cores": round(window.cores("standin"), 4),
        "loadgen_cpu_cores": round(window.cores("loadgen"), 4),
        "loadgen_event_loop_delay_ms": report.get("event_loop_delay_ms"),
        "loadgen_inputs_per_s": round(report["inputs_sent"] / report["window_s"], 1),
        "loadgen_schedule_ratio": schedule_ratio(report),
        "loadgen_states_per_s": round(report["states_received"] / report["window_s"], 1),
        "loadgen_bytes_in_per_s": round(report["bytes_received"] / report["window_s"]),
        "loadgen_cpu_us_per_message": per_message(window.used["loadgen"], report),
        "latency_ms_raw": report.get("latency_ms"),
        "seated_at_end": report["seated"],
        "other_processes_cpu_cores": machine.others_cores() if two else None,
        "busy_cores": machine.busy_cores() if two else None,
    }
    reasons = saturation({**point, **res}, report, opts)
    res["loadgen_saturated"] = bool(reasons)
    if reasons:
        res["loadgen_saturated_reasons"] = reasons
    return point | res


def served(point: dict[str, Any]) -> bool:
    """Served: everyone seated and kept, nothing lost, the load offered, server p99 < 100 ms."""
    latency = point.get("latency_ms") or {}
    return (
        point.get("error") is None
        and point.get("failed_players") == 0
        and point.get("seated_at_end") == point["n"]
        and point.get("lost_acked_inputs") == 0
        and point.get("duplicate_inputs") == 0
        and point.get("rollbacks") == 0
        and not point.get("evicted_clients")
        and (point.get("offered_rate_ratio") or 0) >= 0.95
        and latency.get("p99") is not None
        and float(latency["p99"]) < 100.0
    )


# -- the run -----------------------------------------------------------------------------------


def compact(p: dict[str, Any]) -> str:
    """One progress line per point (stderr)."""
    lat = p.get("latency_ms") or p.get("latency_ms_raw") or {}
    eld = p.get("loadgen_event_loop_delay_ms") or {}
    if "standin_cpu_cores" in p:
        server = f"standin {p['standin_cpu_cores']} cores"
    else:
        server = (
            f"server {p.get('server_cpu_cores', '-')} cores, "
            f"{p.get('cpu_us_per_input', '-')} us/input, rss {p.get('rss_mb', '-')} MB"
        )
    return (
        f"{p['tree']:>7} {p['scenario']:>10} n={p['n']:<5} {server}, "
        f"p50/p99 {lat.get('p50', '-')}/{lat.get('p99', '-')} ms; "
        f"loadgen {p.get('loadgen_cpu_cores', '-')} cores, lag p99 {eld.get('p99', '-')} ms, "
        f"schedule {p.get('loadgen_schedule_ratio', '-')}"
        + (" SATURATED (latency not the server's)" if p.get("loadgen_saturated") else "")
        + (f" ERROR {p['error']}" if p.get("error") else "")
    )


def median_of(points: list[dict[str, Any]], key: str, sub: str | None = None) -> float | None:
    values = []
    for p in points:
        v = p.get(key)
        if sub is not None:
            v = (v or {}).get(sub)
        if isinstance(v, int | float):
            values.append(float(v))
    return statistics.median(values) if values else None


def ratio(after: float | None, before: float | None) -> float | None:
    return round(after / before, 3) if after is not None and before else None


def largest_served(points: list[dict[str, Any]], tree: str, scenario: str) -> int | None:
    ns = {p["n"] for p in points if p["tree"] == tree and p["scenario"] == scenario}
    best = None
    for n in sorted(ns):
        runs = [
            p for p in points if p["tree"] == tree and p["scenario"] == scenario and p["n"] == n
        ]
        if runs and all(served(p) for p in runs):
            best = n
    return best


def comparable(p: dict[str, Any]) -> bool:
    """A run whose figures describe the scenario: everyone kept, the load offered."""
    return (
        p.get("error") is None
        and p.get("seated_at_end") == p["n"]
        and (p.get("offered_rate_ratio") or 0) >= 0.95
    )


def comparison(points: list[dict[str, Any]], ref: Tree) -> dict[str, Any]:
    rows = []
    keys = sorted({(p["scenario"], p["n"]) for p in points}, key=lambda k: (k[0], k[1]))
    for scenario, n in keys:
        runs = {
            t: [p for p in points if p["tree"] == t and p["scenario"] == scenario and p["n"] == n]
            for t in ("ref", "current")
        }
        if not runs["ref"] or not runs["current"]:
            continue
        row: dict[str, Any] = {"scenario": scenario, "n": n}
        # Only runs where the load was offered and kept are compared: a point whose players
        # were closed, or whose server fell behind, has figures of a different scenario.
        kept = {t: [p for p in v if comparable(p)] for t, v in runs.items()}
        if not kept["ref"] or not kept["current"]:
            row["comparable"] = False
            row["why"] = (
                "no run of "
                + " and ".join(t for t in ("ref", "current") if not kept[t])
                + " kept every player with the load offered (see its points)"
            )
        else:
            row["comparable"] = True
        for key, sub in (
            ("cpu_us_per_input", None),
            ("server_cpu_cores", None),
            ("latency_ms", "p99"),
            ("latency_ms", "p50"),
            ("rss_mb", None),
            ("bytes_per_player_per_update", None),
            ("bytes_per_player_per_tick", None),
        ):
            name = f"{key}.{sub}" if sub else key
            before = median_of(kept["ref"], key, sub)
            after = median_of(kept["current"], key, sub)
            row[name] = {"before": before, "after": after, "ratio": ratio(after, before)}
        row["loadgen_saturated"] = any(p.get("loadgen_saturated") for v in runs.values() for p in v)
        rows.append(row)
    largest = {t: largest_served(points, t, "rooms_of_4") for t in ("ref", "current")}
    return {
        "ref": ref.ref,
        "ref_commit": ref.commit,
        "ratios": rows,
        "largest_n_rooms_of_4_p99_under_100ms": {
            "before": largest["ref"],
            "after": largest["current"],
            "ratio": ratio(
                float(largest["current"]) if largest["current"] else None,
                float(largest["ref"]) if largest["ref"] else None,
            ),
        },
        "targets": targets(rows, largest),
    }


def targets(rows: list[dict[str, Any]], largest: dict[str, int | None]) -> dict[str, Any]:
    """Issue 10's targets, as met / not met / unknown (None) by this run's ratios."""

    def row(scenario: str, n: int) -> dict[str, Any] | None:
        return next((r for r in rows if r["scenario"] == scenario and r["n"] == n), None)

    def at_most(r: dict[str, Any] | None, key: str, limit: float) -> dict[str, Any]:
        value = r[key]["ratio"] if r else None
        return {
            "ratio": value,
            "target": f"<= {limit}",
            "met": None if value is None else value <= limit,
        }

    p99 = [r["latency_ms.p99"]["ratio"] for r in rows if r["latency_ms.p99"]["ratio"] is not None]
    rss = [r["rss_mb"]["ratio"] for r in rows if r["rss_mb"]["ratio"] is not None]
    bpt = [
        r["bytes_per_player_per_update"]["ratio"]
        for r in rows
        if r["bytes_per_player_per_update"]["ratio"] is not None
    ]
    before, after = largest["ref"], largest["current"]
    return {
        "cpu_us_per_input_one_room_200": at_most(row("one_room", 200), "cpu_us_per_input", 0.55),
        "cpu_us_per_input_rooms_of_4_800": at_most(
            row("rooms_of_4", 800), "cpu_us_per_input", 0.55
        ),
        # "not worse": within 10% (run-to-run noise of a p99 on this machine).
        "p99_not_worse": {
            "points": len(p99),
            "worst_ratio": max(p99, default=None),
            "target": "<= 1.1 at every point",
            "met": None if not p99 else max(p99) <= 1.1,
        },
        "rss_not_worse": {
            "worst_ratio": max(rss, default=None),
            "target": "<= 1.05 at every point",
            "met": None if not rss else max(rss) <= 1.05,
        },
        "bytes_per_player_per_update_held": {
            "worst_ratio": max(bpt, default=None),
            "target": "<= 1.02 at every point",
            "met": None if not bpt else max(bpt) <= 1.02,
        },
        "largest_n_rooms_of_4_doubled": {
            "before": before,
            "after": after,
            "target": ">= 2x",
            "met": None if not before or after is None else after >= 2 * before,
        },
    }


def loadgen_load(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The load generator's own load at each point: what says the figures are the server's."""
    return [
        {
            "tree": p["tree"],
            "scenario": p["scenario"],
            "n": p["n"],
            "cpu_cores": p.get("loadgen_cpu_cores"),
            "event_loop_delay_p99_ms": (p.get("loadgen_event_loop_delay_ms") or {}).get("p99"),
            "schedule_ratio": p.get("loadgen_schedule_ratio"),
            "saturated": p.get("loadgen_saturated"),
        }
        for p in points
        if "loadgen_cpu_cores" in p
    ]


def run_standin(args: argparse.Namespace, opts: Options, info: dict[str, Any]) -> dict[str, Any]:
    """``--standin``: the load generator's ceiling, N growing until it saturates."""
    started = time.monotonic()
    points: list[dict[str, Any]] = []
    plan = {"one_room": args.one_room, "rooms_of_4": args.rooms_of_4}
    for scenario in args.scenarios:
        for n in plan[scenario]:
            log(f"standin {scenario} n={n}")
            p = measure_standin(scenario, n, opts)
            log(compact(p))
            points.append(p)
            if p.get("loadgen_saturated") or p.get("error"):
                break
    largest = {
        scenario: max(
            (
                p["n"]
                for p in points
                if p["scenario"] == scenario
                and not p.get("loadgen_saturated")
                and not p.get("error")
                and p.get("seated_at_end") == p["n"]
            ),
            default=None,
        )
        for scenario in args.scenarios
    }
    return {
        "bench": "arena",
        "mode": "standin: the load generator against bench/loadgen/standin.mjs, no room server",
        "loadgen": opts.loadgen,
        **info,
        "window_s": opts.seconds,
        "largest_n_loadgen_unsaturated": largest,
        "saturation_rule": {
            "loadgen_cpu_cores_over": opts.max_loadgen_cpu,
            "event_loop_delay_p99_ms_over": opts.max_loop_delay_ms,
            "schedule_ratio_under": 0.95,
        },
        "points": points,
        "placement": {"standin_cpu": 0, "load_generator_cpu": 1} if cpu_count() >= 2 else None,
        "cpus": cpu_count(),
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    opts = Options(
        loadgen=args.loadgen,
        seconds=args.seconds,
        warmup=args.warmup,
        idle=args.idle,
        durable=not args.no_durable,
        protocol=args.protocol,
        probes=args.probes,
        max_loadgen_cpu=args.max_loadgen_cpu,
        max_loop_delay_ms=args.max_loop_delay_ms,
        core_full=args.core_full,
        quiet_wait=args.quiet_wait,
        cpu_split=args.cpu_split,
        server_args=tuple(shlex.split(args.server_args)),
        ref_server_args=tuple(shlex.split(args.ref_server_args or args.server_args)),
    )
    info: dict[str, Any] = {}
    if opts.loadgen == "node" or args.standin:
        info = node_modules(args.npm)
    if args.standin:
        return run_standin(args, opts, info)
    trees = [current_tree()]
    ref: Tree | None = None
    if args.compare:
        ref = ref_tree(args.compare, workdir)
        trees.insert(0, ref)
    started = time.monotonic()
    points: list[dict[str, Any]] = []
    plan = {"one_room": args.one_room, "rooms_of_4": args.rooms_of_4}
    try:
        for scenario in args.scenarios:
            stopped: set[str] = set()
            for n in plan[scenario]:
                for rep in range(args.repeat):
                    # Interleaved: ref, current, then current, ref... (drift hits both alike).
                    order = trees if rep % 2 == 0 else list(reversed(trees))
                    for tree in order:
                        if tree.name in stopped:
                            continue
                        log(f"{tree.name} {scenario} n={n} run {rep + 1}/{args.repeat}")
                        p = measure(tree, scenario, n, opts)
                        p["run"] = rep + 1
                        log(compact(p))
                        points.append(p)
                for tree in trees:
                    mine = [
                        p for p in points
                        if p["tree"] == tree.name and p["scenario"] == scenario and p["n"] == n
                    ]  # fmt: skip
                    # In rooms of 4, N grows until the server's core is full: stop there.
                    if (
                        scenario == "rooms_of_4"
                        and not args.past_full
                        and any(p.get("server_core_full") or p.get("error") for p in mine)
                    ):
                        stopped.add(tree.name)
                if len(stopped) == len(trees):
                    break
    finally:
        if ref is not None:
            drop_ref_tree(ref)
    result: dict[str, Any] = {
        "bench": "arena",
        "loadgen": opts.loadgen,
        **info,
        "durable": opts.durable,
        "protocol": opts.protocol,
        "window_s": opts.seconds,
        "trees": [
            {
                "name": t.name,
                "commit": t.commit,
                "dirty": t.dirty,
                "ref": t.ref,
                "server_args": list(opts.ref_server_args if t.name == "ref" else opts.server_args),
            }
            for t in trees
        ],
        "largest_n_rooms_of_4_p99_under_100ms": {
            t.name: largest_served(points, t.name, "rooms_of_4") for t in trees
        },
        "largest_n_one_room_p99_under_100ms": {
            t.name: largest_served(points, t.name, "one_room") for t in trees
        },
        "loadgen_load": loadgen_load(points),
        "saturation_rule": {
            "loadgen_cpu_cores_over": opts.max_loadgen_cpu,
            "event_loop_delay_p99_ms_over": opts.max_loop_delay_ms,
            "schedule_ratio_under": 0.95,
        },
        "server_core_full_at": opts.core_full,
        "points": points,
        "reference": REFERENCE,
        "placement": placement(),
        "cpus": cpu_count(),
        "python": sys.version.split()[0],
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    if ref is not None:
        result["compare"] = comparison(points, ref)
    return result


def ns(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}"
        ) from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("every N must be >= 1")
    return values


def scenarios(text: str) -> tuple[str, ...]:
    names = tuple(s for s in text.split(",") if s)
    for s in names:
        if s not in SCENARIOS:
            raise argparse.ArgumentTypeError(
                f"unknown scenario {s!r} (choose from {', '.join(SCENARIOS)})"
            )
    return names


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--loadgen",
        choices=("node", "python"),
        default="node",
        help="load generator (default node: it does not saturate before the server)",
    )
    parser.add_argument("--one-room", type=ns, default=ONE_ROOM, help="N in one room")
    parser.add_argument(
        "--rooms-of-4",
        type=ns,
        default=ROOMS_OF_4,
        help="N in rooms of 4, increasing; stops once the server's core is full",
    )
    parser.add_argument("--scenarios", type=scenarios, default=SCENARIOS)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of play before it")
    parser.add_argument(
        "--idle", type=float, default=1.0, help="seconds of the server's idle CPU, before players"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per point and tree")
    parser.add_argument("--compare", metavar="REF", help="also run REF's server, interleaved")
    parser.add_argument("--protocol", type=int, choices=(1, 2), default=1)
    parser.add_argument("--probes", type=int, default=16, help="players that time input->ack")
    parser.add_argument(
        "--server-args", default="", help="extra flags of the room server (e.g. a transport)"
    )
    parser.add_argument(
        "--ref-server-args", help="extra flags of REF's room server (default: --server-args)"
    )
    parser.add_argument(
        "--cpu-split",
        action="store_true",
        help="run the room server through bench/cpu_split.py: each point gets the share of"
        " the server's CPU spent in each part (input, tick, publish...), by its CPU clock",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="S",
        help="before each point, wait up to S seconds for the machine to be idle (shared machines)",
    )
    parser.add_argument("--no-durable", action="store_true", help="room server --no-durable")
    parser.add_argument(
        "--npm",
        choices=("auto", "never"),
        default="auto",
        help="auto: npm ci in bench/loadgen when needed",
    )
    parser.add_argument("--max-loadgen-cpu", type=float, default=0.85)
    parser.add_argument("--max-loop-delay-ms", type=float, default=20.0)
    parser.add_argument(
        "--core-full",
        type=float,
        default=0.9,
        help="server CPU (cores) at which its core counts as full",
    )
    parser.add_argument(
        "--past-full",
        action="store_true",
        help="measure every listed N in rooms of 4 even after a tree's core was full"
        " (a target point of a compare: the saturated tree's figure is the 'before')",
    )
    parser.add_argument(
        "--standin",
        action="store_true",
        help="no room server: the load generator against bench/loadgen/standin.mjs (its ceiling)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one room 100,200; rooms of 4 200,800 (the targets' points); 4 s windows",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.one_room, args.rooms_of_4 = QUICK_ONE_ROOM, QUICK_ROOMS_OF_4
        args.seconds, args.warmup = 4.0, 1.0
    if args.seconds <= 0 or args.warmup < 0 or args.idle <= 0 or args.repeat < 1 or args.probes < 1:
        parser.error("--seconds > 0, --warmup >= 0, --idle > 0, --repeat >= 1 and --probes >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    workdir = Path(tempfile.mkdtemp(prefix="stateroom-arena-"))
    try:
        result = run(args, workdir)
    except KeyboardInterrupt:
        log("interrupted; everything started has been stopped")
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
