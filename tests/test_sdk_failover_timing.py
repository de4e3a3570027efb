"""Failover timeouts tuned to the lease: the SDK's half (issue 7, deliverable 8).

A frozen owner (SIGSTOP) completes TCP connects but never a WebSocket handshake, and
its open sessions go silent. The SDK must notice within ``STALL_TIMEOUT`` (1 s), not go
back to the frozen process (directly or through a redirect), and poll the peers often
enough to be seated within ~100 ms of the claim. The policies are pure and tested
without sleeping; the timing is measured against fake servers on loopback.
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from client import sdk
from client.sdk import (
    BACKOFF_MAX,
    JOIN_TIMEOUT,
    OPEN_TIMEOUT,
    RETRY_BACKOFF_MAX,
    STALL_TIMEOUT,
    SUSPECT_S,
    RoomClient,
    ServerRotation,
    backoff_delay,
)
from server.protocol import CloseCode, ErrorCode
from tests.test_sdk_fakes import Blackhole, FakeRoomServer, Room, Session, make_token

A, B, C = "ws://10.0.0.1:8001/v1/ws", "ws://10.0.0.2:8002/v1/ws", "ws://10.0.0.3:8003/v1/ws"

# -- pure policies ------------------------------------------------------------------------


def test_the_timeouts_fit_in_the_lease() -> None:
    lease = 3.0
    assert STALL_TIMEOUT <= 1.0 and OPEN_TIMEOUT <= 1.0
    # Once the lease is over, the next retry comes within one capped backoff.
    assert RETRY_BACKOFF_MAX <= 0.25
    assert lease + 0.5 > STALL_TIMEOUT + RETRY_BACKOFF_MAX
    assert lease <= SUSPECT_S  # a frozen owner is not asked again before it is replaced


def test_backoff_is_jittered_doubling_and_capped() -> None:
    rng = random.Random(7)
    for attempt, high in [(1, 0.05), (2, 0.1), (3, 0.2), (4, 0.25), (9, 0.25), (500, 0.25)]:
        delays = [backoff_delay(attempt, 0.05, RETRY_BACKOFF_MAX, rng) for _ in range(200)]
        assert min(delays) >= high / 2 and max(delays) <= high
    assert backoff_delay(40, 0.05, BACKOFF_MAX, rng) <= BACKOFF_MAX
    assert backoff_delay(0, 0.05, 1.0, rng) <= 0.05  # attempt numbers start at 1


def test_rotation_is_round_robin() -> None:
    rotation = ServerRotation([A, B, C], start=1)
    assert [rotation.next(0.0) for _ in range(4)] == [B, C, A, B]


def test_rotation_skips_a_suspect_server_for_a_while() -> None:
    rotation = ServerRotation([A, B], start=0, suspect_s=3.0)
    rotation.suspect(A, now=10.0)
    assert [rotation.next(10.5) for _ in range(3)] == [B, B, B]  # never back to A
    assert rotation.is_suspect("ws://10.0.0.1:8001/other?placed=1", 11.0)  # same server
    assert not rotation.is_suspect("ws://10.0.0.1:8009/v1/ws", 11.0)  # another port
    assert not rotation.is_suspect(A, 13.0)
    assert {rotation.next(13.0), rotation.next(13.0)} == {A, B}


def test_rotation_when_every_server_is_suspect() -> None:
    rotation = ServerRotation([A, B, C], start=0, suspect_s=3.0)
    rotation.suspect(A, 1.0)
    rotation.suspect(B, 0.0)  # its suspicion ends first
    rotation.suspect(C, 2.0)
    assert rotation.all_suspect(2.5)
    assert rotation.next(2.5) == B
    rotation.clear(C)
    assert rotation.next(2.5) == C


def test_a_single_url_is_always_used() -> None:
    rotation = ServerRotation([A])
    rotation.suspect(A, 0.0)
    assert rotation.next(0.1) == A


def test_default_ports_count_as_the_same_server() -> None:
    rotation = ServerRotation(["ws://h/v1/ws", "wss://h/v1/ws"])
    rotation.suspect("ws://H:80/x", 0.0)
    assert rotation.is_suspect("ws://h/v1/ws", 1.0)
    assert not rotation.is_suspect("wss://h/v1/ws", 1.0)  # port 443


# -- against fake servers -----------------------------------------------------------------


@pytest.fixture
def first_url_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client starts its rotation at its first URL (normally a random one)."""
    monkeypatch.setattr(sdk.random, "randrange", lambda n: 0)


