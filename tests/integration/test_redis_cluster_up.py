"""``stateroom up --redis redis+cluster://…``: the whole system on the session's Valkey
cluster instead of an embedded Redis; bots play through the cluster file it writes,
``kill-room`` moves a room, and ``up`` restarts the killed server."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from client.bots import run_bots
from infra.cluster_file import load_cluster
from infra.redis_url import redact
from tests.integration.test_failover import assert_clean
from tests.support import stateroom_up, wait_until

pytestmark = pytest.mark.slow


async def test_stateroom_up_on_a_redis_cluster(cluster_url: str, tmp_path: Path) -> None:
    with stateroom_up(tmp_path, "--redis", cluster_url, servers=2) as running:
        data, output, cluster_file = running.data, running.output, running.cluster_file
        info = load_cluster(cluster_file)
        assert info.redis_url == cluster_url
        assert not (data / "redis").exists()  # no embedded Redis
        banner = output.read_text(errors="replace")
        assert redact(cluster_url) in banner and cluster_url not in banner

        async with asyncio.timeout(60):
            bots = asyncio.create_task(run_bots(info, "up-on-cluster", 4, seconds=5.0))
            await asyncio.sleep(2.0)
            kill = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "server.cli", "kill-room", "up-on-cluster"),
                *("--cluster", str(cluster_file), "--json"),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out_b, err_b = await kill.communicate()
            assert kill.returncode == 0, err_b.decode()
            report = json.loads(out_b)
            summary = await bots
        assert report["new_server"] != report["old_server"]
        assert report["unavailable_ms"] < 1000, report
        assert_clean(summary, 4)
        # up restarts the killed room server (as Kubernetes would) and rewrites the file.
        wait_until(
            lambda: report["killed_pid"] not in [s.pid for s in load_cluster(cluster_file).servers],
            30,
            "up to restart the killed server",
        )
