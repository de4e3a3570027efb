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
