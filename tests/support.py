"""Helpers for tests that run real processes: start, wait until ready, always stop.

Every child is started in its own process group with PDEATHSIG, tracked, and
killed by PID at teardown even when the test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from infra.embedded_redis import die_with_parent

STATEROOM = [sys.executable, "-m", "server.cli"]


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
