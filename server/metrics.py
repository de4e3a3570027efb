"""Prometheus metrics of one room server (served on GET /metrics of the admin listener).

Besides its own figures, a room server exports two cluster-wide ones it reads anyway:
rooms with no live owner (counted at each failover-watcher pass) and Redis's memory
(``INFO memory``, at most every ``REDIS_MEMORY_EVERY_S``). Every server reports them;
dashboards and alerts take the ``max`` over servers. Process metrics (CPU, RSS, fds, GC,
event-loop lag) come from ``infra.process_metrics``.
"""

from __future__ import annotations

import math
import time
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterator
from typing import cast

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _untyped_go_string
from redis.exceptions import ResponseError

from infra.process_metrics import register_process_metrics
from infra.redis_health import memory_usage

_go_string = cast(Callable[[float], str], _untyped_go_string)  # how prometheus writes "le"

TICK_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)
WRITE_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1.0)
REDIS_MEMORY_EVERY_S = 5.0  # INFO memory at most this often (the watcher polls every 50 ms)


class ServerMetrics:
    """All counters of one process, in a registry of its own (tests run many servers)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.rooms = Gauge("stateroom_rooms", "Rooms running on this server", registry=r)
        self.players = Gauge("stateroom_players", "Connected players on this server", registry=r)
        self.rooms_paused = Gauge(
            "stateroom_rooms_paused",
            "Rooms not ticking because nobody is connected (their leases are still renewed)",
            registry=r,
        )
        # Observed once per room and tick: plain-int histograms (no lock, no label lookup).
        self.tick_seconds = PlainHistogram(
            "stateroom_tick_seconds", "Time to compute, journal and publish one tick", TICK_BUCKETS
        )
        r.register(self.tick_seconds)
        self.tick_overruns = Counter(
            "stateroom_tick_overruns_total",
            "Ticks that started late (the room fell behind)",
            registry=r,
        )
        self.journal_seconds = PlainHistogram(
            "stateroom_journal_write_seconds",
            "Latency of the durable journal write of a tick",
            WRITE_BUCKETS,
        )
        r.register(self.journal_seconds)
        self.checkpoint_seconds = Histogram(
            "stateroom_checkpoint_seconds",
            "Latency of a checkpoint write",
            buckets=WRITE_BUCKETS,
            registry=r,
        )
        self.checkpoint_bytes = Gauge(
            "stateroom_checkpoint_bytes", "Size of the last checkpoint written", registry=r
        )
        # Per-message counters are plain ints (a prometheus Counter takes a lock per inc,
        # which showed up at several percent of the server's CPU), exported by a collector.
        self.traffic = TrafficCounters()
        r.register(self.traffic)
        self.evicted = Counter(
            "stateroom_evicted_clients_total",
            "Clients closed by the server",
            ["reason"],
            registry=r,
        )
        self.takeovers = Counter(
            "stateroom_room_takeovers_total",
            "Rooms claimed from a dead or expired owner",
            registry=r,
        )
        self.recoveries = Counter(
            "stateroom_room_recoveries_total",
            "Rooms rebuilt from checkpoint and journal",
            registry=r,
        )
        self.fenced = Counter(
            "stateroom_rooms_fenced_total",
            "Rooms this server stopped because it lost the lease",
            registry=r,
        )
        self.redirects = Counter(
            "stateroom_redirects_total", "Joins redirected to the owner", registry=r
        )
        # Load shedding (server/overload.py): whether the event loop is overloaded now
        # (set when scraped) and the work refused because it was.
        self.overloaded = Gauge(
            "stateroom_overloaded",
            "1 while this server's event loop is overloaded and it sheds new work",
            registry=r,
        )
        self.overload_episodes = Gauge(
            "stateroom_overload_episodes",
            "Times this server's event loop became overloaded since it started",
            registry=r,
        )
        self.shed = Counter(
            "stateroom_shed_total",
            "Work refused because the event loop was overloaded: join (a client's claim or"
            " new room, answered 'unavailable') or claim (a failover watcher's takeover)",
            ["work"],
            registry=r,
        )
        self.rooms_unowned = Gauge(
            "stateroom_rooms_unowned",
            "Rooms in the directory with no live owner at this server's last watcher pass"
            " (cluster-wide: take the max over servers)",
            registry=r,
        )
        self.redis_used_memory = Gauge(
            "stateroom_redis_used_memory_bytes",
            "Redis used_memory (INFO memory), read every 5 s (cluster-wide)",
            registry=r,
        )
        self.redis_maxmemory = Gauge(
            "stateroom_redis_maxmemory_bytes",
            "Redis maxmemory (INFO memory; 0: no limit), read every 5 s (cluster-wide)",
            registry=r,
        )
        self._redis_memory_at = float("-inf")
        register_process_metrics(r)

    async def sample_redis_memory(self, redis: aioredis.Redis) -> None:
        """Read Redis's memory when the last read is older than REDIS_MEMORY_EVERY_S.
        A refused INFO (an ACL without it) leaves the gauges unset; connection errors
        are raised (the caller handles an unreachable Redis)."""
        now = time.monotonic()
        if now - self._redis_memory_at < REDIS_MEMORY_EVERY_S:
            return
        self._redis_memory_at = now
        try:
            usage = await memory_usage(redis)
        except ResponseError:
            return
        if usage.used_memory is not None:
            self.redis_used_memory.set(usage.used_memory)
        if usage.maxmemory is not None:
            self.redis_maxmemory.set(usage.maxmemory)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def fold(self) -> None:
        """Fold the hot-path histograms' pending values (``PlainHistogram.fold``)."""
        self.tick_seconds.fold()
        self.journal_seconds.fold()


