"""CORS on /v1/* and the JWKS: closed by default, an allow-list of exact origins, preflights,
and CORS headers on errors too (so a page can read them)."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from auth.cors import normalize, parse_origins
from auth.errors import ConfigError
from auth.settings import AuthSettings, from_sources
from infra.ports import free_port
from tests.auth.conftest import AuthUnderTest, MakeAuth, MakeClient
from tests.auth.test_api import assert_error
from tests.support import Processes, wait_until

GAME = "https://game.example.com"
DEV = "http://localhost:5173"
EVIL = "https://evil.example.net"


def preflight(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type",
    }


@pytest.fixture
async def open_to_game(make_client: MakeClient) -> httpx.AsyncClient:
    client: httpx.AsyncClient = await make_client(cors_origins=f"{GAME}, {DEV}")
    return client


async def test_closed_by_default(client: httpx.AsyncClient) -> None:
    plain = await client.get("/.well-known/jwks.json", headers={"Origin": GAME})
    assert plain.status_code == 200
    assert not [h for h in plain.headers if h.startswith("access-control-")]
    assert "vary" not in plain.headers
    refused = await client.options("/v1/guest", headers=preflight(GAME))
    assert_error(refused, 403, "cors_origin_refused")
    assert "access-control-allow-origin" not in refused.headers
    assert "STATEROOM_AUTH_CORS_ORIGINS" in refused.json()["error"]["message"]


async def test_options_is_never_405_on_an_api_path(client: httpx.AsyncClient) -> None:
    for path, allow in (
        ("/v1/guest", "OPTIONS, POST"),
        ("/v1/rooms", "GET, HEAD, OPTIONS"),
        ("/v1/rooms/private/ABC234", "GET, HEAD, OPTIONS"),
        ("/v1/servers", "GET, HEAD, OPTIONS"),
        ("/.well-known/jwks.json", "GET, HEAD, OPTIONS"),
    ):
        response = await client.options(path)
        assert response.status_code == 204, (path, response.text)
        assert response.headers["allow"] == allow
    assert_error(await client.options("/v1/nothing-here"), 404, "not_found")


async def test_preflight_from_an_allowed_origin(open_to_game: httpx.AsyncClient) -> None:
    for origin in (GAME, DEV):
        response = await open_to_game.options("/v1/guest", headers=preflight(origin))
        assert response.status_code == 204, response.text
        assert response.content == b""
        assert response.headers["access-control-allow-origin"] == origin  # echoed, never *
        assert response.headers["vary"] == "Origin"
        assert response.headers["access-control-allow-methods"] == "OPTIONS, POST"
        assert response.headers["access-control-allow-headers"] == "authorization, content-type"
        assert int(response.headers["access-control-max-age"]) > 0
        assert "access-control-allow-credentials" not in response.headers
    rooms = await open_to_game.options("/v1/rooms", headers=preflight(GAME, "GET"))
    assert rooms.headers["access-control-allow-methods"] == "GET, HEAD, OPTIONS"
    # an origin is compared normalized: scheme and host in any case, default port or not
    same = await open_to_game.options(
        "/v1/guest", headers=preflight("HTTPS://Game.Example.com:443")
    )
    assert same.status_code == 204


async def test_a_disallowed_origin_gets_no_cors_headers(open_to_game: httpx.AsyncClient) -> None:
    for origin in (EVIL, "null", "https://game.example.com.evil.net", "http://game.example.com"):
        refused = await open_to_game.options("/v1/login", headers=preflight(origin))
        assert_error(refused, 403, "cors_origin_refused")
        assert "access-control-allow-origin" not in refused.headers
        served = await open_to_game.post("/v1/guest", headers={"Origin": origin})
        assert served.status_code == 200  # answered, but the browser will not let it read
        assert "access-control-allow-origin" not in served.headers
        assert served.headers["vary"] == "Origin"  # caches keep the answers apart


async def test_answers_and_errors_carry_cors_headers(
    open_to_game: httpx.AsyncClient, make_client: MakeClient
) -> None:
    h = {"Origin": GAME}
    ok = await open_to_game.post("/v1/guest", headers=h)
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == GAME
    assert "Retry-After" in ok.headers["access-control-expose-headers"]
    jwks = await open_to_game.get("/.well-known/jwks.json", headers=h)
    assert jwks.headers["access-control-allow-origin"] == GAME
    assert "Origin" in jwks.headers["vary"]
    # 401 with WWW-Authenticate exposed, 422, 415, 404: all readable by the page
    unauthorized = await open_to_game.get("/v1/rooms?game=arena", headers=h)
    assert_error(unauthorized, 401, "unauthorized")
    assert unauthorized.headers["access-control-allow-origin"] == GAME
    assert "WWW-Authenticate" in unauthorized.headers["access-control-expose-headers"]
    bad = await open_to_game.post("/v1/guest", json={"name": 7}, headers=h)
    assert_error(bad, 422, "validation_failed")
    assert bad.headers["access-control-allow-origin"] == GAME
    missing = await open_to_game.get("/v1/nothing-here", headers=h)
    assert_error(missing, 404, "not_found")
    assert missing.headers["access-control-allow-origin"] == GAME
    # 429 with its Retry-After readable
    limited = await make_client(cors_origins=GAME, rate_limit_per_minute=1)
    await limited.post("/v1/guest", headers=h)
    over = await limited.post("/v1/guest", headers=h)
    assert_error(over, 429, "rate_limited")
    assert over.headers["access-control-allow-origin"] == GAME
    assert int(over.headers["retry-after"]) >= 1
    # 503 (Redis down)
    down = await make_client(cors_origins=GAME, redis_url="redis://127.0.0.1:1/0")
    unavailable = await down.post("/v1/guest", headers=h)
    assert_error(unavailable, 503, "unavailable")
    assert unavailable.headers["access-control-allow-origin"] == GAME


async def test_an_unexpected_failure_is_a_readable_500(make_auth: MakeAuth) -> None:
    auth: AuthUnderTest = await make_auth(cors_origins=GAME)

    def broken() -> dict[str, object]:
        raise RuntimeError("boom")

    auth.services.keyring.jwks = broken  # type: ignore[method-assign]
    response = await auth.client.get("/.well-known/jwks.json", headers={"Origin": GAME})
    assert_error(response, 500, "internal_error")
    assert "boom" not in response.text
    assert response.headers["access-control-allow-origin"] == GAME


async def test_wildcard_allows_any_origin_without_credentials(make_client: MakeClient) -> None:
    client = await make_client(cors_origins="*")
    response = await client.options("/v1/refresh", headers=preflight(EVIL))
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "*"
    assert "vary" not in response.headers
    assert "access-control-allow-credentials" not in response.headers
    served = await client.post("/v1/guest", headers={"Origin": "null"})
    assert served.headers["access-control-allow-origin"] == "*"


async def test_pages_and_operator_routes_have_no_cors(open_to_game: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/metrics", "/openapi.json", "/dashboard/api/cluster"):
        response = await open_to_game.get(path, headers={"Origin": GAME})
        assert "access-control-allow-origin" not in response.headers, path


def test_origin_list_parsing() -> None:
    assert parse_origins("") == parse_origins(" , ") and not parse_origins("").enabled
    origins = parse_origins("https://A.example.com:443, http://localhost:8000,http://[::1]:80")
    assert origins.allowed == {"https://a.example.com", "http://localhost:8000", "http://[::1]"}
    assert origins.allows("https://a.example.com") and not origins.allows("https://b.example.com")
    assert parse_origins("*").any
    assert normalize("https://x.test/") is None  # a path, even "/"
    for bad, words in (
        ("*, https://a.example.com", "alone"),
        ("https://a.example.com/app", "not an origin"),
        ("null", "not an origin"),
        ("ftp://a.example.com", "not an origin"),
        ("https://user@a.example.com", "not an origin"),
        ("https://a.example.com:99999", "not an origin"),
        ("a.example.com", "not an origin"),
    ):
        with pytest.raises(ConfigError, match=words):
            parse_origins(bad)
        with pytest.raises(ConfigError, match="STATEROOM_AUTH_CORS_ORIGINS"):
            AuthSettings(redis_url="redis://x", key_file=Path("k"), cors_origins=bad)


def test_setting_from_flag_and_environment() -> None:
    import argparse

    from auth import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    env = {"STATEROOM_AUTH_CORS_ORIGINS": GAME}
    base = ["--key", "k", "--redis", "r"]
    assert from_sources(parser.parse_args(base), env).cors_origins == GAME
    flagged = parser.parse_args([*base, "--cors-origins", DEV])
    assert from_sources(flagged, env).cors_origins == DEV
    assert AuthSettings(redis_url="r", key_file=Path("k")).cors_origins == ""


def test_a_real_service_configured_by_environment(
    processes: Processes, redis_url: str, tmp_path: Path
) -> None:
    from auth.keys import ensure_key_file

    key = tmp_path / "auth-key.pem"
    ensure_key_file(key)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["auth", "--port", str(port), "--redis", redis_url, "--key", str(key)]
    proc = processes.start(
        [sys.executable, "-m", "auth", *args],
        "auth",
        env={"STATEROOM_AUTH_CORS_ORIGINS": f"{GAME},{DEV}"},
    )

    def up() -> bool:
        try:
            return proc.poll() is not None or httpx.get(f"{url}/healthz", timeout=1).is_success
        except httpx.HTTPError:
            return False

    wait_until(up, 20, "auth /healthz")
    assert proc.poll() is None, processes.log("auth")
    allowed = httpx.options(f"{url}/v1/guest", headers=preflight(DEV), timeout=5)
    assert allowed.status_code == 204 and allowed.headers["access-control-allow-origin"] == DEV
    refused = httpx.options(f"{url}/v1/guest", headers=preflight(EVIL), timeout=5)
    assert_error(refused, 403, "cors_origin_refused")
    login = httpx.post(f"{url}/v1/guest", headers={"Origin": GAME}, timeout=5)
    assert login.status_code == 200 and login.headers["access-control-allow-origin"] == GAME
