"""Process metrics both services export: CPU, memory, fds, GC, and event-loop lag.

The room server and the login service keep their metrics in registries of their own
(tests run many of them in one process), so prometheus_client's default process,
platform and GC collectors (on its global registry) never reach their ``/metrics``:
``register_process_metrics(registry)`` adds them, plus the event-loop lag probe.

Importing this module also turns off the ``*_created`` series that prometheus_client
adds to every counter and histogram: a second sample per series that no dashboard
reads (Prometheus has ``process_start_time_seconds`` and counter resets for that).
Both services' metrics modules import it, so it applies to every ``/metrics``.

Event-loop lag: a callback scheduled every 0.5 s with ``loop.call_later``; how late
it runs is how long the loop was busy with something else (a slow tick, a blocking
call, a GC pause). One timer per process, a few microseconds per second.
"""

from __future__ import annotations

import asyncio
import time
import weakref

from prometheus_client import (
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.registry import CollectorRegistry

disable_created_metrics()  # type: ignore[no-untyped-call]

PROBE_INTERVAL_S = 0.5
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

__all__ = [
    "LAG_BUCKETS",
    "LOOP_LAG",
    "PROBE_INTERVAL_S",
    "LoopLagProbe",
    "register_process_metrics",
]


class LoopLagProbe:
    """How late a periodic callback runs on the event loop (the process's one loop).

    Its gauge and histogram are process-wide, like the process collectors: every
    registry that registers the probe shows the same figures."""

    def __init__(self, interval: float = PROBE_INTERVAL_S) -> None:
        self.interval = interval
        self.last = Gauge(
            "stateroom_event_loop_lag_seconds",
            "How late the last event-loop probe ran (probed every 0.5 s)",
            registry=None,
        )
        self.histogram = Histogram(
            "stateroom_event_loop_lag_probe_seconds",
            "How late each event-loop probe ran (one every 0.5 s)",
            buckets=LAG_BUCKETS,
            registry=None,
        )
        self._registries: weakref.WeakSet[CollectorRegistry] = weakref.WeakSet()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self.probes = 0  # callbacks run since the process started

    @property
    def running(self) -> bool:
        loop = self._loop
        return self._handle is not None and loop is not None and not loop.is_closed()

    def register(self, registry: CollectorRegistry) -> None:
        if registry in self._registries:
            return
        registry.register(self.last)
        registry.register(self.histogram)
        self._registries.add(registry)

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Probe ``loop`` (default: the running one) from now on; idempotent."""
        loop = loop or asyncio.get_running_loop()
        if self._loop is loop and self.running:
            return
        self.stop()
        self._loop = loop
        self._schedule()

    def ensure_started(self) -> None:
        """``start`` when called on a running loop that is not probed yet, else nothing."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self.start(loop)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due = time.monotonic() + self.interval
        self._handle = self._loop.call_later(self.interval, self._fire)

    def _fire(self) -> None:
        # monotonic, not loop.time(): uvloop's clock and timers have 1 ms resolution, so
        # a timer may fire a fraction of a millisecond early: clamp at 0.
        lag = max(0.0, time.monotonic() - self._due)
        self.last.set(lag)
        self.histogram.observe(lag)
        self.probes += 1
        self._schedule()


LOOP_LAG = LoopLagProbe()


def register_process_metrics(registry: CollectorRegistry) -> None:
    """Add CPU, RSS, fds, start time (``process_*``), ``python_info``, GC counters
    (``python_gc_*``) and the event-loop lag (``stateroom_event_loop_lag_*``) to
    ``registry``. The lag probe still has to be started on the loop (``LOOP_LAG.start``)."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    LOOP_LAG.register(registry)
