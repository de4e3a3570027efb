"""Observers and players for the fault tests.

- ``JournalRecorder`` copies every entry of a room's journal as it is written
  (before checkpoints trim it), so a test can check the whole history: one
  entry per tick, ticks contiguous, epochs never going back.
- ``RecordingClient`` is the SDK's ``RoomClient`` that also records every
  state frame it receives (before the SDK's own rollback filter) and every
  close code, so a test can see what a fenced server sent.
- ``Player`` plays like a bot with a ``RecordingClient`` and checks that the
  arena applied each input exactly once (``inputs == ack``).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from client.sdk import AuthClient, ClientError, RoomClient
from server.store import Lease, RoomStore, room_keys
from tests.cluster import LocalCluster


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], timeout: float, what: str, every: float = 0.02
) -> None:
    """Poll an async condition until it holds; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(RedisError, OSError, httpx.HTTPError):
            if await predicate():
                return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(every)


async def owner(store: RoomStore, room: str) -> Lease | None:
    with contextlib.suppress(RedisError, OSError):
        return await store.owner(room)
    return None


async def server_name(store: RoomStore, server_id: str) -> str:
    """The cluster name (s1, s2, ...) of a server id, from the registry."""
    return str((await store.servers())[server_id]["name"])


async def status(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=2) as http:
        response = await http.get(f"{url}/status")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


async def rooms_on(url: str) -> dict[str, dict[str, Any]]:
    """What one server believes it runs: room name -> its status entry."""
    return {r["room"]: r for r in (await status(url))["room_list"]}


# -- the journal's whole history -------------------------------------------------------


class JournalRecorder:
    """Reads a room's journal continuously and keeps every (tick, epoch) it ever held."""

    def __init__(
        self,
        redis_url: str,
        room: str,
        every: float = 0.02,
        client: aioredis.Redis | aioredis.RedisCluster | None = None,
    ) -> None:
        self.redis = client or aioredis.Redis.from_url(
            redis_url, socket_timeout=1, socket_connect_timeout=1
        )
        self.key = room_keys(room)["journal"]
        self.every = every
        self.entries: list[tuple[int, int]] = []
        self.implied: dict[int, int] = {}  # tick -> its entry's allowance of implied ticks
        self.claimed: set[int] = set()  # ticks journaled by a takeover's claim (no tick's)
        self._last_id = "-"
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def __aenter__(self) -> JournalRecorder:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Stop the poller instead of cancelling it: a cancellation can be swallowed inside
        # redis-py, and swallowing it here would also swallow the test's own timeout.
        assert self._task is not None
        self._stop.set()
        await self._task
        with contextlib.suppress(RedisError, OSError):
            await self.poll_once()
        await self.redis.aclose()

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(RedisError, OSError):
                await self.poll_once()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.every):
                    await self._stop.wait()

    async def poll_once(self) -> None:
        start = self._last_id if self._last_id == "-" else f"({self._last_id}"
        raw: Any = await self.redis.xrange(self.key, min=start, max="+")
        for entry_id, fields in raw:
            text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            tick, _, epoch = text.partition("-")
            self.entries.append((int(tick), int(epoch)))
            self.implied[int(tick)] = int((fields or {}).get(b"k", 0))
            if (fields or {}).get(b"c") == b"1":
                self.claimed.add(int(tick))
            self._last_id = text

    def epoch_of(self) -> dict[int, int]:
        return dict(self.entries)

    def durable_epoch(self, tick: int) -> int | None:
        """The epoch under which ``tick`` is durable: its entry's, or for an implied tick
        (server/room.py) that of the newest entry before it, if the tick is within that
        entry's allowance; None if neither."""
        at = bisect.bisect_right(self.entries, (tick, 1 << 62)) - 1
        if at < 0:
            return None
        entry_tick, epoch = self.entries[at]
        if entry_tick == tick or tick - entry_tick <= self.implied.get(entry_tick, 0):
            return epoch
        return None

    def epochs(self) -> list[int]:
        """Epochs in journal order, each once."""
        seen: list[int] = []
        for _tick, epoch in self.entries:
            if not seen or seen[-1] != epoch:
                seen.append(epoch)
        return seen

    def check(self, contiguous: bool = True) -> None:
        """One entry per tick, ticks increasing, with no gap over the allowance of implied
        ticks of the entry before it (``contiguous``; a graceful handover's checkpoint
        may cover a tick whose append was cut short), epochs never decreasing."""
        assert self.entries, "the journal recorder saw no entry"
        for (tick_a, epoch_a), (tick_b, epoch_b) in zip(
            self.entries, self.entries[1:], strict=False
        ):
            assert tick_b > tick_a, f"journal goes from tick {tick_a} to {tick_b}"
            if contiguous:
                allowed = self.implied.get(tick_a, 0)
                assert tick_b - tick_a - 1 <= allowed, (
                    f"journal jumps from tick {tick_a} to {tick_b}, over its {allowed}"
                    " implied ticks"
                )
            assert epoch_b >= epoch_a, (
                f"journal epoch went back from {epoch_a} (tick {tick_a})"
                f" to {epoch_b} (tick {tick_b})"
            )