@pytest.mark.usefixtures("first_url_first")
async def test_a_server_that_never_completes_the_handshake_costs_one_open_timeout() -> None:
    async with Blackhole() as frozen, FakeRoomServer(name="peer") as peer:
        client = RoomClient([frozen.url, peer.url], "lobby", make_token(), protocol=1)
        started = time.monotonic()
        await client.connect(timeout=5)
        elapsed = time.monotonic() - started
        state = await client.next_state(timeout=2)
        await client.close()
    assert state.server == "peer"
    assert frozen.connections == 1  # tried once, then the other server
    assert OPEN_TIMEOUT - 0.05 <= elapsed <= OPEN_TIMEOUT + 0.5, elapsed


async def play_until_frozen(
    redirect_to_owner: bool, lease: float = 2.0
) -> tuple[float, RoomClient, FakeRoomServer, FakeRoomServer, int]:
    """Freeze the owner of a playing client; the peer claims the room ``lease`` s later.

    Until then the peer answers ``unavailable`` + 4020 (or, with ``redirect_to_owner``,
    redirects to the frozen owner, as a peer that still believes its lease would).
    Returns the time from the freeze to the first state from the peer, and more.
    """
    room = Room()
    claimed_at = [float("inf")]
    async with FakeRoomServer(name="owner", room=room) as owner:
        before = (
            FakeRoomServer.redirect(owner.url, "owner")
            if redirect_to_owner
            else FakeRoomServer.refuse(ErrorCode.UNAVAILABLE, int(CloseCode.RECONNECT))
        )
        async with FakeRoomServer(name="peer", room=room) as peer:
            peer.behaviour = FakeRoomServer.until(
                lambda: time.monotonic() >= claimed_at[0], before, peer.play
            )
            client = RoomClient([owner.url, peer.url], "lobby", make_token(), protocol=1)
            await client.connect(timeout=5)
            for _ in range(5):
                client.send_input({"dx": 1, "dy": 0})
                await client.next_state(timeout=2)
            assert client.server == "owner"
            frozen_at = time.monotonic()
            owner.freeze()
            claimed_at[0] = frozen_at + lease
            for _ in range(3):  # inputs sent into the frozen owner: resent to the peer
                client.send_input({"dx": 0, "dy": 1})
            while True:
                state = await client.next_state(timeout=lease + 3)
                if state.server == "peer":
                    break
            outage = time.monotonic() - frozen_at
            while client.unacked:
                await client.next_state(timeout=2)
            await client.close()
            handshakes_after_freeze = owner.handshakes - 1
    return outage, client, owner, peer, handshakes_after_freeze


@pytest.mark.usefixtures("first_url_first")
async def test_a_frozen_owner_costs_the_lease_plus_at_most_half_a_second() -> None:
    lease = 2.0
    outage, client, _owner, peer, handshakes = await play_until_frozen(False, lease)
    assert lease <= outage <= lease + 0.5, outage
    assert handshakes == 0  # never went back to the frozen process
    assert peer.connections >= 3  # polled the peer while the lease ran
    assert client.stats.reconnects == 1 and client.stats.rollbacks == 0
    assert client.stats.max_ack == 8 and client.stats.ack_regressions == 0
    print(f"freeze -> first state from the new owner: {outage:.3f} s (lease {lease} s)")


@pytest.mark.usefixtures("first_url_first")
async def test_a_redirect_to_the_frozen_owner_is_not_followed() -> None:
    lease = 2.0
    outage, client, _owner, _peer, handshakes = await play_until_frozen(True, lease)
    assert lease <= outage <= lease + 0.5, outage
    assert handshakes == 0
    assert client.stats.redirects_deferred >= 2 and client.stats.redirects == 0
    assert client.stats.max_ack == 8


