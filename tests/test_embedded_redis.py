"""The embedded Valkey server: starts on a free port, persists, stops cleanly."""

from __future__ import annotations

from pathlib import Path

import redis

from infra.embedded_redis import EmbeddedRedis, ping


def test_starts_persists_and_restarts(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, appendfsync="always").start()
    try:
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        client.close()
        port = server.port
    finally:
        server.stop()
    assert not ping("127.0.0.1", port)
    assert (tmp_path / "appendonlydir").is_dir()

    again = EmbeddedRedis(tmp_path, port=port).start()
    try:
        client = redis.Redis.from_url(again.url)
        assert client.get("k") == b"v"
        client.close()
    finally:
        again.stop()


def test_two_servers_get_distinct_ports(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "a") as a, EmbeddedRedis(tmp_path / "b") as b:
        assert a.port != b.port
        assert ping("127.0.0.1", a.port) and ping("127.0.0.1", b.port)
