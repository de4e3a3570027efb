"""A whole room server's rooms fail over at once (issue 11, deliverable 3), bounded.

``bench/recovery.py --parts mass_failover`` runs the full counts (200 rooms of 2 players,
1,000 rooms of 1); this runs the same code on fewer rooms so that it fits the suite:
Valkey, the login service and three room servers (real processes, production timings),
100 rooms of 2 players (``bench/failover_clients.py``: raw protocol players that check
every ack) all on the first server, which is SIGKILLed once the two others are up. Every
room must run again on the survivors (its takeover record has a first tick), spread over
both, with no acked input lost or applied twice and no tick going back. The recovery
figures are printed (``-s``) and bounded loosely here: the bench holds the targets on a
machine of its own, this test only has to catch a recovery that regresses to seconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from bench.common import Stack
from bench.recovery import MASS_SERVER_ARGS, MassScenario, mass_failover_on

pytestmark = pytest.mark.slow

ROOMS, PLAYERS, RATE = 100, 2, 5.0
# Loose on purpose (see the module docstring); the bench's target is 500 ms at p99.
P99_BOUND_MS = 2500


@pytest.fixture
def stack() -> Iterator[Stack]:
    three = Stack(servers=3, server_args=MASS_SERVER_ARGS)
    try:
        three.start()
        yield three
    finally:
        three.stop()  # every child by PID, pass or fail


@pytest.mark.timeout(90)
def test_a_killed_server_with_100_rooms_recovers_on_the_survivors(stack: Stack) -> None:
    result = mass_failover_on(stack, MassScenario(ROOMS, PLAYERS, RATE), timeout_s=15.0)
    verdict = result["players_verdict"]
    print(
        "mass failover figure:",
        json.dumps({k: v for k, v in result.items() if k != "players_verdict"}),
    )
    print("mass failover players:", json.dumps(verdict))
    assert result["rooms_on_victim"] == ROOMS
    assert result["recovered"] == ROOMS, result["not_recovered"]
    assert verdict["failed_players"] == 0, verdict["failures"]
    assert verdict["lost_acked_inputs"] == 0, verdict
    assert verdict["duplicate_inputs"] == 0, verdict
    assert verdict["rollbacks"] == 0, verdict
    assert verdict["seat_resets"] == 0, verdict
    assert verdict["inputs_acked"] == verdict["inputs_sent"] > 0, verdict
    # Both survivors took rooms (rendezvous successors; clients' joins claim some too).
    # Not an even split: a survivor whose loop is late leaves its share to the other's
    # fallback claims by design (server/succession.py, server/overload.py); seen 15/85
    # with a CI run sharing the 2 cores.
    shares = result["claims_per_server"]
    assert set(shares) == {"s2", "s3"} and min(shares.values()) >= ROOMS // 10, shares
    assert result["kill_to_first_tick_ms"]["p99"] <= P99_BOUND_MS, result
    # Every player's welcome named its room's successor (the fallback), and the players
    # went there first: the room was claimed where its players came back, so (nearly)
    # none of them had to be redirected. Without the hint about half of them were.
    assert verdict["fallbacks"] >= ROOMS * PLAYERS, verdict
    assert verdict["redirects"] <= ROOMS * PLAYERS // 20, verdict
