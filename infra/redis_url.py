"""One way to reach Redis from a URL, for every component: plain, TLS, or through Sentinel.

    redis://[:password@]host:port/db            one server (or a managed endpoint)
    rediss://…                                  the same over TLS
    redis+sentinel://[:password@]h1:p1[,h2:p2…]/service[/db]
                                                the current primary of ``service``,
                                                found through Sentinel and followed
                                                across failovers

The password in a Sentinel URL is the data nodes' password; the sentinels
themselves are assumed open on the internal network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from infra.errors import RedisUrlError

SENTINEL_SCHEME = "redis+sentinel"


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    password: str | None


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse ``redis+sentinel://…``; raise RedisUrlError with the expected shape."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise RedisUrlError(f"not a {SENTINEL_SCHEME}:// URL: {redact(url)!r}")
    netloc = parts.netloc
    password = None
    if "@" in netloc:
        credentials, netloc = netloc.rsplit("@", 1)
        password = unquote(credentials.split(":", 1)[-1]) or None
    sentinels = []
    for item in netloc.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise RedisUrlError(
                f"bad sentinel address {item!r} in {redact(url)!r}; expected "
                f"{SENTINEL_SCHEME}://host:port[,host:port…]/service[/db]"
            )
        sentinels.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise RedisUrlError(f"{redact(url)!r} must name the monitored service: …/service[/db]")
    return SentinelTarget(
        tuple(sentinels), path[0], int(path[1]) if len(path) == 2 else 0, password
    )


def connect(
    url: str,
    *,
    wait_for_connection: float | None = None,
    retries: int = 0,
    **options: Any,
) -> aioredis.Redis:
    """A redis.asyncio client for ``url``; ``options`` go to every connection.

    ``wait_for_connection`` (seconds) makes a full pool queue callers for up to that long
    instead of failing at once with "Too many connections" (a burst of logins must wait,
    not fail).

    ``retries`` > 0 retries a command that fails with a connection error or a timeout up
    to that many times, reconnecting, with exponential backoff (50 ms doubling, capped
    at 500 ms): a pooled connection that died with a Redis restart is replaced
    transparently instead of failing the first request. Only for callers whose commands
    are safe to run twice (a timeout may hide a command that did run). An explicit
    ``retry=`` option wins. The default (0) keeps redis-py's pool behaviour: no retry.
    """
    if retries > 0 and "retry" not in options:
        options["retry"] = Retry(ExponentialBackoff(cap=0.5, base=0.05), retries)
        options.setdefault("retry_on_error", [RedisConnectionError, RedisTimeoutError])
    if url.startswith(SENTINEL_SCHEME + "://"):
        target = parse_sentinel_url(url)
        timeouts = {k: v for k, v in options.items() if k.startswith("socket_")}
        sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=timeouts)  # type: ignore[no-untyped-call]
        single = bool(options.pop("single_connection_client", False))
        pool = SentinelConnectionPool(  # type: ignore[no-untyped-call]
            target.service, sentinel, db=target.db, password=target.password, **options
        )
        client = aioredis.Redis(connection_pool=pool, single_connection_client=single)
        client.auto_close_connection_pool = True  # aclose() also closes the pool
        return client
    try:
        if wait_for_connection is not None:
            blocking = aioredis.BlockingConnectionPool.from_url(
                url, timeout=wait_for_connection, **options
            )
            return aioredis.Redis.from_pool(blocking)
        return aioredis.Redis.from_url(url, **options)
    except ValueError as exc:
        raise RedisUrlError(f"bad Redis URL {redact(url)!r}: {exc}") from None


def validate(url: str) -> None:
    """Raise RedisUrlError if ``url`` is not a Redis URL we can connect to."""
    if url.startswith(SENTINEL_SCHEME + "://"):
        parse_sentinel_url(url)
        return
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise RedisUrlError(
            f"bad Redis URL {redact(url)!r}: use redis://, rediss://, unix:// or {SENTINEL_SCHEME}://"
        )


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``: the only form of a Redis URL that
    may be logged, printed or written to a world-readable file."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    credentials, _, hosts = parts.netloc.rpartition("@")
    user = credentials.split(":", 1)[0] if ":" in credentials else ""
    masked = f"{user}:***@{hosts}" if user or ":" in credentials else f"***@{hosts}"
    return parts._replace(netloc=masked).geturl()
