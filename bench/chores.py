"""How long a room server's periodic whole-server chores hold its event loop.

Every ``REFRESH_EVERY_S`` the quota refresh extends the slots of every player and room
creator (a ZADD and a PEXPIRE per key), and every ``revocation_check_s`` the revocation
check asks about every open session (an EXISTS each). Each runs in one turn, and every
room's tick and every input in flight waits for it. Here both run against a Valkey of
the bench's own for a server with ``--players`` players in rooms of 4, through redis-py's
pipeline and through the lean RESP path (``infra/resp_pipeline.py``, what the server
uses off a cluster), interleaved round by round.

    .venv/bin/python bench/chores.py                 # 800 players, 200 rooms
    .venv/bin/python bench/chores.py --players 2000 --rounds 30

Prints one JSON object: per chore and path, the median CPU (``process_time``, ms) and
wall time of one run, and the ratio lean / redis-py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from infra.embedded_redis import EmbeddedRedis  # noqa: E402
from infra.eventloop import run_loop  # noqa: E402
from infra.redis_url import connect  # noqa: E402
from infra.resp_pipeline import RespPipeline  # noqa: E402
from infra.revocation import revoked  # noqa: E402
from server.quotas import QuotaLimits, Quotas, sessions_key  # noqa: E402


async def measure(url: str, players: int, rounds: int) -> dict[str, Any]:
    client = connect(url, socket_timeout=5.0, socket_connect_timeout=1.0, max_connections=8)
    lean = RespPipeline(client)
    try:
        sids = [f"sid-{i}" for i in range(players)]
        rooms = [(f"creator-{i}", f"room-{i}") for i in range(players // 4)]
        sessions = [(f"player-{i}", f"room-{i // 4}") for i in range(players)]
        for player_id, room in sessions:  # held slots, as a running server has them
            await client.zadd(sessions_key(player_id), {room: 1})
        slow, fast = Quotas(client, QuotaLimits()), Quotas(client, QuotaLimits(), pipe=lean)
        runs: dict[str, Callable[[], Awaitable[Any]]] = {
            "revocation_check.redis_py": lambda: revoked(client, sids),
            "revocation_check.lean": lambda: revoked(client, sids, lean),
            "quota_refresh.redis_py": lambda: slow.refresh(rooms, sessions),
            "quota_refresh.lean": lambda: fast.refresh(rooms, sessions),
        }
        cpu: dict[str, list[float]] = {name: [] for name in runs}
        wall: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(rounds):
            for name, run in runs.items():
                cpu_start, wall_start = time.process_time(), time.perf_counter()
                await run()
                cpu[name].append((time.process_time() - cpu_start) * 1000)
                wall[name].append((time.perf_counter() - wall_start) * 1000)
        out: dict[str, Any] = {}
        for chore in ("revocation_check", "quota_refresh"):
            paths: dict[str, Any] = {
                path: {
                    "cpu_ms": round(statistics.median(cpu[f"{chore}.{path}"]), 2),
                    "wall_ms": round(statistics.median(wall[f"{chore}.{path}"]), 2),
                }
                for path in ("redis_py", "lean")
            }
            ratio = paths["lean"]["cpu_ms"] / paths["redis_py"]["cpu_ms"]
            out[chore] = {**paths, "lean_over_redis_py_cpu": round(ratio, 3)}
        return out
    finally:
        await lean.aclose()
        await client.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--players", type=int, default=800, help="open sessions, 4 a room")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per path")
    opts = parser.parse_args()
    if opts.players < 4 or opts.rounds < 1:
        parser.error("--players must be at least 4 and --rounds positive")
    result: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="chores-") as tmp,
        EmbeddedRedis(Path(tmp) / "redis") as redis_server,
    ):

        async def run() -> None:
            result.update(await measure(redis_server.url, opts.players, opts.rounds))

        run_loop(run())
    print(json.dumps({"bench": "chores", "players": opts.players, "chores": result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
