"""Fixtures for the login service: a key file, cheap argon2 settings, an in-process app."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

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


@pytest.fixture
async def make_client(settings: AuthSettings) -> AsyncIterator[MakeClient]:
    """``await make_client(**overrides)`` -> an httpx client on a fresh in-process app."""
    opened: list[tuple[httpx.AsyncClient, Services]] = []

    async def make(**overrides: Any) -> httpx.AsyncClient:
        s = dataclasses.replace(settings, **overrides)
        services = Services.create(s)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(s, services)),
            base_url="http://auth.test",
        )
        opened.append((client, services))
        return client

    yield make
    for client, services in opened:
        await client.aclose()
        await services.aclose()


@pytest.fixture
async def client(make_client: MakeClient) -> httpx.AsyncClient:
    result: httpx.AsyncClient = await make_client()
    return result


@pytest.fixture
def keyring(key_file: Path) -> Keyring:
    return Keyring(key_file, check_interval=0.0)
