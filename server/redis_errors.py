"""The Redis errors that mean "Redis is not answering right now", not a bug.

The room server retries on these (or answers "unavailable; retry") instead of
logging a traceback; one tuple so every part of the server agrees. On a Redis Cluster
that includes a shard that is failing over or restarting: it answers ``CLUSTERDOWN`` or
``TRYAGAIN`` for a moment (nothing was written), which a retry gets past.
"""

from __future__ import annotations

from redis.exceptions import ClusterDownError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError, ClusterDownError, TryAgainError)