@pytest.mark.usefixtures("first_url_first")
async def test_a_stall_is_noticed_within_the_stall_timeout() -> None:
    room = Room()
    async with (
        FakeRoomServer(name="owner", room=room) as owner,
        FakeRoomServer(name="peer", room=room) as peer,
    ):
        client = RoomClient([owner.url, peer.url], "lobby", make_token(), protocol=1)
        await client.connect(timeout=5)
        await client.next_state(timeout=2)
        frozen_at = time.monotonic()
        owner.freeze()
        while (await client.next_state(timeout=3)).server != "peer":
            pass
        outage = time.monotonic() - frozen_at
        await client.close()
    assert STALL_TIMEOUT <= outage <= STALL_TIMEOUT + 0.5, outage
    assert owner.handshakes == 1


@pytest.mark.usefixtures("first_url_first")
async def test_an_unanswered_join_moves_on_but_does_not_make_the_server_suspect() -> None:
    async def hold(session: Session) -> None:
        await session.ws.wait_closed()  # a live server holding the join

    async with (
        FakeRoomServer(name="holding", behaviour=hold) as holding,
        FakeRoomServer(name="peer") as peer,
    ):
        client = RoomClient([holding.url, peer.url], "lobby", make_token(), protocol=1)
        started = time.monotonic()
        await client.connect(timeout=5)
        elapsed = time.monotonic() - started
        assert not client._rotation.is_suspect(holding.url, time.monotonic())
        await client.close()
    assert JOIN_TIMEOUT <= elapsed <= JOIN_TIMEOUT + 0.5, elapsed
    assert holding.connections == 1 and peer.connections == 1


async def test_a_slow_room_is_not_a_stall() -> None:
    """A live server that sends no state for a while still answers the SDK's ping."""
    async with FakeRoomServer(name="slow") as server:
        server.state_interval = 2.5 * STALL_TIMEOUT
        client = RoomClient([server.url], "lobby", make_token(), protocol=1)
        await client.connect(timeout=5)
        await client.next_state(timeout=5)
        await client.close()
    assert server.connections == 1 and client.stats.reconnects == 0
    assert server.pings >= 2


async def drop_and_see_where_it_goes(fallback_of: Any) -> tuple[RoomClient, dict[str, int]]:
    """Play on the first of three servers, whose welcome names ``fallback_of(servers)``;
    close it; which servers the client then connects to, and the client."""
    room = Room()
    async with (
        FakeRoomServer(name="next", room=room) as rotation_next,
        FakeRoomServer(name="heir", room=room) as heir,
    ):
        async with FakeRoomServer(name="owner", room=room) as owner:
            owner.fallback = fallback_of(rotation_next, heir)
            urls = [owner.url, rotation_next.url, heir.url]
            client = RoomClient(urls, "lobby", make_token(), protocol=1)
            await client.connect(timeout=5)
            await client.next_state(timeout=2)
            assert client.server == "owner"
        # The owner is gone (its connections closed): the client reconnects.
        while client.server == "owner":
            await client.next_state(timeout=3)
        await client.close()
        return client, {"next": rotation_next.connections, "heir": heir.connections}


@pytest.mark.usefixtures("first_url_first")
async def test_a_dropped_client_goes_first_to_the_welcomes_fallback() -> None:
    client, connections = await drop_and_see_where_it_goes(lambda _next, heir: heir.url)
    # The rotation's next server would have been "next"; the fallback named "heir".
    assert connections == {"next": 0, "heir": 1}
    assert client.server == "heir" and client.stats.fallbacks == 1
    assert client.stats.redirects == 0 and client.stats.rollbacks == 0


@pytest.mark.usefixtures("first_url_first")
@pytest.mark.parametrize(
    "fallback",
    [
        "ws://127.0.0.9:1/v1/ws",  # no server of the client's list
        "http://127.0.0.1:1/v1/ws",  # not a WebSocket URL
        123,  # not a string: ignored, as any field of the wrong type
        ["ws://127.0.0.1:1/v1/ws"],
    ],
)
async def test_a_fallback_outside_the_cluster_or_malformed_is_not_followed(
    fallback: Any,
) -> None:
    client, connections = await drop_and_see_where_it_goes(lambda _next, _heir: fallback)
    assert client.stats.fallbacks == 0
    assert connections["next"] == 1 and client.server == "next"  # the rotation decided