# -- clients that record what they receive -----------------------------------------------


@dataclass(frozen=True)
class Seen:
    tick: int
    ack: int
    server: str
    epoch: int


class RecordingClient(RoomClient):
    """A RoomClient that keeps every state frame and close code it receives."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[Seen] = []
        self.closes: list[tuple[str, int, str]] = []  # (server, code, reason)

    async def _session(self, url: str) -> tuple[int, str]:
        self.server = ""
        code, reason = await super()._session(url)
        self.closes.append((self.server, code, reason))
        return code, reason

    def _on_state(self, message: dict[str, Any]) -> None:
        self.seen.append(Seen(int(message["tick"]), int(message["ack"]), self.server, self.epoch))
        super()._on_state(message)


@dataclass
class Player:
    """One player sending inputs at ``rate`` until ``stop`` and checking every state."""

    client: RecordingClient
    rate: float = 20.0
    states: int = 0
    excess: int = 0  # max(inputs applied - ack): > 0 means an input was applied twice
    last: dict[str, Any] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def join(
        cls, cluster: LocalCluster, room: str, name: str, urls: list[str] | None = None, **kw: Any
    ) -> Player:
        auth = AuthClient(cluster.auth_url)
        try:
            tokens = await auth.guest(name)
        finally:
            await auth.aclose()
        client = RecordingClient(urls or cluster.info.ws_urls, room, tokens.access_token, **kw)
        await client.connect()
        return cls(client)

    def play(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._read()), loop.create_task(self._send(stop))]

    async def _read(self) -> None:
        async for state in self.client.states():
            self.states += 1
            me = state.state.get("players", {}).get(self.client.player_id)
            if me is not None:
                self.excess = max(self.excess, int(me["inputs"]) - state.ack)
                self.last = {"tick": state.tick, "ack": state.ack, "inputs": int(me["inputs"])}

    async def _send(self, stop: asyncio.Event) -> None:
        period = 1 / self.rate
        while not stop.is_set():
            with contextlib.suppress(ClientError):
                self.client.send_input({"dx": 0.5, "dy": -0.5})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period):
                    await stop.wait()

    async def finish(self, within: float = 10) -> None:
        """Wait until every input is acked, then stop and leave."""
        async with asyncio.timeout(within):
            while self.client.unacked or self.last.get("ack", -1) != self.client._seq:
                assert not self.tasks[0].done(), self.tasks[0]
                await asyncio.sleep(0.02)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.client.leave()

    def check(self, journal: JournalRecorder) -> None:
        """Exactly once, never back in time, and every state was durable under its sender's
        epoch (a state computed by a replaced owner would carry a tick the journal holds
        under another epoch, or none)."""
        stats = self.client.stats
        assert stats.rollbacks == 0, f"{self.client.player_id}: {stats.rollbacks} rollbacks"
        assert stats.ack_regressions == 0, f"{self.client.player_id}: acked inputs lost"
        assert self.excess == 0, f"{self.client.player_id}: inputs applied twice"
        assert self.last["ack"] == self.client._seq == self.last["inputs"], (
            f"{self.client.player_id}: sent {self.client._seq}, last state {self.last},"
            f" errors {stats.errors}"
        )
        ticks = [s.tick for s in self.client.seen]
        assert ticks == sorted(set(ticks)), "a state was received twice or out of order"
        for seen in self.client.seen:
            durable = journal.durable_epoch(seen.tick)
            assert durable is not None, f"state of tick {seen.tick} was never durable"
            assert durable == seen.epoch, (
                f"state of tick {seen.tick} came from epoch {seen.epoch} ({seen.server}) but"
                f" the journal holds it (or implies it) under epoch {durable}"
            )
