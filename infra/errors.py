"""Errors of the shared infrastructure.

InfraError
├── EmbeddedRedisError   the embedded valkey-server could not start or be found
└── RedisUrlError        a Redis URL is malformed (the message shows the expected shape)
"""

from __future__ import annotations


class InfraError(Exception):
    """Root of every error raised by ``infra``."""


class EmbeddedRedisError(InfraError):
    """The embedded Redis server could not be started or found."""


class RedisUrlError(InfraError, ValueError):
    """A Redis URL cannot be used; the message says what form is expected."""
