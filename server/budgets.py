"""Per-process budgets that stop one address or player from crowding out the others.

Pure bookkeeping, no I/O: the endpoint asks before it spends.

- ``ConnectionBudget``: open connections per client address (IPv6 counted by /64) and in
  total, and of those, connections that have not joined a room yet. Checked before the
  WebSocket handshake (a refused upgrade costs almost nothing) and counted for the
  connection's lifetime.
- ``PlayerBudget``: messages and bytes per second per player, shared by all of that
  player's connections to this process (on top of each connection's own rate limit), so
  ten connections of one token get one player's share, not ten.

Overload policy: REFUSE. A connection over its address budget is refused at the
handshake (HTTP 429); a message over its player's budget is dropped unread, exactly as
one over the connection's rate (``rate_limited``; the next input then gets
``sequence_gap``, so no acked input is lost).
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    per_address: int = 256
    pending_per_address: int = 16
    total: int = 10_000
    pending_total: int = 1_000


class ConnectionBudget:
    """Counts of open and not-yet-joined connections, by address bucket."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open: dict[str, int] = {}
        self.pending: dict[str, int] = {}
        self.open_total = 0
        self.pending_total = 0

    def refusal(self, bucket: str) -> str | None:
        """Why a new connection from ``bucket`` must be refused now, or None."""
        limits = self.limits
        if self.open_total >= limits.total:
            return f"this server has {limits.total} connections; try another server"
        if self.pending_total >= limits.pending_total:
            return "too many connections are joining this server right now; retry"
        if self.open.get(bucket, 0) >= limits.per_address:
            return f"at most {limits.per_address} connections per address"
        if self.pending.get(bucket, 0) >= limits.pending_per_address:
            return f"at most {limits.pending_per_address} joining connections per address"
        return None

    def opened(self, bucket: str) -> None:
        self.open[bucket] = self.open.get(bucket, 0) + 1
        self.pending[bucket] = self.pending.get(bucket, 0) + 1
        self.open_total += 1
        self.pending_total += 1

    def joined(self, bucket: str) -> None:
        """The connection is past join (seated or refused): no longer pending."""
        _decrement(self.pending, bucket)
        self.pending_total -= 1

    def closed(self, bucket: str, was_pending: bool) -> None:
        _decrement(self.open, bucket)
        self.open_total -= 1
        if was_pending:
            self.joined(bucket)


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class TokenBucket:
    """A token bucket: ``rate`` per second, room for ``burst``; ``take`` is False (and
    takes nothing) when there are not enough tokens."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, amount: float, now: float) -> bool:
        # A clock read before the last one (callers read it once per frame) adds nothing.
        # (min/max written out: this runs three times per input message.)
        if now > self.stamp:
            tokens = self.tokens + (now - self.stamp) * self.rate
            self.tokens = tokens if tokens < self.burst else self.burst
            self.stamp = now
        if self.tokens >= amount:
            self.tokens -= amount
            return True
        return False


@dataclass(frozen=True, slots=True)
class PlayerLimits:
    messages_per_s: float = 120.0
    message_burst: float = 120.0
    bytes_per_s: float = 32 * 1024
    byte_burst: float = 64 * 1024


class PlayerBudget:
    """Message and byte buckets per player, shared by the player's connections."""

    def __init__(self, limits: PlayerLimits) -> None:
        self.limits = limits
        self._buckets: dict[str, tuple[TokenBucket, TokenBucket]] = {}
        self._users: dict[str, int] = {}

    def attach(self, player_id: str) -> None:
        """A connection of ``player_id`` joined; its buckets live while any does."""
        self._users[player_id] = self._users.get(player_id, 0) + 1
        if player_id not in self._buckets:
            now = time.monotonic()
            limits = self.limits
            self._buckets[player_id] = (
                TokenBucket(limits.messages_per_s, limits.message_burst, now),
                TokenBucket(limits.bytes_per_s, limits.byte_burst, now),
            )

    def detach(self, player_id: str) -> None:
        left = self._users.get(player_id, 0) - 1
        if left > 0:
            self._users[player_id] = left
        else:
            self._users.pop(player_id, None)
            self._buckets.pop(player_id, None)

    def admit(self, player_id: str, size: int, now: float) -> bool:
        """Spend one message of ``size`` bytes; False if the player is over budget."""
        buckets = self._buckets.get(player_id)
        if buckets is None:
            return True
        messages, volume = buckets
        # Check both before spending either: a refused message costs nothing.
        if messages.take(1, now):
            if volume.take(size, now):
                return True
            messages.tokens += 1
        return False
