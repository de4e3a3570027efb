"""/metrics is not public: a bearer admin token when one is set, else loopback only.
/healthz, the JWKS and the OpenAPI document stay public."""

from __future__ import annotations

import argparse

import pytest

from auth import cli
from auth.settings import from_sources
from tests.auth.conftest import AuthUnderTest, MakeAuth
from tests.auth.test_api import assert_error

TOKEN = "s3cret-admin-token"


async def test_without_a_token_metrics_answer_loopback_only(make_auth: MakeAuth) -> None:
    auth: AuthUnderTest = await make_auth()
    for host in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "127.0.0.2"):
        response = await auth.client_from(host).get("/metrics")
        assert response.status_code == 200, host
        assert "stateroom_auth_requests_total" in response.text
    for host in ("10.0.0.1", "203.0.113.9", "2001:db8::1"):
        outsider = auth.client_from(host)
        assert_error(await outsider.get("/metrics"), 403, "forbidden")
        # spoofing the header from outside changes nothing
        spoofed = await outsider.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"})
        assert_error(spoofed, 403, "forbidden")
        # the rest stays public
        assert (await outsider.get("/healthz")).status_code == 200
        assert (await outsider.get("/.well-known/jwks.json")).status_code == 200
        assert (await outsider.get("/openapi.json")).status_code == 200


async def test_behind_a_local_proxy_the_forwarded_client_decides(make_auth: MakeAuth) -> None:
    auth: AuthUnderTest = await make_auth(trusted_proxies="127.0.0.1/32")
    via_proxy = auth.client  # peer 127.0.0.1: a sidecar proxy
    forwarded = await via_proxy.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert_error(forwarded, 403, "forbidden")
    assert (await via_proxy.get("/metrics")).status_code == 200  # the host itself


async def test_with_a_token_metrics_need_it(make_auth: MakeAuth) -> None:
    auth: AuthUnderTest = await make_auth(admin_token=TOKEN)
    outsider = auth.client_from("203.0.113.9")
    for client in (auth.client, outsider):  # loopback needs it too once it is set
        missing = await client.get("/metrics")
        assert_error(missing, 401, "unauthorized")
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        values: tuple[str | bytes, ...] = (f"Bearer {TOKEN}x", "Bearer ", f"Basic {TOKEN}", TOKEN)
        for value in (*values, "Bearer é".encode()):
            wrong = await client.get("/metrics", headers={"Authorization": value})
            assert_error(wrong, 401, "unauthorized")
        ok = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and "stateroom_auth" in ok.text
        lower = await client.get("/metrics", headers={"Authorization": f"bearer {TOKEN}"})
        assert lower.status_code == 200
    metrics = (await outsider.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).text
    assert 'route="/metrics",status="401"' in metrics


def test_admin_token_comes_from_the_environment_only() -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--admin-token", "x"])  # no flag: argv is world-readable
    args = parser.parse_args(["--key", "k", "--redis", "redis://x"])
    settings = from_sources(args, {"STATEROOM_ADMIN_TOKEN": TOKEN})
    assert settings.admin_token == TOKEN
    assert TOKEN not in repr(settings)
    assert from_sources(args, {}).admin_token == ""


async def test_openapi_documents_the_metrics_guard(make_auth: MakeAuth) -> None:
    auth: AuthUnderTest = await make_auth()
    spec = (await auth.client.get("/openapi.json")).json()
    responses = spec["paths"]["/metrics"]["get"]["responses"]
    assert {"200", "401", "403"} <= set(responses)
    assert "adminToken" in spec["components"]["securitySchemes"]
