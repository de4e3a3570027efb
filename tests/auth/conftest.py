"""Fixtures for the login service: a key file, cheap argon2 settings, an in-process app."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from auth.app import Services, create_app
from auth.keys import Keyring, ensure_key_file
from auth.settings import AuthSettings


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "auth-key.pem"
    ensure_key_file(path)
    return path


@pytest.fixture
def settings(redis_url: str, key_file: Path) -> AuthSettings:
    # Cheap argon2 so tests stay fast; the default (OWASP) is checked in test_passwords.
    return AuthSettings(
        redis_url=redis_url,
        key_file=key_file,
        argon2_memory_kib=64,
        argon2_time_cost=1,
        key_check_interval=0.0,
    )


MakeClient = Callable[..., Any]


@dataclasses.dataclass
class AuthUnderTest:
    """One in-process app: its services (to look inside) and a client factory."""

    app: Starlette
    services: Services
    _opened: list[httpx.AsyncClient] = dataclasses.field(default_factory=list)
    client: httpx.AsyncClient = dataclasses.field(init=False)  # peer 127.0.0.1

    def __post_init__(self) -> None:
        self.client = self.client_from("127.0.0.1", 123)

    def client_from(self, host: str, port: int = 50_000) -> httpx.AsyncClient:
        """Another client of the same app whose TCP peer address is ``host``."""
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, client=(host, port)),
            base_url="http://auth.test",
        )
        self._opened.append(client)
        return client


MakeAuth = Callable[..., Any]


@pytest.fixture
async def make_auth(settings: AuthSettings) -> AsyncIterator[MakeAuth]:
    """``await make_auth(**overrides)`` -> AuthUnderTest on a fresh in-process app."""
    made: list[AuthUnderTest] = []

    async def make(**overrides: Any) -> AuthUnderTest:
        s = dataclasses.replace(settings, **overrides)
        services = Services.create(s)
        app = create_app(s, services)
        auth = AuthUnderTest(app, services)
        made.append(auth)
        return auth

    yield make
    for auth in made:
        for client in auth._opened:
            await client.aclose()
        await auth.services.aclose()


@pytest.fixture
async def make_client(make_auth: MakeAuth) -> MakeClient:
    """``await make_client(**overrides)`` -> an httpx client on a fresh in-process app."""

    async def make(**overrides: Any) -> httpx.AsyncClient:
        auth: AuthUnderTest = await make_auth(**overrides)
        return auth.client

    return make


@pytest.fixture
async def client(make_client: MakeClient) -> httpx.AsyncClient:
    result: httpx.AsyncClient = await make_client()
    return result


@pytest.fixture
def keyring(key_file: Path) -> Keyring:
    return Keyring(key_file, check_interval=0.0)
