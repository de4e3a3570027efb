"""A lean pipelined RESP path for the per-tick script batches, beside redis-py.

Why: every ticking room appends to its journal 20 times a second, and redis-py's Python
around one pipelined call (retry wrapper, a timeout context per read, per-argument
encoding, one coroutine per reply, a pool checkout per execute) was ~28 us per append:
~20 % of a busy room server's CPU. Here a batch is packed with ``hiredis.pack_command``,
leaves in one write, and its replies are parsed by a ``hiredis.Reader`` in one read task
that resolves one future per batch, not one per reply.

What stays redis-py's: the connection itself. ``RespPipeline`` takes one connection of
the client's own pool and keeps it (so the client's ``aclose`` closes it too), and lets
redis-py connect it: address, AUTH, SELECT, TLS, and under Sentinel the current master,
asked again on every reconnect, so a promoted replica is found. Only the socket's
streams are used afterwards (redis-py's private ``_reader``/``_writer``; tests cover it).

Replies keep redis-py's meaning: an error reply becomes the exception redis-py's parser
makes of it (``BaseParser.parse_error``: NOSCRIPT -> NoScriptError, READONLY ->
ReadOnlyError, FENCED -> ResponseError("FENCED ...")) in that command's place. As in
redis-py, an error reply that is a ``ConnectionError`` (LOADING) fails the whole batch
and drops the connection, and under Sentinel a READONLY reply (the master was demoted)
does too, as ``ConnectionError("The previous master is now a slave")``.

A batch always ends: a lost connection, or no reply within the client's socket timeout
(plus the batch's own ``grace``, for a ``WAIT``), fails every batch in flight with
redis-py's ``ConnectionError``/``TimeoutError`` and drops the connection; the next batch
reconnects. Batches in flight share the connection and are answered in order.

Replies are in the protocol redis-py negotiated on the connection (RESP3 by default
since redis-py 8, RESP2 with ``protocol=2``): the raw replies redis-py would give before
its per-command callbacks, which the script calls and WAIT do not have. A RESP3 push
message (nothing here asks for any) is skipped, never taken for a reply.

Not for a Redis Cluster (per-node routing stays on redis-py: infra/cluster_pipeline.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from infra.redis_url import is_cluster

__all__ = ["DEFAULT_TIMEOUT_S", "READER_TASK", "RespPipeline"]

# The reply timeout of a client that sets no ``socket_timeout`` (redis-py would wait
# forever; a room must not).
DEFAULT_TIMEOUT_S = 10.0
READER_TASK = "resp-pipeline-reader"  # each connection's reply reader (lives as long as it)
_READ_SIZE = 1 << 16
_MORE = object()  # hiredis: no complete reply buffered yet
_PUSH = hiredis.PushNotification


class _Batch:
    __slots__ = ("count", "future", "results", "timer")

    def __init__(self, count: int, future: asyncio.Future[list[Any]]) -> None:
        self.count = count
        self.future = future
        self.results: list[Any] = []
        self.timer: asyncio.TimerHandle | None = None


class _Link:
    """One connected socket and the batches in flight on it; failed once, done."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        where: str,
        sentinel: bool,
        encoding: str | None,
        errors: str,
    ) -> None:
        self.writer = writer
        self.where = where
        self.sentinel = sentinel
        self.pending: deque[_Batch] = deque()
        self.closed = False
        # An error reply that fails the whole batch (see the module docstring).
        self.fatal: RedisError | None = None
        options: dict[str, Any] = {
            "protocolError": InvalidResponse,
            "replyError": self._reply_error,
            "notEnoughData": _MORE,
        }
        if encoding is not None:
            options["encoding"] = encoding
            options["errors"] = errors
        self.parser = hiredis.Reader(**options)
        self.loop = asyncio.get_running_loop()
        self.task = self.loop.create_task(self._read(reader), name=READER_TASK)

    def usable(self, loop: asyncio.AbstractEventLoop) -> bool:
        return not self.closed and self.loop is loop and not self.writer.transport.is_closing()

    def _reply_error(self, message: str) -> Exception:
        error: Exception = BaseParser.parse_error(message)  # type: ignore[no-untyped-call]
        if self.fatal is None:
            if isinstance(error, RedisConnectionError):
                self.fatal = error
            elif self.sentinel and isinstance(error, ReadOnlyError):
                self.fatal = RedisConnectionError("The previous master is now a slave")
        return error

    def send(self, data: bytes, batch: _Batch) -> None:
        self.pending.append(batch)
        try:
            self.writer.write(data)
        except (RuntimeError, AttributeError, OSError) as exc:  # uvloop: handler closed
            self.fail(RedisConnectionError(f"Error writing to {self.where}: {exc}"))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while not self.closed:
                data = await reader.read(_READ_SIZE)
                if not data:
                    raise RedisConnectionError(f"Connection closed by server ({self.where}).")
                self.parser.feed(data)
                self._deliver()
        except asyncio.CancelledError:
            self.fail(RedisConnectionError(f"Connection to {self.where} was closed."))
            raise
        except RedisError as exc:
            self.fail(exc)
        except Exception as exc:  # OSError, hiredis.ProtocolError, ...
            self.fail(RedisConnectionError(f"Error reading from {self.where}: {exc!r}"))

    def _deliver(self) -> None:
        pending, gets = self.pending, self.parser.gets
        while pending:
            head = pending[0]
            results, count = head.results, head.count
            while len(results) < count:
                reply = gets()
                if reply is _MORE:
                    return
                if reply.__class__ is _PUSH:
                    continue
                results.append(reply)
            pending.popleft()
            if head.timer is not None:
                head.timer.cancel()
            if self.fatal is not None:
                self.fail(self.fatal, head)
                return
            if not head.future.done():
                head.future.set_result(results)
        extra = gets()
        while extra.__class__ is _PUSH:
            extra = gets()
        if extra is not _MORE:
            # Out of step with the server: drop the connection, as for a lost one.
            self.fail(RedisConnectionError(f"a reply from {self.where} that nothing asked for"))

    def expire(self, batch: _Batch) -> None:
        if not batch.future.done():
            self.fail(RedisTimeoutError(f"Timeout reading from {self.where}"), batch)

    def fail(self, error: RedisError, first: _Batch | None = None) -> None:
        """End every batch in flight with ``error`` (``first`` too, already dequeued) and
        close the socket: replies after a lost one could not be matched."""
        self.closed = True
        batches = [first] if first is not None else []
        batches += self.pending
        self.pending.clear()
        for batch in batches:
            if batch.timer is not None:
                batch.timer.cancel()
            if not batch.future.done():
                batch.future.set_exception(error)
        with contextlib.suppress(Exception):
            self.writer.close()


