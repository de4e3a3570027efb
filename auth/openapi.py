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
        404: "not_found: no such path",
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
                "Guest and password logins, refresh-token rotation, JWKS; listing and "
                "matchmaking of rooms. See docs/api.md."
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
            **_rooms_paths(),
            **_dashboard_paths(),
            **_pages_paths(),
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
                "accessToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "an access token from /v1/guest, /v1/login or /v1/refresh",
                },
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        "the admin token (STATEROOM_ADMIN_TOKEN): /metrics, and the dashboard "
                        "API unless the dashboard is open"
                    ),
                },
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
                **_rooms_schemas(),
                **_dashboard_schemas(),
                "JWKS": {
                    "type": "object",
                    "required": ["keys"],
                    "properties": {"keys": {"type": "array", "items": {"type": "object"}}},
                },
            },
        },
    }


# ---------------------------------------------------------------- rooms (auth.rooms)

_TOKEN_401 = _json(
    _ref("Error"),
    "unauthorized (no bearer token), token_malformed, token_too_large, token_expired "
    "(refresh it), token_invalid, unknown_key, or session_revoked (logged out)",
)
_UNKNOWN_GAME = "unknown_game: no room server runs this game"
_INVALID_OPTIONS = (
    "invalid_options: options (or filters) that are not a flat map of at most 8 keys "
    "([A-Za-z0-9_.-]{1,32}) to strings (<= 64 characters), integers or booleans, that "
    "name an option the game does not take, or use a reserved name (private, game, "
    "limit); max_players outside 1..the game's limit. validation_failed: game missing "
    "or not a string, a bad limit, a query parameter given twice"
)
_PLAYER_429 = _json(
    _ref("Error"),
    "rate_limited: the address budget, or the player's (quick-joins, private rooms, "
    "unknown codes per minute); see Retry-After",
)


def _room_operation(
    summary: str,
    ok_status: str,
    ok_schema: str,
    ok_text: str,
    *,
    body: str | None = None,
    parameters: list[dict[str, Any]] | None = None,
    not_found: str = _UNKNOWN_GAME,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "security": [{"accessToken": []}],
        "responses": {
            ok_status: _json(_ref(ok_schema), ok_text),
            "401": _TOKEN_401,
            "404": _json(_ref("Error"), not_found),
            "422": _json(_ref("Error"), _INVALID_OPTIONS),
            "429": _PLAYER_429,
            "503": _json(_ref("Error"), "unavailable: Redis down or above its memory watermark"),
        },
    }
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
        operation["responses"].update(_errors(400, 413, 415))
    if parameters:
        operation["parameters"] = parameters
    return operation


def _rooms_paths() -> dict[str, Any]:
    return {
        "/v1/servers": {
            "get": {
                "summary": "The live room servers (any of them accepts any room, and "
                "redirects to its owner)",
                "security": [{"accessToken": []}],
                "responses": {
                    "200": _json(_ref("ServerList"), "the live servers, by id"),
                    "401": _TOKEN_401,
                    "429": _json(_ref("Error"), "rate_limited: the address budget"),
                    "503": _json(_ref("Error"), "unavailable: Redis down"),
                },
            }
        },
        "/v1/rooms": {
            "get": _room_operation(
                "Public rooms of a game (joinable ones with a free seat first, busiest first)",
                "200",
                "RoomList",
                "the rooms",
                parameters=[
                    {"name": "game", "in": "query", "required": True, "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50},
                    },
                    {
                        "name": "filters",
                        "in": "query",
                        "description": (
                            "any other parameter filters on an option: ?mode=ffa&ranked=true "
                            "keeps rooms whose options have these values (compared as written "
                            "in a query: 4 matches the integer 4, true the boolean)"
                        ),
                        "style": "form",
                        "explode": True,
                        "schema": {
                            "type": "object",
                            "additionalProperties": {"type": "string", "maxLength": 64},
                        },
                    },
                ],
            )
        },
        "/v1/rooms/quick-join": {
            "post": _room_operation(
                "A seat in the least-full joinable public room with these options, or a new "
                "room's name",
                "200",
                "QuickJoin",
                "the room to join; the seat is held for reserved_until",
                body="RoomRequest",
            )
        },
        "/v1/rooms/private": {
            "post": _room_operation(
                "Name a private room and get its join code",
                "201",
                "PrivateRoomCreated",
                "the room's name (join it to create it) and its code (give it to friends)",
                body="RoomRequest",
            )
        },
        "/v1/rooms/private/{code}": {
            "get": _room_operation(
                "The private room a join code names",
                "200",
                "PrivateRoom",
                "the room",
                parameters=[
                    {
                        "name": "code",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[A-HJ-NP-Za-hj-np-z2-9]{6}$"},
                        "description": "6 symbols of A-Z without I and O, and 2-9; any case",
                    }
                ],
                not_found="unknown_code: no room has this code (never had, or closed)",
            )
        },
    }


