"""Every endpoint of the login service, in process, against a real Valkey."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest

from auth.verify import TokenVerifier
from tests.auth.conftest import MakeClient


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


async def verifier_for(client: httpx.AsyncClient) -> TokenVerifier:
    return TokenVerifier.from_jwks((await client.get("/.well-known/jwks.json")).json())


async def test_guest_login_without_body(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/guest")
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 600
    assert body["player_id"].startswith("g_")
    assert body["name"].startswith("guest-")
    verified = await (await verifier_for(client)).verify(body["access_token"])
    assert verified.player_id == body["player_id"]
    assert verified.name == body["name"]
    assert verified.expires_at == pytest.approx(time.time() + 600, abs=5)
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "EdDSA" and header["kid"]
    assert set(verified.claims) == {"iss", "aud", "sub", "name", "iat", "exp", "jti", "sid"}
    # the session id is the refresh family: the refresh token's first part
    assert verified.session_id == body["refresh_token"].split(".")[0]


async def test_guest_login_with_name(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/guest", json={"name": "Zoé"})
    assert response.status_code == 200
    assert response.json()["name"] == "Zoé"
    assert_error(await client.post("/v1/guest", json={"name": "x" * 25}), 422, "validation_failed")
    assert_error(await client.post("/v1/guest", json={"name": "a\nb"}), 422, "validation_failed")
    assert_error(await client.post("/v1/guest", json={"name": 5}), 422, "validation_failed")


async def test_register_and_login(client: httpx.AsyncClient) -> None:
    created = await client.post("/v1/accounts", json={"username": "alice", "password": "hunter22"})
    assert created.status_code == 201
    assert created.json()["username"] == "alice"
    player_id = created.json()["player_id"]
    assert player_id.startswith("u_")

    login = await client.post("/v1/login", json={"username": "alice", "password": "hunter22"})
    assert login.status_code == 200
    verified = await (await verifier_for(client)).verify(login.json()["access_token"])
    assert verified.player_id == player_id and verified.name == "alice"


async def test_taken_username_is_409_case_insensitive(client: httpx.AsyncClient) -> None:
    body = {"username": "bob", "password": "hunter22"}
    assert (await client.post("/v1/accounts", json=body)).status_code == 201
    assert_error(await client.post("/v1/accounts", json=body), 409, "username_taken")
    upper = {"username": "BOB", "password": "another1"}
    assert_error(await client.post("/v1/accounts", json=upper), 409, "username_taken")


@pytest.mark.parametrize(
    "body",
    [
        {"username": "ab", "password": "hunter22"},
        {"username": "a" * 33, "password": "hunter22"},
        {"username": "bad name", "password": "hunter22"},
        {"username": "carol", "password": "short"},
        {"username": "carol", "password": "x" * 129},
        {"username": "carol", "password": "x" * 10_000},
        {"username": "carol"},
        {"password": "hunter22"},
        {"username": 1, "password": "hunter22"},
    ],
)
async def test_account_validation(client: httpx.AsyncClient, body: dict[str, object]) -> None:
    assert_error(await client.post("/v1/accounts", json=body), 422, "validation_failed")


async def test_ten_kb_password_is_422_on_login(client: httpx.AsyncClient) -> None:
    body = {"username": "dave", "password": "x" * 10_240}
    assert_error(await client.post("/v1/login", json=body), 422, "validation_failed")


async def test_wrong_password_and_unknown_user_look_the_same(client: httpx.AsyncClient) -> None:
    await client.post("/v1/accounts", json={"username": "erin", "password": "hunter22"})
    wrong = await client.post("/v1/login", json={"username": "erin", "password": "wrong-pass"})
    unknown = await client.post("/v1/login", json={"username": "nobody", "password": "wrong-pass"})
    assert_error(wrong, 401, "invalid_credentials")
    assert_error(unknown, 401, "invalid_credentials")
    assert wrong.json() == unknown.json()


async def test_failed_logins_are_rate_limited(make_client: MakeClient) -> None:
    client = await make_client(login_failures=3)
    await client.post("/v1/accounts", json={"username": "frank", "password": "hunter22"})
    bad = {"username": "frank", "password": "wrong-pass"}
    for _ in range(3):
        assert_error(await client.post("/v1/login", json=bad), 401, "invalid_credentials")
    limited = await client.post("/v1/login", json=bad)
    assert_error(limited, 429, "rate_limited")
    assert 0 < int(limited.headers["Retry-After"]) <= 900
    # even the right password waits until the window ends
    good = {"username": "frank", "password": "hunter22"}
    assert_error(await client.post("/v1/login", json=good), 429, "rate_limited")


async def test_successful_login_keeps_failures_but_not_itself(make_client: MakeClient) -> None:
    client = await make_client(login_failures=3)
    await client.post("/v1/accounts", json={"username": "gina", "password": "hunter22"})
    bad = {"username": "gina", "password": "wrong-pass"}
    good = {"username": "gina", "password": "hunter22"}
    assert_error(await client.post("/v1/login", json=bad), 401, "invalid_credentials")
    # successes give their own slot back: any number of them, the failure stays counted
    for _ in range(5):
        assert (await client.post("/v1/login", json=good)).status_code == 200
    assert_error(await client.post("/v1/login", json=bad), 401, "invalid_credentials")
    assert (await client.post("/v1/login", json=good)).status_code == 200
    # a success did not clear the two failures: the third one locks the account
    assert_error(await client.post("/v1/login", json=bad), 401, "invalid_credentials")
    assert_error(await client.post("/v1/login", json=good), 429, "rate_limited")


async def test_requests_per_address_are_rate_limited(make_client: MakeClient) -> None:
    client = await make_client(rate_limit_per_minute=3)
    for _ in range(3):
        assert (await client.post("/v1/guest")).status_code == 200
    limited = await client.post("/v1/guest")
    assert_error(limited, 429, "rate_limited")
    assert 1 <= int(limited.headers["Retry-After"]) <= 61
    # health and keys are not limited: verifiers and probes must always get through
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/.well-known/jwks.json")).status_code == 200


async def test_malformed_json(client: httpx.AsyncClient) -> None:
    headers = {"content-type": "application/json"}
    for body in (b"{", b"\xff\xfe", b"nul", b'{"username": }'):
        response = await client.post("/v1/login", content=body, headers=headers)
        assert_error(response, 400, "invalid_json")
    response = await client.post("/v1/login", content=b"[1, 2]", headers=headers)
    assert_error(response, 422, "validation_failed")
    response = await client.post("/v1/guest", content=b"{", headers=headers)
    assert_error(response, 400, "invalid_json")


async def test_wrong_content_type(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/login",
        content=b"username=alice&password=hunter22",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert_error(response, 415, "unsupported_media_type")
    response = await client.post("/v1/refresh", content=b'{"refresh_token": "x"}')
    assert_error(response, 415, "unsupported_media_type")


async def test_one_megabyte_body(client: httpx.AsyncClient) -> None:
    big = b'{"username": "' + b"a" * 1_048_576 + b'"}'
    headers = {"content-type": "application/json"}
    assert_error(
        await client.post("/v1/login", content=big, headers=headers), 413, "payload_too_large"
    )

    async def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(64):
            yield b"a" * 16_384

    response = await client.post("/v1/accounts", content=chunks(), headers=headers)
    assert_error(response, 413, "payload_too_large")


async def test_unknown_route_and_method_are_json(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/nope"), 404, "not_found")
    response = await client.get("/v1/login")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]


async def test_refresh_rotates(client: httpx.AsyncClient) -> None:
    first = (await client.post("/v1/guest", json={"name": "ray"})).json()
    second = await client.post("/v1/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    body = second.json()
    assert body["refresh_token"] != first["refresh_token"]
    assert body["player_id"] == first["player_id"] and body["name"] == "ray"
    verified = await (await verifier_for(client)).verify(body["access_token"])
    assert verified.player_id == first["player_id"]
    third = await client.post("/v1/refresh", json={"refresh_token": body["refresh_token"]})
    assert third.status_code == 200


async def test_refresh_reuse_revokes_the_family(client: httpx.AsyncClient) -> None:
    first = (await client.post("/v1/guest")).json()
    second = (
        await client.post("/v1/refresh", json={"refresh_token": first["refresh_token"]})
    ).json()
    reuse = await client.post("/v1/refresh", json={"refresh_token": first["refresh_token"]})
    assert_error(reuse, 401, "invalid_grant")
    # the pair issued from the spent token stops working too
    after = await client.post("/v1/refresh", json={"refresh_token": second["refresh_token"]})
    assert_error(after, 401, "invalid_grant")
    metrics = (await client.get("/metrics")).text
    assert "stateroom_auth_refresh_reuse_total 1.0" in metrics


async def test_refresh_garbage_and_access_token(client: httpx.AsyncClient) -> None:
    pair = (await client.post("/v1/guest")).json()
    for token in (pair["access_token"], "garbage", "a.b", "", "x" * 5000):
        response = await client.post("/v1/refresh", json={"refresh_token": token})
        assert_error(response, 401, "invalid_grant")
    assert_error(await client.post("/v1/refresh", json={}), 422, "validation_failed")
    assert_error(
        await client.post("/v1/refresh", json={"refresh_token": 7}), 422, "validation_failed"
    )
    # the real refresh token was not harmed by the attempts
    ok = await client.post("/v1/refresh", json={"refresh_token": pair["refresh_token"]})
    assert ok.status_code == 200


async def test_logout_revokes_the_family(client: httpx.AsyncClient) -> None:
    pair = (await client.post("/v1/guest")).json()
    rotated = (
        await client.post("/v1/refresh", json={"refresh_token": pair["refresh_token"]})
    ).json()
    response = await client.post("/v1/logout", json={"refresh_token": rotated["refresh_token"]})
    assert response.status_code == 204 and response.content == b""
    after = await client.post("/v1/refresh", json={"refresh_token": rotated["refresh_token"]})
    assert_error(after, 401, "invalid_grant")
    # logging out an unknown token is a quiet 204 (nothing to reveal)
    assert (await client.post("/v1/logout", json={"refresh_token": "nope"})).status_code == 204


async def test_jwks_healthz_openapi_metrics(client: httpx.AsyncClient) -> None:
    jwks = (await client.get("/.well-known/jwks.json")).json()
    (key,) = jwks["keys"]
    assert key["kty"] == "OKP" and key["crv"] == "Ed25519" and key["alg"] == "EdDSA"
    assert "d" not in key
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    spec = (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    for path in (
        "/v1/guest",
        "/v1/accounts",
        "/v1/login",
        "/v1/refresh",
        "/v1/logout",
        "/.well-known/jwks.json",
        "/healthz",
        "/metrics",
        "/openapi.json",
    ):
        assert path in spec["paths"]
    await client.post("/v1/guest")
    metrics = await client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'stateroom_auth_requests_total{method="POST",route="/v1/guest",status="200"} 1.0' in (
        metrics.text
    )
    assert 'stateroom_auth_logins_total{kind="guest",result="ok"} 1.0' in metrics.text


async def test_redis_down_is_503_not_500(make_client: MakeClient) -> None:
    client = await make_client(redis_url="redis://127.0.0.1:1/0")
    assert_error(await client.post("/v1/guest"), 503, "unavailable")
    assert_error(await client.get("/healthz"), 503, "unavailable")


async def test_hashing_over_capacity_is_503(make_client: MakeClient) -> None:
    client = await make_client(hash_workers=1, hash_queue=0, argon2_memory_kib=65_536)
    import asyncio

    bodies = [{"username": f"user{i}", "password": "hunter22"} for i in range(6)]
    responses = await asyncio.gather(*(client.post("/v1/accounts", json=b) for b in bodies))
    statuses = sorted(r.status_code for r in responses)
    assert 201 in statuses and 503 in statuses, statuses
    for response in responses:
        if response.status_code == 503:
            assert_error(response, 503, "overloaded")
