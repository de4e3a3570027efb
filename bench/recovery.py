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
3. ``durability_cost``: what a tick's durability costs, ``--durability replica`` against
   ``local``, interleaved in one run on one stack (Valkey +
   one replica): the room server's CPU and µs per input, the journal write (append, and
   WAIT under replica) and tick times from its metrics, the bots' input -> ack latency,
   Valkey's CPU (primary and replica).
5. ``room_cost``: one room server with ``--cost`` rooms of raw players: Redis commands and
   bytes per room and second, the server's and Valkey's CPU, memory per room (the inputs
   of docs/operations.md's capacity model).
4. ``mass_failover``: one room server owns every room (``--mass`` scenarios, e.g. 200 rooms
   of 2 bots, 1000 rooms of 1 bot at 2 inputs/s) while 2 survivors stand by; it is
   SIGKILLed and every room must run again on the survivors. Printed: from the rooms'
   takeover records (``sr:{R}:takeover``, one Redis clock), per room kill -> first tick
   and its parts (detection, claim, restore, first tick), the claims per survivor and
   over time (50 ms bins), the survivors' CPU during the recovery, and the bots' verdict
   (acked inputs lost, applied twice, ticks back).

Run: .venv/bin/python bench/recovery.py [--kills 20] [--quick]
     .venv/bin/python bench/recovery.py --parts mass_failover --mass 200x2@20,1000x1@2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack
import redis as sync_redis
import redis.asyncio as aioredis

from bench.common import (
    BotsProcess,
    Child,
    Stack,
    cpu_busy_seconds,
    emit,
    histogram_mean_ms,
    histogram_quantile_ms,
    log,
    metric_delta,
    placement,
    proc_cpu_seconds,
    proc_rss_mb,
    scrape,
    summary_ms,
    wait_for,
)
from bench.failover_clients import CrowdProcess
from bench.worldgame import World
from client.bots import percentile
from infra.cluster_view import parse_takeover
from infra.embedded_redis import EmbeddedRedis, config_string
from server.engine import RoomEngine
from server.killroom import KillRoomError, kill_room
from server.settings import ServerSettings
from server.store import RoomStore, room_keys

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


# -- part 3: what durability costs: local vs replica (vs off) ---------------------------------

DURABILITY_MODES = {
    "replica": ["--durability", "replica"],
    "local": ["--durability", "local"],
}


def _attach_replica(stack: Stack) -> EmbeddedRedis:
    """A replica of the stack's Valkey (what ``--durability replica`` waits for)."""
    assert stack.redis is not None
    primary = stack.redis
    with sync_redis.Redis.from_url(primary.url) as client:
        client.config_set("repl-diskless-sync-delay", 0)
    replica = EmbeddedRedis(
        stack.dir / "replica",
        password=primary.password,
        extra_config=(
            f"replicaof {primary.host} {primary.port}",
            f"masterauth {config_string(primary.password)}",
        ),
    ).start()

    def linked() -> bool:
        with sync_redis.Redis.from_url(replica.url) as client:
            info = client.info("replication")
            done = not client.info("persistence")["aof_rewrite_in_progress"]
            return info.get("master_link_status") == "up" and done

    wait_for(linked, 20, "the replica to sync")
    return replica


def durability_cost_point(
    stack: Stack,
    replica: EmbeddedRedis,
    base_args: list[str],
    mode: str,
    scenario: str,
    n: int,
    seconds: float,
) -> dict[str, Any]:
    """One room server with ``mode``'s flags under N bots (one room, or rooms of 4):
    its CPU per input, the journal write and tick times from its metrics, the bots'
    input -> ack latency, and Valkey's CPU (primary + replica)."""
    child = stack.children[0]
    child.stop()
    child.args = [*base_args, *DURABILITY_MODES[mode]]
    child.start()
    child.wait_ready()
    metrics = stack.metrics_url(child)
    warmup = 3.0
    bots = BotsProcess(
        stack.cluster_file,
        f"cost-{mode}-{scenario}",
        n,
        seconds + warmup + 1.0,
        rooms_of=4 if scenario == "rooms_of_4" else 0,
    )
    try:
        wait_for(
            lambda: _players(metrics) >= n or bots.proc.poll() is not None,
            60,
            f"{n} bots to join",
            step=0.1,
        )
        time.sleep(warmup)
        assert stack.redis is not None and stack.redis.pid and replica.pid
        pids = {"server": child.pid, "valkey": stack.redis.pid, "replica": replica.pid}
        cpu0 = {k: proc_cpu_seconds(v) for k, v in pids.items()}
        before, t0 = scrape(metrics), time.monotonic()
        time.sleep(seconds)
        after, window = scrape(metrics), time.monotonic() - t0
        cpu1 = {k: proc_cpu_seconds(v) for k, v in pids.items()}
        summary = bots.result(timeout=seconds + 90)
    finally:
        bots.kill()
    inputs = metric_delta(after, before, 'stateroom_inputs_total{verdict="accepted"}')
    server_cpu = cpu1["server"] - cpu0["server"]
    return {
        "mode": mode,
        "server_cpu_cores": round(server_cpu / window, 3),
        "cpu_us_per_input": round(server_cpu / inputs * 1e6, 1) if inputs else None,
        "valkey_cpu_cores": round((cpu1["valkey"] - cpu0["valkey"]) / window, 3),
        "replica_cpu_cores": round((cpu1["replica"] - cpu0["replica"]) / window, 3),
        "inputs_per_s": round(inputs / window, 1),
        "journal_write_ms_mean": histogram_mean_ms(
            after, before, "stateroom_journal_write_seconds"
        ),
        "journal_write_ms_p99_bucket": histogram_quantile_ms(
            after, before, "stateroom_journal_write_seconds", 0.99
        ),
        "tick_ms_mean": histogram_mean_ms(after, before, "stateroom_tick_seconds"),
        "tick_ms_p99_bucket": histogram_quantile_ms(after, before, "stateroom_tick_seconds", 0.99),
        "latency_ms": summary.get("latency_ms"),
        "lost_acked_inputs": summary.get("lost_acked_inputs"),
        "duplicate_inputs": summary.get("duplicate_inputs"),
        "rollbacks": summary.get("rollbacks"),
        "failed_players": summary.get("failed_players"),
    }


def durability_cost(
    points: list[tuple[str, int]], seconds: float, repeats: int = 2
) -> dict[str, Any]:
    """Part 3: every mode at every point, interleaved ``repeats`` times, one stack."""
    started = time.monotonic()
    stack = Stack(servers=1)
    rows: list[dict[str, Any]] = []
    replica: EmbeddedRedis | None = None
    try:
        stack.start()
        replica = _attach_replica(stack)
        base_args = list(stack.children[0].args)
        for scenario, n in points:
            runs: dict[str, list[dict[str, Any]]] = {m: [] for m in DURABILITY_MODES}
            for _ in range(repeats):
                for mode in DURABILITY_MODES:
                    log(f"durability cost: {scenario} n={n} {mode}")
                    point = durability_cost_point(
                        stack, replica, base_args, mode, scenario, n, seconds
                    )
                    runs[mode].append(point)
            row: dict[str, Any] = {"scenario": scenario, "n": n, "runs": runs}
            row["median"] = {
                mode: {
                    key: _median([r.get(key) for r in results])
                    for key in (
                        "server_cpu_cores",
                        "cpu_us_per_input",
                        "valkey_cpu_cores",
                        "replica_cpu_cores",
                        "journal_write_ms_mean",
                        "tick_ms_mean",
                    )
                }
                | {
                    "latency_p50_ms": _median(
                        [(r.get("latency_ms") or {}).get("p50") for r in results]
                    ),
                    "latency_p99_ms": _median(
                        [(r.get("latency_ms") or {}).get("p99") for r in results]
                    ),
                }
                for mode, results in runs.items()
            }
            rows.append(row)
    finally:
        if replica is not None:
            replica.stop()
        stack.stop()
    return {
        "part": "durability_cost",
        "window_s": seconds,
        "repeats": repeats,
        "valkey": "embedded valkey-server, appendonly yes, appendfsync everysec, one replica",
        "rows": rows,
        "placement": placement(),
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def _median(values: list[Any]) -> float | None:
    numbers = sorted(v for v in values if isinstance(v, int | float))
    if not numbers:
        return None
    middle = len(numbers) // 2
    if len(numbers) % 2:
        return float(numbers[middle])
    return round((numbers[middle - 1] + numbers[middle]) / 2, 3)


# -- part 4: a whole room server's rooms failing over at once ----------------------------------

MASS_ROOM = "mass"
# Room-server flags of the mass scenarios (the production defaults otherwise). The victim
# must own every room, however far beyond its core (1,000 rooms of 1 need ~2.4 cores): it
# never sheds joins (--overload-lag-ms 0); the survivors shed at the default (SURVIVOR_ARGS,
# added when they start).
MASS_SERVER_ARGS = ["--max-rooms", "2000", "--overload-lag-ms", "0"]
SURVIVOR_ARGS = ["--overload-lag-ms", str(ServerSettings().overload_lag_ms)]


@dataclass(frozen=True)
class MassScenario:
    """``ROOMSxPLAYERS@RATE``: rooms on the victim, bots per room, inputs/s per bot."""

    rooms: int
    players: int
    rate: float

    @classmethod
    def parse(cls, text: str) -> MassScenario:
        try:
            shape, _, rate = text.partition("@")
            rooms, _, players = shape.partition("x")
            scenario = cls(int(rooms), int(players or 1), float(rate or 20))
        except ValueError:
            raise SystemExit(f"bad --mass scenario {text!r}: use ROOMSxPLAYERS@RATE") from None
        if scenario.rooms < 1 or scenario.players < 1 or scenario.rate <= 0:
            raise SystemExit(f"bad --mass scenario {text!r}: rooms, players, rate must be > 0")
        return scenario

    @property
    def label(self) -> str:
        return f"{self.rooms}x{self.players}@{self.rate:g}"


def recovery_breakdown(
    records: dict[str, dict[Any, Any]], killed_ms: int, old_epochs: dict[str, int], names: Any
) -> dict[str, Any]:
    """Per-room recovery from the takeover records written after a kill at ``killed_ms``:
    percentiles of kill -> first tick and of its parts, the claims per survivor (by
    name: ``names(server_id)``) and over time (50 ms bins from the kill)."""
    total: list[float] = []
    parts: dict[str, list[float]] = {"detect": [], "claim": [], "restore": [], "first_tick": []}
    by_server: dict[str, int] = {}
    claims_over_time: dict[str, dict[int, int]] = {}
    first_ticks_over_time: dict[int, int] = {}
    missing: list[str] = []
    for room, raw in records.items():
        takeover = parse_takeover(raw)
        if (
            takeover is None
            or takeover.old_epoch != old_epochs.get(room)
            or takeover.first_tick_ms is None
            or takeover.claimed_ms is None
        ):
            missing.append(room)
            continue
        detected = takeover.detected_ms or takeover.claimed_ms
        restored = takeover.restored_ms or takeover.claimed_ms
        total.append(takeover.first_tick_ms - killed_ms)
        parts["detect"].append(detected - killed_ms)
        parts["claim"].append(takeover.claimed_ms - detected)
        parts["restore"].append(restored - takeover.claimed_ms)
        parts["first_tick"].append(takeover.first_tick_ms - restored)
        name = names(takeover.server)
        by_server[name] = by_server.get(name, 0) + 1
        claim_bin = (takeover.claimed_ms - killed_ms) // 50 * 50
        per = claims_over_time.setdefault(name, {})
        per[claim_bin] = per.get(claim_bin, 0) + 1
        tick_bin = (takeover.first_tick_ms - killed_ms) // 50 * 50
        first_ticks_over_time[tick_bin] = first_ticks_over_time.get(tick_bin, 0) + 1
    counts = list(by_server.values())
    return {
        "rooms": len(records),
        "recovered": len(total),
        "not_recovered": sorted(missing)[:10],
        "kill_to_first_tick_ms": _spread(total),
        "parts_ms": {name: _spread(values) for name, values in parts.items()},
        "claims_per_server": dict(sorted(by_server.items())),
        # 1.0: perfectly even; the largest share over the smallest.
        "claims_max_over_min": round(max(counts) / min(counts), 2) if counts else None,
        "claims_over_time_ms": {
            name: {str(k): v for k, v in sorted(bins.items())}
            for name, bins in sorted(claims_over_time.items())
        },
        "first_ticks_over_time_ms": {str(k): v for k, v in sorted(first_ticks_over_time.items())},
    }


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 0.50), 1),
        "p90": round(percentile(values, 0.90), 1),
        "p99": round(percentile(values, 0.99), 1),
        "max": round(max(values, default=0.0), 1),
    }