def _rooms_schemas() -> dict[str, Any]:
    room_fields: dict[str, Any] = {
        "room": {"type": "string", "description": "the name to join"},
        "game": {"type": "string"},
        "players": {"type": "integer", "description": "seated, as the owner last published"},
        "max_players": {"type": "integer"},
        "options": _ref("Options"),
        "metadata": {"type": "object", "description": "what the game publishes (<= 2 KiB)"},
        "joinable": {"type": "boolean", "description": "false: closed to newcomers (mid-round)"},
    }
    return {
        "Options": {
            "type": "object",
            "maxProperties": 8,
            "propertyNames": {"pattern": "^[A-Za-z0-9_.-]{1,32}$"},
            "additionalProperties": {
                "oneOf": [
                    {"type": "string", "maxLength": 64},
                    {"type": "integer"},
                    {"type": "boolean"},
                ]
            },
            "description": "room options; the game validates them when the room is created",
        },
        "RoomRequest": {
            "type": "object",
            "required": ["game"],
            "properties": {"game": {"type": "string"}, "options": _ref("Options")},
        },
        "Room": {"type": "object", "required": list(room_fields), "properties": room_fields},
        "RoomList": {
            "type": "object",
            "required": ["game", "rooms"],
            "properties": {
                "game": {"type": "string"},
                "rooms": {"type": "array", "items": _ref("Room")},
            },
        },
        "QuickJoin": {
            "type": "object",
            "required": [
                "room",
                "game",
                "created",
                "running",
                "options",
                "players",
                "max_players",
                "reserved_until",
                "ws_url",
            ],
            "properties": {
                "room": {"type": "string"},
                "game": {"type": "string"},
                "created": {"type": "boolean", "description": "this request named a new room"},
                "running": {
                    "type": "boolean",
                    "description": "a room server runs it (false: the first join creates it)",
                },
                "options": {
                    **_ref("Options"),
                    "description": "pass these in join (they create the room if nobody runs it)",
                },
                "players": {"type": "integer"},
                "max_players": {"type": "integer"},
                "reserved_until": {
                    "type": "number",
                    "description": "Unix time until which the seat is held (10 s)",
                },
                "ws_url": {
                    "type": ["string", "null"],
                    "description": "the owner's WebSocket URL; null if nobody runs it yet",
                },
            },
        },
        "PrivateRoomCreated": {
            "type": "object",
            "required": ["code", "room", "game", "options", "max_players", "expires_in"],
            "properties": {
                "code": {"type": "string"},
                "room": {"type": "string"},
                "game": {"type": "string"},
                "options": _ref("Options"),
                "max_players": {"type": "integer"},
                "expires_in": {
                    "type": "integer",
                    "description": "seconds the code waits for the room to be created (600)",
                },
            },
        },
        "PrivateRoom": {
            "type": "object",
            "required": ["code", *room_fields, "running", "ws_url"],
            "properties": {
                "code": {"type": "string"},
                **room_fields,
                "running": {"type": "boolean"},
                "ws_url": {"type": ["string", "null"]},
            },
        },
    }


# ---------------------------------------------------------------- dashboard (auth.dashboard)

_ADMIN_401 = _json(_ref("Error"), "unauthorized: the admin token is missing or wrong")
_DASHBOARD_403 = _json(
    _ref("Error"),
    "forbidden: no admin token is set and the client is not on loopback; "
    "dashboard_host_refused: an open dashboard asked under a DNS name (use localhost or "
    "an IP address)",
)
_ROOM_PARAMETER = {
    "name": "room",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
}
_DASHBOARD_DESCRIPTION = (
    "Setting dashboard: off (no such route), admin (the admin credential, as /metrics), "
    "open (the dev cluster of stateroom up: no credential; Host must be localhost or an "
    "IP address). No CORS headers."
)


