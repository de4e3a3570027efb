"""CPU per journal append of one tick's batch: redis-py's pipeline vs infra/resp_pipeline.py.

What the room server's ScriptBatcher does every tick (server/store.py): one batch of the
rooms' journal appends (the fenced append script, a lease renewal inside), sent in one
round trip. Here N rooms are claimed on a Valkey of the bench's own, then batches of N
appends are sent through ``ScriptBatcher(fast=False)`` (redis-py) and
``ScriptBatcher(fast=True)`` (the lean path), interleaved round by round in one run so
both see the same machine load. The figure is this process's CPU (``process_time``) per
append, the client's only: Valkey's own CPU is the same for both and not counted.

    .venv/bin/python bench/journal_batch.py                 # batches of 50 and 200
    .venv/bin/python bench/journal_batch.py --sizes 1,50,200 --rounds 40 --batches 50
    .venv/bin/python bench/journal_batch.py --hz 20     # one batch per 50 ms, as rooms tick

Prints one JSON object: per size, each path's median µs per append over the rounds, and
the ratio fast / redis-py (< 1: the lean path is cheaper).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from infra.embedded_redis import EmbeddedRedis  # noqa: E402
from infra.eventloop import run_loop  # noqa: E402
from infra.redis_url import connect  # noqa: E402
from server.store import Lease, RoomStore, ScriptBatcher  # noqa: E402

PATHS = ("redis_py", "fast")


async def _round(
    store: RoomStore, batcher: ScriptBatcher, leases: list[Lease], ticks: range, hz: float = 0
) -> float:
    """CPU seconds for ``len(ticks)`` batches of one append per room (``hz`` > 0: one
    batch per 1/hz s, as the rooms' common tick clock sends them; 0: back to back)."""
    loop = asyncio.get_running_loop()
    started = time.process_time()
    next_at = loop.time()
    for tick in ticks:
        futures = []
        for lease in leases:
            # What append_soon submits, on the batcher under test.
            futures.append(_submit(store, batcher, lease, tick))
        await asyncio.gather(*futures)
        if hz > 0:
            next_at += 1 / hz
            await asyncio.sleep(max(0.0, next_at - loop.time()))
    return time.process_time() - started


def _submit(store: RoomStore, batcher: ScriptBatcher, lease: Lease, tick: int) -> Any:
    real = store._batcher
    store._batcher = batcher
    try:
        return store.append_soon(lease, tick, [["move", 1, 0]], None, 0)
    finally:
        store._batcher = real


async def measure(
    url: str, sizes: list[int], rounds: int, batches: int, hz: float = 0
) -> dict[str, Any]:
    client = connect(url, socket_timeout=1.0, socket_connect_timeout=1.0, max_connections=8)
    out: dict[str, Any] = {}
    try:
        store = RoomStore(client, lease_ms=600_000)
        for size in sizes:
            leases = []
            for i in range(size):
                claim = await store.claim(f"jb-{size}-{i}", "bench", "ws://bench", "arena")
                leases.append(claim.lease)
            batchers = {
                "redis_py": ScriptBatcher(client, store.durability, fast=False),
                "fast": ScriptBatcher(client, store.durability, fast=True),
            }
            tick = 1
            for name in PATHS:  # warm up: connections, scripts loaded
                await _round(store, batchers[name], leases, range(tick, tick + 3))
                tick += 3
            per_append: dict[str, list[float]] = {name: [] for name in PATHS}
            for index in range(rounds):
                order = PATHS if index % 2 == 0 else PATHS[::-1]
                for name in order:
                    ticks = range(tick, tick + batches)
                    cpu = await _round(store, batchers[name], leases, ticks, hz)
                    tick += batches
                    per_append[name].append(cpu / (batches * size) * 1e6)
            for batcher in batchers.values():
                await batcher.aclose()
            medians = {name: round(statistics.median(v), 2) for name, v in per_append.items()}
            out[str(size)] = {
                "cpu_us_per_append": medians,
                "ratio_fast_vs_redis_py": round(medians["fast"] / medians["redis_py"], 3),
                "rounds": rounds,
                "batches_per_round": batches,
                "hz": hz,
            }
        await store.aclose()
    finally:
        await client.aclose()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="50,200", help="appends per batch (rooms), comma-separated"
    )
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds per path")
    parser.add_argument("--batches", type=int, default=40, help="batches per round")
    parser.add_argument(
        "--hz", type=float, default=0.0, help="batches per second (0: back to back)"
    )
    opts = parser.parse_args()
    sizes = [int(s) for s in opts.sizes.split(",") if s]
    if not sizes or min(sizes) < 1 or opts.rounds < 1 or opts.batches < 1 or opts.hz < 0:
        parser.error("--sizes, --rounds and --batches must be positive, --hz >= 0")
    result: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="journal-batch-") as tmp,
        EmbeddedRedis(Path(tmp) / "redis") as redis_server,
    ):

        async def run() -> None:
            result.update(
                await measure(redis_server.url, sizes, opts.rounds, opts.batches, opts.hz)
            )

        run_loop(run())
    print(json.dumps({"bench": "journal_batch", "sizes": result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
