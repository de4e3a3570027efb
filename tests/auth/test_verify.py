"""The verifier room servers use: every attack from the issue, with its answer."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auth.errors import AuthError, InvalidToken
from auth.keys import Keyring, SigningKey
from auth.tokens import TokenIssuer
from auth.verify import TokenVerifier


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": "stateroom",
        "aud": "stateroom",
        "sub": "g_player",
        "name": "guest-0001",
        "iat": now,
        "exp": now + 600,
        "jti": "j1",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: SigningKey, payload: dict[str, Any], kid: str | None = None) -> str:
    return jwt.encode(payload, key.private_key, algorithm="EdDSA", headers={"kid": kid or key.kid})


@pytest.fixture
def verifier(keyring: Keyring) -> TokenVerifier:
    return TokenVerifier.from_jwks(keyring.jwks())


async def refused(verifier: TokenVerifier, token: str, code: str) -> InvalidToken:
    with pytest.raises(InvalidToken) as info:
        await verifier.verify(token)
    assert info.value.code == code, info.value.message
    assert isinstance(info.value, AuthError)
    return info.value


async def test_valid_token(keyring: Keyring, verifier: TokenVerifier) -> None:
    token = TokenIssuer(keyring, issuer="stateroom", audience="stateroom", ttl=600).issue(
        "g_x", "guest-1"
    )
    verified = await verifier.verify(token)
    assert (verified.player_id, verified.name) == ("g_x", "guest-1")
    assert verifier.verify_static(token) == verified


async def test_alg_none(keyring: Keyring, verifier: TokenVerifier) -> None:
    header = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": keyring.current.kid}).encode())
    token = f"{header}.{b64(json.dumps(claims()).encode())}."
    await refused(verifier, token, "token_invalid")


async def test_hs256_with_public_key_as_secret(keyring: Keyring, verifier: TokenVerifier) -> None:
    public_pem = keyring.current.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (public_pem, base64.urlsafe_b64decode(keyring.current.jwk["x"] + "=")):
        header = b64(
            json.dumps({"alg": "HS256", "typ": "JWT", "kid": keyring.current.kid}).encode()
        )
        body = b64(json.dumps(claims()).encode())
        mac = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
        await refused(verifier, f"{header}.{body}.{b64(mac)}", "token_invalid")


async def test_wrong_issuer(keyring: Keyring, verifier: TokenVerifier) -> None:
    await refused(verifier, sign(keyring.current, claims(iss="evil")), "token_invalid")


async def test_wrong_audience(keyring: Keyring, verifier: TokenVerifier) -> None:
    await refused(verifier, sign(keyring.current, claims(aud="other-game")), "token_invalid")


@pytest.mark.parametrize("missing", ["exp", "iat", "sub", "aud", "iss"])
async def test_missing_claim(keyring: Keyring, verifier: TokenVerifier, missing: str) -> None:
    payload = claims()
    del payload[missing]
    await refused(verifier, sign(keyring.current, payload), "token_invalid")


async def test_expired_beyond_leeway(keyring: Keyring, verifier: TokenVerifier) -> None:
    now = int(time.time())
    token = sign(keyring.current, claims(iat=now - 700, exp=now - 31))
    await refused(verifier, token, "token_expired")


async def test_expired_within_leeway_is_accepted(keyring: Keyring, verifier: TokenVerifier) -> None:
    now = int(time.time())
    token = sign(keyring.current, claims(iat=now - 700, exp=now - 20))
    assert (await verifier.verify(token)).player_id == "g_player"


async def test_issued_in_the_future(keyring: Keyring, verifier: TokenVerifier) -> None:
    now = int(time.time())
    token = sign(keyring.current, claims(iat=now + 3600, exp=now + 4200))
    await refused(verifier, token, "token_invalid")


async def test_unknown_kid(verifier: TokenVerifier) -> None:
    other = SigningKey.from_private(Ed25519PrivateKey.generate())
    await refused(verifier, sign(other, claims()), "unknown_key")


async def test_bad_signature_with_our_kid(keyring: Keyring, verifier: TokenVerifier) -> None:
    other = SigningKey.from_private(Ed25519PrivateKey.generate())
    await refused(verifier, sign(other, claims(), kid=keyring.current.kid), "token_invalid")
    token = sign(keyring.current, claims())
    head, _body, sig = token.split(".")
    tampered = b64(json.dumps(claims(sub="u_admin")).encode())
    await refused(verifier, f"{head}.{tampered}.{sig}", "token_invalid")


async def test_one_megabyte_token(verifier: TokenVerifier) -> None:
    await refused(verifier, "a" * 1_048_576, "token_too_large")
    await refused(verifier, "é" * 2049, "token_too_large")  # counted in bytes


@pytest.mark.parametrize(
    "token", ["", "garbage", "a.b.c", "a.b", "...", "eyJhbGciOiJFZERTQSJ9.e30", "\x00\x01"]
)
async def test_garbage(verifier: TokenVerifier, token: str) -> None:
    with pytest.raises(InvalidToken) as info:
        await verifier.verify(token)
    assert info.value.code in {"token_malformed", "token_invalid"}


async def test_missing_kid_header(keyring: Keyring, verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(), keyring.current.private_key, algorithm="EdDSA")
    await refused(verifier, token, "token_invalid")


async def test_from_jwks_ignores_foreign_keys(keyring: Keyring) -> None:
    jwks = {
        "keys": [{"kty": "RSA", "kid": "r", "n": "x", "e": "AQAB"}, "junk", *keyring.jwks()["keys"]]
    }
    verifier = TokenVerifier.from_jwks(jwks)
    assert (await verifier.verify(sign(keyring.current, claims()))).player_id == "g_player"
