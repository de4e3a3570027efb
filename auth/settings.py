"""Typed settings of the login service, each with a documented default.

Every field has a flag (``--access-ttl``) and an environment variable
(``STATEROOM_AUTH_ACCESS_TTL``); a flag wins over the variable, the variable over
the default. ``--redis`` also reads ``STATEROOM_REDIS_URL``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

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
    refresh_ttl: int = 2_592_000  # 30 days
    redis_prefix: str = "auth:"
    rate_limit_per_minute: int = 600  # requests per client address per minute
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

    def __post_init__(self) -> None:
        positive = (
            "access_ttl",
            "refresh_ttl",
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


def flag(name: str) -> str:
    return name.replace("_", "-")


def env(name: str) -> str:
    if name == "redis_url":
        return "STATEROOM_REDIS_URL"
    return ENV_PREFIX + name.upper()


_FLAG_NAMES = {"redis_url": "redis", "key_file": "key"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field; defaults are None so the environment can fill the gaps."""
    for f in fields(AuthSettings):
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
        raw = getattr(args, f.name, None) if args is not None else None
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
