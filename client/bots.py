"""``stateroom bots``: headless arena players that also check the room's guarantees.

Each bot logs in as a guest, joins the room through the SDK (which follows
redirects and resumes after failovers), sends an input every 1/rate s and
reads every state. It checks, from what it sees:

- latency: from sending an input to the first state whose ack covers it;
- rollbacks: a state whose tick is not newer than one already seen;
- lost acked inputs: the ack going backwards (an acked input forgotten);
- duplicate inputs: the arena counts the inputs it applied for each player;
  with seq 1..ack sent once each, ``inputs`` must equal ``ack`` — more means
  an input was applied twice. Sampled (about once a second, see ``read_states``):
  the other checks use only tick and ack and run on every state in the SDK.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.cluster_file import ClusterInfo, load_cluster


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", required=True, help="cluster.json written by stateroom up")
    parser.add_argument(
        "--room", required=True, help="room name (with --rooms-of, the name prefix)"
    )
    parser.add_argument("--count", type=int, default=10, help="number of bots (default 10)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to play (default 10)")
    parser.add_argument(
        "--rate", type=float, default=20.0, help="inputs per second per bot (default 20)"
    )
    parser.add_argument(
        "--rooms-of", type=int, default=0, help="spread bots over rooms of this many players"
    )
    parser.add_argument("--encoding", choices=["msgpack", "json"], default="msgpack")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


@dataclass
class BotResult:
    inputs_sent: int = 0
    inputs_acked: int = 0
    latencies: list[float] = field(default_factory=list)
    reconnects: int = 0
    redirects: int = 0
    rollbacks: int = 0
    lost_acked_inputs: int = 0
    seat_resets: int = 0
    reauths: int = 0
    redirects_refused: int = 0
    duplicate_inputs: int = 0
    states: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    failed: str = ""


async def run_bot(
    cluster: ClusterInfo,
    room: str,
    seconds: float,
    rate: float,
    encoding: str,
    start_gate: asyncio.Event,
    index: int,
    joined: Callable[[], None] = lambda: None,
) -> BotResult:
    from client.sdk import AuthClient, ClientError, RoomClient, State
    from server.protocol import ProtocolError

    result = BotResult()
    auth = AuthClient(cluster.auth_url)
    try:
        tokens = await auth.guest(f"bot-{index}")
    except Exception as exc:
        result.failed = f"login: {exc}"
        await auth.aclose()
        return result
    # A refreshing token source: the SDK renews the session's token before it expires,
    # so a run longer than the access-token lifetime keeps playing.
    client = RoomClient(cluster.ws_urls, room, auth.token_source(tokens), encoding=encoding)
    rng = random.Random(index)
    duplicate_excess = 0
    last: State | None = None  # the newest state read
    last_checked: State | None = None
    undecodable = 0

    def check_duplicates(state: State) -> None:
        nonlocal duplicate_excess, last_checked, undecodable
        if state is last_checked:
            return
        last_checked = state
        try:
            world = state.state  # decodes the whole world: the one costly step of a bot
        except ProtocolError:
            undecodable += 1
            return
        me = world.get("players", {}).get(client.player_id) if isinstance(world, dict) else None
        if me is not None:
            duplicate_excess = max(duplicate_excess, int(me.get("inputs", 0)) - state.ack)

    async def read_states() -> None:
        # Decoding every state (~15 KB at 200 players, 20 a second, for every bot in one
        # process) would make the load generator, not the server, the bottleneck; the SDK
        # decodes a state only when it is read, so the duplicate check samples: at most one
        # state a second (first one at a random offset, so the bots spread the work), the
        # last state of the run, and the last state before any gap.
        #
        # Why sampling cannot miss a duplicate that persists: the server applies a player's
        # inputs strictly in seq order and ``ack`` is the highest seq applied, so a new input
        # adds 1 to both ``inputs`` and ``ack``, and an input applied a second time adds 1 to
        # ``inputs`` only. ``inputs - ack`` therefore never decreases once an input was applied
        # twice, and any later state of that seat shows the excess: the sample after it, or the
        # last state. What it could miss is an excess that goes away before the next sample:
        # for a game whose counter can decrease, or when the seat itself is reset (the seat
        # expired; the rejoined player starts again from inputs = ack = 0). In the arena the
        # counter only grows while the seat lives, and a reset seat needs a disconnection
        # longer than the grace period, i.e. a gap in ticks (or ack going back): on a gap the
        # last state before it, i.e. the old seat's last one, is checked, so nothing is missed.
        nonlocal last
        next_check = time.monotonic() + random.uniform(0.0, 1.0)  # not rng: inputs unchanged
        async for state in client.states():
            result.states += 1
            previous, last = last, state
            if previous is not None and (
                state.tick != previous.tick + 1 or state.ack < previous.ack
            ):
                check_duplicates(previous)
            now = time.monotonic()
            if now >= next_check:
                next_check = now + 1.0
                check_duplicates(state)

    try:
        await client.connect()
    except ClientError as exc:
        result.failed = f"join: {exc}"
        await auth.aclose()
        return result
    reader = asyncio.get_running_loop().create_task(read_states())
    joined()
    try:
        async with asyncio.timeout(30):
            await start_gate.wait()
        period = 1.0 / rate
        next_at = time.monotonic() + rng.uniform(0, period)
        deadline = time.monotonic() + seconds
        heading = (rng.uniform(-1, 1), rng.uniform(-1, 1))
        while time.monotonic() < deadline:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += period
            if rng.random() < 0.1:
                heading = (rng.uniform(-1, 1), rng.uniform(-1, 1))
            with contextlib.suppress(ClientError):
                client.send_input({"dx": round(heading[0], 3), "dy": round(heading[1], 3)})
        # Let the last inputs be acked (or give up after a few seconds).
        drain_until = time.monotonic() + 5
        while client.unacked and time.monotonic() < drain_until and not reader.done():
            await asyncio.sleep(0.02)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        if last is not None:
            check_duplicates(last)
        stats = client.stats
        result.inputs_sent = stats.inputs_sent
        result.inputs_acked = stats.inputs_acked
        result.latencies = stats.latencies_ms
        result.reconnects = stats.reconnects
        result.redirects = stats.redirects
        result.rollbacks = stats.rollbacks
        result.lost_acked_inputs = stats.ack_regressions
        result.seat_resets = stats.seat_resets
        result.reauths = stats.reauths
        result.redirects_refused = stats.redirects_refused
        result.duplicate_inputs = max(0, duplicate_excess)
        result.errors = dict(stats.errors)
        if undecodable:
            result.errors["undecodable_state"] = undecodable
        with contextlib.suppress(Exception):
            await client.leave()
        await auth.aclose()
    return result


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summarize(results: list[BotResult], seconds: float) -> dict[str, Any]:
    latencies = [v for r in results for v in r.latencies]
    errors: dict[str, int] = {}
    for r in results:
        for code, count in r.errors.items():
            errors[code] = errors.get(code, 0) + count
    return {
        "players": len(results),
        "failed_players": sum(1 for r in results if r.failed),
        "seconds": seconds,
        "inputs_sent": sum(r.inputs_sent for r in results),
        "inputs_acked": sum(r.inputs_acked for r in results),
        "states_received": sum(r.states for r in results),
        "latency_ms": {
            "p50": round(percentile(latencies, 0.50), 2),
            "p99": round(percentile(latencies, 0.99), 2),
            "max": round(max(latencies, default=0.0), 2),
        },
        "reconnects": sum(r.reconnects for r in results),
        "redirects": sum(r.redirects for r in results),
        "lost_acked_inputs": sum(r.lost_acked_inputs for r in results),
        "seat_resets": sum(r.seat_resets for r in results),
        "reauths": sum(r.reauths for r in results),
        "redirects_refused": sum(r.redirects_refused for r in results),
        "duplicate_inputs": sum(r.duplicate_inputs for r in results),
        "rollbacks": sum(r.rollbacks for r in results),
        "errors": errors,
        "failures": sorted({r.failed for r in results if r.failed})[:5],
    }


async def run_bots(
    cluster: ClusterInfo,
    room: str,
    count: int,
    seconds: float,
    rate: float = 20.0,
    rooms_of: int = 0,
    encoding: str = "msgpack",
) -> dict[str, Any]:
    """Run ``count`` bots and return the summary (also used by tests and benches)."""
    gate = asyncio.Event()
    arrived = 0

    def room_for(index: int) -> str:
        return f"{room}-{index // rooms_of}" if rooms_of else room

    async def bot(index: int) -> BotResult:
        counted = False

        def mark() -> None:
            # Everyone starts sending once every bot has joined (or failed): joins are not measured.
            nonlocal arrived, counted
            if not counted:
                counted = True
                arrived += 1
                if arrived >= count:
                    gate.set()

        try:
            return await run_bot(
                cluster, room_for(index), seconds, rate, encoding, gate, index, mark
            )
        finally:
            mark()

    tasks = [asyncio.create_task(bot(i)) for i in range(count)]
    results = await asyncio.gather(*tasks)
    return summarize(list(results), seconds)


def run(args: argparse.Namespace) -> int:
    from infra.eventloop import run_loop

    cluster = load_cluster(Path(args.cluster))
    summary: dict[str, Any] = {}

    async def main() -> None:
        summary.update(
            await run_bots(
                cluster,
                args.room,
                args.count,
                args.seconds,
                args.rate,
                args.rooms_of,
                args.encoding,
            )
        )

    run_loop(main())
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:>20}: {value}")
    ok = (
        summary["lost_acked_inputs"] == 0
        and summary["duplicate_inputs"] == 0
        and summary["rollbacks"] == 0
    )
    if not ok:
        print(
            "guarantee violated: see lost_acked_inputs/duplicate_inputs/rollbacks", file=sys.stderr
        )
    return 0 if ok else 1
