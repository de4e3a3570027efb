"""Shared fixtures: a real Valkey server on a free port, and tracked child processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from infra.embedded_cluster import EmbeddedCluster
from infra.embedded_redis import EmbeddedRedis
from tests.cluster import LocalCluster, start_cluster
from tests.support import Processes


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """One real Valkey process for the session; tests that restart Redis start their own.

    It requires a password, as every embedded Valkey does: ``redis_server.url`` carries it
    (``url_without_password`` is refused)."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """URL of the session's Redis (with its password), emptied before the test."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Start children through this; each is ended by PID when the test ends, pass or fail."""
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture
def cluster(processes: Processes, tmp_path: Path) -> Iterator[LocalCluster]:
    """Valkey + login service + two room servers, all real processes on free ports."""
    local = start_cluster(processes, tmp_path)
    try:
        yield local
    finally:
        processes.stop_all()
        local.redis.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Valkey of this test alone (its settings may be changed with CONFIG SET, or it
    may be stopped and restarted)."""
    server = EmbeddedRedis(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    """A real Valkey cluster for the session: 3 primaries + 3 replicas on free ports, with
    a password; tests that kill or fail over a node bring the cluster back to health
    (``EmbeddedCluster.wait_ok``) before they end."""
    nodes = EmbeddedCluster(tmp_path_factory.mktemp("valkey-cluster")).start()
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def cluster_url(valkey_cluster: EmbeddedCluster) -> str:
    """The session cluster's ``redis+cluster://`` URL (with its password), every primary
    emptied before the test."""
    valkey_cluster.wait_ok()
    valkey_cluster.flush()
    return valkey_cluster.url