class RespPipeline:
    """Runs batches of commands on one held connection of a plain (or Sentinel) client."""

    def __init__(self, redis: aioredis.Redis) -> None:
        if not self.supports(redis):
            raise ValueError("RespPipeline needs a plain or Sentinel redis.asyncio client")
        self.pool = redis.connection_pool
        kwargs = self.pool.connection_kwargs
        self.timeout: float = kwargs.get("socket_timeout") or DEFAULT_TIMEOUT_S
        self.connect_timeout: float = kwargs.get("socket_connect_timeout") or self.timeout
        self.sentinel = isinstance(self.pool, SentinelConnectionPool) and self.pool.is_master
        self._encoding: str | None = (
            kwargs.get("encoding", "utf-8") if kwargs.get("decode_responses") else None
        )
        self._errors: str = kwargs.get("encoding_errors", "strict")
        self._conn: AbstractConnection | None = None
        self._link: _Link | None = None
        self._lock = asyncio.Lock()

    @staticmethod
    def supports(redis: Any) -> bool:
        """Whether ``redis`` can use this path: a plain or Sentinel client, not a cluster."""
        return isinstance(redis, aioredis.Redis) and not is_cluster(redis)

    async def execute(self, commands: Sequence[Sequence[Any]], grace: float = 0.0) -> list[Any]:
        """Each command's reply, or its error reply as redis-py's exception, in order.
        Raises ConnectionError/TimeoutError when the batch as a whole failed (then some
        commands may have run). ``grace``: seconds on top of the reply timeout (a WAIT)."""
        if not commands:
            return []
        loop = asyncio.get_running_loop()
        link = self._link
        if link is None or not link.usable(loop):
            link = await self._connect(loop)
        pack = hiredis.pack_command
        data = b"".join([pack(tuple(command)) for command in commands])
        future: asyncio.Future[list[Any]] = loop.create_future()
        batch = _Batch(len(commands), future)
        batch.timer = loop.call_later(self.timeout + grace, link.expire, batch)
        link.send(data, batch)
        return await future

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Link:
        link = self._link
        if link is not None and link.loop is not loop:
            # Used from a new event loop (the old one is gone): its socket, and the lock,
            # belonged to that one; start afresh.
            self._link = self._conn = None
            self._lock = asyncio.Lock()
        async with self._lock:
            link = self._link
            if link is not None and link.usable(loop):
                return link  # another batch reconnected meanwhile
            if link is not None:
                link.fail(RedisConnectionError("connection dropped"))
            self._link = None
            try:
                async with asyncio.timeout(self.connect_timeout + self.timeout):
                    conn = self._conn
                    if conn is None:
                        conn = self._conn = await self.pool.get_connection()  # type: ignore[no-untyped-call]
                    else:
                        # Forget the dropped socket; under Sentinel this asks for the
                        # current master again.
                        await conn.disconnect(nowait=True)
                        await conn.connect()  # type: ignore[no-untyped-call]
            except TimeoutError:
                raise RedisTimeoutError(f"Timeout connecting to {self._where()}") from None
            except OSError as exc:
                raise RedisConnectionError(f"Error connecting to {self._where()}: {exc}") from exc
            reader, writer = conn._reader, conn._writer
            if reader is None or writer is None:
                raise RedisConnectionError(f"no connection to {self._where()}")
            self._link = _Link(
                reader, writer, self._where(), self.sentinel, self._encoding, self._errors
            )
            return self._link

    def _where(self) -> str:
        conn = self._conn
        if conn is not None and getattr(conn, "host", None):
            return f"{conn.host}:{getattr(conn, 'port', '')}"
        kwargs = self.pool.connection_kwargs
        return str(kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}")

    async def aclose(self) -> None:
        """Close the connection and give it back to the client's pool."""
        async with self._lock:
            link, self._link = self._link, None
            if link is not None:
                link.fail(RedisConnectionError("pipeline closed"))
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await link.task
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(RedisError, OSError):
                    await conn.disconnect(nowait=True)
                with contextlib.suppress(RedisError, OSError, KeyError):
                    await self.pool.release(conn)