class PlainHistogram(Collector):
    """A histogram for the hot path, exported like a prometheus one when scraped.

    A prometheus Histogram takes a lock per observation (~3 % of the server's CPU at 200
    rooms of 4); a Python ``observe`` with a bisect still cost ~1.5 us, twice per room
    per tick (4.5 % of a 500-room server). Here ``observe`` is ``array.append`` (a C
    call, no Python frame), and the values are folded into the buckets, sorted once,
    when scraped or by ``fold`` (the room server's heartbeat, 4 times a second, so at
    most a fraction of a second of them wait, 8 bytes each)."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: over every bound
        self.sum = 0.0
        self._values = array("d")
        self.observe: Callable[[float], None] = self._values.append

    def fold(self) -> None:
        """Count the values observed since the last fold into the buckets."""
        values = self._values
        if not values:
            return
        ordered = sorted(values)
        del values[:]  # the same array: ``observe`` stays bound to it
        below = 0
        for index, bound in enumerate(self.bounds):
            upto = bisect_right(ordered, bound)  # values <= bound (the "le" of the bucket)
            self.counts[index] += upto - below
            below = upto
        self.counts[-1] += len(ordered) - below
        self.sum += sum(ordered)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        self.fold()
        cumulative, running = [], 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            cumulative.append((_go_string(bound), running))
        yield HistogramMetricFamily(
            self.name, self.documentation, buckets=cumulative, sum_value=self.sum
        )


class TrafficCounters(Collector):
    """Hot-path counters: incremented as attributes, read only when scraped."""

    def __init__(self) -> None:
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.inputs_accepted = 0  # the common verdict: a plain int, no dict per input
        self.inputs: dict[str, int] = {}

    def count_input(self, verdict: str) -> None:
        if verdict == "accepted":
            self.inputs_accepted += 1
        else:
            self.inputs[verdict] = self.inputs.get(verdict, 0) + 1

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, help_text, value in (
            ("stateroom_messages_in", "Messages received", self.messages_in),
            ("stateroom_messages_out", "Messages sent", self.messages_out),
            ("stateroom_bytes_in", "Bytes received", self.bytes_in),
            ("stateroom_bytes_out", "Bytes sent", self.bytes_out),
        ):
            yield CounterMetricFamily(name, help_text, value=value)
        inputs = CounterMetricFamily("stateroom_inputs", "Inputs by verdict", labels=["verdict"])
        counts = dict(self.inputs)
        if self.inputs_accepted:
            counts["accepted"] = self.inputs_accepted
        for verdict, count in sorted(counts.items()):
            inputs.add_metric([verdict], count)
        yield inputs
