"""Prometheus metrics of one app instance, in its own registry.

A registry per app (not the global one) so several apps in one test process do
not collide, and ``/metrics`` shows only the login service's series, plus the
process metrics every Stateroom service has (``infra.process_metrics``: CPU, RSS,
fds, GC, event-loop lag). The lag probe starts with the first scrape: ``render`` runs
on the service's event loop, which nothing of this module sees before.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from infra.process_metrics import LOOP_LAG, register_process_metrics


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "stateroom_auth_requests",
            "HTTP requests by route and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.logins = Counter(
            "stateroom_auth_logins",
            "Logins by kind (guest|password) and result",
            ["kind", "result"],
            registry=self.registry,
        )
        self.refreshes = Counter(
            "stateroom_auth_refreshes",
            "Refresh attempts by result",
            ["result"],
            registry=self.registry,
        )
        self.reuse = Counter(
            "stateroom_auth_refresh_reuse",
            "Spent refresh tokens presented again (family revoked)",
            registry=self.registry,
        )
        self.hash_in_flight = Gauge(
            "stateroom_auth_hash_in_flight",
            "Password hashes running or waiting",
            registry=self.registry,
        )
        self.hash_rejected = Counter(
            "stateroom_auth_hash_rejected",
            "Requests refused because hashing was at capacity",
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "stateroom_auth_rate_limited",
            "Requests refused by a rate limit",
            ["limit"],
            registry=self.registry,
        )

        register_process_metrics(self.registry)

    def render(self) -> bytes:
        LOOP_LAG.ensure_started()  # no-op once probing, or off the loop
        return generate_latest(self.registry)