def _dashboard_paths() -> dict[str, Any]:
    security: list[dict[str, list[str]]] = [{"adminToken": []}, {}]
    return {
        "/dashboard/api/cluster": {
            "get": {
                "summary": "Servers and rooms of the cluster, as Redis has them",
                "description": _DASHBOARD_DESCRIPTION,
                "security": security,
                "responses": {
                    "200": _json(_ref("ClusterView"), "the cluster"),
                    "401": _ADMIN_401,
                    "403": _DASHBOARD_403,
                    "503": _json(_ref("Error"), "unavailable: Redis down"),
                },
            }
        },
        "/dashboard/api/rooms/{room}": {
            "get": {
                "summary": "One room in detail, with its last kill, takeover and timeline",
                "description": _DASHBOARD_DESCRIPTION,
                "security": security,
                "parameters": [_ROOM_PARAMETER],
                "responses": {
                    "200": _json(_ref("RoomDetail"), "the room"),
                    "401": _ADMIN_401,
                    "403": _DASHBOARD_403,
                    "404": _json(_ref("Error"), "unknown_room: Redis knows nothing of it"),
                    "422": _json(_ref("Error"), "invalid_room: not a room name"),
                    "503": _json(_ref("Error"), "unavailable: Redis down"),
                },
            }
        },
        "/dashboard/api/rooms/{room}/kill": {
            "post": {
                "summary": "SIGKILL the room's owner through the launcher of stateroom up",
                "description": (
                    "Forwarded to the launcher's control endpoint (setting "
                    "launcher_control); answers right after the SIGKILL, the recovery is "
                    "then read from GET /dashboard/api/rooms/{room}. A browser must post "
                    "from the dashboard's own origin. " + _DASHBOARD_DESCRIPTION
                ),
                "security": security,
                "parameters": [_ROOM_PARAMETER],
                "responses": {
                    "200": _json(_ref("KillResult"), "killed"),
                    "401": _ADMIN_401,
                    "403": _json(
                        _ref("Error"),
                        "kill_unavailable: no launcher (only the dev cluster of stateroom "
                        "up can kill owners); cross_origin: a browser page of another "
                        "origin; forbidden, dashboard_host_refused: as the other routes",
                    ),
                    "404": _json(_ref("Error"), "no_owner: nobody runs the room right now"),
                    "409": _json(
                        _ref("Error"),
                        "foreign_process: the owner is not a process of this launcher",
                    ),
                    "422": _json(_ref("Error"), "invalid_room: not a room name"),
                    "502": _json(
                        _ref("Error"),
                        "launcher_unreachable, launcher_refused (token mismatch), "
                        "launcher_error: the launcher did not answer usefully",
                    ),
                    "503": _json(_ref("Error"), "redis_unavailable (the launcher's Redis)"),
                },
            }
        },
    }


def _page(summary: str, parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "description": (
            "Setting web (on by default). Cache-Control: no-cache with an ETag "
            "(If-None-Match -> 304), X-Content-Type-Options: nosniff; pages carry a strict "
            "Content-Security-Policy."
        ),
        "responses": {
            "200": {"description": "the file", "content": {"*/*": {}}},
            "304": {"description": "not modified (If-None-Match)"},
            "404": _json(_ref("Error"), "not_found: no such file (or outside its folder)"),
        },
    }
    if parameters:
        operation["parameters"] = parameters
    return {"get": operation}


