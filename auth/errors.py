"""Errors raised by the login service and the token verifier.

    AuthError                     root of everything ``auth`` raises
    ├── ConfigError               a setting or key file is missing or invalid
    ├── KeyFileError              the PEM key file cannot be read or holds no Ed25519 key
    ├── InvalidToken              a token failed verification (``.code``, ``.message``)
    └── ApiError                  an HTTP error answer: status + ``{"error": {code, message}}``
        ├── BadRequest            400 invalid_json
        ├── UnsupportedMediaType  415 unsupported_media_type
        ├── PayloadTooLarge       413 payload_too_large
        ├── ValidationFailed      422 validation_failed
        ├── Conflict              409 (username_taken)
        ├── Unauthorized          401 (invalid_credentials, invalid_grant, unauthorized)
        ├── Forbidden             403 forbidden (/metrics from a non-loopback client)
        ├── RateLimited           429 rate_limited, with Retry-After
        └── Unavailable           503 (overloaded, unavailable)

Every error carries a message that says what to do, because it ends up in a
client's log or on a player's screen, never a stack trace.
"""

from __future__ import annotations


class AuthError(Exception):
    """Root of every error raised by ``auth``."""


class ConfigError(AuthError):
    """A setting is missing or out of range; the message names the flag and variable."""


class KeyFileError(ConfigError):
    """The signing key file is unreadable or holds no Ed25519 private key."""


class InvalidToken(AuthError):
    """An access token was refused. ``code`` is stable and machine-readable.

    Codes: token_too_large, token_malformed, token_expired, token_invalid, unknown_key,
    and keys_unavailable (the JWKS could not be fetched; not the token's fault: retry).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ApiError(AuthError):
    """An answer of the HTTP API; the app renders it as ``{"error": {code, message}}``."""

    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = headers or {}


class BadRequest(ApiError):
    status = 400
    code = "invalid_json"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class ValidationFailed(ApiError):
    status = 422
    code = "validation_failed"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class RateLimited(ApiError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int, limit: str = "address") -> None:
        self.retry_after = max(1, int(retry_after))
        self.limit = limit
        super().__init__(message, headers={"Retry-After": str(self.retry_after)})


class Unavailable(ApiError):
    status = 503
    code = "unavailable"
