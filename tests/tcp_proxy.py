"""A TCP proxy a test controls, to cut one process off from Redis.

The proxy runs its own event loop in a thread, so it keeps forwarding while
the test's loop is busy or blocked (a synchronous ``cluster.add_server``
waits for a server that needs the proxy to become ready).

``blackhole()`` models a network partition: nothing is forwarded in either
direction and no socket is closed. Each pump stops reading, so bytes (and
end-of-stream) wait in the kernel buffers, as TCP segments would wait for
retransmission; new connections are accepted but not connected upstream.
``heal()`` lets everything through again, including the requests that were
sent during the partition — the delayed writes a fenced owner must not be
able to land.

    with TcpProxy("127.0.0.1", redis.port, password=redis.password) as proxy:
        url = proxy.url  # redis://:PASSWORD@127.0.0.1:PROXYPORT/0
        proxy.blackhole()
        ...
        proxy.heal()
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType
from urllib.parse import quote


class TcpProxy:
    def __init__(
        self, target_host: str, target_port: int, host: str = "127.0.0.1", password: str = ""
    ) -> None:
        self.target_host = target_host
        self.password = password  # the target's; only for ``url``
        self.target_port = target_port
        self.host = host
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tcp-proxy", daemon=True
        )
        self._flowing: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        """A Redis URL through the proxy, with the target's password when it has one."""
        if self.password:
            return f"redis://:{quote(self.password, safe='')}@{self.host}:{self.port}/0"
        return f"redis://{self.host}:{self.port}/0"

    @property
    def blackholed(self) -> bool:
        assert self._flowing is not None
        return not self._flowing.is_set()

    # -- control (from any thread) ------------------------------------------------------

    def start(self) -> TcpProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def blackhole(self) -> None:
        """Stop forwarding both ways; keep every socket open."""
        self._call(self._set_flowing, False)

    def heal(self) -> None:
        """Forward again, starting with whatever was held back."""
        self._call(self._set_flowing, True)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _call(self, func: object, *args: object) -> None:
        async def run() -> None:
            func(*args)  # type: ignore[operator]

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    # -- inside the proxy's loop --------------------------------------------------------

    def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        self.connections += 1
        self._writers.add(client_w)
        upstream_w: asyncio.StreamWriter | None = None
        try:
            await self._flowing.wait()
            upstream_r, upstream_w = await asyncio.open_connection(
                self.target_host, self.target_port
            )
            self._writers.add(upstream_w)
            await asyncio.gather(self._pump(client_r, upstream_w), self._pump(upstream_r, client_w))
        except OSError:
            pass
        finally:
            for writer in (client_w, upstream_w):
                if writer is not None:
                    self._writers.discard(writer)
                    writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        try:
            while True:
                await self._flowing.wait()
                data = await reader.read(65536)
                # A partition may start while we wait for data: hold this chunk back too.
                await self._flowing.wait()
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            # The other direction may still be delivering; only half-close here.
            with contextlib.suppress(OSError, RuntimeError):
                if writer.can_write_eof():
                    writer.write_eof()
