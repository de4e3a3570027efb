"""The Redis errors that mean "Redis is not answering right now", not a bug.

The room server retries on these (or answers "unavailable; retry") instead of
logging a traceback; one tuple so every part of the server agrees.
"""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
