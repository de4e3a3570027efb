"""Issuing access tokens: short-lived EdDSA JWTs signed with the keyring's newest key.

Claims: iss, aud, sub (player id), name, iat, exp, jti, and sid (the session id: the
refresh family the token was issued with); header alg=EdDSA, kid, typ=JWT. Access
tokens are stateless: nothing about them is stored. When a session ends early (logout,
refresh-token reuse) the login service writes a revocation record for its ``sid``
(``infra.revocation``) that room servers check; otherwise a token simply expires within
``access_ttl`` (10 minutes by default).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import jwt

from auth.keys import Keyring


class TokenIssuer:
    """Signs access tokens; reads the keyring on every call so rotation takes effect."""

    def __init__(self, keyring: Keyring, *, issuer: str, audience: str, ttl: int) -> None:
        self.keyring = keyring
        self.issuer = issuer
        self.audience = audience
        self.ttl = ttl

    def issue(
        self,
        player_id: str,
        name: str,
        now: float | None = None,
        *,
        session_id: str | None = None,
    ) -> str:
        self.keyring.maybe_reload()
        key = self.keyring.current
        iat = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": player_id,
            "name": name,
            "iat": iat,
            "exp": iat + self.ttl,
            "jti": secrets.token_urlsafe(12),
        }
        if session_id is not None:
            claims["sid"] = session_id
        return jwt.encode(
            claims, key.private_key, algorithm="EdDSA", headers={"kid": key.kid, "typ": "JWT"}
        )
