"""Bytes per player per state update: today's full state vs generic and schema deltas.

Prints one JSON object. Pure: the real arena rules (``Arena``; ``BenchArena`` above 64
seats), N players in one room (ids and names shaped like the login service's), every
player sending a new random heading every tick, for ``--ticks`` ticks; no sockets. Player
ids are guest ids (``g_`` + 16 characters, as the login service issues), names ``bot-N``.

    .venv/bin/python bench/delta_bytes.py [--players 100,200,400] [--ticks 100] [--rooms-of-4 100]

For each N and variant, ``bytes_per_player_update`` is the bytes of one tick's update
divided by the N players it describes (mean and max over the ticks after the first):

- ``full_*``: today's v1 ``state`` frame, as ``StateFrame.encode_for`` writes it;
- ``generic_*`` / ``schema_*``: a frame of the proposed v2 shape
  ``{"t": "state", "tick", "shared": <delta payload>, "ack"}`` around the payload of
  ``DeltaEncoder()`` (no schema) or ``DeltaEncoder(ARENA_SCHEMA)``; ``payload_*`` is the
  payload alone. WebSocket framing (2-4 bytes a frame) is not counted, as for v1.

``keyframe_bytes``: the whole-view payload a joining or resuming client gets first.
CPU (microseconds, best of 3, one core): ``encode_us`` is ``DeltaEncoder.delta`` plus the
msgpack encoding of the payload (the server does it once per tick and stream);
``decode_us`` is msgpack decoding plus ``DeltaDecoder.apply`` (each client, every tick);
``full_encode_us`` / ``full_decode_us`` are today's equivalents.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack

from bench.worldgame import BenchArena
from server.games.arena import Arena
from server.protocol import JSON, MSGPACK, Codec, StateFrame
from server.protocol.delta import DeltaDecoder, DeltaEncoder, Schema, same_view
from server.protocol.schemas import ARENA_SCHEMA

ACK = 1234  # a typical ack: a player's seq after a minute of play


def arena_views(players: int, ticks: int, seed: int = 1) -> list[Mapping[str, Any]]:
    """The public state after each of ``ticks`` ticks, every player steering anew each tick."""
    game = (Arena if players <= Arena.max_players else BenchArena).create(seed)
    rng = random.Random(seed)
    # guest ids as the login service makes them: "g_" + token_urlsafe(12)
    ids = ["g_" + base64.urlsafe_b64encode(rng.randbytes(12)).decode() for _ in range(players)]
    for index, player_id in enumerate(ids):
        game.join(player_id, f"bot-{index}")
    views = []
    for _ in range(ticks):
        inputs = []
        for player_id in ids:
            angle = rng.random() * 2 * math.pi
            heading = {"dx": math.cos(angle), "dy": math.sin(angle)}
            inputs.append((player_id, game.validate_input(player_id, heading)))
        views.append(game.tick(inputs))
    return views


def v2_frame(codec: Codec, tick: int, payload: dict[str, Any]) -> bytes:
    return codec.encode({"t": "state", "tick": tick, "shared": payload, "ack": ACK})


def best_us(work: Callable[[], object], repeats: int = 3) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        count = work()
        assert isinstance(count, int)
        best = min(best, (time.perf_counter() - start) / count)
    return round(best * 1e6, 1)


def stats(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.fmean(values), 2), "max": round(max(values), 2)}


def measure(players: int, ticks: int, seed: int = 1, cpu: bool = True) -> dict[str, Any]:
    views = arena_views(players, ticks, seed)
    sizes: dict[str, list[float]] = {}

    def add(name: str, size: int) -> None:
        sizes.setdefault(name, []).append(size / players)

    variants: dict[str, Schema | None] = {"generic": None, "schema": ARENA_SCHEMA}
    encoders = {name: DeltaEncoder(schema) for name, schema in variants.items()}
    decoders = {name: DeltaDecoder() for name in variants}
    keyframe_bytes: dict[str, int] = {}
    for tick, view in enumerate(views, start=1):
        frame = StateFrame(tick, view)
        if tick > 1:
            add("full_msgpack", len(frame.encode_for(MSGPACK, ACK)))
            add("full_json", len(frame.encode_for(JSON, ACK)))
        for name, encoder in encoders.items():
            payload = encoder.delta(tick, view)
            packed = MSGPACK.encode(payload)
            # every update is checked: what the client rebuilds is the view
            got = decoders[name].apply(msgpack.unpackb(packed, raw=False))
            assert same_view(view, got) and same_view(got, view), (name, tick)
            if tick > 1:
                add(f"{name}_msgpack", len(v2_frame(MSGPACK, tick, payload)))
                add(f"{name}_json", len(v2_frame(JSON, tick, payload)))
                add(f"payload_{name}_msgpack", len(packed))
                add(f"payload_{name}_json", len(JSON.encode(payload)))
    for name, encoder in encoders.items():
        keyframe = encoder.current_keyframe()
        keyframe_bytes[f"{name}_msgpack"] = len(MSGPACK.encode(keyframe))
        keyframe_bytes[f"{name}_json"] = len(JSON.encode(keyframe))
    keyframe_bytes["full_msgpack"] = len(StateFrame(ticks, views[-1]).encode_for(MSGPACK, ACK))
    keyframe_bytes["full_json"] = len(StateFrame(ticks, views[-1]).encode_for(JSON, ACK))
    out: dict[str, Any] = {
        "players": players,
        "ticks": ticks,
        "bytes_per_player_update": {name: stats(values) for name, values in sizes.items()},
        "keyframe_bytes": keyframe_bytes,
        "keyframe_bytes_per_player": {
            name: round(size / players, 2) for name, size in keyframe_bytes.items()
        },
    }
    if cpu:
        out["cpu"] = cpu_us(views)
    return out


def cpu_us(views: list[Mapping[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, schema in (("generic", None), ("schema", ARENA_SCHEMA)):

        def encode(schema: Schema | None = schema) -> int:
            encoder = DeltaEncoder(schema)
            encoder.keyframe(1, views[0])
            for tick, view in enumerate(views[1:], start=2):
                MSGPACK.encode(encoder.delta(tick, view))
            return len(views) - 1

        encoder = DeltaEncoder(schema)
        first = MSGPACK.encode(encoder.keyframe(1, views[0]))
        frames = [MSGPACK.encode(encoder.delta(t, v)) for t, v in enumerate(views[1:], start=2)]

        def decode(first: bytes = first, frames: list[bytes] = frames) -> int:
            decoder = DeltaDecoder()
            decoder.apply(msgpack.unpackb(first, raw=False))
            for frame in frames:
                decoder.apply(msgpack.unpackb(frame, raw=False))
            return len(frames)

        def unpack_only(frames: list[bytes] = frames) -> int:
            for frame in frames:
                msgpack.unpackb(frame, raw=False)
            return len(frames)

        result[name] = {
            "encode_us": best_us(encode),
            "decode_us": best_us(decode),
            "decode_msgpack_only_us": best_us(unpack_only),
        }

    def full_encode() -> int:
        for tick, view in enumerate(views, start=1):
            StateFrame(tick, view).encode_for(MSGPACK, ACK)
        return len(views)

    full_frames = [StateFrame(t, v).encode_for(MSGPACK, ACK) for t, v in enumerate(views, 1)]

    def full_decode() -> int:
        for frame in full_frames:
            msgpack.unpackb(frame, raw=False)
        return len(full_frames)

    result["full"] = {"encode_us": best_us(full_encode), "decode_us": best_us(full_decode)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--players", default="100,200,400", help="comma-separated N")
    parser.add_argument("--ticks", type=int, default=100)
    parser.add_argument("--rooms-of-4", type=int, default=100, help="rooms of 4 players")
    args = parser.parse_args()
    started = time.process_time()
    points = [measure(int(n), args.ticks) for n in args.players.split(",")]
    small = [measure(4, args.ticks, seed=s + 1, cpu=False) for s in range(args.rooms_of_4)]
    rooms_of_4: dict[str, Any] = {"rooms": args.rooms_of_4, "players_per_room": 4}
    if small:
        rooms_of_4["bytes_per_player_update"] = {
            name: round(
                statistics.fmean(p["bytes_per_player_update"][name]["mean"] for p in small), 2
            )
            for name in small[0]["bytes_per_player_update"]
        }
    by_n = {p["players"]: p for p in points}
    target = by_n.get(200, points[0])
    schema_mean = target["bytes_per_player_update"]["schema_msgpack"]["mean"]
    print(
        json.dumps(
            {
                "bench": "delta_bytes",
                "scenario": "arena, one room, every player sends a new random heading every tick",
                "points": points,
                "rooms_of_4": rooms_of_4,
                "target": {
                    "players": target["players"],
                    "schema_msgpack_bytes_per_player_update": schema_mean,
                    "max_allowed": 18,
                    "met": target["bytes_per_player_update"]["schema_msgpack"]["max"] <= 18,
                },
                "reference": {"colyseus_0_18_bytes_per_player_update_n100_400": [17.3, 18.2]},
                "bench_cpu_s": round(time.process_time() - started, 2),
            },
            allow_nan=False,
        )
    )


if __name__ == "__main__":
    main()
