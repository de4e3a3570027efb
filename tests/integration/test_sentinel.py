"""Components reach Redis through Sentinel (redis+sentinel:// URLs) with a real sentinel."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest

from client.bots import run_bots
from infra.cluster_file import write_private
from infra.embedded_redis import EmbeddedRedis, config_string, ping, valkey_binary
from infra.errors import RedisUrlError
from infra.ports import free_port
from infra.redis_url import SentinelTarget, parse_sentinel_url
from tests.cluster import start_cluster
from tests.support import Processes, wait_until


def test_sentinel_url_parsing() -> None:
    assert parse_sentinel_url("redis+sentinel://:pw@a:26379,b:26380/main/2") == SentinelTarget(
        (("a", 26379), ("b", 26380)), "main", 2, "pw"
    )
    assert parse_sentinel_url("redis+sentinel://[::1]:5000/svc").sentinels == (("::1", 5000),)
    for bad in ("redis+sentinel://a:1", "redis+sentinel://a/svc", "redis+sentinel://a:1/s/x"):
        with pytest.raises(RedisUrlError):
            parse_sentinel_url(bad)


async def test_cluster_runs_through_sentinel(processes: Processes, tmp_path: Path) -> None:
    primary = EmbeddedRedis(tmp_path / "primary").start()
    assert primary.password  # the data node requires one: Sentinel must authenticate
    sentinel_port = free_port()
    config = tmp_path / "sentinel.conf"
    # 0600: it holds the primary's password (a replica would need `masterauth` too).
    write_private(
        config,
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor main 127.0.0.1 {primary.port} 1\n"
        f"sentinel auth-pass main {config_string(primary.password)}\n"
        "sentinel down-after-milliseconds main 5000\n",
    )
    processes.start([valkey_binary(), str(config), "--sentinel"], "sentinel")
    wait_until(lambda: ping("127.0.0.1", sentinel_port), 10, "sentinel")
    # The URL's password is the data nodes'; the sentinel itself is open on loopback.
    password = quote(primary.password, safe="")
    url = f"redis+sentinel://:{password}@127.0.0.1:{sentinel_port}/main"
    local = start_cluster(processes, tmp_path, servers=2, redis=primary, redis_url=url)
    try:
        summary = await run_bots(local.info, "via-sentinel", count=4, seconds=2)
        assert summary["failed_players"] == 0, summary
        assert summary["inputs_acked"] == summary["inputs_sent"] > 0
        assert summary["lost_acked_inputs"] == summary["duplicate_inputs"] == 0
    finally:
        processes.stop_all()
        primary.stop()