async def _rooms_of(redis: aioredis.Redis, server_prefix: str, rooms: list[str]) -> dict[str, int]:
    """The rooms among ``rooms`` whose lease a server named ``server_prefix`` holds, with
    the lease epoch."""
    store = RoomStore(redis)
    leases, _ = await store.leases_and_time(rooms)
    return {
        room: lease.epoch
        for room, lease in zip(rooms, leases, strict=True)
        if lease is not None and lease.server_id.startswith(server_prefix + "-")
    }


async def _kill_all(redis: aioredis.Redis, victim_pid: int, rooms: dict[str, int]) -> int:
    """Write every room's kill record, SIGKILL the victim; Redis's clock of the kill."""
    store = RoomStore(redis)
    leases, _ = await store.leases_and_time(list(rooms))
    owned = [lease for lease in leases if lease is not None]
    for first in range(0, len(owned), 50):  # a pool of 100 connections at most
        batch = owned[first : first + 50]
        await asyncio.gather(*(store.record_kill(lease, victim_pid) for lease in batch))
    t = await redis.time()
    os.kill(victim_pid, signal.SIGKILL)
    return int(t[0]) * 1000 + int(t[1]) // 1000


async def _takeovers(redis: aioredis.Redis, rooms: list[str]) -> dict[str, dict[Any, Any]]:
    async with redis.pipeline(transaction=False) as pipe:
        for room in rooms:
            pipe.hgetall(room_keys(room)["takeover"])
        replies = await pipe.execute()
    return dict(zip(rooms, replies, strict=True))


