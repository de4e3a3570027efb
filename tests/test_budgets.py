"""Per-process budgets, pure: token buckets, per-player message/byte budgets shared by a
player's connections, per-address connection counts."""

from __future__ import annotations

import time

from server.budgets import (
    ConnectionBudget,
    ConnectionLimits,
    PlayerBudget,
    PlayerLimits,
    TokenBucket,
)


def test_a_bucket_refills_at_its_rate_and_never_past_its_burst() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.take(1, 0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(1, 0.1) and not bucket.take(1, 0.1)  # one token in 0.1 s
    assert bucket.take(3, 100.0) and not bucket.take(1, 100.0)  # capped at the burst
    assert not bucket.take(1, 50.0)  # an earlier clock read adds no tokens
    assert not bucket.take(5, 200.0) and bucket.tokens == 3  # a refusal takes nothing


def test_a_players_connections_share_one_budget() -> None:
    budget = PlayerBudget(
        PlayerLimits(messages_per_s=10, message_burst=4, bytes_per_s=1000, byte_burst=1000)
    )
    budget.attach("p")
    budget.attach("p")  # a second connection of the same player
    t = time.monotonic()
    assert [budget.admit("p", 10, t) for _ in range(5)] == [True] * 4 + [False]
    assert budget.admit("q", 10**6, t)  # unknown players are not this budget's business
    budget.detach("p")
    assert not budget.admit("p", 10, t)  # still attached once: same buckets
    budget.detach("p")
    budget.attach("p")
    assert budget.admit("p", 10, time.monotonic())  # all gone, then back: a fresh budget


def test_bytes_are_budgeted_and_a_refusal_costs_no_message() -> None:
    budget = PlayerBudget(
        PlayerLimits(messages_per_s=100, message_burst=100, bytes_per_s=100, byte_burst=300)
    )
    budget.attach("p")
    t = time.monotonic()
    assert budget.admit("p", 250, t)
    assert not budget.admit("p", 100, t)  # 50 bytes left
    assert budget.admit("p", 50, t)  # the refused message did not use a message token


def test_connections_are_counted_per_address_and_joining_ones_apart() -> None:
    budget = ConnectionBudget(
        ConnectionLimits(per_address=3, pending_per_address=2, total=100, pending_total=100)
    )
    for _ in range(2):
        assert budget.refusal("a") is None
        budget.opened("a")
    assert "joining" in (budget.refusal("a") or "")
    budget.joined("a")
    assert budget.refusal("a") is None
    budget.opened("a")
    assert "at most 3 connections" in (budget.refusal("a") or "")
    assert budget.refusal("b") is None  # another address is not affected
    budget.closed("a", was_pending=True)
    budget.closed("a", was_pending=True)
    budget.closed("a", was_pending=False)
    assert (budget.open, budget.pending, budget.open_total, budget.pending_total) == (
        {},
        {},
        0,
        0,
    )


def test_the_server_wide_limits_come_first() -> None:
    budget = ConnectionBudget(
        ConnectionLimits(per_address=10, pending_per_address=10, total=2, pending_total=1)
    )
    budget.opened("a")
    assert "joining this server" in (budget.refusal("b") or "")
    budget.joined("a")
    budget.opened("b")
    budget.joined("b")
    assert "2 connections" in (budget.refusal("c") or "")
