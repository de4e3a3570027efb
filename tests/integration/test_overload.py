"""An overloaded room server sheds new work and fences none of its rooms (issue 11).

One real room server runs rooms of ``tests.overload_game:Burner`` (5 ms of CPU per room
and tick), one more per join, until its event loop is later than ``--overload-lag-ms``.
Then a join that would create a room is answered ``unavailable`` + 4020 (retry
elsewhere), and for two lease times on the overloaded loop every room it runs keeps
ticking to its player: none is fenced, no player is sent away.
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
from pathlib import Path

import msgpack
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from server.protocol import CloseCode
from tests.cluster import start_cluster
from tests.integration.test_room_server import close_code, guest_token, open_ws, recv
from tests.support import Processes

MAX_ROOMS = 60  # 60 x 5 ms = 300 ms of ticking per 50 ms slot: overloaded long before
LAG_MS = 100
HOLD_S = 3.0  # two lease times of the test cluster (lease 1.5 s, stop at 1 s)


def _metric(text: str, name: str) -> float:
    values = [float(m.group(1)) for m in re.finditer(rf"^{name} (\S+)$", text, re.MULTILINE)]
    return sum(values)


class Player:
    """One seated connection, drained in the background: the last tick it saw."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.last_tick = 0
        self.task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            async for frame in self.ws:
                assert isinstance(frame, bytes)
                message = msgpack.unpackb(frame)
                if message.get("t") == "state":
                    self.last_tick = int(message["tick"])
        except ConnectionClosed:
            pass


async def test_an_overloaded_server_sheds_joins_and_fences_no_room(
    processes: Processes, tmp_path: Path
) -> None:
    cluster = start_cluster(
        processes,
        tmp_path,
        servers=1,
        extra=(
            *("--games", "tests.overload_game:Burner", "--overload-lag-ms", str(LAG_MS)),
            *("--rooms-per-player", "1000", "--rooms-per-minute", "1000"),
            *("--sessions-per-player", "1000"),
        ),
    )
    server = cluster.servers["s1"]
    players: list[Player] = []
    try:
        token = await guest_token(cluster)
        refused: dict[str, object] | None = None
        for index in range(MAX_ROOMS):
            ws = await open_ws(server.ws_url, token)
            await ws.send(msgpack.packb({"t": "join", "room": f"burn-{index}", "game": "burner"}))
            first = await recv(ws, 10)
            if first["t"] == "welcome":
                players.append(Player(ws))
                continue
            refused = first
            assert await close_code(ws) == CloseCode.RECONNECT  # retry, with backoff
            break
        assert refused is not None, f"{MAX_ROOMS} burner rooms did not overload the server"
        assert (refused["t"], refused["code"]) == ("error", "unavailable"), refused
        assert "overloaded" in str(refused["message"])
        assert len(players) >= 2, "overloaded before it ran two rooms: the threshold is wrong"

        # The overloaded server keeps every room it has: they tick, nobody is sent away.
        ticks_before = [p.last_tick for p in players]
        await asyncio.sleep(HOLD_S)  # the observation window itself, not a readiness wait
        with urllib.request.urlopen(f"{server.admin_url}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert _metric(metrics, "stateroom_rooms_fenced_total") == 0
        assert _metric(metrics, r'stateroom_shed_total\{work="join"\}') >= 1
        assert _metric(metrics, "stateroom_rooms") == len(players)
        closed = [p.ws.close_code for p in players if p.ws.close_code is not None]
        assert not closed, f"players sent away by an overloaded server: {closed}"
        stalled = [
            i
            for i, (p, before) in enumerate(zip(players, ticks_before, strict=True))
            if p.last_tick <= before
        ]
        assert not stalled, f"rooms that stopped ticking: {stalled}"
        assert "fenced" not in cluster.log(server.name)
    finally:
        for player in players:
            player.task.cancel()
            await player.ws.close()
        processes.stop_all()
        cluster.redis.stop()
