"""Process metrics on every process (issue 9, deliverable 6): CPU, RSS, fds, GC, loop lag.

The event-loop lag probe is tested on a loop that a blocking call stalls; then a real
room server's and login service's ``/metrics`` are scraped: the process figures match
what /proc says of that very process, the lag probe runs, no ``*_created`` series and
no metric or series twice.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram

from auth.metrics import Metrics
from infra.embedded_redis import EmbeddedRedis
from infra.process_metrics import LoopLagProbe
from server.metrics import PlainHistogram, ServerMetrics
from tests.cluster import LocalCluster, start_cluster
from tests.support import Processes, wait_until

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)")
PROCESS_METRICS = (
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
    "python_info",
    "python_gc_objects_collected_total",
    "python_gc_objects_uncollectable_total",
    "python_gc_collections_total",
    "stateroom_event_loop_lag_seconds",
    "stateroom_event_loop_lag_probe_seconds_count",
)


@dataclass
class Scrape:
    """One /metrics answer, parsed: families by ``# TYPE`` and samples by series."""

    text: str

    @property
    def types(self) -> list[tuple[str, str]]:
        return [
            (parts[2], parts[3])
            for parts in (line.split() for line in self.text.splitlines())
            if len(parts) == 4 and parts[:2] == ["#", "TYPE"]
        ]

    @property
    def series(self) -> list[str]:
        """``name{labels}`` of every sample line."""
        found = []
        for line in self.text.splitlines():
            match = SAMPLE.match(line)
            if match and not line.startswith("#"):
                found.append(match.group(1) + (match.group(2) or ""))
        return found

    def value(self, name: str) -> float:
        for line in self.text.splitlines():
            match = SAMPLE.match(line)
            if match and match.group(1) == name and not match.group(2):
                return float(match.group(3))
        raise KeyError(name)

    def names(self) -> set[str]:
        """Every metric name a query may use: sample names, and for each declared family
        the names its type yields (a labelled counter with no child yet has no sample)."""
        names = {s.split("{", 1)[0] for s in self.series}
        for name, kind in self.types:
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            elif kind == "summary":
                names |= {f"{name}_sum", f"{name}_count"}
        return names

    def problems(self) -> list[str]:
        """``_created`` series, and a family or a series emitted twice."""
        found = [s for s in self.series if s.split("{", 1)[0].endswith("_created")]
        found += [f"family twice: {n}" for n, c in Counter(self.types).items() if c > 1]
        found += [f"series twice: {s}" for s, c in Counter(self.series).items() if c > 1]
        return found


def scrape(url: str) -> Scrape:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        return Scrape(response.read().decode())


# -- the probe ----------------------------------------------------------------------------


async def test_lag_probe_sees_a_blocked_loop() -> None:
    probe = LoopLagProbe(interval=0.05)
    registry = CollectorRegistry()
    probe.register(registry)
    probe.register(registry)  # idempotent
    other = CollectorRegistry()
    probe.register(other)
    probe.start()
    try:
        async with asyncio.timeout(5):
            while probe.probes < 2:
                await asyncio.sleep(0.01)
        quiet = registry.get_sample_value("stateroom_event_loop_lag_seconds")
        assert quiet is not None and quiet < 0.05
        seen = probe.probes
        time.sleep(0.3)  # the blocking call the probe must see
        async with asyncio.timeout(5):
            while probe.probes == seen:
                await asyncio.sleep(0.01)
        lag = registry.get_sample_value("stateroom_event_loop_lag_seconds")
        assert lag is not None and 0.2 <= lag < 1.0, lag
        count = registry.get_sample_value("stateroom_event_loop_lag_probe_seconds_count")
        assert count == probe.probes
        slow = registry.get_sample_value(
            "stateroom_event_loop_lag_probe_seconds_bucket", {"le": "0.1"}
        )
        assert slow is not None and slow < count  # the stalled probe is above 0.1 s
        assert other.get_sample_value("stateroom_event_loop_lag_seconds") == lag
        probe.start()  # the same loop: still one timer
        before = probe.probes
        await asyncio.sleep(0.2)
        assert probe.probes - before <= 5
    finally:
        probe.stop()


def test_lag_probe_follows_a_new_loop() -> None:
    probe = LoopLagProbe(interval=0.02)

    async def probed(n: int) -> None:
        probe.start()
        target = probe.probes + n
        async with asyncio.timeout(5):
            while probe.probes < target:
                await asyncio.sleep(0.005)

    asyncio.run(probed(2))
    asyncio.run(probed(2))  # the first loop is closed: the probe moved to this one
    probe.stop()
    assert not probe.running


