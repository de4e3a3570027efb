"""One token flooding at every limit does not hurt a bystander on the same server.

One room server with the production budgets. A bystander plays in its own room and
measures input → ack latency, first alone, then while one guest token, from the
same address:

- keeps as many sessions joined as it may (``sessions_per_player`` rooms), each
  sending at the per-connection rate the largest frames allowed after join;
- keeps ``pending_per_address`` connections open without joining, reopening them
  as the server closes them;
- keeps trying to create rooms beyond its quota.

The bystander's p99 must stay under twice its idle p99 (floored at one tick, since an
idle p99 is mostly where in the tick an input lands), and nothing it sent is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from client.bots import percentile
from client.sdk import AuthClient, RoomClient
from tests.cluster import LocalCluster, start_cluster
from tests.integration.test_hardening import DEFAULT_BUDGETS
from tests.integration.test_room_server import open_ws, recv
from tests.support import Processes

pytestmark = pytest.mark.slow

PHASE_S = 4.0
# The attack at the limits; STATEROOM_FLOOD_SESSIONS / _FRAME replay the audit's (10
# sessions of 16 KiB frames, far beyond them) for a before/after comparison.
SESSIONS = int(os.environ.get("STATEROOM_FLOOD_SESSIONS", "4"))  # sessions_per_player
FRAME = int(os.environ.get("STATEROOM_FLOOD_FRAME", "4096"))  # ~ the largest after join
AT_THE_LIMITS = (SESSIONS, FRAME) == (4, 4096)
PENDING = 16  # pending_per_address
RATE = 60.0  # per-connection messages per second


@pytest.fixture
def one_server(processes: Processes, tmp_path: Path) -> Iterator[LocalCluster]:
    local = start_cluster(processes, tmp_path, servers=1, extra=DEFAULT_BUDGETS)
    try:
        yield local
    finally:
        processes.stop_all()
        local.redis.stop()


async def measure(room: RoomClient, seconds: float) -> list[float]:
    """Send an input every 50 ms for ``seconds``; the latencies of those inputs (ms)."""
    before = len(room.stats.latencies_ms)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        room.send_input({"dx": 1, "dy": 0})
        await asyncio.sleep(0.05)
    async with asyncio.timeout(5):
        while room.unacked:
            await asyncio.sleep(0.01)
    return room.stats.latencies_ms[before:]


async def flood_session(url: str, token: str, room: str, stop: asyncio.Event) -> int:
    """One joined session sending FRAME-byte inputs at RATE until ``stop``; rejoins when
    closed. Returns how many frames it sent."""
    sent = 0
    payload = {"dx": 1, "dy": 0, "pad": "x" * (FRAME - 64)}
    while not stop.is_set():
        try:
            ws = await open_ws(url, token)
        except (InvalidStatus, OSError, TimeoutError):
            await asyncio.sleep(0.05)
            continue
        try:
            await ws.send(msgpack.packb({"t": "join", "room": room}))
            if (await recv(ws))["t"] != "welcome":
                await asyncio.sleep(0.1)
                continue
            seq = 0
            while not stop.is_set():
                seq += 1
                await ws.send(msgpack.packb({"t": "input", "seq": seq, "data": payload}))
                sent += 1
                await asyncio.sleep(1 / RATE)
        except (ConnectionClosed, OSError, TimeoutError):
            await asyncio.sleep(0.05)
        finally:
            await ws.close()
    return sent


async def hold_pending(url: str, stop: asyncio.Event) -> int:
    """Keep one connection open without joining, reopening it when the server closes it."""
    opened = 0
    while not stop.is_set():
        try:
            ws = await open_ws(url)
        except (InvalidStatus, OSError, TimeoutError):
            await asyncio.sleep(0.05)
            continue
        opened += 1
        try:
            while not stop.is_set() and ws.close_code is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await ws.wait_closed()
        finally:
            await ws.close()
    return opened


async def create_rooms(url: str, token: str, stop: asyncio.Event) -> int:
    """Try to create fresh rooms ten times a second (the quota refuses them)."""
    tries = 0
    while not stop.is_set():
        tries += 1
        try:
            ws = await open_ws(url, token)
        except (InvalidStatus, OSError, TimeoutError):
            await asyncio.sleep(0.1)
            continue
        try:
            await ws.send(msgpack.packb({"t": "join", "room": f"spam-{tries}"}))
            await recv(ws)
        except (ConnectionClosed, OSError, TimeoutError):
            pass
        finally:
            await ws.close()
        await asyncio.sleep(0.1)
    return tries


async def test_a_bystander_keeps_its_latency_while_one_token_floods(
    one_server: LocalCluster,
) -> None:
    url = one_server.info.ws_urls[0]
    auth = AuthClient(one_server.auth_url)
    try:
        bystander = (await auth.guest("bystander")).access_token
        attacker = (await auth.guest("attacker")).access_token
    finally:
        await auth.aclose()
    async with RoomClient([url], "quiet", bystander) as room:
        await room.next_state(timeout=5)
        idle = await measure(room, PHASE_S)
        stop = asyncio.Event()
        attack = [
            *(flood_session(url, attacker, f"noisy-{i}", stop) for i in range(SESSIONS)),
            *(hold_pending(url, stop) for _ in range(PENDING)),
            create_rooms(url, attacker, stop),
        ]
        tasks = [asyncio.ensure_future(a) for a in attack]
        await asyncio.sleep(1.0)  # let the attack reach its steady state
        flooded = await measure(room, PHASE_S)
        stop.set()
        counts = await asyncio.gather(*tasks)
        assert room.stats.ack_regressions == room.stats.rollbacks == 0
    idle_p99 = percentile(idle, 0.99)
    flooded_p99 = percentile(flooded, 0.99)
    frames = sum(counts[:SESSIONS])
    print(
        f"bystander p99 idle {idle_p99:.1f} ms, under flood {flooded_p99:.1f} ms;"
        f" attacker sent {frames} frames of {FRAME} B, held {sum(counts[SESSIONS:-1])}"
        f" pending connections, tried {counts[-1]} room creations"
    )
    if AT_THE_LIMITS:
        assert frames > SESSIONS * RATE * PHASE_S * 0.5  # the flood really ran
    assert flooded_p99 < 2 * max(idle_p99, 50.0), (idle_p99, flooded_p99)
