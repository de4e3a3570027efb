"""``stateroom bots`` and ``stateroom play`` find the cluster ``stateroom up`` started (issue 9).

``--cluster`` defaults to ``.stateroom/cluster.json``; without that file each says
where it looked and what to do; with it, bots play against the real cluster it names.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from infra.cluster_file import DEFAULT_CLUSTER_FILE
from infra.embedded_redis import EmbeddedRedis
from server.cli import build_parser
from tests.cluster import start_cluster
from tests.support import Processes


def stateroom(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the CLI; ``play`` gets a pseudo-terminal (it refuses to start without one)."""
    terminal = pty.openpty() if args[0] == "play" else None
    try:
        return subprocess.run(
            [sys.executable, "-m", "server.cli", *args],
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdin=terminal[1] if terminal else subprocess.DEVNULL,
            stdout=terminal[1] if terminal else subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
        )
    finally:
        if terminal:
            os.close(terminal[0])
            os.close(terminal[1])


@pytest.mark.parametrize("command", ["bots", "play"])
def test_cluster_defaults_to_what_up_writes(command: str) -> None:
    up = build_parser().parse_args(["up"])
    assert Path(up.data) / "cluster.json" == DEFAULT_CLUSTER_FILE  # where up writes it
    args = build_parser().parse_args([command, "--room", "r"])
    assert Path(args.cluster) == DEFAULT_CLUSTER_FILE
    other = build_parser().parse_args([command, "--room", "r", "--cluster", "/x/c.json"])
    assert Path(other.cluster) == Path("/x/c.json")


@pytest.mark.parametrize("command", ["bots", "play"])
def test_missing_cluster_file_says_what_to_do(command: str, tmp_path: Path) -> None:
    result = stateroom(command, "--room", "r", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"stateroom {command}: no cluster file at .stateroom/cluster.json: "
        "start one with `stateroom up` or pass --cluster"
    )
    given = stateroom(command, "--room", "r", "--cluster", str(tmp_path / "c.json"), cwd=tmp_path)
    assert given.returncode == 1 and f"no cluster file at {tmp_path / 'c.json'}:" in given.stderr


def test_bots_use_the_default_cluster_file(
    processes: Processes, tmp_path: Path, redis_url: str, redis_server: EmbeddedRedis
) -> None:
    cluster = start_cluster(processes, tmp_path, servers=1, redis=redis_server)
    work = tmp_path / "work"
    (work / ".stateroom").mkdir(parents=True)
    cluster.write_cluster_file(work / DEFAULT_CLUSTER_FILE)
    result = stateroom(
        "bots", "--room", "defaults", "--count", "2", "--seconds", "1", "--json", cwd=work
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["inputs_acked"] > 0 and summary["failed_players"] == 0
