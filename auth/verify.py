"""The token verifier room servers use: public keys only, fetched from a JWKS URL.

Why so strict: PyJWT accepts a token with no ``exp`` and any ``iss`` unless told,
and the header's ``alg`` is attacker-controlled. So the algorithm is pinned to
EdDSA, ``exp``/``iat``/``sub``/``aud``/``iss`` are required, and tokens over
4 KiB are refused before any decoding.

JWKS cache policy: ``warm()`` fetches at start and keeps retrying (0.1 s doubling to
1 s) until the login service answers or the verifier is closed; without ``warm()`` the
first fetch happens on first use. Afterwards the set is refetched at most once per
``refetch_interval`` (60 s) — when it is older than that, or when a token names an
unknown ``kid``. Garbage kids therefore cannot cause a refetch storm. A failed fetch
keeps the previous keys and is retried after at most 1 s.

Unknown kid, two answers:

- ``keys_unavailable`` (retry): the verifier cannot tell, because it has never fetched
  the JWKS successfully or its last fetch failed (the login service is starting or
  down). Room servers answer ``unavailable`` and close with 4020, so clients retry.
- ``unknown_key``: the last fetch succeeded and the kid is not in it (a token from
  another deployment, or a retired key). Log in again.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import re
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import jwt
import orjson
from jwt.exceptions import (
    DecodeError,
    ExpiredSignatureError,
    InvalidSignatureError,
    InvalidTokenError,
    PyJWKError,
)

from auth.errors import AuthError, InvalidToken

MAX_TOKEN_BYTES = 4096
MAX_JWKS_BYTES = 1 << 20  # a key set is a few hundred bytes; refuse a runaway answer
REQUIRED_CLAIMS = ["exp", "iat", "sub", "aud", "iss"]

__all__ = ["MAX_TOKEN_BYTES", "AuthError", "InvalidToken", "TokenVerifier", "VerifiedToken"]


def _get_json(url: str, timeout: float) -> Any:
    """GET a JSON document (blocking: run in the default executor, once a minute).

    The standard library's client rather than httpx: a room server fetches one small
    document a minute, and importing httpx cost every room server 4 MB of RSS."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"the JWKS URL must be http(s), not {url!r}")
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        url, headers={"Accept": "application/json", "User-Agent": "stateroom-verifier"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (scheme checked above)
        body = response.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        raise ValueError(f"the JWKS answer is over {MAX_JWKS_BYTES} bytes")
    return orjson.loads(body)


@dataclass(frozen=True)
class VerifiedToken:
    """What a room server needs from a valid access token."""

    player_id: str
    name: str
    expires_at: float
    claims: dict[str, Any]
    session_id: str | None = None  # the ``sid`` claim: refresh family, for revocation


def _keys_from_jwks(jwks: Any) -> dict[str, Any]:
    """kid -> public key object, for the Ed25519 keys of a JWKS; others are ignored."""
    keys: dict[str, Any] = {}
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        return keys
    for entry in jwks["keys"]:
        if not isinstance(entry, dict) or entry.get("kty") != "OKP":
            continue
        if entry.get("crv") != "Ed25519" or not isinstance(entry.get("kid"), str):
            continue
        try:
            keys[entry["kid"]] = jwt.PyJWK(entry, algorithm="EdDSA").key
        except (PyJWKError, InvalidTokenError, ValueError, TypeError):
            continue
    return keys


_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


def _header(token: str) -> dict[str, Any]:
    """The JOSE header, parsed without PyJWT's slow per-character base64 checks."""
    parts = token.split(".")
    if len(parts) != 3 or not _SEGMENT.fullmatch(parts[0]):
        raise InvalidToken("token_malformed", "not a JWT; log in to get an access token")
    try:
        header = orjson.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        raise InvalidToken("token_malformed", "unreadable JWT header") from None
    if not isinstance(header, dict):
        raise InvalidToken("token_malformed", "JWT header is not an object")
    return header


class TokenVerifier:
    """Verifies access tokens against the login service's published keys."""

    def __init__(
        self,
        jwks_url: str,
        *,
        issuer: str = "stateroom",
        audience: str = "stateroom",
        leeway: float = 30.0,
        refetch_interval: float = 60.0,
        http_timeout: float = 5.0,
    ) -> None:
        self.jwks_url = jwks_url
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.refetch_interval = refetch_interval
        self.http_timeout = http_timeout
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None  # monotonic time of the last fetch attempt
        self._last_ok = False  # did the last fetch attempt get a usable key set?
        self._static = False
        self._closed = asyncio.Event()
        self._lock = asyncio.Lock()
        self.fetches = 0  # number of JWKS fetch attempts, for tests and metrics

    @classmethod
    def from_jwks(
        cls,
        jwks: dict[str, Any],
        *,
        issuer: str = "stateroom",
        audience: str = "stateroom",
        leeway: float = 30.0,
    ) -> TokenVerifier:
        """A verifier with a fixed key set that never fetches (tests, benches)."""
        verifier = cls("static:", issuer=issuer, audience=audience, leeway=leeway)
        verifier._keys = _keys_from_jwks(jwks)
        verifier._static = True
        verifier._last_ok = True
        return verifier

    @property
    def keys_known(self) -> bool:
        """True when the last JWKS fetch succeeded (or the key set is fixed)."""
        return self._last_ok

    async def warm(self, *, first_delay: float = 0.1, max_delay: float = 1.0) -> None:
        """Fetch the JWKS now, and keep retrying (``first_delay`` doubling up to
        ``max_delay``) until a fetch succeeds or the verifier is closed.

        Run it as a task at start: creating the HTTP client costs tens of ms of blocking
        work, and a room server that starts before the login service answers gets its
        keys within ``max_delay`` of the service coming up instead of on first use.
        """
        if self._static:
            return
        delay = first_delay
        while not self._closed.is_set():
            if await self._refresh(force=True):
                return
            try:
                await asyncio.wait_for(self._closed.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, max_delay)

    async def aclose(self) -> None:
        """Stop ``warm()`` (a fetch in flight ends by its own timeout)."""
        self._closed.set()

    def _due(self) -> bool:
        if self._static:
            return False
        if self._fetched_at is None:
            return True
        # After a failed fetch (login service down or starting), retry much sooner.
        interval = self.refetch_interval if self._last_ok else min(1.0, self.refetch_interval)
        return time.monotonic() - self._fetched_at >= interval

    async def _refresh(self, *, force: bool = False) -> bool:
        """Fetch the JWKS if due (``force``: also within the retry interval after a
        failure); concurrent callers share one fetch. True when the keys are known."""
        async with self._lock:
            if self._closed.is_set():
                return self._last_ok
            if not (self._due() or (force and not self._last_ok)):
                return self._last_ok
            self._fetched_at = time.monotonic()
            self.fetches += 1
            try:
                loop = asyncio.get_running_loop()
                jwks = await loop.run_in_executor(None, _get_json, self.jwks_url, self.http_timeout)
                keys = _keys_from_jwks(jwks)
            except (OSError, ValueError, http.client.HTTPException):
                self._last_ok = False  # keep the keys we have; retried within 1 s
                return False
            self._last_ok = bool(keys)  # an empty set is a broken answer, not "no keys"
            if keys:
                self._keys = keys
            return self._last_ok

    async def _key_for(self, kid: str) -> Any:
        if self._due():
            await self._refresh()
        key = self._keys.get(kid)
        if key is None and self._lock.locked():
            async with self._lock:  # a fetch is in flight: wait for its keys
                pass
            key = self._keys.get(kid)
        if key is None and self._due():
            await self._refresh()
            key = self._keys.get(kid)
        if key is None:
            if not self._last_ok:
                raise InvalidToken(
                    "keys_unavailable",
                    f"the signing keys cannot be fetched from {self.jwks_url} right now "
                    "(is the login service up?); retry",
                )
            raise InvalidToken(
                "unknown_key",
                "token signed by a key the login service does not publish; log in again",
            )
        return key

    async def verify(self, token: str) -> VerifiedToken:
        """Return the token's identity, or raise InvalidToken with a stable code."""
        key = await self._key_for(self._check_header(token))
        return self._decode(token, key)

    def verify_static(self, token: str) -> VerifiedToken:
        """Synchronous verify for a ``from_jwks`` verifier (no fetching)."""
        kid = self._check_header(token)
        key = self._keys.get(kid)
        if key is None:
            raise InvalidToken("unknown_key", "token signed by an unknown key")
        return self._decode(token, key)

    @staticmethod
    def _check_header(token: str) -> str:
        if not isinstance(token, str):
            raise InvalidToken("token_malformed", "a token is a string")
        if len(token) > MAX_TOKEN_BYTES or len(token.encode("utf-8", "replace")) > MAX_TOKEN_BYTES:
            raise InvalidToken("token_too_large", f"tokens are at most {MAX_TOKEN_BYTES} bytes")
        header = _header(token)
        if header.get("alg") != "EdDSA":
            raise InvalidToken("token_invalid", "token algorithm must be EdDSA")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("token_invalid", "token header has no kid")
        return kid

    def _decode(self, token: str, key: Any) -> VerifiedToken:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=["EdDSA"],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": REQUIRED_CLAIMS, "verify_signature": True},
            )
        except ExpiredSignatureError:
            raise InvalidToken("token_expired", "access token expired; refresh it") from None
        except InvalidSignatureError:
            raise InvalidToken("token_invalid", "bad token signature") from None
        except DecodeError:
            raise InvalidToken("token_malformed", "token cannot be decoded") from None
        except InvalidTokenError as exc:
            raise InvalidToken("token_invalid", f"token refused: {exc}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise InvalidToken("token_invalid", "token has no player id (sub)")
        name = claims.get("name", sub)
        sid = claims.get("sid")
        return VerifiedToken(
            player_id=sub,
            name=name if isinstance(name, str) else sub,
            expires_at=float(claims["exp"]),
            claims=claims,
            session_id=sid if isinstance(sid, str) and sid else None,
        )
