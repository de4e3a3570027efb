"""What a room's work costs when the core's caches are cold, against back to back.

Why: ``bench/arena.py --cpu-split`` puts an engine step of a room of 4 at 21 to 43 µs in
a serving room server, and an input's handling at 10 to 23 µs (the machine's fast and
slow phases), where the same Python code in a hot loop takes a fraction of that; fewer
calls, or the same calls compiled, then saved nothing (docs/transport.md, "Still
open"). A server at part load idles between packets and ticks, and what runs on the core
meanwhile (the kernel, other processes, on a virtual machine other guests) evicts the
interpreter's code and the rooms' objects. This measures that effect on its own, with no
sockets and no server: 200 arena rooms of 4, each step timed (``perf_counter``) after one
of

- ``back_to_back``: nothing, the rooms stepped one after another;
- ``idle_50us`` / ``idle_500us``: the thread sleeps (the core may idle or run others);
- ``spin_500us``: the thread stays busy on other Python code (a clock loop);
- ``evict_16mb``: the thread reads 16 MiB (one byte per 64-byte line), its caches gone.

The same for an input's decode and offer (``parse_input`` of a real msgpack frame, then
``RoomEngine.offer_input``, which calls the game's ``validate_input``). Pinned to CPU 0
as ``bench/arena.py`` pins the room server. Prints one JSON line: the median µs of each
operation after each condition, and its ratio to back to back.

    .venv/bin/python bench/cold_cache.py [--rounds 20] [--rooms 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack

from server.engine import RoomEngine
from server.games.arena import Arena
from server.protocol.codec import MSGPACK
from server.protocol.messages import parse_input
from server.room import build_engine

PLAYERS = 4
EVICT_BYTES = 16 << 20


def _rooms(count: int) -> list[RoomEngine]:
    engines = []
    for seed in range(count):
        engine = build_engine(Arena, seed)
        for index in range(PLAYERS):
            engine.offer_join(f"p{seed}-{index}", f"player {index}")
        engine.step()
        engines.append(engine)
    return engines


def _conditions() -> dict[str, Callable[[], object]]:
    buffer = bytearray(EVICT_BYTES)

    def spin() -> None:
        until = time.perf_counter() + 0.0005
        while time.perf_counter() < until:
            pass

    return {
        "back_to_back": lambda: None,
        "idle_50us": lambda: time.sleep(0.00005),
        "idle_500us": lambda: time.sleep(0.0005),
        "spin_500us": spin,
        "evict_16mb": lambda: buffer[::64],
    }


def measure(rounds: int, room_count: int) -> dict[str, dict[str, float]]:
    """Median µs of a step and of an input's decode and offer, after each condition."""
    engines = _rooms(room_count)
    seqs = {player: 0 for engine in engines for player in engine.seats}
    conditions = _conditions()
    samples: dict[str, dict[str, list[float]]] = {
        op: {name: [] for name in conditions} for op in ("step", "input")
    }
    clock = time.perf_counter
    for _ in range(rounds):
        for name, before in conditions.items():
            for engine in engines:
                players = list(engine.seats)
                for player in players[1:]:
                    seqs[player] += 1
                    engine.offer_input(player, seqs[player], {"dx": 0.6, "dy": -0.8})
                player = players[0]
                seqs[player] += 1
                frame = msgpack.packb(
                    {"t": "input", "seq": seqs[player], "data": {"dx": 0.6, "dy": -0.8}}
                )
                before()
                started = clock()
                message = parse_input(MSGPACK, frame)
                assert message is not None
                engine.offer_input(player, message.seq, message.data)
                offered = clock()
                before()
                stepped = clock()
                engine.step()
                samples["input"][name].append(offered - started)
                samples["step"][name].append(clock() - stepped)
    result: dict[str, dict[str, float]] = {}
    for op, by_condition in samples.items():
        medians = {name: statistics.median(values) * 1e6 for name, values in by_condition.items()}
        warm = medians["back_to_back"]
        result[op] = {f"{name}_us": round(value, 2) for name, value in medians.items()}
        result[op].update(
            {f"{name}_ratio": round(value / warm, 2) for name, value in medians.items()}
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="passes over the rooms")
    parser.add_argument("--rooms", type=int, default=200, help="arena rooms of 4")
    args = parser.parse_args()
    if args.rounds < 1 or args.rooms < 1:
        parser.error("--rounds and --rooms must be at least 1")
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})
    result = measure(args.rounds, args.rooms)
    print(json.dumps({"rooms": args.rooms, "players_per_room": PLAYERS, **result}))


if __name__ == "__main__":
    main()
