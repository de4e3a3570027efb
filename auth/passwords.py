"""Password hashing off the event loop, behind a bound.

argon2id with OWASP parameters (19 MiB, t=2, p=1 by default) costs tens of
milliseconds of CPU and 19 MiB of memory per hash, so hashing runs in a small
thread pool and at most ``workers + queue`` requests may be in or waiting for
it; the next one is refused at once with 503 ``overloaded`` instead of piling up
memory and latency. An unknown user is checked against a dummy hash so a failed
login costs the same time whether or not the account exists.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from auth.errors import Unavailable

T = TypeVar("T")


class Hasher:
    """argon2id hashing and verification with a bounded wait queue."""

    def __init__(
        self,
        *,
        memory_kib: int = 19_456,
        time_cost: int = 2,
        parallelism: int = 1,
        workers: int = 2,
        queue: int = 32,
        on_change: Callable[[int], None] | None = None,
    ) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, type=Type.ID
        )
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="argon2")
        self.capacity = workers + queue
        self.in_flight = 0
        self._on_change = on_change
        # Same parameters as real hashes, so a dummy verify costs what a real one does.
        self._dummy = self._hasher.hash("stateroom-dummy-password")

    def _track(self, delta: int) -> None:
        self.in_flight += delta
        if self._on_change is not None:
            self._on_change(self.in_flight)

    async def _run(self, fn: Callable[[], T]) -> T:
        if self.in_flight >= self.capacity:
            raise Unavailable(
                "password hashing is at capacity; retry in a moment",
                code="overloaded",
                headers={"Retry-After": "1"},
            )
        self._track(+1)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
        finally:
            self._track(-1)

    async def hash(self, password: str) -> str:
        return await self._run(lambda: self._hasher.hash(password))

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        """True when ``password`` matches; ``None`` checks a dummy hash (unknown user)."""
        target = stored_hash if stored_hash is not None else self._dummy

        def check() -> bool:
            try:
                return bool(self._hasher.verify(target, password))
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        ok = await self._run(check)
        return ok and stored_hash is not None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
