"""Rooms outliving their process: what recovery, checkpoints, the journal and durability cost.

Three parts, one JSON object each, then a combined object:

1. ``kill_room``: Valkey + auth + 2 room servers, supervised here (a killed server is
   restarted, as ``stateroom up`` does); bots play in one room without pause while the room's
   owner is SIGKILLed ``--kills`` times (``server.killroom.kill_room``), with the killed
   server restarted and ready and ~1.5 s of steady play before each next kill.
2. ``world_cost``: checkpoint and journal cost against world size (E entities of
   ``bench.worldgame.World``), in-process against a real embedded Valkey with the real
   ``RoomStore`` and ``RoomEngine``: snapshot+pack time, checkpoint write latency, snapshot
   bytes, journal append latency per tick, and replay speed from checkpoint + journal.
3. ``durability_overhead``: the arena one-room scenario with journal+checkpoints on and off
   (``--no-durable``), server CPU and µs per input for both.

Run: .venv/bin/python bench/recovery.py [--kills 20] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack
import redis.asyncio as aioredis

from bench.arena import run_point
from bench.common import (
    BotsProcess,
    Stack,
    emit,
    log,
    percentile,
    placement,
    scrape,
    summary_ms,
    wait_for,
)
from bench.worldgame import World
from infra.embedded_redis import EmbeddedRedis
from server.engine import RoomEngine
from server.killroom import KillRoomError, kill_room
from server.store import RoomStore

STEADY_S = 1.5

# -- part 1: kill-room under load ---------------------------------------------------------------


def kill_under_load(kills: int, bots_count: int) -> dict[str, Any]:
    room = "recovery"
    # Each kill takes recovery (<1 s) + a server restart (~1 s) + steady play: ~2.5 s here.
    bots_seconds = kills * 4.0 + 10.0
    stack = Stack(servers=2, supervise=True)
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    started = time.monotonic()
    try:
        stack.start()
        bots = BotsProcess(stack.cluster_file, room, bots_count, bots_seconds)
        try:
            urls = [stack.metrics_url(c) for c in stack.children]
            wait_for(
                lambda: (
                    sum(_players(u) for u in urls) >= bots_count or bots.proc.poll() is not None
                ),
                60,
                "bots to join",
                step=0.1,
            )
            for index in range(kills):
                if bots.proc.poll() is not None:
                    failures.append(f"bots ended before kill {index + 1}")
                    break
                # The previous victim must be back (restarted and ready) before the next kill.
                wait_for(stack.all_ready, 30, "both room servers ready", step=0.05)
                time.sleep(STEADY_S)
                try:
                    report = asyncio.run(kill_room(stack.redis_url, room, timeout=15))
                except KillRoomError as exc:
                    failures.append(f"kill {index + 1}: {exc}")
                    continue
                results.append(report)
                log(
                    f"kill {index + 1}/{kills}: {report['old_server']} -> "
                    f"{report['new_server']} in {report['unavailable_ms']} ms"
                )
            wait_for(stack.all_ready, 30, "both room servers ready", step=0.05)
            summary = bots.result(timeout=bots_seconds + 90)
        finally:
            bots.kill()
        restarts = sum(c.restarts for c in stack.children)
    finally:
        stack.stop()
    unavailable = [float(r["unavailable_ms"]) for r in results]
    moved = sum(1 for r in results if r["new_server"] and r["old_server"] != r["new_server"])
    return {
        "part": "kill_room",
        "kills": len(results),
        "kills_requested": kills,
        "failed_recoveries": len(failures),
        "failures": failures[:5],
        "unavailable_ms": {
            "p50": round(percentile(unavailable, 0.50), 1),
            "p99": round(percentile(unavailable, 0.99), 1),
            "max": round(max(unavailable, default=0.0), 1),
            "min": round(min(unavailable, default=0.0), 1),
        },
        "unavailable_ms_each": unavailable,
        "moved_to_other_server": moved,
        "server_restarts": restarts,
        "bots": bots_count,
        "bots_seconds": bots_seconds,
        **{
            key: summary.get(key)
            for key in (
                "players",
                "failed_players",
                "inputs_sent",
                "inputs_acked",
                "lost_acked_inputs",
                "duplicate_inputs",
                "rollbacks",
                "reconnects",
                "redirects",
                "latency_ms",
                "errors",
            )
        },
        "steady_play_between_kills_s": STEADY_S,
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def _players(url: str) -> float:
    try:
        return scrape(url).get("stateroom_players", 0.0)
    except OSError:
        return 0.0


# -- part 2: checkpoint and journal cost against world size ----------------------------------


async def world_cost_one(
    redis: aioredis.Redis, entities: int, players: int, live_ticks: int, replay_ticks: int
) -> dict[str, Any]:
    game_class = World.sized(entities)
    room = f"world-{entities}"
    store = RoomStore(redis, lease_ms=600_000)
    claim = await store.claim(room, "bench", "ws://bench", game_class.name)
    lease = claim.lease
    engine = RoomEngine(game_class.create(12345))
    ids = [f"p{i}" for i in range(players)]
    for pid in ids:
        engine.offer_join(pid, pid)
    seq = 0
    pack_ms: list[float] = []
    ckpt_ms: list[float] = []
    append_ms: list[float] = []
    step_ms: list[float] = []
    sizes: list[int] = []
    entry_bytes: list[int] = []
    checkpoint_every = 10

    async def one_tick(checkpoint: bool) -> None:
        nonlocal seq
        seq += 1
        for i, pid in enumerate(ids):
            angle = (seq * 7 + i * 13) % 360
            engine.offer_input(pid, seq, {"dx": (angle - 180) / 180, "dy": (90 - angle) / 270})
        t0 = time.perf_counter()
        outcome = engine.step()
        step_ms.append((time.perf_counter() - t0) * 1000)
        entry_bytes.append(len(msgpack.packb(outcome.events, use_bin_type=True)))
        t0 = time.perf_counter()
        await store.append(lease, outcome.tick, outcome.events)
        append_ms.append((time.perf_counter() - t0) * 1000)
        if checkpoint:
            # What Room._maybe_checkpoint does on the tick: snapshot + pack ...
            t0 = time.perf_counter()
            data = msgpack.packb(engine.snapshot(), use_bin_type=True)
            pack_ms.append((time.perf_counter() - t0) * 1000)
            sizes.append(len(data))
            # ... and what it writes in the background.
            t0 = time.perf_counter()
            await store.checkpoint(lease, engine.tick, data)
            ckpt_ms.append((time.perf_counter() - t0) * 1000)

    for t in range(1, live_ticks + 1):
        await one_tick(checkpoint=t % checkpoint_every == 0)
    # Then ticks with no checkpoint: what a takeover replays after the last checkpoint.
    for _ in range(replay_ticks):
        await one_tick(checkpoint=False)
    live_snapshot = msgpack.packb(engine.snapshot(), use_bin_type=True)

    t0 = time.perf_counter()
    checkpoint, entries = await store.load(room)
    load_s = time.perf_counter() - t0
    assert checkpoint is not None
    t0 = time.perf_counter()
    rebuilt = RoomEngine.restore(game_class, checkpoint.snapshot)
    restore_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for entry in entries:
        rebuilt.apply(entry.tick, entry.events)
    replay_s = time.perf_counter() - t0
    matches = msgpack.packb(rebuilt.snapshot(), use_bin_type=True) == live_snapshot
    await store.delete_room(lease)
    return {
        "entities": entities,
        "players": players,
        "events_per_tick": players,
        "tick_compute_ms": summary_ms(step_ms),
        "snapshot_pack_ms": summary_ms(pack_ms),
        "checkpoint_write_ms": summary_ms(ckpt_ms),
        "snapshot_bytes": max(sizes, default=0),
        "journal_append_ms": summary_ms(append_ms),
        "journal_entry_bytes": round(sum(entry_bytes) / len(entry_bytes)) if entry_bytes else 0,
        "replay": {
            "journal_ticks": len(entries),
            "load_ms": round(load_s * 1000, 2),
            "restore_ms": round(restore_s * 1000, 2),
            "apply_ms": round(replay_s * 1000, 2),
            "ticks_per_s": round(len(entries) / replay_s) if replay_s else None,
            "rebuild_total_ms": round((load_s + restore_s + replay_s) * 1000, 2),
            "rebuilt_state_matches_live": matches,
        },
    }


async def world_cost(sizes: list[int], live_ticks: int, replay_ticks: int) -> dict[str, Any]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="stateroom-bench-world-") as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis").start()
        try:
            redis = aioredis.Redis.from_url(server.url)
            try:
                rows = [await world_cost_one(redis, e, 10, live_ticks, replay_ticks) for e in sizes]
            finally:
                await redis.aclose()
        finally:
            server.stop()
    return {
        "part": "world_cost",
        "valkey": "embedded valkey-server, appendonly yes, appendfsync everysec",
        "checkpoint_every_ticks": 10,
        "live_ticks": live_ticks,
        "sizes": rows,
        "elapsed_s": round(time.monotonic() - started, 1),
    }


# -- part 3: durability overhead ------------------------------------------------------------------


def durability_overhead(points: list[tuple[str, int]], seconds: float) -> dict[str, Any]:
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    for scenario, n in points:
        row: dict[str, Any] = {"scenario": scenario, "n": n}
        for durable in (True, False):
            log(f"durability overhead: {scenario} n={n} durable={durable}")
            try:
                point = run_point(scenario, n, seconds, durable)
            except (RuntimeError, TimeoutError) as exc:
                point = {"error": str(exc)}
            key = "durable" if durable else "not_durable"
            row[key] = {
                k: point.get(k)
                for k in (
                    "server_cpu_cores",
                    "cpu_us_per_input",
                    "redis_cpu_cores",
                    "loadgen_cpu_cores",
                    "loadgen_saturated",
                    "offered_rate_ratio",
                    "other_processes_cpu_cores",
                    "latency_ms",
                    "tick_ms",
                    "journal_write_ms_mean",
                    "rss_mb",
                    "inputs_applied_in_window",
                    "lost_acked_inputs",
                    "duplicate_inputs",
                    "rollbacks",
                    "error",
                )
            }
        on, off = row["durable"], row["not_durable"]
        # Compare only points where the load generator offered (nearly) the whole load.
        row["comparable"] = all((p.get("offered_rate_ratio") or 0) >= 0.9 for p in (on, off))
        if not row["comparable"]:
            row["note"] = (
                "not comparable: the load generator could not offer N x 20 inputs/s in one of "
                "the two runs (see offered_rate_ratio, loadgen_cpu_cores)"
            )
        elif on.get("server_cpu_cores") and off.get("server_cpu_cores"):
            row["server_cpu_ratio_durable_over_not"] = round(
                on["server_cpu_cores"] / off["server_cpu_cores"], 3
            )
            row["server_plus_redis_cpu_ratio"] = round(
                (on["server_cpu_cores"] + on["redis_cpu_cores"])
                / (off["server_cpu_cores"] + off["redis_cpu_cores"]),
                3,
            )
        if row["comparable"] and on.get("cpu_us_per_input") and off.get("cpu_us_per_input"):
            row["extra_us_per_input"] = round(on["cpu_us_per_input"] - off["cpu_us_per_input"], 1)
        rows.append(row)
    return {
        "part": "durability_overhead",
        "window_s": seconds,
        "rows": rows,
        "placement": placement(),
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--bots", type=int, default=20, help="bots playing during the kills")
    parser.add_argument("--entities", default="100,1000,10000")
    parser.add_argument(
        "--overhead",
        default="one_room:100,one_room:200,rooms_of_4:100",
        help="arena points for part 3 (scenario:N,...)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="part 3 window per point")
    parser.add_argument("--parts", default="kill_room,world_cost,durability_overhead")
    parser.add_argument("--quick", action="store_true", help="3 kills, small worlds, short load")
    args = parser.parse_args()
    kills, entities = args.kills, [int(x) for x in args.entities.split(",") if x]
    overhead = [(p.split(":")[0], int(p.split(":")[1])) for p in args.overhead.split(",") if p]
    seconds = args.seconds
    live_ticks, replay_ticks = 200, 200
    if args.quick:
        kills, entities, overhead, seconds = 3, [100, 1000], [("one_room", 50)], 4.0
        live_ticks, replay_ticks = 40, 40
    parts = [p for p in args.parts.split(",") if p]

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    combined: dict[str, Any] = {"bench": "recovery"}
    try:
        if "kill_room" in parts:
            log(f"part 1: {kills} kills under load from {args.bots} bots")
            combined["kill_room"] = kill_under_load(kills, args.bots)
            emit(combined["kill_room"])
        if "world_cost" in parts:
            log(f"part 2: world cost for {entities} entities")
            combined["world_cost"] = asyncio.run(world_cost(entities, live_ticks, replay_ticks))
            emit(combined["world_cost"])
        if "durability_overhead" in parts:
            log(f"part 3: durability overhead at {overhead}")
            combined["durability_overhead"] = durability_overhead(overhead, seconds)
            emit(combined["durability_overhead"])
    except KeyboardInterrupt:
        log("interrupted; everything started has been stopped")
        return 130
    combined["elapsed_s"] = round(time.monotonic() - started, 1)
    emit(combined)
    return 0


if __name__ == "__main__":
    sys.exit(main())
