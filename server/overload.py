"""Whether this process's event loop is overloaded, so that it sheds new work first.

A room server whose loop falls behind (a mass failover's reconnects and rebuilds on top
of its own rooms, or more rooms than its core can tick) answers its rooms' journal
writes late; past the lease margin those rooms stop (4020) and move again, onto peers
that may be just as busy: a storm. An overloaded server instead refuses the work it has
not taken yet (claims and new rooms: ``unavailable``, the client retries elsewhere with
backoff) and keeps serving, and renewing, the rooms it has.

The gauge is one timer per event loop (like ``server.ticker``): a probe every
``PROBE_S`` measures how late it runs. The loop counts as overloaded while the probe's
lateness (a moving average, or the probe that is late right now) is over the
threshold, until the average falls below half of it (hysteresis: no flapping). A loop
later than ``LATE_S`` is *late*: its rooms wait for their journal answers instead of
stopping at the lease margin (``server.room``), even with shedding off.
"""

from __future__ import annotations

import asyncio
import time
import weakref

PROBE_S = 0.05
_ALPHA = 0.3  # weight of the newest probe in the moving average
# Later than this, the loop is "late": its rooms wait for their journal answers past the
# lease margin (server/room.py), whatever the shedding threshold (even with it off).
LATE_S = 0.1


class LoadGauge:
    """The loop's lateness and whether it is over ``threshold_s`` (0 disables it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, threshold_s: float) -> None:
        self.loop = loop
        self.threshold_s = threshold_s
        self.lag_s = 0.0  # moving average of the probes' lateness
        self.episodes = 0  # times the loop became overloaded (tests, metrics)
        self._over = False
        self._due = 0.0  # time.monotonic() when the next probe should run
        self._handle: asyncio.TimerHandle | None = None
        self._schedule()

    @property
    def overloaded(self) -> bool:
        """Over the threshold now. A probe that is late right now counts at once: on an
        overloaded loop the probe itself runs late, and the work asking runs before it."""
        if self.threshold_s <= 0:
            return False
        late = time.monotonic() - self._due
        if late > self.threshold_s and not self._over:
            self._enter()
        return self._over

    @property
    def late(self) -> bool:
        """Later than LATE_S now (the moving average, or the probe that is late now)."""
        return max(self.lag_s, time.monotonic() - self._due) > LATE_S

    def _schedule(self) -> None:
        self._due = time.monotonic() + PROBE_S
        self._handle = self.loop.call_later(PROBE_S, self._probe)

    def _probe(self) -> None:
        late = max(0.0, time.monotonic() - self._due)
        self.lag_s += _ALPHA * (late - self.lag_s)
        threshold = self.threshold_s
        if threshold > 0:
            if not self._over and max(late, self.lag_s) > threshold:
                self._enter()
            elif self._over and self.lag_s < threshold / 2 and late < threshold:
                self._over = False
        self._schedule()

    def _enter(self) -> None:
        self._over = True
        self.episodes += 1
        # The probe that found it late also pulls the average up to what it saw.
        self.lag_s = max(self.lag_s, time.monotonic() - self._due)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


_GAUGES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoadGauge] = (
    weakref.WeakKeyDictionary()
)


def load_gauge(threshold_s: float | None = None) -> LoadGauge:
    """The running loop's gauge (made on first use); ``threshold_s`` sets its threshold."""
    loop = asyncio.get_running_loop()
    gauge = _GAUGES.get(loop)
    if gauge is None:
        gauge = _GAUGES[loop] = LoadGauge(loop, threshold_s or 0.0)
    elif threshold_s is not None:
        gauge.threshold_s = threshold_s
    return gauge