def mass_failover(
    scenario: MassScenario, survivors: int = 2, timeout_s: float = 30.0, steady_s: float = 3.0
) -> dict[str, Any]:
    """One scenario of part 4 (see the module docstring): its own stack, its own crowd."""
    started = time.monotonic()
    stack = Stack(servers=1 + survivors, server_args=MASS_SERVER_ARGS)
    try:
        stack.start()
        result = mass_failover_on(stack, scenario, timeout_s, steady_s)
    finally:
        stack.stop()
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def mass_failover_on(
    stack: Stack, scenario: MassScenario, timeout_s: float = 30.0, steady_s: float = 3.0
) -> dict[str, Any]:
    """Kill ``stack``'s first room server once it owns every room of ``scenario`` (the
    others stopped meanwhile, then started again as the survivors); the recovery and the
    crowd's verdict. Also what tests/integration/test_mass_failover.py runs."""
    count = scenario.rooms * scenario.players
    victim, spare = stack.children[0], stack.children[1:]
    # Only the victim runs while the rooms are created, so it owns all of them; the
    # survivors (listed in the cluster file all along) start afterwards.
    for child in spare:
        child.stop()
    crowd = CrowdProcess(
        stack.cluster_file, scenario.rooms, scenario.players, scenario.rate, room=MASS_ROOM
    )
    rooms = [f"{MASS_ROOM}-{i}" for i in range(scenario.rooms)]
    try:
        wait_for(
            lambda: _players(stack.metrics_url(victim)) >= count or not crowd.running,
            max(60.0, count / 10),
            f"{count} players to join",
            step=0.2,
        )
        log(f"mass {scenario.label}: {count} players joined; starting the survivors")
        for child in spare:
            if child.args[-len(SURVIVOR_ARGS) :] != SURVIVOR_ARGS:
                child.args.extend(SURVIVOR_ARGS)  # (the last of a repeated flag wins)
            child.start()
        for child in spare:
            child.wait_ready()
        time.sleep(2.5)  # survivors settled (liveness grace 1.5 s)
        # Every player resumes once: its welcome now names the fallback among the
        # survivors, as it would have had they been up when it joined.
        crowd.rejoin()
        time.sleep(1.0)
        ours = {c.name: c.pid for c in spare}
        ours["crowd"] = crowd.proc.pid
        if stack.redis is not None and stack.redis.pid:
            ours["valkey"] = stack.redis.pid
        if stack.auth is not None:
            ours["auth"] = stack.auth.pid
        cpu_before = {name: proc_cpu_seconds(pid) for name, pid in ours.items()}
        busy_before, window_from = sum(cpu_busy_seconds().values()), time.monotonic()
        owned, killed_ms, recovered_s, records = asyncio.run(
            _kill_and_wait(stack.redis_url, victim, rooms, timeout_s)
        )
        cpu_after = {name: proc_cpu_seconds(pid) for name, pid in ours.items()}
        busy = sum(cpu_busy_seconds().values()) - busy_before
        window = time.monotonic() - window_from
        log(f"mass {scenario.label}: the victim owned {len(owned)} rooms when killed")
        if victim.proc is not None:
            victim.proc.wait(10)  # SIGKILLed in _kill_all: reap it
        log(f"mass {scenario.label}: recovered in {recovered_s:.2f} s; players resuming")
        time.sleep(steady_s)  # the players back and playing on the survivors
        summary = crowd.result(timeout=60)
        survivors_metrics = {c.name: _shed_and_fenced(stack.metrics_url(c)) for c in spare}
    finally:
        crowd.kill()
    return {
        "part": "mass_failover",
        "scenario": scenario.label,
        "rooms_on_victim": len(owned),
        "players": count,
        "inputs_per_s_per_player": scenario.rate,
        "survivors": len(spare),
        **recovery_breakdown(records, killed_ms, owned, _server_name),
        "all_recovered_s": round(recovered_s, 3),
        "cpu_s_during_recovery": {
            name: round(cpu_after[name] - cpu_before[name], 2) for name in cpu_before
        },
        # Everything else on the machine meanwhile (other jobs): this run's share of it.
        "machine_busy_cores": round(busy / window, 2),
        "others_cores": round(
            max(0.0, busy - sum(cpu_after[n] - cpu_before[n] for n in cpu_before)) / window, 2
        ),
        "players_verdict": summary,
        # Per survivor: joins and claims it shed while overloaded, rooms it fenced.
        "survivors_shed_fenced": survivors_metrics,
        # The crowd shares the machine: above ~0.85 cores it is the limit, not the servers.
        "loadgen_saturated": (summary.get("loadgen_cpu_cores") or 0) > 0.85,
    }


