"""Helpers for tests that run real processes: start, wait until ready, always stop.

Every child is started in its own process group with PDEATHSIG, tracked, and
killed by PID at teardown even when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from infra.embedded_redis import die_with_parent
from infra.resp_pipeline import READER_TASK

STATEROOM = [sys.executable, "-m", "server.cli"]


async def settle_tasks(timeout: float = 2.0) -> None:
    """Let the running loop's other tasks end (a fenced room's last Redis calls), then
    cancel what is left. Call it before closing a Redis client the tasks use: a task
    still writing would reconnect after the close, and that socket would outlive the
    test's loop, to be reported (as an unclosed Connection) in whichever later test the
    collector happens to run. The RESP fast path's reply readers live as long as their
    connection and are not waited for."""
    others = [
        task
        for task in asyncio.all_tasks()
        if task is not asyncio.current_task() and task.get_name() != READER_TASK
    ]
    if not others:
        return
    _, pending = await asyncio.wait(others, timeout=timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` with a short backoff; fail the test with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(200 <= response.status < 300)
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Processes:
    """Children of one test. ``stop_all`` ends each one by PID."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        args: Sequence[str],
        name: str,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            preexec_fn=die_with_parent,
        )
        log.close()
        self.children.append(proc)
        return proc

    def start_stateroom(
        self, args: Sequence[str], name: str, ready_url: str | None = None, timeout: float = 20
    ) -> subprocess.Popen[bytes]:
        proc = self.start([*STATEROOM, *args], name)
        if ready_url:
            try:
                wait_until(
                    lambda: proc.poll() is not None or http_ok(ready_url), timeout, ready_url
                )
            except TimeoutError:
                raise TimeoutError(f"{name} not ready; log:\n{self.log(name)}") from None
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)}")
        return proc

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-5000:] if path.exists() else ""

    def signal(self, proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        if proc.poll() is None:
            os.kill(proc.pid, sig)

    def stop_all(self) -> None:
        for proc in reversed(self.children):
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.terminate()
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                except ProcessLookupError:
                    pass
        self.children.clear()


# -- a whole `stateroom up` on free ports ----------------------------------------------


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """``port`` can be bound on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_base(servers: int) -> int:
    """A BASE with every port `up` takes free: BASE..BASE+servers and BASE+100..BASE+100+servers.

    Chosen below the kernel's ephemeral range: `up` starts Redis and its control endpoint
    on ports the kernel picks (bind to 0), and the kernel readily hands out a port just
    released, so a BASE found by binding to 0 was seen taken by Redis a moment later.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(10_000, max(10_001, low - 200))
        ports = [*range(base, base + servers + 1), *range(base + 100, base + 101 + servers)]
        if all(port_free(p) for p in ports):
            return base
    raise RuntimeError("no free port range for stateroom up")


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux: /proc/PID/task/TID/children); [] once it is gone."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def stop_up(proc: subprocess.Popen[bytes], children: Sequence[int]) -> None:
    """SIGTERM `up` by PID and wait; SIGKILL it (and the children it left) past the bound."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # up stops its children, then itself
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for child in children:  # normally gone already (stopped by up, or PDEATHSIG)
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class RunningUp:
    """A `stateroom up` a test started: its process, files and first-level children."""

    proc: subprocess.Popen[bytes]
    data: Path
    output: Path  # what `up` printed (stdout and stderr, or stderr alone: see stateroom_up)
    base: int
    children: list[int]

    @property
    def cluster_file(self) -> Path:
        return self.data / "cluster.json"

    def cluster(self) -> dict[str, Any]:
        return dict(json.loads(self.cluster_file.read_text()))


@contextlib.contextmanager
def stateroom_up(
    tmp: Path,
    *up_args: str,
    servers: int = 2,
    before: Sequence[str] = (),
    ready: Callable[[RunningUp], bool] | None = None,
    env: dict[str, str] | None = None,
    stdout_too: bool = True,
) -> Iterator[RunningUp]:
    """Run ``stateroom [before...] up --data tmp/data --port BASE --servers N [up_args...]``
    in its own process group (PDEATHSIG) until ``ready`` (default: cluster.json written),
    and always stop it and its children by PID afterwards, also when the test fails.

    ``stdout_too=False``: only stderr goes to ``tmp/up.out`` (stdout is dropped)."""
    data, output = tmp / "data", tmp / "up.out"
    base = free_base(servers)
    with open(output, "wb") as out:
        proc = subprocess.Popen(
            [
                *STATEROOM,
                *before,
                *("up", "--data", str(data), "--port", str(base), "--servers", str(servers)),
                *up_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=out if stdout_too else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if stdout_too else out,
            env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # its own process group: a terminal's ^C never reaches it
            preexec_fn=die_with_parent,
        )
    up = RunningUp(proc, data, output, base, [])
    is_ready = ready or (lambda running: running.cluster_file.exists())
    try:
        wait_until(lambda: proc.poll() is not None or is_ready(up), 60, "stateroom up")
        assert proc.poll() is None, output.read_text(errors="replace")
        up.children = children_of(proc.pid)
        yield up
    finally:
        live = children_of(proc.pid) if proc.poll() is None else []
        stop_up(proc, list({*up.children, *live}))


def run_bench(script: str, args: Sequence[str], tmp_path: Path, timeout: float) -> Any:
    """Run ``bench/<script>`` to its end and return the JSON object it prints; a run
    that does not end in ``timeout`` is stopped (it stops what it started on SIGTERM)."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(root / "bench" / script), *args],
        cwd=root,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=die_with_parent,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
        pytest.fail(f"{script} did not finish: {err.decode()[-600:]}")
    assert proc.returncode == 0, err.decode()[-600:]
    return json.loads(out)
