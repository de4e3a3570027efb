"""Typed settings of the login service, each with a documented default.

Every field has a flag (``--access-ttl``) and an environment variable
(``STATEROOM_AUTH_ACCESS_TTL``); a flag wins over the variable, the variable over
the default. ``--redis`` also reads ``STATEROOM_REDIS_URL``.

Secrets have no flag (a flag shows in ``ps`` and in process listings): ``admin_token``
is read from ``STATEROOM_ADMIN_TOKEN`` only and ``launcher_token`` from
``STATEROOM_LAUNCHER_TOKEN`` only, and both are left out of the settings' repr.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from auth.errors import ConfigError

ENV_PREFIX = "STATEROOM_AUTH_"


@dataclass(frozen=True)
class AuthSettings:
    """Everything the login service needs; immutable once built."""

    redis_url: str
    key_file: Path
    host: str = "127.0.0.1"
    port: int = 8000
    issuer: str = "stateroom"
    audience: str = "stateroom"
    access_ttl: int = 600  # seconds; access tokens are stateless, keep them short
    refresh_ttl: int = 2_592_000  # 30 days (account families)
    guest_refresh_ttl: int = 86_400  # 24 h sliding window for guest families
    redis_prefix: str = "auth:"
    rate_limit_per_minute: int = 600  # requests per client bucket (IPv4, IPv6 /64) a minute
    trusted_proxies: str = ""  # comma-separated CIDRs whose X-Forwarded-For is believed
    login_failures: int = 5  # failed logins per account per window before 429
    login_failure_window: int = 900  # seconds (15 minutes)
    # argon2id, OWASP "m=19456 (19 MiB), t=2, p=1"
    argon2_memory_kib: int = 19_456
    argon2_time_cost: int = 2
    argon2_parallelism: int = 1
    hash_workers: int = 2  # threads hashing passwords at once
    hash_queue: int = 32  # hash requests allowed to wait; beyond -> 503 overloaded
    max_body_bytes: int = 16_384
    key_check_interval: float = 1.0  # seconds between checks of the key file's mtime
    access_log: bool = True
    # Guest logins and account creation answer 503 once Redis uses more than this
    # fraction of its maxmemory (read from INFO memory at most every interval).
    memory_watermark: float = 0.8
    memory_check_interval: float = 2.0  # seconds
    admin_token: str = field(default="", repr=False)  # /metrics bearer token; env only
    # Browser pages of other origins that may call /v1/* and the JWKS (auth.cors):
    # comma-separated exact origins, or "*" alone; empty: no CORS headers at all.
    cors_origins: str = ""
    web: bool = True  # serve the arena, the dashboard page and the JS SDK (auth.web)
    dashboard: str = "admin"  # off | admin (admin credential, as /metrics) | open
    # The control endpoint of `stateroom up` that kills a room's owner for the dashboard;
    # empty: the dashboard cannot kill (auth.dashboard).
    launcher_control: str = ""
    launcher_token: str = field(default="", repr=False)  # its bearer token; env only

    def __post_init__(self) -> None:
        positive = (
            "access_ttl",
            "refresh_ttl",
            "guest_refresh_ttl",
            "rate_limit_per_minute",
            "login_failures",
            "login_failure_window",
            "argon2_memory_kib",
            "argon2_time_cost",
            "argon2_parallelism",
            "hash_workers",
            "max_body_bytes",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0 (--{flag(name)} / {env(name)})")
        if self.hash_queue < 0:
            raise ConfigError(f"hash_queue must be >= 0 (--hash-queue / {env('hash_queue')})")
        if not self.redis_url:
            raise ConfigError("a Redis URL is required: --redis URL or STATEROOM_REDIS_URL")
        if not 0 < self.memory_watermark <= 1:
            raise ConfigError(
                "memory_watermark must be in (0, 1] (a fraction of Redis maxmemory; "
                f"--memory-watermark / {env('memory_watermark')})"
            )
        if self.memory_check_interval < 0:
            raise ConfigError(
                f"memory_check_interval must be >= 0 ({env('memory_check_interval')})"
            )
        from auth.clientaddr import parse_networks
        from auth.cors import parse_origins

        parse_networks(self.trusted_proxies)  # raises ConfigError naming the bad entry
        parse_origins(self.cors_origins)  # raises ConfigError naming the bad origin
        if self.dashboard not in DASHBOARD_MODES:
            raise ConfigError(
                f"dashboard must be one of {', '.join(DASHBOARD_MODES)}, not "
                f"{self.dashboard!r} (--dashboard / {env('dashboard')})"
            )
        if self.launcher_control:
            url = urlsplit(self.launcher_control)
            if url.scheme not in ("http", "https") or not url.hostname or url.query:
                raise ConfigError(
                    "launcher_control must be an http(s)://host:port URL "
                    f"(--launcher-control / {env('launcher_control')})"
                )
            if not self.launcher_token:
                raise ConfigError(
                    "launcher_control needs the launcher's token in STATEROOM_LAUNCHER_TOKEN"
                )


DASHBOARD_MODES = ("off", "admin", "open")


def flag(name: str) -> str:
    return name.replace("_", "-")


_ENV_NAMES = {
    "redis_url": "STATEROOM_REDIS_URL",
    "admin_token": "STATEROOM_ADMIN_TOKEN",
    "launcher_token": "STATEROOM_LAUNCHER_TOKEN",
}
ENV_ONLY = frozenset({"admin_token", "launcher_token"})  # secrets: never on a command line


def env(name: str) -> str:
    return _ENV_NAMES.get(name, ENV_PREFIX + name.upper())


_FLAG_NAMES = {"redis_url": "redis", "key_file": "key"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field; defaults are None so the environment can fill the gaps."""
    for f in fields(AuthSettings):
        if f.name in ENV_ONLY:
            continue
        name = _FLAG_NAMES.get(f.name, flag(f.name))
        shown = "required" if f.default is MISSING else f"default {f.default}"
        help_text = f"{shown}; env {env(f.name)}"
        if f.type in ("bool", bool):
            parser.add_argument(
                f"--{name}",
                dest=f.name,
                default=None,
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
        else:
            parser.add_argument(f"--{name}", dest=f.name, default=None, help=help_text)


def _convert(type_name: Any, raw: Any, name: str) -> Any:
    kind = {"int": int, "float": float, "str": str, "Path": Path, "bool": bool}.get(
        type_name if isinstance(type_name, str) else getattr(type_name, "__name__", "str"), str
    )
    if kind is bool and isinstance(raw, str):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: cannot read {raw!r} as {kind.__name__}") from None


def from_sources(
    args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> AuthSettings:
    """Build settings: flag, else environment variable, else the dataclass default."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(AuthSettings):
        raw = getattr(args, f.name, None) if args is not None and f.name not in ENV_ONLY else None
        if raw is None:
            raw = environ.get(env(f.name))
        if raw is None:
            continue
        values[f.name] = _convert(f.type, raw, f"--{_FLAG_NAMES.get(f.name, flag(f.name))}")
    for required in ("redis_url", "key_file"):
        if required not in values:
            what = "--redis URL" if required == "redis_url" else "--key FILE"
            raise ConfigError(f"{what} is required (or set {env(required)})")
    return AuthSettings(**values)