def _shed_and_fenced(url: str) -> dict[str, float]:
    """A survivor's load shedding and fencing counters (server/overload.py)."""
    try:
        metrics = scrape(url)
    except OSError:
        return {}
    return {
        "shed_joins": metrics.get('stateroom_shed_total{work="join"}', 0.0),
        "shed_claims": metrics.get('stateroom_shed_total{work="claim"}', 0.0),
        "fenced": metrics.get("stateroom_rooms_fenced_total", 0.0),
        "overload_episodes": metrics.get("stateroom_overload_episodes", 0.0),
    }


def _server_name(server_id: str) -> str:
    """``s2`` for ``s2-1a2b3c`` (the stack names its servers s1, s2, ...)."""
    return server_id.rsplit("-", 1)[0]


async def _kill_and_wait(
    redis_url: str, victim: Child, names: list[str], timeout_s: float
) -> tuple[dict[str, int], int, float, dict[str, dict[Any, Any]]]:
    """The rooms the victim owns right now (with their epochs); kill it, then read the
    takeover records until every one of them has its first tick under a new owner (or
    ``timeout_s``)."""
    redis = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        owned = await _rooms_of(redis, victim.name, names)
        rooms = list(owned)
        killed_ms = await _kill_all(redis, victim.pid, owned)
        began = time.monotonic()
        records: dict[str, dict[Any, Any]] = {}
        while time.monotonic() - began < timeout_s:
            await asyncio.sleep(0.1)
            records = await _takeovers(redis, rooms)
            done = [
                r
                for r in rooms
                if (t := parse_takeover(records[r])) is not None
                and t.old_epoch == owned[r]
                and t.first_tick_ms is not None
            ]
            if len(done) == len(rooms):
                break
        return owned, killed_ms, time.monotonic() - began, records
    finally:
        await redis.aclose()


