"""The embedded Valkey server: starts on a free port, persists, stops cleanly, and
requires its password (generated and kept per data dir) unless told to run open."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest
import redis

from infra.embedded_redis import EmbeddedRedis, ping


def test_starts_persists_and_restarts(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, appendfsync="always").start()
    try:
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        client.close()
        port, password = server.port, server.password
    finally:
        server.stop()
    assert not ping("127.0.0.1", port, password=password)
    assert (tmp_path / "appendonlydir").is_dir()

    again = EmbeddedRedis(tmp_path, port=port).start()
    try:
        assert again.password == password  # read back from the data dir
        client = redis.Redis.from_url(again.url)
        assert client.get("k") == b"v"
        client.close()
    finally:
        again.stop()


def test_two_servers_get_distinct_ports_and_passwords(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "a") as a, EmbeddedRedis(tmp_path / "b") as b:
        assert a.port != b.port
        assert a.password and b.password and a.password != b.password
        assert ping("127.0.0.1", a.port, password=a.password)
        assert ping("127.0.0.1", b.port, password=b.password)
        assert not ping("127.0.0.1", a.port, password=b.password)


def test_password_is_required(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        assert server.url == (
            f"redis://:{server.password}@127.0.0.1:{server.port}/0"  # token_urlsafe: no quoting
        )
        assert server.url_without_password == f"redis://127.0.0.1:{server.port}/0"
        assert not ping("127.0.0.1", server.port)
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
            sock.sendall(b"GET k\r\n")
            assert sock.recv(256).startswith(b"-NOAUTH Authentication required")
        anonymous = redis.Redis.from_url(server.url_without_password)
        try:
            # redis-py opens with HELLO, which an unauthenticated client may not send.
            with pytest.raises(redis.AuthenticationError, match=r"authenticated|Authentication"):
                anonymous.get("k")
        finally:
            anonymous.close()
        wrong = redis.Redis.from_url(f"redis://:nope@127.0.0.1:{server.port}/0")
        try:
            with pytest.raises(redis.AuthenticationError):
                wrong.get("k")
        finally:
            wrong.close()
        client = redis.Redis.from_url(server.url)
        try:
            assert client.ping()
            assert client.config_get("protected-mode") == {"protected-mode": "yes"}
        finally:
            client.close()


def test_secrets_stay_off_argv_and_out_of_reach(tmp_path: Path) -> None:
    data = tmp_path / "redis"
    with EmbeddedRedis(data) as server:
        assert server.pid is not None
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes()
        assert server.password.encode() not in cmdline
        # Valkey rewrites its process title, so also check what it was started with.
        argv = server._command()
        assert str(server.config_file.resolve()) in argv
        assert not any(server.password in arg for arg in argv)
        for name in ("valkey.conf", "valkey.password"):
            assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
        assert server.password in (data / "valkey.conf").read_text()
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert server.password not in (data / "valkey.log").read_text()


def test_an_existing_data_dir_is_tightened(tmp_path: Path) -> None:
    data = tmp_path / "redis"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    EmbeddedRedis(data)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700


def test_explicit_passwords(tmp_path: Path) -> None:
    odd = 'p@ss w:rd/"\\é'  # URL- and config-quoting both matter
    with EmbeddedRedis(tmp_path / "odd", password=odd) as server:
        assert ping("127.0.0.1", server.port, password=odd)
        client = redis.Redis.from_url(server.url)
        try:
            assert client.ping()
        finally:
            client.close()
    with EmbeddedRedis(tmp_path / "open", password="") as server:
        assert server.url == server.url_without_password
        assert ping("127.0.0.1", server.port)
        assert "requirepass" not in server.config_file.read_text()