def test_probe_ensure_started_off_the_loop_does_nothing() -> None:
    probe = LoopLagProbe()
    probe.ensure_started()
    assert not probe.running


def test_no_created_series_and_nothing_twice_in_process() -> None:
    server = ServerMetrics()
    server.tick_seconds.observe(0.01)
    server.takeovers.inc()
    server.evicted.labels("slow_consumer").inc()
    auth = Metrics()
    auth.logins.labels("guest", "ok").inc()
    for text in (server.render().decode(), auth.render().decode()):
        parsed = Scrape(text)
        assert parsed.problems() == []
        assert set(PROCESS_METRICS) <= parsed.names()
        assert "_created" not in text


def test_the_hot_path_histogram_exports_what_a_prometheus_one_does() -> None:
    """PlainHistogram (observe = array.append, folded later) against prometheus's own
    Histogram: the same buckets, count and sum, values on a bound and past the last one
    included, over several folds and a scrape that folds what is left."""
    bounds = (0.001, 0.01, 0.1)
    plain = PlainHistogram("t_plain", "doc", bounds)
    reference = Histogram("t_ref", "doc", buckets=bounds, registry=CollectorRegistry())
    batches = [[0.0005, 0.001, 0.001], [0.005, 0.01, 0.5, 2.0], [], [0.1, 0.0999, 0.2]]
    for batch in batches:
        for value in batch:
            plain.observe(value)
            reference.observe(value)
        plain.fold()
    plain.observe(0.02)  # left for the scrape to fold
    reference.observe(0.02)

    def samples(collector: Any, name: str) -> dict[tuple[str, str], float]:
        return {
            (sample.name.removeprefix(name), sample.labels.get("le", "")): sample.value
            for family in collector.collect()
            for sample in family.samples
            if not sample.name.endswith("_created")
        }

    assert samples(plain, "t_plain") == samples(reference, "t_ref")
    assert samples(plain, "t_plain")[("_count", "")] == 11


# -- real processes ---------------------------------------------------------------------


@pytest.fixture
def small_cluster(
    processes: Processes, tmp_path: Path, redis_url: str, redis_server: EmbeddedRedis
) -> Iterator[LocalCluster]:
    """The login service and one room server on the session's (emptied) Valkey."""
    yield start_cluster(processes, tmp_path, servers=1, redis=redis_server)


def proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def check_process_figures(metrics: Scrape, pid: int) -> None:
    assert set(PROCESS_METRICS) <= metrics.names(), set(PROCESS_METRICS) - metrics.names()
    assert metrics.problems() == []
    rss = metrics.value("process_resident_memory_bytes")
    proc_rss = proc_status(pid, "VmRSS") * 1024
    assert 0.5 * proc_rss <= rss <= 1.5 * proc_rss, (rss, proc_rss)
    fds = metrics.value("process_open_fds")
    assert abs(fds - len(os.listdir(f"/proc/{pid}/fd"))) <= 5, fds
    started = metrics.value("process_start_time_seconds")
    assert time.time() - 120 < started <= time.time() + 1
    assert metrics.value("process_cpu_seconds_total") > 0


def test_room_server_and_auth_export_process_metrics(
    small_cluster: LocalCluster, processes: Processes
) -> None:
    server = small_cluster.servers["s1"]
    room_metrics = f"{server.admin_url}/metrics"
    wait_until(
        lambda: scrape(room_metrics).value("stateroom_event_loop_lag_probe_seconds_count") >= 2,
        10,
        "two event-loop probes on the room server",
    )
    check_process_figures(scrape(room_metrics), server.pid)
    # Cluster-wide figures the room server reads at its watcher pass.
    wait_until(
        lambda: scrape(room_metrics).value("stateroom_redis_used_memory_bytes") > 0,
        10,
        "Redis memory sampled by the room server",
    )
    assert scrape(room_metrics).value("stateroom_rooms_unowned") == 0

    auth_pid = processes.children[0].pid  # start_cluster starts the login service first
    auth_metrics = f"{small_cluster.auth_url}/metrics"
    check_process_figures(scrape(auth_metrics), auth_pid)  # this first scrape starts the probe
    wait_until(
        lambda: scrape(auth_metrics).value("stateroom_event_loop_lag_probe_seconds_count") >= 2,
        10,
        "two event-loop probes on the login service",
    )
    lag = scrape(auth_metrics).value("stateroom_event_loop_lag_seconds")
    assert 0 <= lag < 0.5
