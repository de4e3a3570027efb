"""Settings: flag over environment over default; OWASP argon2 by default."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from auth import cli
from auth.errors import ConfigError
from auth.settings import AuthSettings, from_sources


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_and_precedence() -> None:
    env = {"STATEROOM_REDIS_URL": "redis://env", "STATEROOM_AUTH_ACCESS_TTL": "120"}
    settings = from_sources(parse("--key", "k.pem", "--port", "9000"), env)
    assert settings.redis_url == "redis://env"
    assert settings.key_file == Path("k.pem")
    assert settings.port == 9000 and settings.host == "127.0.0.1"
    assert settings.access_ttl == 120 and settings.refresh_ttl == 2_592_000
    assert (settings.issuer, settings.audience) == ("stateroom", "stateroom")
    flag_wins = from_sources(
        parse("--key", "k", "--redis", "redis://flag", "--access-ttl", "5"), env
    )
    assert flag_wins.redis_url == "redis://flag" and flag_wins.access_ttl == 5
    assert from_sources(parse("--key", "k", "--no-access-log"), env).access_log is False


def test_owasp_argon2_by_default() -> None:
    settings = AuthSettings(redis_url="redis://x", key_file=Path("k"))
    assert settings.argon2_memory_kib == 19_456
    assert settings.argon2_time_cost == 2
    assert settings.argon2_parallelism == 1


def test_missing_and_bad_settings() -> None:
    with pytest.raises(ConfigError, match="--redis"):
        from_sources(parse("--key", "k"), {})
    with pytest.raises(ConfigError, match="--key"):
        from_sources(parse("--redis", "redis://x"), {})
    with pytest.raises(ConfigError, match="--port"):
        from_sources(parse("--key", "k", "--redis", "r", "--port", "eighty"), {})
    with pytest.raises(ConfigError, match="access_ttl"):
        from_sources(parse("--key", "k", "--redis", "r", "--access-ttl", "0"), {})


def test_hardening_settings_defaults_and_environment() -> None:
    defaults = AuthSettings(redis_url="redis://x", key_file=Path("k"))
    assert defaults.guest_refresh_ttl == 86_400 and defaults.refresh_ttl == 2_592_000
    assert defaults.trusted_proxies == "" and defaults.admin_token == ""
    assert defaults.memory_watermark == 0.8 and defaults.memory_check_interval == 2.0
    env = {
        "STATEROOM_AUTH_GUEST_REFRESH_TTL": "3600",
        "STATEROOM_AUTH_TRUSTED_PROXIES": "10.0.0.0/8, fd00::/8",
        "STATEROOM_AUTH_MEMORY_WATERMARK": "0.5",
        "STATEROOM_ADMIN_TOKEN": "t",
    }
    settings = from_sources(parse("--key", "k", "--redis", "r"), env)
    assert settings.guest_refresh_ttl == 3600
    assert settings.trusted_proxies == "10.0.0.0/8, fd00::/8"
    assert settings.memory_watermark == 0.5 and settings.admin_token == "t"
    flags = parse("--key", "k", "--redis", "r", "--trusted-proxies", "192.0.2.0/24")
    assert from_sources(flags, {}).trusted_proxies == "192.0.2.0/24"
    for bad in ({"STATEROOM_AUTH_MEMORY_WATERMARK": "0"}, {"STATEROOM_AUTH_MEMORY_WATERMARK": "2"},
                {"STATEROOM_AUTH_GUEST_REFRESH_TTL": "0"},
                {"STATEROOM_AUTH_TRUSTED_PROXIES": "10.0.0.0/8,bogus"}):  # fmt: skip
        with pytest.raises(ConfigError):
            from_sources(parse("--key", "k", "--redis", "r"), bad)
