"""Secrets stay secret (issue 7, deliverable 5): the Redis password of `stateroom up`.

Against a real `stateroom up` (its own process group, ended by PID with SIGTERM):
the embedded Valkey refuses the URL without its password; no child carries the
Redis URL or the password in its argv (they get it in their environment); the
data folder, its logs and redis folders are 0700, cluster.json, the key and the
logs 0600; no log and nothing `up` prints holds the password; the CLI tools read
the password from cluster.json and never print it.
"""

from __future__ import annotations

import argparse
import json
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from infra.redis_url import redact
from server.launcher import Cluster
from tests.support import children_of, stateroom_up, wait_until

SERVERS = 1


def cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    data: Path
    output: Path
    cluster: dict[str, object]

    @property
    def redis_url(self) -> str:
        return str(self.cluster["redis_url"])

    @property
    def password(self) -> str:
        return (self.data / "redis" / "valkey.password").read_text().strip()


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    with stateroom_up(tmp_path_factory.mktemp("up"), servers=SERVERS) as running:
        yield Up(running.proc, running.data, running.output, running.cluster())


def test_redis_refuses_the_url_without_its_password(up: Up) -> None:
    assert up.password and f":{up.password}@" in up.redis_url
    bare = redis.Redis.from_url(redact(up.redis_url).replace(":***@", ""))
    try:
        with pytest.raises(redis.AuthenticationError):
            bare.get("x")
    finally:
        bare.close()
    client = redis.Redis.from_url(up.redis_url)
    try:
        assert client.ping()
        # The room servers reached it (through the URL in their environment): they registered.
        assert client.hlen("sr:servers") == SERVERS
    finally:
        client.close()


def test_no_child_has_the_url_in_argv(up: Up) -> None:
    children = children_of(up.proc.pid)
    # valkey, auth and the room servers
    assert len(children) == SERVERS + 2, children
    for pid in children:
        argv = cmdline(pid)
        assert up.password.encode() not in argv, argv
        assert b"redis://" not in argv, argv
    assert up.password.encode() not in cmdline(up.proc.pid)
    # The components get it in their environment (readable only by this user).
    pythons = [pid for pid in children if b"server.cli" in cmdline(pid)]
    assert len(pythons) == SERVERS + 1
    for pid in pythons:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"STATEROOM_REDIS_URL={up.redis_url}".encode() in environ


def test_files_and_folders_are_private(up: Up) -> None:
    assert mode(up.data) == 0o700
    assert mode(up.data / "logs") == 0o700
    assert mode(up.data / "redis") == 0o700
    assert mode(up.data / "cluster.json") == 0o600
    assert mode(up.data / "auth-key.pem") == 0o600
    assert mode(up.data / "redis" / "valkey.conf") == 0o600
    assert mode(up.data / "redis" / "valkey.password") == 0o600
    logs = list((up.data / "logs").iterdir())
    assert len(logs) == SERVERS + 1
    for log in logs:
        assert mode(log) == 0o600, log


def test_nothing_logged_or_printed_holds_the_password(up: Up) -> None:
    # Let the children write their start-up logs (the room servers log the Redis URL).
    wait_until(lambda: "s1" in up.output.read_text(errors="replace"), 10, "up's banner")
    printed = up.output.read_text(errors="replace")
    assert "Stateroom is up" in printed
    assert redact(up.redis_url) in printed  # the URL is shown, redacted
    files = [*(up.data / "logs").iterdir(), up.data / "redis" / "valkey.log"]
    for path in [up.output, *files]:
        assert up.password not in path.read_text(errors="replace"), path
    text = (up.data / "logs" / "s1.log").read_text(errors="replace")
    assert "redis://:***@" in text


def stateroom(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_tools_use_the_password_and_never_print_it(up: Up, tmp_path: Path) -> None:
    cluster_file = up.data / "cluster.json"
    ok = stateroom("status", "--cluster", str(cluster_file))
    assert ok.returncode == 0, ok.stderr
    assert "s1" in ok.stdout
    assert up.password not in ok.stdout + ok.stderr

    # A wrong password: the error names the redacted URL and leaks neither password.
    wrong = "not-the-password-" + "x" * 20
    bad = dict(up.cluster, redis_url=up.redis_url.replace(up.password, wrong))
    bad_file = tmp_path / "cluster.json"
    bad_file.write_text(json.dumps(bad))
    for args in (("status",), ("kill-room", "nowhere", "--timeout", "1")):
        result = stateroom(*args, "--cluster", str(bad_file))
        assert result.returncode == 1, result
        shown = result.stdout + result.stderr
        assert "cannot" in shown and "redis://:***@127.0.0.1:" in shown, shown
        assert wrong not in shown and up.password not in shown, shown
        assert "Traceback" not in shown, shown


def test_up_stops_cleanly_on_sigterm(up: Up) -> None:
    """Last in this module: end `up` by PID and check that it took its children along."""
    children = children_of(up.proc.pid)
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(30) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{c}").exists() for c in children):
        time.sleep(0.05)
    assert not [c for c in children if Path(f"/proc/{c}").exists()]


def up_args(data: Path) -> argparse.Namespace:
    return argparse.Namespace(data=str(data), servers=1, port=8000, redis=None, host="127.0.0.1")


def test_an_old_data_folder_is_tightened_a_foreign_one_refused(tmp_path: Path) -> None:
    old = tmp_path / "old"
    (old / "redis").mkdir(parents=True)
    old.chmod(0o755)
    Cluster(up_args(old)).secure_data_dir()
    assert mode(old) == 0o700

    fresh = tmp_path / "new" / "data"
    Cluster(up_args(fresh)).secure_data_dir()
    assert mode(fresh) == 0o700

    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    foreign.chmod(0o755)
    with pytest.raises(RuntimeError, match="not a stateroom data folder"):
        Cluster(up_args(foreign)).secure_data_dir()
    assert mode(foreign) == 0o755