# -- part 5: what one room costs Redis and a room server (the capacity model's inputs) -------


def room_cost(rooms: int, players: int, rate: float, seconds: float) -> dict[str, Any]:
    """One room server (local durability) runs ``rooms`` rooms of ``players`` raw players
    sending ``rate`` inputs/s; over ``seconds`` of steady play: Redis commands and bytes
    per room and second (INFO commandstats / stats deltas), the room server's and Valkey's
    CPU, per-room memory (room-server RSS before/after the rooms, Redis MEMORY USAGE of a
    room's keys, Valkey used_memory delta)."""
    started = time.monotonic()
    stack = Stack(servers=1)
    try:
        stack.start()
        server = stack.children[0]
        assert stack.redis is not None and stack.redis.pid
        client = sync_redis.Redis.from_url(stack.redis.url)
        time.sleep(1.0)
        rss_before, used_before = proc_rss_mb(server.pid), client.info("memory")["used_memory"]
        crowd = CrowdProcess(stack.cluster_file, rooms, players, rate, room="cost")
        try:
            count = rooms * players
            wait_for(
                lambda: _players(stack.metrics_url(server)) >= count or not crowd.running,
                max(60.0, count / 10),
                f"{count} players to join",
                step=0.2,
            )
            time.sleep(3.0)  # checkpoints written, journals at their steady length
            pids = {"server": server.pid, "valkey": stack.redis.pid}
            cmd0, net0 = client.info("commandstats"), client.info("stats")
            cpu0 = {name: proc_cpu_seconds(pid) for name, pid in pids.items()}
            t0 = time.monotonic()
            time.sleep(seconds)
            window = time.monotonic() - t0
            cmd1, net1 = client.info("commandstats"), client.info("stats")
            cpu1 = {name: proc_cpu_seconds(pid) for name, pid in pids.items()}
            rss_after, used_after = proc_rss_mb(server.pid), client.info("memory")["used_memory"]
            key_bytes: dict[str, list[int]] = {}
            for name in [f"cost-{i}" for i in range(min(rooms, 20))]:
                for kind, key in room_keys(name).items():
                    used = client.memory_usage(key, samples=0)
                    if used:
                        key_bytes.setdefault(kind, []).append(int(used))
            summary = crowd.result(timeout=60)
        finally:
            crowd.kill()
        client.close()
    finally:
        stack.stop()
    calls = {
        name.removeprefix("cmdstat_"): int(stats["calls"]) - int(cmd0.get(name, {}).get("calls", 0))
        for name, stats in cmd1.items()
    }
    calls = {name: n for name, n in sorted(calls.items(), key=lambda kv: -kv[1]) if n > 0}
    total = sum(calls.values())
    per_key = {kind: round(sum(v) / len(v)) for kind, v in sorted(key_bytes.items())}
    net_in = net1["total_net_input_bytes"] - net0["total_net_input_bytes"]
    net_out = net1["total_net_output_bytes"] - net0["total_net_output_bytes"]
    return {
        "part": "room_cost",
        "rooms": rooms,
        "players_per_room": players,
        "inputs_per_s_per_player": rate,
        "window_s": round(window, 2),
        "redis_calls_per_s": round(total / window, 1),
        "redis_calls_per_room_per_s": round(total / window / rooms, 2),
        "redis_calls_per_s_by_command": {k: round(v / window, 1) for k, v in calls.items()},
        "redis_bytes_in_per_room_per_s": round(net_in / window / rooms),
        "redis_bytes_out_per_room_per_s": round(net_out / window / rooms),
        "server_cpu_cores": round((cpu1["server"] - cpu0["server"]) / window, 3),
        "valkey_cpu_cores": round((cpu1["valkey"] - cpu0["valkey"]) / window, 3),
        "server_rss_mb_per_room": round((rss_after - rss_before) / rooms, 3),
        "redis_used_memory_kb_per_room": round((used_after - used_before) / rooms / 1024, 1),
        "redis_memory_usage_bytes_per_key": per_key,
        "redis_memory_usage_kb_per_room": round(sum(per_key.values()) / 1024, 1),
        "players_verdict": {
            key: summary.get(key)
            for key in ("players", "failed_players", "lost_acked_inputs", "latency_ms")
        }
        | {"loadgen_cpu_cores": summary.get("loadgen_cpu_cores")},
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--bots", type=int, default=20, help="bots playing during the kills")
    parser.add_argument("--entities", default="100,1000,10000")
    parser.add_argument(
        "--overhead",
        default="rooms_of_4:100,one_room:100",
        help="arena points for part 3 (scenario:N,...)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="part 3 window per point")
    parser.add_argument(
        "--mass",
        default="200x2@20,1000x1@2",
        help="part 4 scenarios: ROOMSxPLAYERS@RATE,... (rooms on the killed server, bots per"
        " room, inputs/s per bot)",
    )
    parser.add_argument("--cost", default="100x4@20", help="part 5: ROOMSxPLAYERS@RATE")
    parser.add_argument(
        "--parts", default="kill_room,world_cost,durability_cost,mass_failover,room_cost"
    )
    parser.add_argument("--quick", action="store_true", help="3 kills, small worlds, short load")
    args = parser.parse_args()
    kills, entities = args.kills, [int(x) for x in args.entities.split(",") if x]
    overhead = [(p.split(":")[0], int(p.split(":")[1])) for p in args.overhead.split(",") if p]
    seconds = args.seconds
    live_ticks, replay_ticks = 200, 200
    if args.quick:
        kills, entities, overhead, seconds = 3, [100, 1000], [("one_room", 50)], 4.0
        args.mass = "50x2@5"
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
        if "durability_cost" in parts:
            log(f"part 3: durability cost at {overhead}")
            combined["durability_cost"] = durability_cost(overhead, seconds)
            emit(combined["durability_cost"])
        if "room_cost" in parts:
            shape, _, rate_text = args.cost.partition("@")
            rooms_text, _, players_text = shape.partition("x")
            log(f"part 5: room cost {args.cost}")
            combined["room_cost"] = room_cost(
                int(rooms_text), int(players_text or 1), float(rate_text or 20), seconds
            )
            emit(combined["room_cost"])
        if "mass_failover" in parts:
            rows = []
            for text in [m for m in args.mass.split(",") if m]:
                scenario = MassScenario.parse(text)
                log(f"part 4: mass failover {scenario.label}")
                try:
                    row = mass_failover(scenario)
                except (RuntimeError, TimeoutError) as exc:  # reported, the next one runs
                    row = {"part": "mass_failover", "scenario": scenario.label, "error": str(exc)}
                emit(row)
                rows.append(row)
            combined["mass_failover"] = rows
    except KeyboardInterrupt:
        log("interrupted; everything started has been stopped")
        return 130
    combined["elapsed_s"] = round(time.monotonic() - started, 1)
    emit(combined)
    return 0


if __name__ == "__main__":
    sys.exit(main())
