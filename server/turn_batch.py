"""Requests made in one event-loop turn, sent together: what every batcher shares.

Rooms of a server tick on one clock, and a dead server's players reconnect to the
survivors in the same few hundred ms, so many callers ask for the same kind of Redis
work in the same turn. A ``TurnBatch`` collects their requests, sends them once at the
end of the turn (``call_soon``) through its subclass's ``_send``, and hands every caller
a future of its own: its own result, or its own error. An error of the whole batch
(Redis unreachable) goes to every caller of that batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Generic, TypeVar

from redis.exceptions import RedisError

Request = TypeVar("Request")
Result = TypeVar("Result")

__all__ = ["TurnBatch"]


class TurnBatch(Generic[Request, Result]):
    """Collects one turn's requests; ``_send`` answers them in order."""

    def __init__(self) -> None:
        self._queue: list[tuple[Request, asyncio.Future[Result]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _send(self, requests: list[Request]) -> Sequence[Result | BaseException]:
        """Each request's result, or the exception it ended with, in order; raise for an
        error of the whole batch."""
        raise NotImplementedError

    def _enqueue(self, request: Request) -> asyncio.Future[Result]:
        # The loop is remembered: on Python 3.11 ``asyncio.get_running_loop()`` makes a
        # ``getpid`` system call (its fork check), and the journal batcher is asked once
        # per room per tick (~1.6 % of a busy server's CPU). A remembered loop that is
        # not running is not the caller's: ask again.
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        if not self._queue:
            loop.call_soon(self._flush)
        self._queue.append((request, future))
        return future

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        task = asyncio.get_running_loop().create_task(self._answer(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, batch: list[tuple[Request, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._send([request for request, _ in batch])
        except BaseException as exc:
            # Cancelled (the server is stopping): the callers get a Redis error.
            error = exc if isinstance(exc, Exception) else RedisError(str(exc))
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue  # its caller gave up (a timeout)
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
