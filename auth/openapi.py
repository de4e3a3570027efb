"""The OpenAPI 3.1 document of the login service, written by hand.

Hand-written because the service validates input itself (no FastAPI/pydantic):
this file and docs/api.md are the contract, and a test checks every route is in it.
"""

from __future__ import annotations

from functools import cache
from typing import Any


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    texts = {
        400: "invalid_json: the body is not valid JSON",
        401: "invalid_credentials or invalid_grant",
        403: "forbidden: /metrics from a client that is not on loopback (no admin token set)",
        409: "username_taken",
        413: "payload_too_large: body over 16 KiB",
        415: "unsupported_media_type: Content-Type is not application/json",
        422: "validation_failed: a field is missing or out of range",
        429: "rate_limited: see the Retry-After header (limit per address bucket or account)",
        503: (
            "overloaded (password hashing at capacity) or unavailable (Redis down, or Redis "
            "above the memory watermark: new guests and accounts paused); see Retry-After"
        ),
    }
    return {str(s): _json(_ref("Error"), texts[s]) for s in statuses}


_BODY_ERRORS = (400, 413, 415, 422, 429, 503)


@cache
def openapi_document() -> dict[str, Any]:
    credentials = {
        "required": True,
        "content": {"application/json": {"schema": _ref("Credentials")}},
    }
    refresh_body = {
        "required": True,
        "content": {"application/json": {"schema": _ref("RefreshRequest")}},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Stateroom login service",
            "version": "1",
            "description": (
                "Guest and password logins, refresh-token rotation, JWKS. See docs/api.md."
            ),
        },
        "paths": {
            "/v1/guest": {
                "post": {
                    "summary": "Log in as a guest (quick play)",
                    "requestBody": {
                        "required": False,
                        "content": {"application/json": {"schema": _ref("GuestRequest")}},
                    },
                    "responses": {
                        "200": _json(_ref("TokenPair"), "a new token pair"),
                        **_errors(*_BODY_ERRORS),
                    },
                }
            },
            "/v1/accounts": {
                "post": {
                    "summary": "Register an account",
                    "requestBody": credentials,
                    "responses": {
                        "201": _json(_ref("Account"), "the account was created"),
                        **_errors(409, *_BODY_ERRORS),
                    },
                }
            },
            "/v1/login": {
                "post": {
                    "summary": "Log in with username and password",
                    "requestBody": credentials,
                    "responses": {
                        "200": _json(_ref("TokenPair"), "a new token pair"),
                        **_errors(401, *_BODY_ERRORS),
                    },
                }
            },
            "/v1/refresh": {
                "post": {
                    "summary": "Spend a refresh token for a new pair (rotation, reuse detection)",
                    "requestBody": refresh_body,
                    "responses": {
                        "200": _json(_ref("TokenPair"), "a new token pair"),
                        **_errors(401, *_BODY_ERRORS),
                    },
                }
            },
            "/v1/logout": {
                "post": {
                    "summary": (
                        "Revoke the refresh token's whole family and end its live sessions "
                        "(revocation record for its sid)"
                    ),
                    "requestBody": refresh_body,
                    "responses": {"204": {"description": "revoked"}, **_errors(*_BODY_ERRORS)},
                }
            },
            "/.well-known/jwks.json": {
                "get": {
                    "summary": "Public signing keys (every current key, newest first)",
                    "responses": {"200": _json(_ref("JWKS"), "the key set")},
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness and Redis reachability",
                    "responses": {
                        "200": _json(
                            {"type": "object", "properties": {"status": {"const": "ok"}}}, "ok"
                        ),
                        **_errors(503),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (admin: bearer token, or loopback if none)",
                    "description": (
                        "With STATEROOM_ADMIN_TOKEN set, requires Authorization: Bearer "
                        "<token> (401 otherwise). Without it, answers loopback clients only "
                        "(403 otherwise)."
                    ),
                    "security": [{"adminToken": []}, {}],
                    "responses": {
                        "200": {
                            "description": "text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "401": _json(_ref("Error"), "unauthorized: missing or wrong admin token"),
                        **_errors(403),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1 document"}},
                }
            },
        },
        "components": {
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the admin token (STATEROOM_ADMIN_TOKEN); /metrics only",
                }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        }
                    },
                },
                "GuestRequest": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 24},
                    },
                },
                "Credentials": {
                    "type": "object",
                    "required": ["username", "password"],
                    "properties": {
                        "username": {"type": "string", "pattern": "^[A-Za-z0-9_-]{3,32}$"},
                        "password": {"type": "string", "minLength": 8, "maxLength": 128},
                    },
                },
                "RefreshRequest": {
                    "type": "object",
                    "required": ["refresh_token"],
                    "properties": {"refresh_token": {"type": "string"}},
                },
                "Account": {
                    "type": "object",
                    "required": ["player_id", "username"],
                    "properties": {
                        "player_id": {"type": "string"},
                        "username": {"type": "string"},
                    },
                },
                "TokenPair": {
                    "type": "object",
                    "required": [
                        "access_token",
                        "refresh_token",
                        "token_type",
                        "expires_in",
                        "player_id",
                    ],
                    "properties": {
                        "access_token": {
                            "type": "string",
                            "description": "EdDSA JWT; its sid claim is the session id",
                        },
                        "refresh_token": {
                            "type": "string",
                            "description": (
                                "opaque; lives 24 h (guests) or 30 days (accounts) from the "
                                "last login or refresh"
                            ),
                        },
                        "token_type": {"const": "Bearer"},
                        "expires_in": {"type": "integer", "description": "seconds"},
                        "player_id": {"type": "string"},
                        "name": {"type": "string"},
                    },
                },
                "JWKS": {
                    "type": "object",
                    "required": ["keys"],
                    "properties": {"keys": {"type": "array", "items": {"type": "object"}}},
                },
            },
        },
    }
