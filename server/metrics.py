"""Prometheus metrics of one room server (served on GET /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

TICK_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)
WRITE_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1.0)


class ServerMetrics:
    """All counters of one process, in a registry of its own (tests run many servers)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.rooms = Gauge("stateroom_rooms", "Rooms running on this server", registry=r)
        self.players = Gauge("stateroom_players", "Connected players on this server", registry=r)
        self.tick_seconds = Histogram(
            "stateroom_tick_seconds",
            "Time to compute, journal and publish one tick",
            buckets=TICK_BUCKETS,
            registry=r,
        )
        self.tick_overruns = Counter(
            "stateroom_tick_overruns_total",
            "Ticks that started late (the room fell behind)",
            registry=r,
        )
        self.journal_seconds = Histogram(
            "stateroom_journal_write_seconds",
            "Latency of the durable journal write of a tick",
            buckets=WRITE_BUCKETS,
            registry=r,
        )
        self.checkpoint_seconds = Histogram(
            "stateroom_checkpoint_seconds",
            "Latency of a checkpoint write",
            buckets=WRITE_BUCKETS,
            registry=r,
        )
        self.checkpoint_bytes = Gauge(
            "stateroom_checkpoint_bytes", "Size of the last checkpoint written", registry=r
        )
        self.messages_in = Counter("stateroom_messages_in_total", "Messages received", registry=r)
        self.messages_out = Counter("stateroom_messages_out_total", "Messages sent", registry=r)
        self.bytes_in = Counter("stateroom_bytes_in_total", "Bytes received", registry=r)
        self.bytes_out = Counter("stateroom_bytes_out_total", "Bytes sent", registry=r)
        self.inputs = Counter(
            "stateroom_inputs_total", "Inputs by verdict", ["verdict"], registry=r
        )
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
