"""A session follows its token: the SDK's half (issue 7, deliverable 2).

The renewal schedule and the refreshing token source are pure enough to test without
sockets; the rest runs against ``FakeRoomServer`` (real WebSockets on loopback,
speaking protocol v1 with ``auth``/``authed`` and ``welcome.token_exp``), with short
token lifetimes and the SDK's 5 s minimum between two renewals lowered for speed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest

from client import sdk
from client.sdk import (
    AuthClient,
    LoginError,
    RefreshingToken,
    RoomClient,
    RoomError,
    Tokens,
    reauth_delay,
    reauth_retry_delay,
    refresh_margin,
)
from server.protocol import CloseCode, ErrorCode
from tests.test_sdk_fakes import FakeRoomServer, make_token, token_exp

# -- the schedule -------------------------------------------------------------------------


def test_renewal_time() -> None:
    assert reauth_delay(1600.0, 1000.0) == pytest.approx(480.0)  # 80 % of 600 s
    assert reauth_delay(1200.0, 1000.0) == pytest.approx(140.0)  # 60 s before exp
    assert reauth_delay(1100.0, 1000.0) == pytest.approx(50.0)  # half of what is left
    assert reauth_delay(1010.0, 1000.0) == pytest.approx(5.0)
    assert reauth_delay(1000.0, 1000.0) == 0.0  # expired: now
    assert reauth_delay(900.0, 1000.0) == 0.0
    # never twice within REAUTH_MIN_INTERVAL (5 s) ...
    assert reauth_delay(900.0, 1000.0, since_last_send=1.0) == pytest.approx(4.0)
    assert reauth_delay(1600.0, 1000.0, since_last_send=1.0) == pytest.approx(480.0)
    assert reauth_delay(1020.0, 1000.0, since_last_send=0.0) == pytest.approx(10.0)
    assert reauth_delay(1012.0, 1000.0, since_last_send=0.0) == pytest.approx(6.0)
    assert reauth_delay(1010.0, 1000.0, since_last_send=0.0) == pytest.approx(5.0)
    # ... unless that would let a short token run out: then half its life, at least 1 s
    assert reauth_delay(1006.0, 1000.0, since_last_send=0.0) == pytest.approx(3.0)
    assert reauth_delay(1003.0, 1000.0, since_last_send=0.0) == pytest.approx(1.5)
    assert reauth_delay(1001.0, 1000.0, since_last_send=0.0) == pytest.approx(1.0)
    assert reauth_delay(1001.0, 1000.0, since_last_send=0.8) == pytest.approx(0.5)


def test_retry_after_a_failed_renewal() -> None:
    assert [reauth_retry_delay(n, 1600.0, 1000.0) for n in (1, 2, 3, 7, 20)] == [
        1.0,
        2.0,
        4.0,
        60.0,
        60.0,
    ]
    assert reauth_retry_delay(5, 1010.0, 1000.0) == 5.0  # at most half the time left
    assert reauth_retry_delay(5, 990.0, 1000.0) == 1.0  # past the deadline: every second


@pytest.mark.parametrize("lifetime", [4, 10, 30, 60, 119, 120, 300, 600, 900, 3600, 86400])
def test_a_renewal_always_finds_the_token_due_and_a_reconnect_rarely(lifetime: float) -> None:
    margin = refresh_margin(lifetime)
    left_at_renewal = lifetime - reauth_delay(lifetime, 0.0)
    assert left_at_renewal < margin  # RefreshingToken refreshes when the client renews
    assert margin <= 0.6 * lifetime  # a token is used for at least 40 % of its life


class FakeAuth:
    def __init__(self, fail: Exception | None = None, lifetime: float = 600.0) -> None:
        self.fail = fail
        self.lifetime = lifetime
        self.calls = 0
        self.refresh_tokens: list[str] = []

    async def refresh(self, tokens: Tokens) -> Tokens:
        self.calls += 1
        self.refresh_tokens.append(tokens.refresh_token)
        await asyncio.sleep(0.01)
        if self.fail is not None:
            raise self.fail
        return Tokens(
            f"access-{self.calls}",
            f"refresh-{self.calls}",
            tokens.player_id,
            time.time() + self.lifetime,
            self.lifetime,
        )


def source(auth: FakeAuth, expires_at: float, lifetime: float = 600.0) -> RefreshingToken:
    tokens = Tokens("access-0", "refresh-0", "p1", expires_at, lifetime)
    return RefreshingToken(auth, tokens)  # type: ignore[arg-type]


async def test_the_token_source_refreshes_only_when_due() -> None:
    auth = FakeAuth()
    fresh = source(auth, time.time() + 600)
    assert await fresh() == "access-0" and auth.calls == 0  # margin 150 s for 600 s
    due = source(auth, time.time() + 140)
    assert await due() == "access-1" and due.refreshes == 1
    assert await due() == "access-1" and auth.calls == 1
    assert auth.refresh_tokens == ["refresh-0"]


async def test_one_refresh_in_flight() -> None:
    auth = FakeAuth()
    due = source(auth, time.time() + 10)
    got = await asyncio.gather(*(due() for _ in range(8)))
    assert got == ["access-1"] * 8 and auth.calls == 1  # a second use would be reuse


async def test_a_failed_refresh_keeps_a_valid_token_and_raises_for_an_expired_one() -> None:
    refused = LoginError(401, "invalid_grant", "refresh token reused")
    valid = source(FakeAuth(fail=refused), time.time() + 10)
    assert await valid() == "access-0" and "reused" in valid.last_error
    expired = source(FakeAuth(fail=refused), time.time() - 1)
    with pytest.raises(LoginError):
        await expired()


async def test_invalidate_forces_a_refresh() -> None:
    auth = FakeAuth()
    fresh = source(auth, time.time() + 600)
    fresh.invalidate("access-0")
    assert await fresh() == "access-1"
    fresh.invalidate("access-0")  # an older token: nothing to do
    assert await fresh() == "access-1" and auth.calls == 1


async def test_auth_client_token_source_rotates_the_refresh_token() -> None:
    seen: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        seen.append({"path": request.url.path, **body})
        n = len(seen)
        return httpx.Response(
            200,
            json={
                "access_token": f"a{n}",
                "refresh_token": f"r{n}",
                "player_id": "p1",
                "expires_in": 600,
            },
        )

    auth = AuthClient("http://login.invalid")
    auth._http = httpx.AsyncClient(
        base_url="http://login.invalid", transport=httpx.MockTransport(answer)
    )
    try:
        first = await auth.guest("ann")
        assert first.expires_in == 600.0
        stale = Tokens(first.access_token, first.refresh_token, "p1", time.time() + 30, 600.0)
        token = auth.token_source(stale)
        assert await token() == "a2"
        assert await token() == "a2"
        assert token.tokens.refresh_token == "r2"
    finally:
        await auth.aclose()
    assert seen[1] == {"path": "/v1/refresh", "refresh_token": "r1"}
    assert len(seen) == 2


# -- against a fake room server -----------------------------------------------------------


class Minting:
    """A token source that returns a new fake token of ``lifetime`` s at each call."""

    def __init__(self, lifetime: float, player: str = "p1") -> None:
        self.lifetime = lifetime
        self.player = player
        self.issued: list[str] = []

    async def __call__(self) -> str:
        token = make_token(self.player, self.lifetime)
        self.issued.append(token)
        return token


async def final_error(client: RoomClient, timeout: float) -> RoomError:
    async with asyncio.timeout(timeout):
        while True:
            try:
                await client.next_state()
            except RoomError as exc:
                return exc


async def test_a_callable_token_keeps_the_session_alive_past_expiry() -> None:
    minting = Minting(lifetime=3)  # renewed every 1-1.5 s: the 5 s minimum gives way
    async with (
        FakeRoomServer(leeway=0.5) as server,
        RoomClient([server.url], "lobby", minting, protocol=1) as client,
    ):
        first_exp = client.token_exp
        assert first_exp == token_exp(minting.issued[0])
        started = time.monotonic()
        seq = 0
        while time.monotonic() - started < 7.5:  # two lifetimes + leeway, and more
            seq = client.send_input({"dx": 1, "dy": 0})
            await client.next_state(timeout=2)
        assert client.stats.reauths >= 4, client.stats
        assert client.token_exp is not None and client.token_exp > first_exp + 3
        while client.stats.max_ack < seq:
            await client.next_state(timeout=2)
    assert server.connections == 1 and client.stats.reconnects == 0
    assert client.stats.errors == {}
    assert server.auth_messages == minting.issued[1 : 1 + len(server.auth_messages)]
    assert len(set(server.auth_messages)) == len(server.auth_messages)


async def test_a_string_token_is_never_renewed_and_the_session_ends_at_expiry() -> None:
    token = make_token("p1", lifetime=2)
    async with FakeRoomServer(leeway=0.3) as server:
        client = RoomClient([server.url], "lobby", token, protocol=1)
        await client.connect()
        error = await final_error(client, timeout=5)
        await client.close()
    assert (error.code, error.error_code) == (4001, "token_expired")
    assert server.auth_messages == [] and server.connections == 1


async def test_token_expired_is_answered_by_one_resume_with_a_fresh_token() -> None:
    minting = Minting(lifetime=2)
    # The server refuses every renewal, so the first token runs out.
    async with FakeRoomServer(leeway=0.3, auth_reply="refuse") as server:
        client = RoomClient([server.url], "lobby", minting, protocol=1)
        await client.connect()
        async with asyncio.timeout(6):
            while client.stats.token_resumes == 0 or client.connection_state.value != "connected":
                await client.next_state(timeout=2)
        await client.close()
    assert server.connections == 2
    assert server.authorizations[1] == f"Bearer {minting.issued[-1]}"
    assert client.stats.reconnects == 1 and client.stats.token_resumes == 1
    assert client.stats.reauth_failures >= 1


async def test_a_second_token_expired_in_a_row_is_final() -> None:
    stale = Minting(lifetime=-60)  # every token it mints has expired already
    async with FakeRoomServer(leeway=0) as server:
        client = RoomClient([server.url], "lobby", stale, protocol=1)
        with pytest.raises(RoomError) as refusal:
            await client.connect(timeout=5)
    assert (refusal.value.code, refusal.value.error_code) == (4001, "token_expired")
    assert server.connections == 2 and client.stats.token_resumes == 1


@pytest.mark.parametrize(
    ("code", "close"),
    [
        (ErrorCode.SESSION_REVOKED, CloseCode.UNAUTHORIZED),
        (ErrorCode.UNAUTHORIZED, CloseCode.UNAUTHORIZED),
        (ErrorCode.ROOM_QUOTA, CloseCode.QUOTA_EXCEEDED),
        (ErrorCode.CONNECTION_QUOTA, CloseCode.QUOTA_EXCEEDED),
        (ErrorCode.SERVER_FULL, CloseCode.QUOTA_EXCEEDED),
    ],
)
async def test_final_refusals_carry_their_error_code(code: ErrorCode, close: CloseCode) -> None:
    behaviour = FakeRoomServer.refuse(code, int(close), "no")
    async with FakeRoomServer(behaviour=behaviour) as server:
        client = RoomClient([server.url], "lobby", Minting(lifetime=60), protocol=1)
        with pytest.raises(RoomError) as refusal:
            await client.connect(timeout=5)
    assert (refusal.value.code, refusal.value.error_code) == (int(close), str(code))
    assert str(code) in str(refusal.value)
    assert server.connections == 1  # not retried


async def test_session_revoked_on_an_open_session_is_final() -> None:
    async def revoke_later(session: Any) -> None:
        play = asyncio.ensure_future(session.server.play(session))
        await asyncio.sleep(0.3)
        await session.close_with(ErrorCode.SESSION_REVOKED, 4001, "logged out")
        await play

    async with FakeRoomServer(behaviour=revoke_later) as server:
        client = RoomClient([server.url], "lobby", Minting(lifetime=60), protocol=1)
        await client.connect()
        error = await final_error(client, timeout=5)
        await client.close()
    assert (error.code, error.error_code) == (4001, "session_revoked")
    assert server.connections == 1


async def test_a_refresh_refused_by_the_login_service_is_final() -> None:
    auth = FakeAuth(fail=LoginError(401, "invalid_grant", "refresh token reused"))
    expired = source(auth, time.time() - 1)
    async with FakeRoomServer() as server:
        client = RoomClient([server.url], "lobby", expired, protocol=1)
        with pytest.raises(RoomError) as refusal:
            await client.connect(timeout=5)
    assert (refusal.value.code, refusal.value.error_code) == (4001, "invalid_grant")
    assert server.connections == 0


async def test_an_unreachable_login_service_is_retried() -> None:
    auth = FakeAuth(fail=LoginError(503, "unavailable", "try later"))
    expired = source(auth, time.time() - 1)
    async with FakeRoomServer() as server:
        client = RoomClient([server.url], "lobby", expired, protocol=1)
        with pytest.raises(sdk.ClientError, match="could not join"):
            await client.connect(timeout=1.0)
    assert auth.calls >= 3 and server.connections == 0


async def test_a_slow_consumer_close_is_retried_and_resumes() -> None:
    """4009: the client fell behind and was evicted; its seat waits out the grace period,
    so the SDK reconnects and resumes (protocol.md §4), like after 4020."""
    evicted = False

    def once() -> bool:
        nonlocal evicted
        done, evicted = evicted, True
        return done

    slow = FakeRoomServer.refuse(None, int(CloseCode.SLOW_CONSUMER), "outbox overflow")
    async with FakeRoomServer() as server:
        server.behaviour = FakeRoomServer.until(once, slow, server.play)
        client = RoomClient([server.url], "lobby", Minting(lifetime=60), protocol=1)
        await client.connect(timeout=5)
        await client.next_state(timeout=5)
        await client.close()
    assert server.connections == 2