def _pages_paths() -> dict[str, Any]:
    path = [{"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "/": _page("The browser arena (client/web/index.html)"),
        "/dashboard": _page("The live dashboard page (setting dashboard not off)"),
        "/web/{path}": _page("Files of the pages (client/web)", path),
        "/sdk/{path}": _page("The JavaScript SDK's modules (client/js/src)", path),
        "/vendor/{path}": _page("The SDK's vendored packages (client/js/vendor)", path),
    }


def _dashboard_schemas() -> dict[str, Any]:
    nullable_int = {"type": ["integer", "null"]}
    nullable_number = {"type": ["number", "null"]}
    step = {
        "type": "object",
        "required": ["step", "at_ms", "since_kill_ms"],
        "properties": {
            "step": {"enum": ["kill", "claim", "first_tick", "player_back"]},
            "at_ms": {"type": "integer", "description": "ms since the Unix epoch, Redis TIME"},
            "since_kill_ms": {
                **nullable_int,
                "description": "null unless the kill and the takeover are of one owner",
            },
            "server": {"type": "string"},
            "epoch": nullable_int,
            "tick": nullable_int,
            "player": {"type": "string"},
        },
    }
    room = {
        "room": {"type": "string"},
        "game": {"type": ["string", "null"]},
        "owner": {"type": ["string", "null"]},
        "owner_live": {"type": "boolean"},
        "epoch": nullable_int,
        "tick": {"type": "integer", "description": "last journaled tick"},
        "players": nullable_int,
        "checkpoint_tick": nullable_int,
        "checkpoint_age_s": nullable_number,
        "tick_ms": {**nullable_number, "description": "mean tick time, if the owner publishes it"},
        "state_bytes": nullable_int,
        "inputs_per_s": nullable_number,
        "kill": {"type": ["object", "null"], "description": "killed_ms, pid, server, epoch"},
        "takeover": {
            "type": ["object", "null"],
            "description": (
                "epoch, server, old_server, old_epoch, detected_ms, claimed_ms, restored_ms, "
                "first_tick_ms, first_tick, players_expected, players_back {player: ms}"
            ),
        },
        "timeline": {"type": "array", "items": _ref("TimelineStep")},
        "recovery": {
            "type": "object",
            "properties": {
                "steps": {"type": "integer"},
                "of_kill": {"type": "boolean"},
                "complete": {"type": "boolean"},
                "players_expected": nullable_int,
                "players_back": {"type": "integer"},
                "unavailable_ms": {**nullable_int, "description": "kill -> first tick"},
            },
        },
    }
    return {
        "ServerList": {
            "type": "object",
            "required": ["servers"],
            "properties": {
                "servers": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["id", "ws_url"],
                        "properties": {"id": {"type": "string"}, "ws_url": {"type": "string"}},
                    },
                }
            },
        },
        "TimelineStep": step,
        "ClusterRoom": {
            "type": "object",
            "required": [k for k in room if k not in ("kill", "takeover", "timeline")],
            "properties": room,
            "description": "kill, takeover and timeline: in RoomDetail only",
        },
        "ClusterView": {
            "type": "object",
            "required": ["now_ms", "servers", "rooms", "rooms_total", "kill_available", "mode"],
            "properties": {
                "now_ms": {"type": "integer", "description": "Redis TIME"},
                "servers": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "id": {"type": "string"},
                            "ws_url": {"type": ["string", "null"]},
                            "admin_url": {"type": ["string", "null"]},
                            "pid": nullable_int,
                            "live": {"type": "boolean"},
                            "rooms": {"type": "integer"},
                            "players": {"type": "integer"},
                            "load": {
                                **nullable_int,
                                "description": "rooms + placements in flight",
                            },
                            "heartbeat_age_s": nullable_number,
                        },
                    },
                },
                "rooms": {"type": "array", "items": _ref("ClusterRoom")},
                "rooms_total": {
                    "type": "integer",
                    "description": "rooms in the cluster; at most 200 are shown",
                },
                "kill_available": {"type": "boolean"},
                "mode": {"enum": ["admin", "open"]},
            },
        },
        "RoomDetail": {
            "type": "object",
            "properties": {
                **room,
                "now_ms": {"type": "integer"},
                "owner_ws_url": {"type": ["string", "null"]},
                "lease_ttl_ms": nullable_int,
                "options": {"type": ["object", "null"]},
                "created": nullable_int,
                "journal_length": {"type": "integer"},
                "kill_available": {"type": "boolean"},
            },
        },
        "KillResult": {
            "type": "object",
            "required": ["room", "killed_pid", "old_server", "old_epoch", "killed_ms"],
            "properties": {
                "room": {"type": "string"},
                "killed_pid": {"type": "integer"},
                "old_server": {"type": "string"},
                "old_epoch": {"type": "integer"},
                "killed_ms": {"type": "integer", "description": "Redis TIME, ms"},
            },
        },
    }
