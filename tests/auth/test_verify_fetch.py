"""The verifier's JWKS fetching, against a local HTTP server on a free port that starts
answering late, fails, or answers nonsense: keys_unavailable (retry) when the verifier
cannot tell, unknown_key only after a fresh successful fetch; warm() keeps trying."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auth.errors import InvalidToken
from auth.keys import Keyring, SigningKey
from auth.tokens import TokenIssuer
from auth.verify import MAX_JWKS_BYTES, TokenVerifier
from infra.ports import free_port


class JwksServer:
    """A tiny HTTP/1.1 server: every request gets ``status`` and ``body``."""

    def __init__(self, port: int, body: Any) -> None:
        self.port = port
        self.status = 200
        self.body = body
        self.requests = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/jwks.json"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            payload = orjson.dumps(self.body)
            writer.write(
                f"HTTP/1.1 {self.status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def jwks_server(keyring: Keyring) -> AsyncIterator[JwksServer]:
    server = JwksServer(free_port(), keyring.jwks())  # not started: the test decides when
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def verifier(jwks_server: JwksServer) -> AsyncIterator[TokenVerifier]:
    verifier = TokenVerifier(jwks_server.url, http_timeout=2)
    try:
        yield verifier
    finally:
        await verifier.aclose()


def token_for(keyring: Keyring) -> str:
    return TokenIssuer(keyring, issuer="stateroom", audience="stateroom", ttl=600).issue(
        "g_p", "guest-1"
    )


def foreign_token() -> str:
    other = SigningKey.from_private(Ed25519PrivateKey.generate())
    import jwt

    now = int(time.time())
    claims = {"iss": "stateroom", "aud": "stateroom", "sub": "g_x", "iat": now, "exp": now + 60}
    return jwt.encode(claims, other.private_key, algorithm="EdDSA", headers={"kid": other.kid})


async def until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def refused(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(InvalidToken) as info:
        await verifier.verify(token)
    return info.value.code


async def test_warm_retries_until_the_login_service_answers(
    keyring: Keyring, jwks_server: JwksServer, verifier: TokenVerifier
) -> None:
    token = token_for(keyring)
    warm = asyncio.create_task(verifier.warm())
    started = time.monotonic()
    await until(lambda: verifier.fetches >= 3)  # 0, 0.1, 0.3 s: backing off, not spinning
    assert time.monotonic() - started >= 0.25
    assert not warm.done()
    # meanwhile a valid token is not refused as unknown: the client is told to retry
    assert await refused(verifier, token) == "keys_unavailable"
    assert not verifier.keys_known

    await jwks_server.start()
    up = time.monotonic()
    await asyncio.wait_for(warm, 5)
    assert time.monotonic() - up < 2.5  # the 1 s backoff cap (+ margin for a busy machine)
    assert verifier.keys_known and jwks_server.requests == 1
    fetches = verifier.fetches
    assert (await verifier.verify(token)).player_id == "g_p"
    assert verifier.fetches == fetches  # warm keys: no fetch on the first join
    # after a successful, fresh fetch an unknown kid is the token's fault
    assert await refused(verifier, foreign_token()) == "unknown_key"


async def test_aclose_stops_warm(verifier: TokenVerifier) -> None:
    warm = asyncio.create_task(verifier.warm())
    await until(lambda: verifier.fetches >= 1)
    await verifier.aclose()
    await asyncio.wait_for(warm, 2)
    fetches = verifier.fetches
    await asyncio.sleep(0)  # nothing left running
    assert verifier.fetches == fetches


async def test_a_failed_refetch_makes_unknown_kids_retryable(
    keyring: Keyring, jwks_server: JwksServer, verifier: TokenVerifier
) -> None:
    await jwks_server.start()
    await asyncio.wait_for(verifier.warm(), 5)
    token = token_for(keyring)
    assert (await verifier.verify(token)).player_id == "g_p"

    jwks_server.status = 503  # the login service is restarting
    assert verifier._fetched_at is not None
    verifier._fetched_at -= 61  # the cache is due for a refetch
    new = foreign_token()
    assert await refused(verifier, new) == "keys_unavailable"
    assert (await verifier.verify(token)).player_id == "g_p"  # old keys are kept

    jwks_server.status = 200  # back, still without that kid
    verifier._fetched_at -= 1.5  # a failed fetch is retried after at most 1 s, not 60
    assert await refused(verifier, new) == "unknown_key"
    assert verifier.keys_known


@pytest.mark.parametrize("body", [{"keys": []}, {"nope": 1}, [1, 2], "text"])
async def test_an_answer_without_keys_is_not_a_successful_fetch(
    keyring: Keyring, jwks_server: JwksServer, verifier: TokenVerifier, body: Any
) -> None:
    jwks_server.body = body
    await jwks_server.start()
    assert await refused(verifier, token_for(keyring)) == "keys_unavailable"
    assert not verifier.keys_known


@pytest.mark.parametrize("status", [404, 500, 503])
async def test_an_http_error_answer_is_a_failed_fetch(
    keyring: Keyring, jwks_server: JwksServer, verifier: TokenVerifier, status: int
) -> None:
    jwks_server.status = status
    await jwks_server.start()
    assert await refused(verifier, token_for(keyring)) == "keys_unavailable"
    assert not verifier.keys_known
    assert jwks_server.requests == 1


async def test_a_runaway_or_non_json_answer_is_a_failed_fetch(
    keyring: Keyring, jwks_server: JwksServer, verifier: TokenVerifier
) -> None:
    jwks_server.body = {"keys": [], "pad": "x" * MAX_JWKS_BYTES}
    await jwks_server.start()
    assert await refused(verifier, token_for(keyring)) == "keys_unavailable"
    assert not verifier.keys_known


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/jwks.json"])
async def test_a_jwks_url_that_is_not_http_is_never_fetched(keyring: Keyring, url: str) -> None:
    verifier = TokenVerifier(url, http_timeout=1)
    try:
        assert await refused(verifier, token_for(keyring)) == "keys_unavailable"
        assert not verifier.keys_known
    finally:
        await verifier.aclose()
